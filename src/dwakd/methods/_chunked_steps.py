"""Per-chunk work of :func:`dwakd.methods._chunked.fused_rows`.

:func:`_forward_chunk` computes one chunk's outputs (and, for a precomputed side, its input
gradients); :func:`_backward_chunk` recomputes one chunk of the non-precomputed sides and
accumulates their input gradients; :func:`_combine` and :func:`_put_rows` scale and place the
precomputed gradients in the backward.
"""

from __future__ import annotations

import torch

from dwakd.methods._chunked_plan import (
    RowSide,
    _ce,
    _ce_grad_,
    _logits,
    _Plan,
    _project_back,
    _rows,
    _Side,
)
from dwakd.methods.divergences import _rowdot, divergence_and_grad, log_probs


def _side_stats(trip, side: _Side, sl: slice, out) -> None:
    """Temperature-1 statistics of one side's chunk into ``out``."""
    logp1, prob1, valid = trip
    if side.rows.targets is not None:
        out[f"ce_{side.name}"][sl] = torch.where(valid, _ce(logp1, side.rows.targets[sl]), 0.0)
    if side.entropy:
        out[f"entropy_{side.name}"][sl] = torch.where(valid, -_rowdot(prob1, logp1), 0.0)
    if side.peak:
        top, arg = logp1.max(-1)
        out["q_peak"][sl] = torch.where(valid, top.exp(), 0.0)
        out["q_argmax"][sl] = arg


def _precomputed_ce_grad(side: _Side, trip, sl: slice, out) -> None:
    """A precomputed side's CE input-gradient of this chunk, in place on the triple's probabilities."""
    r = side.rows
    out[f"gx_ce_{side.name}"][sl] = _project_back(r, _ce_grad_(trip[1], r.targets[sl], trip[2].float()))


def _side_forward(side: _Side, plan: _Plan, sl: slice, out):
    """One side of a forward chunk: its temperature-1 statistics into ``out`` (and a precomputed side's CE
    gradient). Returns ``(tau, deferred)``: the temperature-tau triple for the divergence (``None``
    without one) and, when tau = 1 makes it the SAME buffer as the temperature-1 triple of a precomputed
    side with targets, that triple, whose CE gradient (formed in place) must wait for the divergence."""
    want_tau = plan.div is not None
    if not (side.wants_stats or want_tau):
        return None, None
    logits = _logits(side.rows, sl.start, sl.stop)
    shared = plan.temperature == 1.0
    if shared:
        trip1 = trip_tau = log_probs(logits, inplace=True)
    else:
        trip1 = log_probs(logits.clone() if want_tau else logits, inplace=True) if side.wants_stats else None
    if side.wants_stats:
        _side_stats(trip1, side, sl, out)
    deferred = None
    if side.precompute and side.rows.targets is not None:
        if shared and want_tau:
            deferred = trip1
        else:
            _precomputed_ce_grad(side, trip1, sl, out)
    del trip1
    if not shared:
        trip_tau = log_probs(logits, plan.temperature, inplace=True) if want_tau else None
    return trip_tau, deferred


def _forward_chunk(plan: _Plan, sl: slice, out: dict[str, torch.Tensor]) -> None:
    p_tau, p_deferred = _side_forward(plan.p, plan, sl, out)
    if plan.q is None:
        return
    q_tau, q_deferred = _side_forward(plan.q, plan, sl, out)
    if plan.div is None:
        return
    d = plan.div
    (lp, pp, vp), (lq, qq, vq) = p_tau, q_tau
    value, grad = divergence_and_grad(d.kind, lp, pp, lq, qq, skew=d.skew, alpha=d.alpha,
                                      need_grad=plan.p.precompute)
    valid = vp & vq
    out["div"][sl] = torch.where(valid, value, 0.0)
    if grad is not None:
        out["gx_div"][sl] = _project_back(plan.p.rows, grad.mul_((valid.float() / d.temperature)[:, None]))
    del grad, lp, lq, pp, qq
    for side, trip in ((plan.p, p_deferred), (plan.q, q_deferred)):
        if trip is not None:  # the probability buffers are free now
            _precomputed_ce_grad(side, trip, sl, out)


def _put_rows(dest: torch.Tensor, side: RowSide, rows: torch.Tensor, sl: slice, unique: bool) -> None:
    if side.index is None:
        dest[sl] += rows
    elif unique:  # every row is written once overall: a plain copy into the zero buffer
        dest.index_copy_(0, side.index[sl], rows)
    else:
        dest.index_put_((side.index[sl],), rows, accumulate=True)


def _scatter_grad(side: RowSide, grad_logits: torch.Tensor, sl: slice, gx, gw, unique: bool) -> None:
    """Accumulate a chunk's logits gradient into the input-gradient buffers of ``side``."""
    if side.weight is None:
        _put_rows(gx, side, grad_logits.to(gx.dtype), sl, unique)
        return
    g = grad_logits.to(side.weight.dtype)
    if gx is not None:
        _put_rows(gx, side, (g @ side.weight).to(gx.dtype), sl, unique)
    if gw is not None:
        gw += (g.t() @ _rows(side, sl.start, sl.stop).to(side.weight.dtype)).to(gw.dtype)


def _backward_chunk(plan: _Plan, sl: slice, grads, bufs, do_p: bool, do_q: bool) -> None:
    """Recompute one chunk of the non-precomputed sides and accumulate their input gradients."""
    g_div, g_ce_p, g_ce_q = grads
    p, q = plan.p.rows, (plan.q.rows if plan.q is not None else None)
    use_div = do_p and g_div is not None
    use_ce_p = do_p and g_ce_p is not None
    q_logits = _logits(q, sl.start, sl.stop) if (use_div or do_q) else None
    if do_q:  # CE of the q side at temperature 1
        _, qq1, vq1 = log_probs(q_logits.clone() if use_div else q_logits, inplace=True)
        scale = torch.where(vq1, g_ce_q[sl].float(), 0.0)
        _scatter_grad(q, _ce_grad_(qq1, q.targets[sl], scale), sl, bufs["gqx"], bufs["gqw"], plan.q.unique)
        del qq1
    if not do_p:
        return
    a = _logits(p, sl.start, sl.stop)
    grad_a = None
    shared = use_ce_p and use_div and plan.temperature == 1.0
    if use_ce_p and not shared:
        _, pp1, vp1 = log_probs(a.clone() if use_div else a, inplace=True)
        grad_a = _ce_grad_(pp1, p.targets[sl], torch.where(vp1, g_ce_p[sl].float(), 0.0))
        del pp1
    if use_div:
        lp, pp, vp = log_probs(a, plan.temperature, inplace=True)
        lq, qq, vq = log_probs(q_logits, plan.temperature, inplace=True)
        _, g = divergence_and_grad(plan.div.kind, lp, pp, lq, qq, skew=plan.div.skew, alpha=plan.div.alpha)
        del lp, lq, qq, q_logits
        g.mul_((torch.where(vp & vq, g_div[sl].float(), 0.0) / plan.temperature)[:, None])
        if shared:  # p at temperature 1 is the divergence's p: its CE gradient reuses the buffer
            g.add_(_ce_grad_(pp, p.targets[sl], torch.where(vp, g_ce_p[sl].float(), 0.0)))
        del pp
        grad_a = g if grad_a is None else grad_a.add_(g)
    _scatter_grad(p, grad_a, sl, bufs["gpx"], bufs["gpw"], plan.p.unique)


def _combine(parts) -> torch.Tensor | None:
    """``sum(g[:, None] * rows)`` over ``(g, rows)`` pairs whose ``g`` is not None."""
    out = None
    for g, rows in parts:
        if g is None:
            continue
        term = rows * g.float()[:, None]
        out = term if out is None else out.add_(term)
    return out

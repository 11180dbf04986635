"""Memory-bounded vocabulary-sized work: divergence, cross-entropy, entropy and peak, fused.

Vocabulary-sized tensors are the memory hot spot of cross-tokenizer KD (``[B, L, 152k]`` float32
is 1.2 GB at B=4, L=512, and a plain autograd graph keeps several of them). :func:`fused_rows`
computes, for ``N`` selected rows:

- ``div``  ``[N]``: ``D(q || p)`` at ``temperature`` (:func:`dwakd.methods.divergences.divergence_and_grad`),
- ``ce_p`` / ``ce_q`` ``[N]``: cross-entropy of either side against gold ids at temperature 1,
- ``entropy_p`` / ``entropy_q`` ``[N]``: entropy at temperature 1 (detached),
- ``q_peak`` ``[N]``: ``max_v q(v)`` at temperature 1 and ``q_argmax`` ``[N]`` (detached),

in chunks of rows under a custom :class:`torch.autograd.Function`, so no ``[N, V]`` intermediate
is ever stored. Each side is a :class:`RowSide`: logits rows, or hidden rows plus an LM-head weight,
in which case the projection ``x @ W^T`` is fused into the chunk loop and the projected logits
never exist for all rows at once.

Gradients. ``div`` sends gradient to the ``p`` side only (the target ``q`` is a constant, METHOD.md
sections 2-3); ``ce_p`` to ``p``; ``ce_q`` to ``q``. Every gradient is analytic (no autograd graph
inside). For a **projected** side whose head needs no gradient (the methods' case: student head
detached, teacher head frozen), the gradient of each output w.r.t. the hidden rows is computed in
the forward chunk loop and kept as ``[N, d]`` (small), so the backward is a per-row scaling and the
head is streamed through the matmul twice in all (logits, gradient), as in plain autograd. A
**logits** side (or a head that requires grad) is recomputed chunk by chunk in the backward.

Precision: the projection runs in the head's dtype (a bf16 head gives a bf16 matmul, as the model's
own head would); everything after it is float32. Peak extra memory: about eight ``[chunk, V]``
float32 buffers plus the gradient buffers of the inputs themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dwakd.methods.divergences import (
    DEFAULT_CHUNK_ELEMENTS,
    _rowdot,
    check_kind,
    divergence_and_grad,
    log_probs,
)

# Fewest rows per chunk when a side is projected: every chunk streams the whole head weight (V x d)
# through the matmul, so few rows per chunk make the projection memory-bound (measured on CPU:
# 32 rows x 2048 x 152k costs as much as 128 rows). At V = 152k, 256 rows is a 156 MB buffer.
MIN_PROJECTED_ROWS = 256


@dataclass
class RowSide:
    """One side of :func:`fused_rows`.

    - ``x``: ``[R, V]`` logits rows, or ``[R, d]`` hidden rows when ``weight`` is given.
    - ``weight``: ``[V, d]`` LM-head weight; logits = ``x @ weight^T`` (no bias).
    - ``index``: ``[N]`` long, the rows of ``x`` to use, in output order (``None`` = all rows).
    - ``targets``: ``[N]`` long gold ids for this side's cross-entropy (``None`` = no CE).
    """

    x: torch.Tensor
    weight: torch.Tensor | None = None
    index: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.weight.shape[0] if self.weight is not None else self.x.shape[-1])

    @property
    def n_rows(self) -> int:
        return int(self.index.numel() if self.index is not None else self.x.shape[0])


@dataclass
class RowTerms:
    """Outputs of :func:`fused_rows`; each ``[N]`` (float32) or ``None`` when not requested."""

    div: torch.Tensor | None = None
    ce_p: torch.Tensor | None = None
    ce_q: torch.Tensor | None = None
    entropy_p: torch.Tensor | None = None
    entropy_q: torch.Tensor | None = None
    q_peak: torch.Tensor | None = None
    q_argmax: torch.Tensor | None = None


@dataclass
class _Div:
    """The divergence ``D(q || p)`` to compute."""

    kind: str
    temperature: float
    skew: float
    alpha: float


@dataclass
class _Side:
    """One side as the op runs it: its rows, what to compute on it, how its input gradient is formed."""

    rows: RowSide
    name: str  # "p" or "q": the suffix of its outputs (ce_p, entropy_q, gx_ce_p, ...)
    entropy: bool  # entropy at temperature 1
    peak: bool  # max probability and argmax at temperature 1 (the q side)
    precompute: bool  # projected side, head without grad: input gradients computed in the forward
    unique: bool  # every index appears once: gradients are copied, not accumulated

    @property
    def wants_stats(self) -> bool:
        return self.rows.targets is not None or self.entropy or self.peak


@dataclass
class _Plan:
    p: _Side
    q: _Side | None
    div: _Div | None
    chunk: int

    @property
    def temperature(self) -> float:
        return self.div.temperature if self.div is not None else 1.0


# ----------------------------------------------------------------------------- chunk helpers
def _rows(side: RowSide, start: int, stop: int) -> torch.Tensor:
    if side.index is None:
        return side.x[start:stop]
    return side.x[side.index[start:stop]]  # (much faster than index_select on CPU for wide rows)


def _logits(side: RowSide, start: int, stop: int) -> torch.Tensor:
    """A chunk's logits as a fresh float32 buffer (callers may overwrite it)."""
    xc = _rows(side, start, stop)
    if side.weight is not None:
        return (xc.to(side.weight.dtype) @ side.weight.t()).float()
    out = xc.float()
    shares = out.untyped_storage().data_ptr() == side.x.untyped_storage().data_ptr()
    return out.clone() if shares else out


def _project_back(side: RowSide, grad_logits: torch.Tensor) -> torch.Tensor:
    """``grad_logits @ W``: a projected side's logits gradient as a hidden-row gradient (float32)."""
    return (grad_logits.to(side.weight.dtype) @ side.weight).float()


def _ce(logp1: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logp1.gather(1, targets[:, None]).squeeze(1)


def _ce_grad_(prob: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(prob - onehot(targets)) * scale[:, None]``, in place on ``prob``: the CE gradient."""
    prob.scatter_add_(1, targets[:, None], torch.full_like(prob[:, :1], -1.0))
    return prob.mul_(scale[:, None])


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


# ----------------------------------------------------------------------------- autograd op
class _FusedRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, p_x, p_w, q_x, q_w):  # noqa: D401 - autograd signature
        n = plan.p.rows.n_rows
        dev = p_x.device
        f32 = dict(dtype=torch.float32, device=dev)
        p, q = plan.p.rows, (plan.q.rows if plan.q is not None else None)
        q_entropy = plan.q is not None and plan.q.entropy
        q_peak = plan.q is not None and plan.q.peak

        def rows_if(flag):
            return torch.zeros(n if flag else 0, **f32)

        out = {
            "div": rows_if(plan.div is not None),
            "ce_p": rows_if(p.targets is not None),
            "ce_q": rows_if(q is not None and q.targets is not None),
            "entropy_p": rows_if(plan.p.entropy),
            "entropy_q": rows_if(q_entropy),
            "q_peak": rows_if(q_peak),
            "q_argmax": torch.zeros(n if q_peak else 0, dtype=torch.long, device=dev),
        }
        if plan.p.precompute:
            d_p = p.weight.shape[1]
            out["gx_div"] = torch.zeros(n if plan.div is not None else 0, d_p, **f32)
            out["gx_ce_p"] = torch.zeros(n if p.targets is not None else 0, d_p, **f32)
        if plan.q is not None and plan.q.precompute:
            out["gx_ce_q"] = torch.zeros(n, q.weight.shape[1], **f32)
        with torch.no_grad():
            for start in range(0, n, plan.chunk):
                _forward_chunk(plan, slice(start, min(n, start + plan.chunk)), out)
        ctx.plan = plan
        ctx.pre = {k: out[k] for k in ("gx_div", "gx_ce_p", "gx_ce_q") if k in out}
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(p_x, p_w, q_x, q_w)
        ctx.mark_non_differentiable(out["entropy_p"], out["entropy_q"], out["q_peak"], out["q_argmax"])
        return (out["div"], out["ce_p"], out["ce_q"], out["entropy_p"], out["entropy_q"],
                out["q_peak"], out["q_argmax"])

    @staticmethod
    def backward(ctx, g_div, g_ce_p, g_ce_q, *_unused):
        plan: _Plan = ctx.plan
        p_x, p_w, q_x, q_w = ctx.saved_tensors
        need = ctx.needs_input_grad  # (plan, p_x, p_w, q_x, q_w)
        if plan.div is None or (g_div is not None and g_div.numel() == 0):
            g_div = None
        if plan.p.rows.targets is None or (g_ce_p is not None and g_ce_p.numel() == 0):
            g_ce_p = None
        if plan.q is None or plan.q.rows.targets is None or (g_ce_q is not None and g_ce_q.numel() == 0):
            g_ce_q = None
        to_p = g_div is not None or g_ce_p is not None
        bufs = {
            "gpx": torch.zeros_like(p_x) if need[1] and to_p else None,
            "gpw": torch.zeros_like(p_w) if p_w is not None and need[2] and to_p else None,
            "gqx": torch.zeros_like(q_x) if q_x is not None and need[3] and g_ce_q is not None else None,
            "gqw": torch.zeros_like(q_w) if q_w is not None and need[4] and g_ce_q is not None else None,
        }
        every = slice(0, plan.p.rows.n_rows)
        q_pre = plan.q is not None and plan.q.precompute
        if plan.p.precompute and bufs["gpx"] is not None:
            rows = _combine([(g_div, ctx.pre.get("gx_div")), (g_ce_p, ctx.pre.get("gx_ce_p"))])
            _put_rows(bufs["gpx"], plan.p.rows, rows.to(p_x.dtype), every, plan.p.unique)
        if q_pre and bufs["gqx"] is not None:
            rows = _combine([(g_ce_q, ctx.pre["gx_ce_q"])])
            _put_rows(bufs["gqx"], plan.q.rows, rows.to(q_x.dtype), every, plan.q.unique)
        do_p = not plan.p.precompute and (bufs["gpx"] is not None or bufs["gpw"] is not None)
        do_q = not q_pre and (bufs["gqx"] is not None or bufs["gqw"] is not None)
        if do_p or do_q:
            with torch.no_grad():
                n = plan.p.rows.n_rows
                for start in range(0, n, plan.chunk):
                    sl = slice(start, min(n, start + plan.chunk))
                    _backward_chunk(plan, sl, (g_div, g_ce_p, g_ce_q), bufs, do_p, do_q)
        return None, bufs["gpx"], bufs["gpw"], bufs["gqx"], bufs["gqw"]


def fused_rows(
    p: RowSide,
    q: RowSide | None = None,
    *,
    kind: str | None = None,
    temperature: float = 1.0,
    skew: float = 0.1,
    alpha: float = 0.5,
    entropy_p: bool = False,
    entropy_q: bool = False,
    q_peak: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    min_projected_rows: int = MIN_PROJECTED_ROWS,
) -> RowTerms:
    """Compute the requested per-row terms (see the module docstring); returns :class:`RowTerms`.

    ``kind``: the divergence ``D(q || p)`` to compute (one of
    :data:`dwakd.methods.divergences.KINDS`), or ``None`` for none. Both sides must have the same
    row count, and the same width when a divergence is requested. ``chunk_elements``: rows x
    vocabulary entries processed at once (peak extra memory is a small multiple of it, in float32);
    ``min_projected_rows``: the fewest rows per chunk when a side is projected (see
    :data:`MIN_PROJECTED_ROWS`).
    """
    if kind is not None:
        check_kind(kind, field="kind")
        if q is None:
            raise ValueError("a divergence needs both sides (q is None)")
    if q is not None:
        if q.n_rows != p.n_rows:
            raise ValueError(f"row counts differ: p has {p.n_rows}, q has {q.n_rows}")
        if kind is not None and q.width != p.width:
            raise ValueError(f"vocabulary widths differ: p {p.width} vs q {q.width}")
    elif entropy_q or q_peak:
        raise ValueError("entropy_q / q_peak need a q side")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    width = max(p.width, q.width if q is not None else 0)
    chunk = max(1, int(chunk_elements) // max(width, 1))
    if p.weight is not None or (q is not None and q.weight is not None):
        chunk = max(chunk, int(min_projected_rows))

    def unique(side):
        return side is None or side.index is None or side.index.unique().numel() == side.index.numel()

    def precompute(side, wanted):
        return (wanted and side is not None and side.weight is not None and torch.is_grad_enabled()
                and side.x.requires_grad and not side.weight.requires_grad)

    plan = _Plan(
        p=_Side(p, "p", entropy=entropy_p, peak=False, unique=unique(p),
                precompute=precompute(p, kind is not None or p.targets is not None)),
        q=None if q is None else _Side(q, "q", entropy=entropy_q, peak=q_peak, unique=unique(q),
                                       precompute=precompute(q, q.targets is not None)),
        div=None if kind is None else _Div(kind, float(temperature), float(skew), float(alpha)),
        chunk=chunk,
    )
    outs = _FusedRows.apply(
        plan, p.x, p.weight, q.x if q is not None else None, q.weight if q is not None else None
    )
    div, ce_p, ce_q, ent_p, ent_q, peak, arg = outs
    return RowTerms(
        div=div if kind is not None else None,
        ce_p=ce_p if p.targets is not None else None,
        ce_q=ce_q if q is not None and q.targets is not None else None,
        entropy_p=ent_p if entropy_p else None,
        entropy_q=ent_q if entropy_q else None,
        q_peak=peak if q_peak else None,
        q_argmax=arg if q_peak else None,
    )

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

Layout: this module holds the autograd op and :func:`fused_rows`; the row types and run plan
(:class:`RowSide`, :class:`RowTerms`) live in :mod:`dwakd.methods._chunked_plan` and the per-chunk
forward/backward work in :mod:`dwakd.methods._chunked_steps` (all public names are importable here).
"""

from __future__ import annotations

import torch

from dwakd.methods._chunked_plan import MIN_PROJECTED_ROWS, RowSide, RowTerms, _Div, _Plan, _Side
from dwakd.methods._chunked_steps import _backward_chunk, _combine, _forward_chunk, _put_rows
from dwakd.methods.divergences import DEFAULT_CHUNK_ELEMENTS, check_kind

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "MIN_PROJECTED_ROWS", "RowSide", "RowTerms", "fused_rows"]


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

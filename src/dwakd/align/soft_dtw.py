"""Soft-DTW (Cuturi & Blondel 2017): batched, masked, exact gradients, no length limit.

Public API (METHOD.md section 4; shapes: B batch, N / M sequence lengths, D features):

- :func:`pairwise_cost` ``x [B, N, D], y [B, M, D] -> [B, N, M]``: ``1 - cos`` or squared Euclidean.
- :func:`soft_dtw` ``cost [B, N, M] -> [B]``: the value ``R[N_b, M_b]`` of the recursion
  ``R_00 = 0, R_i0 = R_0j = +inf, R_ij = C_ij + softmin_g(R_i-1,j-1, R_i-1,j, R_i,j-1)`` with
  ``softmin_g(a) = -g log sum exp(-a / g)``, on the *compacted* sequences: the positions where the
  boolean masks are True, in order (so left padding, right padding and holes all give the same value
  and gradient).
- :func:`soft_dtw_divergence` ``-> [B]``: ``sdtw(C(x, y) + penalty) - (sdtw(C(x, x)) + sdtw(C(y, y))) / 2``.

Conventions. A batch element with an empty side (no valid position in x or in y) has value 0 and zero
gradient; it is counted in the statistics returned with ``return_stats=True`` (key ``"empty"``).
Values come back in the accumulation dtype: float64 for float64 costs, float32 otherwise (also for
bf16 / float16 inputs); the gradient comes back in the cost's dtype. ``gamma`` is a constant (a
float or a 0-dim tensor; no gradient flows to it).

Implementation (see ``benchmarks/results/bench_soft_dtw.md`` for the measurements behind it).
A custom autograd function; the backward is the expected-alignment (E-matrix) recursion of Cuturi &
Blondel's algorithm 2, never autograd through the loops. Both passes sweep anti-diagonals,
vectorised over the batch and the diagonal. The DP runs in the scaled domain ``S = -R / gamma``, where
the recursion is ``S_ij = c_ij + logsumexp(S_i-1,j-1, S_i-1,j, S_i,j-1)`` with ``c = -C / gamma``
(two ``logaddexp``: stable, and exact with the infinite borders). Masks are handled by compacting the
valid positions (a stable sort of each mask, a gather; the gradient is scattered back), and the
shorter side becomes the rows (soft-DTW is symmetric under transposition).

The grid (with its borders, ``(N + 2) x (M + 2)`` cells) is stored in a "wrapped skew" layout: cell
``(i, j)`` at row ``(i + j) mod (M + 2)``, column ``i``, so each anti-diagonal is one contiguous slice
while the layout stays exactly as large as the grid. On CPU the batch is innermost (a diagonal of all
elements is one contiguous 1-D slice). Kept for the backward: ``S`` and ``L`` (the log-sum-exp of
each cell's predecessors, ``c - S``): two grid-sized buffers. The backward's weights
``exp(S_ij - L_succ)`` (in [0, 1]) are computed in blocks of diagonals by a few large vectorised
ops; the sequential part is then three multiply-adds per diagonal (numpy calls on CPU: a quarter of
torch's per-call cost), on a ring of three diagonals of E, each finished diagonal being written
straight into the gradient. Peak memory: three grid-sized buffers in either pass (the cost, S and L;
S, L and the gradient). Every 16 diagonals the two live diagonals are re-centred on their maximum
(offsets kept exactly, in float64), so float32 rounds the stored values at their own small scale,
not at the scale of the whole accumulated cost (see :func:`_forward_torch`). Per-element lengths:
the DP runs on the padded grid (padding cost 0) and the backward starts from each element's own
end cell ``(N_b, M_b)``. The loops run on one core (their ops are below ATen's parallel grain;
Python threads over the batch were measured slower).

CUDA tensors use Triton kernels (:mod:`dwakd.align._sdtw_triton`, one launch per pass) when triton
imports; the torch path is the fallback everywhere.

Backend switch: the environment variable ``DWAKD_SDTW_BACKEND`` (read at every call) picks the code
path whatever the device: ``auto`` (default: Triton for CUDA tensors when it imports, else torch),
``torch`` (the torch forward; the backward's sequential part in numpy on CPU, in torch on other
devices), ``torch-gpu`` (the torch path exactly as a GPU without triton runs it: the backward's
weights from :func:`dwakd.align._sdtw_torch._weight_block` and its loop in torch ops, also on CPU
tensors, which is how ``make test`` exercises that path) and ``triton`` (the Triton kernels; on CPU
tensors only under ``TRITON_INTERPRET=1``).

Code layout: this module (public API, backend switch, autograd function); ``_sdtw_grid`` (argument
checks, mask handling, the wrapped-skew layout); ``_sdtw_torch`` (the torch DPs); ``_sdtw_triton``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from dwakd.align._sdtw_grid import (
    _check_gamma,
    _check_mask,
    _check_seq,
    _fill_wrapped_borders,
    _grid_to_wrapped,
    _index_grid,
    _lengths_and_order,
    _make_grid,
    _new_wrapped,
    _pad_mask,
    _pad_to,
)

# _RENORM_EVERY is re-exported: callers read it as ``dwakd.align.soft_dtw._RENORM_EVERY``.
from dwakd.align._sdtw_torch import _RENORM_EVERY, _backward_torch, _forward_torch  # noqa: F401

__all__ = ["pairwise_cost", "soft_dtw", "soft_dtw_divergence"]

_COST_KINDS = ("cosine", "sqeuclidean")


# ----------------------------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------------------------


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pairwise cost between the positions of two batches of sequences.

    Args:
        x: ``[B, N, D]``.
        y: ``[B, M, D]``.
        kind: ``"cosine"`` (``1 - cos(x_i, y_j)``, in [0, 2]; a zero vector has cosine 0 with
            everything, so cost 1, and a finite gradient) or ``"sqeuclidean"``
            (``|x_i - y_j|^2`` by the quadratic expansion, clamped at 0).

    Returns:
        ``[B, N, M]``, float32 for half / bf16 / float32 inputs, float64 for float64 inputs.
    """
    if kind not in _COST_KINDS:
        raise ValueError(f"pairwise_cost: kind must be one of {_COST_KINDS}, got {kind!r}")
    _check_seq("x", x)
    _check_seq("y", y)
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(
            f"pairwise_cost: x [B, N, D] and y [B, M, D] must agree on B and D, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    work = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    x = x.to(work)
    y = y.to(work)
    if kind == "cosine":
        eps = 1e-8 if work == torch.float64 else 1e-6
        # sqrt of a clamped sum of squares: finite gradient at a zero vector (the clamp blocks it).
        xn = x / (x * x).sum(-1, keepdim=True).clamp_min(eps * eps).sqrt()
        yn = y / (y * y).sum(-1, keepdim=True).clamp_min(eps * eps).sqrt()
        return 1.0 - torch.bmm(xn, yn.transpose(1, 2))
    x2 = (x * x).sum(-1).unsqueeze(2)
    y2 = (y * y).sum(-1).unsqueeze(1)
    return (x2 + y2 - 2.0 * torch.bmm(x, y.transpose(1, 2))).clamp_min(0.0)


# ----------------------------------------------------------------------------------------------
# Public soft-DTW
# ----------------------------------------------------------------------------------------------


def soft_dtw(
    cost: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    bandwidth: int | None = None,
    return_stats: bool = False,
):
    """Soft-DTW value of each batch element.

    Args:
        cost: ``[B, N, M]`` pairwise cost (any float dtype; the DP accumulates in float32, or in
            float64 for a float64 cost).
        gamma: smoothing, > 0 (float or 0-dim tensor).
        x_mask: ``[B, N]`` bool (True = valid) or None (all valid). Integer 0/1 masks are accepted.
        y_mask: ``[B, M]`` likewise.
        bandwidth: optional hard Sakoe-Chiba band on the compacted indices: with ``n, m`` the
            element's lengths, cell ``(i, j)`` may be used iff
            ``-w - max(0, n - m) <= j - i <= w + max(0, m - n)`` (the band is widened by the
            length difference, as in tslearn, so a path always exists). None = no band.
        return_stats: also return ``{"empty": int}`` (elements with an empty side, which get value
            0 and zero gradient).

    Returns:
        ``[B]`` values (float32, or float64 for a float64 cost), and the stats dict if asked.
    """
    g = _check_gamma(gamma)
    if not torch.is_tensor(cost) or cost.dim() != 3 or not cost.is_floating_point():
        what = f"{cost.dtype} of shape {tuple(cost.shape)}" if torch.is_tensor(cost) else type(cost).__name__
        raise ValueError(f"soft_dtw: cost must be a float tensor [B, N, M], got {what}")
    B, N, M = cost.shape
    if bandwidth is not None:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
            raise ValueError(f"soft_dtw: bandwidth must be None or an int >= 0, got {bandwidth!r}")
    xm = _check_mask("x_mask", x_mask, B, N, cost.device)
    ym = _check_mask("y_mask", y_mask, B, M, cost.device)
    n_len, x_order = _lengths_and_order(xm, B, N, cost.device)
    m_len, y_order = _lengths_and_order(ym, B, M, cost.device)
    values = _SoftDTWFunction.apply(cost, g, n_len, m_len, x_order, y_order, bandwidth)
    if return_stats:
        empty = int(((n_len == 0) | (m_len == 0)).sum()) if B else 0
        return values, {"empty": empty}
    return values


def soft_dtw_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    cost: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cosine",
    cross_penalty: torch.Tensor | None = None,
    return_stats: bool = False,
):
    """Normalised soft-DTW divergence ``sdtw(C(x,y) + P) - (sdtw(C(x,x)) + sdtw(C(y,y))) / 2``.

    The three DP problems run as one batched :func:`soft_dtw` call (padded to a common size with
    masks). Padded positions of ``x`` / ``y`` are zeroed (``masked_fill``) before the costs are
    computed, so a NaN in padding cannot reach the gradients (METHOD.md section 9).

    Args:
        x: ``[B, N, D]``; y: ``[B, M, D]``.
        gamma: smoothing, > 0.
        x_mask / y_mask: ``[B, N]`` / ``[B, M]`` bool, True = valid (None = all valid).
        cost: ``"cosine"``, ``"sqeuclidean"`` or a callable ``(a [B, P, D], b [B, Q, D]) -> [B, P, Q]``.
        cross_penalty: optional ``[B, N, M]`` added to the cross cost only, on the original
            (uncompacted) index grid, same layout as the cost (the soft band of METHOD.md section 4).
        return_stats: also return ``{"empty": int, "negative": int}``: elements with an empty side
            (value 0, zero gradient) and non-empty elements whose divergence is < 0 (possible for
            soft-DTW; counted, never clamped).

    Returns:
        ``[B]`` divergences (float32, or float64 for float64 inputs), and the stats dict if asked.
    """
    g = _check_gamma(gamma)
    _check_seq("x", x)
    _check_seq("y", y)
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(
            f"soft_dtw_divergence: x [B, N, D] and y [B, M, D] must agree on B and D, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    B, N, _ = x.shape
    M = y.shape[1]
    xm = _check_mask("x_mask", x_mask, B, N, x.device)
    ym = _check_mask("y_mask", y_mask, B, M, y.device)
    if cross_penalty is not None and (
        not torch.is_tensor(cross_penalty) or tuple(cross_penalty.shape) != (B, N, M)
    ):
        shape = tuple(cross_penalty.shape) if torch.is_tensor(cross_penalty) else type(cross_penalty)
        raise ValueError(f"soft_dtw_divergence: cross_penalty must be [B, N, M] = {(B, N, M)}, got {shape}")
    if isinstance(cost, str):
        if cost not in _COST_KINDS:
            raise ValueError(f"soft_dtw_divergence: cost must be one of {_COST_KINDS} or a callable, got {cost!r}")
        kind = cost

        def cost_fn(a, b):
            return pairwise_cost(a, b, kind)
    elif callable(cost):
        cost_fn = cost
    else:
        raise ValueError(f"soft_dtw_divergence: cost must be a string or a callable, got {type(cost).__name__}")

    if xm is not None:
        x = x.masked_fill(~xm.unsqueeze(-1), 0.0)
    if ym is not None:
        y = y.masked_fill(~ym.unsqueeze(-1), 0.0)
    c_xy = cost_fn(x, y)
    if cross_penalty is not None:
        c_xy = c_xy + cross_penalty
    c_xx = cost_fn(x, x)
    c_yy = cost_fn(y, y)
    for name, c, shape in (("C(x, y)", c_xy, (B, N, M)), ("C(x, x)", c_xx, (B, N, N)), ("C(y, y)", c_yy, (B, M, M))):
        if tuple(c.shape) != shape:
            raise ValueError(f"soft_dtw_divergence: cost function returned {name} of shape {tuple(c.shape)}, expected {shape}")

    P = max(N, M)
    dtype = torch.promote_types(torch.promote_types(c_xy.dtype, c_xx.dtype), c_yy.dtype)
    costs = torch.cat([_pad_to(c.to(dtype), P) for c in (c_xy, c_xx, c_yy)], 0)
    ones_x = torch.ones(B, N, dtype=torch.bool, device=x.device)
    ones_y = torch.ones(B, M, dtype=torch.bool, device=x.device)
    mx = _pad_mask(xm if xm is not None else ones_x, P)
    my = _pad_mask(ym if ym is not None else ones_y, P)
    rows = torch.cat([mx, mx, my], 0)
    cols = torch.cat([my, mx, my], 0)
    values = soft_dtw(costs, g, x_mask=rows, y_mask=cols)
    div = values[:B] - 0.5 * (values[B : 2 * B] + values[2 * B :])
    n_len = mx.sum(1)
    m_len = my.sum(1)
    empty = (n_len == 0) | (m_len == 0)
    div = torch.where(empty, torch.zeros((), dtype=div.dtype, device=div.device), div)
    if return_stats:
        negative = int(((div < 0) & ~empty).sum()) if B else 0
        return div, {"empty": int(empty.sum()) if B else 0, "negative": negative}
    return div


# ----------------------------------------------------------------------------------------------
# Autograd function
# ----------------------------------------------------------------------------------------------


BACKENDS = ("auto", "torch", "torch-gpu", "triton")
# Set by tests and benchmarks (one of BACKENDS); takes precedence over DWAKD_SDTW_BACKEND. None = the
# environment variable, or "auto" when it is unset.
_BACKEND_OVERRIDE: str | None = None


def _backend() -> str:
    """The backend in force: ``_BACKEND_OVERRIDE``, else ``DWAKD_SDTW_BACKEND``, else ``"auto"``."""
    name = _BACKEND_OVERRIDE if _BACKEND_OVERRIDE is not None else os.environ.get("DWAKD_SDTW_BACKEND", "auto")
    name = (name or "auto").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"soft_dtw: DWAKD_SDTW_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def _use_triton(t: torch.Tensor) -> bool:
    name = _backend()
    if name != "auto":
        return name == "triton"
    if not t.is_cuda:
        return False
    try:
        from dwakd.align import _sdtw_triton
    except Exception:  # triton missing or broken: torch fallback
        return False
    return _sdtw_triton.available()


class _SoftDTWFunction(torch.autograd.Function):
    """cost [B, N, M] -> values [B]; see the module docstring for the algorithm."""

    @staticmethod
    def forward(ctx, cost, gamma, n_len, m_len, x_order, y_order, bandwidth):
        B, N0, M0 = cost.shape
        acc = torch.float64 if cost.dtype == torch.float64 else torch.float32
        device = cost.device
        ctx.shape = (B, N0, M0)
        ctx.cost_dtype = cost.dtype
        ctx.orders = (x_order, y_order)
        ctx.banded = bandwidth is not None
        if B == 0 or N0 == 0 or M0 == 0:
            ctx.empty_problem = True
            return torch.zeros(B, dtype=acc, device=device)
        ctx.empty_problem = False

        c = cost
        if x_order is not None or y_order is not None:  # compact: valid positions first, in order
            c = c[_index_grid(c, x_order, y_order)]
        # Rows are the shorter side (soft-DTW is symmetric under transposing the cost).
        ctx.transposed = N0 > M0
        if ctx.transposed:
            c = c.transpose(1, 2)
            n_len, m_len = m_len, n_len
        N, M = c.shape[1], c.shape[2]
        G1, G2 = N + 2, M + 2
        ctx.triton = triton = _use_triton(cost)
        batch_inner = not triton

        grid, flat = _make_grid(c, gamma, n_len, m_len, bandwidth, acc, batch_inner)
        del c
        X = _new_wrapped(B, G1, G2, acc, device, batch_inner)
        _grid_to_wrapped(grid, X)
        del grid
        body = flat.narrow(0, 0, B * G2 * G1)  # Y reuses the grid's storage (no fresh pages to fault in)
        Y = body.view(G2, G1, B).permute(2, 0, 1) if batch_inner else body.view(B, G2, G1)
        _fill_wrapped_borders(Y, math.inf, math.inf)

        if triton:
            from dwakd.align import _sdtw_triton

            # offsets[b, k]: what was subtracted from S on anti-diagonal k (float64)
            offsets = torch.zeros(B, N + M + 3, dtype=torch.float64, device=device)
            _sdtw_triton.forward(X, Y, n_len, m_len, offsets)
        else:
            offsets = torch.zeros(N + M + 3, B, dtype=torch.float64, device=device)
            _forward_torch(X, Y, N, M, offsets, ctx.banded)
            offsets = offsets.t()

        k_end = n_len + m_len
        s_end = X[torch.arange(B, device=device), k_end % G2, n_len]
        s_end = s_end.double() + offsets.gather(1, k_end.view(B, 1)).squeeze(1)
        empty = (n_len == 0) | (m_len == 0)
        values = torch.where(empty, torch.zeros((), dtype=acc, device=device), (-gamma * s_end).to(acc))
        ctx.save_for_backward(n_len, m_len, offsets, X, Y)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values):
        B, N0, M0 = ctx.shape
        if ctx.empty_problem:
            g = torch.zeros(B, N0, M0, dtype=ctx.cost_dtype, device=grad_values.device)
            return g, None, None, None, None, None, None
        n_len, m_len, offsets, X, Y = ctx.saved_tensors
        _, G2, G1 = X.shape
        N, M = G1 - 2, G2 - 2
        device = n_len.device
        acc = X.dtype
        empty = (n_len == 0) | (m_len == 0)
        go = torch.where(empty, torch.zeros((), dtype=acc, device=device), grad_values.to(acc))

        if ctx.triton:
            from dwakd.align import _sdtw_triton

            grad = torch.zeros(B, N, M, dtype=acc, device=device)  # the kernel writes each element's region
            _sdtw_triton.backward(X, Y, grad, n_len, m_len, go, offsets, ctx.banded)
        else:
            # Written in place through a [N * M, B] view of the [B, N, M] gradient: scattered writes,
            # but cheaper than a batch-inner buffer plus a transposing copy, and a permuted
            # (batch-inner) gradient would send the cost's bmm backward down a slow non-BLAS path.
            grad = torch.empty(B, N, M, dtype=acc, device=device)
            store = grad.view(B, N * M).t()
            # numpy's slicing and ufunc calls cost ~4x less than torch's; "torch-gpu" keeps the device path.
            use_numpy = X.device.type == "cpu" and _backend() != "torch-gpu"
            _backward_torch(
                X, Y, store, N, M, n_len.tolist(), m_len.tolist(), go, offsets.t(), ctx.banded, use_numpy
            )
        if ctx.transposed:
            grad = grad.transpose(1, 2)
        x_order, y_order = ctx.orders
        if x_order is not None or y_order is not None:
            full = torch.zeros(B, N0, M0, dtype=ctx.cost_dtype, device=device)
            full[_index_grid(full, x_order, y_order)] = grad.to(ctx.cost_dtype)
            return full, None, None, None, None, None, None
        return grad.to(ctx.cost_dtype), None, None, None, None, None, None

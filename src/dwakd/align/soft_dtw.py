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
weights from :func:`_weight_block` and its loop in torch ops, also on CPU tensors, which is how
``make test`` exercises that path) and ``triton`` (the Triton kernels; on CPU tensors only under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["pairwise_cost", "soft_dtw", "soft_dtw_divergence"]

_COST_KINDS = ("cosine", "sqeuclidean")
# Size (elements) of one block of expected-alignment weights in the torch backward (stays in L2).
_WEIGHT_BLOCK_ELEMS = 24576
# The torch forward re-centres the stored diagonals every this many diagonals (see _forward_torch).
_RENORM_EVERY = 16


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
# Argument checks and mask handling
# ----------------------------------------------------------------------------------------------


def _check_gamma(gamma) -> float:
    if torch.is_tensor(gamma):
        if gamma.numel() != 1 or gamma.dim() != 0:
            raise ValueError(f"soft_dtw: gamma must be a float or a 0-dim tensor, got shape {tuple(gamma.shape)}")
        gamma = float(gamma.detach())
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f"soft_dtw: gamma must be a positive float, got {type(gamma).__name__}")
    g = float(gamma)
    if not (g > 0.0) or not math.isfinite(g):
        raise ValueError(f"soft_dtw: gamma must be a finite float > 0, got {gamma!r}")
    return g


def _check_seq(name: str, t) -> None:
    if not torch.is_tensor(t) or t.dim() != 3 or not t.is_floating_point():
        what = f"{t.dtype} of shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"{name} must be a float tensor [B, length, D], got {what}")


def _check_mask(name: str, mask, B: int, L: int, device) -> torch.Tensor | None:
    if mask is None:
        return None
    if not torch.is_tensor(mask):
        raise ValueError(f"soft_dtw: {name} must be a bool tensor [{B}, {L}], got {type(mask).__name__}")
    if tuple(mask.shape) != (B, L):
        raise ValueError(f"soft_dtw: {name} must have shape [B, length] = {(B, L)}, got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"soft_dtw: {name} must be a bool (or 0/1 integer) tensor, got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"soft_dtw: {name} is on {mask.device}, the data on {device}")
    return mask if mask.dtype == torch.bool else mask != 0


def _lengths_and_order(mask: torch.Tensor | None, B: int, L: int, device):
    """Valid lengths ``[B]`` (int64) and the compaction order ``[B, L]`` (None if already a prefix).

    The order lists the valid positions first, in their original order (a stable sort).
    """
    if mask is None:
        return torch.full((B,), L, dtype=torch.int64, device=device), None
    lengths = mask.sum(1)
    prefix = torch.arange(L, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    if bool(torch.equal(prefix, mask)):
        return lengths, None
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    return lengths, order


def _pad_to(c: torch.Tensor, P: int) -> torch.Tensor:
    _, n, m = c.shape
    if n == P and m == P:
        return c
    return torch.nn.functional.pad(c, (0, P - m, 0, P - n))


def _pad_mask(mask: torch.Tensor, P: int) -> torch.Tensor:
    if mask.shape[1] == P:
        return mask
    return torch.nn.functional.pad(mask, (0, P - mask.shape[1]), value=False)


# ----------------------------------------------------------------------------------------------
# Wrapped-skew layout. A batch of B DP grids is a tensor of *logical* shape [B, G2, G1]: grid cell
# (i, j) of element b at [b, (i + j) mod G2, i]. Storage is either batch-outer (contiguous
# [B, G2, G1]: the Triton kernels) or batch-inner (a permuted view of a contiguous [G2, G1, B]: the
# torch loops, where a diagonal of all B elements is then one contiguous slice).
# ----------------------------------------------------------------------------------------------


def _new_wrapped(Bc: int, G1: int, G2: int, dtype, device, batch_inner: bool) -> torch.Tensor:
    """Uninitialised wrapped tensor (logical ``[Bc, G2, G1]``)."""
    if batch_inner:
        return torch.empty(G2, G1, Bc, dtype=dtype, device=device).permute(2, 0, 1)
    return torch.empty(Bc, G2, G1, dtype=dtype, device=device)


def _physical(T: torch.Tensor, batch_inner: bool) -> torch.Tensor:
    """The storage-order view of a wrapped tensor: [G2, G1, Bc] or [Bc, G2, G1], contiguous."""
    return T.permute(1, 2, 0) if batch_inner else T


def _make_grid(c, gamma, n_len, m_len, bandwidth, acc, batch_inner: bool):
    """Scaled cost ``-C / gamma`` with the S borders, logical ``[B, G1 + 1, G2]`` (last row: slack).
    Returns (grid, its flat storage tensor)."""
    B, N, M = c.shape
    G1, G2 = N + 2, M + 2
    device = c.device
    flat = torch.empty(B * (G1 + 1) * G2, dtype=acc, device=device)
    if batch_inner:
        grid = flat.view(G1 + 1, G2, B).permute(2, 0, 1)
    else:
        grid = flat.view(B, G1 + 1, G2)
    inner = grid[:, 1 : N + 1, 1 : M + 1]
    if c.dtype == acc:
        torch.mul(c, -1.0 / gamma, out=inner)
    else:  # bf16 / float16: convert first (the product would be rounded to the input's precision)
        inner.copy_(c)
        inner.mul_(-1.0 / gamma)
    grid[:, 0, :] = -math.inf
    grid[:, :, 0] = -math.inf
    grid[:, 0, 0] = 0.0
    grid[:, N + 1, :] = 0.0
    grid[:, :, M + 1] = 0.0
    if bool((n_len < N).any() or (m_len < M).any()):
        # padding cost 0: finite S everywhere, whatever the padded inputs hold
        ar_n = torch.arange(N, device=device)
        ar_m = torch.arange(M, device=device)
        inner.masked_fill_((ar_n.unsqueeze(0) >= n_len.unsqueeze(1)).unsqueeze(2), 0.0)
        inner.masked_fill_((ar_m.unsqueeze(0) >= m_len.unsqueeze(1)).unsqueeze(1), 0.0)
    if bandwidth is not None:
        d = torch.arange(M, device=device).view(1, 1, M) - torch.arange(N, device=device).view(1, N, 1)
        lo = (-bandwidth - (n_len - m_len).clamp_min(0)).view(B, 1, 1)
        hi = (bandwidth + (m_len - n_len).clamp_min(0)).view(B, 1, 1)
        inner.masked_fill_((d < lo) | (d > hi), -math.inf)
    return grid, flat


def _grid_to_wrapped(grid: torch.Tensor, out: torch.Tensor) -> None:
    """``out[b, r, i] = grid[b, i, (r - i) mod G2]`` for a wrapped ``out`` of logical shape
    ``[B, G2, G1]`` (any strides); ``grid`` is logical ``[B, G1 + 1, G2]`` with a slack last row."""
    Bc, G2, G1 = out.shape
    gb, gi, gj = grid.stride()
    base = grid.storage_offset()
    # r >= i: grid[i, r - i]; r < i: grid[i, r - i + G2] (reads past the row end, hence the slack row)
    no_wrap = grid.as_strided((Bc, G2, G1), (gb, gj, gi - gj), base)
    wrap = grid.as_strided((Bc, G2, G1), (gb, gj, gi - gj), base + G2 * gj)
    r = torch.arange(G2, device=grid.device).unsqueeze(1)
    i = torch.arange(G1, device=grid.device).unsqueeze(0)
    torch.where(r >= i, no_wrap, wrap, out=out)


def _fill_wrapped_borders(T: torch.Tensor, lead, trail) -> None:
    """Set the border cells of a wrapped ``[Bc, G2, G1]`` grid (``None`` leaves them alone)."""
    G1 = T.shape[2]
    if lead is not None:
        T[:, :, 0] = lead  # row i = 0
        T[:, :G1, :].diagonal(0, 1, 2).fill_(lead)  # column j = 0: cells (i, 0) at [i, i]
    if trail is not None:
        T[:, :, G1 - 1] = trail  # row i = G1 - 1
        T[:, : G1 - 1, 1:].diagonal(0, 1, 2).fill_(trail)  # column j = G2 - 1: (i, G2 - 1) at [i - 1, i]


# ----------------------------------------------------------------------------------------------
# Torch DP (batch-inner layout: physical [G2, G1, Bc], flat)
# ----------------------------------------------------------------------------------------------


def _diag_range(k: int, N: int, M: int) -> tuple[int, int]:
    """Interior rows ``i0..i1`` (1-based) of anti-diagonal ``k = i + j``."""
    return max(1, k - M), min(N, k - 1)


@functools.lru_cache(maxsize=16)
def _forward_plan(N: int, M: int, Bc: int) -> tuple:
    """Per anti-diagonal k = 2..N+M: flat slices of its cells and of their predecessors
    (i - 1, j - 1), (i - 1, j), (i, j - 1), in the batch-inner layout."""
    G1, G2 = N + 2, M + 2
    plan = []
    for k in range(2, N + M + 1):
        i0, i1 = _diag_range(k, N, M)
        n = (i1 - i0 + 1) * Bc
        o, o1, o2 = ((k % G2) * G1 + i0) * Bc, (((k - 1) % G2) * G1 + i0 - 1) * Bc, (((k - 2) % G2) * G1 + i0 - 1) * Bc
        plan.append((slice(o, o + n), slice(o2, o2 + n), slice(o1, o1 + n), slice(o1 + Bc, o1 + Bc + n)))
    return tuple(plan)


@functools.lru_cache(maxsize=16)
def _backward_plan(N: int, M: int, Bc: int, rows_per_block: int) -> tuple:
    """Blocks of diagonals in descending order (never crossing the row wrap k = G2), each
    ``(ka, kb, steps)``. Per diagonal k: (k, then row slices of: its weights in the block, its cells
    in the E ring, their successors (i + 1, j), (i, j + 1), (i + 1, j + 1) in the ring, a scratch
    prefix, its cells in the gradient). The E ring holds diagonal k at rows ``(k mod 3) G1 + i``
    (Bc columns); the gradient is ``[N * M, Bc]``, cell (i, j) at row ``(i - 1) M + j - 1``."""
    G1, G2 = N + 2, M + 2
    step = max(M - 1, 1)  # (i, j) -> (i + 1, j - 1) in the [N, M] gradient
    blocks = []
    for lo_k, hi_k in ((max(G2, 2), N + M), (2, min(G2 - 1, N + M))):
        kb = hi_k
        while kb >= lo_k:
            ka = max(lo_k, kb - rows_per_block + 1)
            ra, ca = ka % G2, _diag_range(ka, N, M)[0]
            width = _diag_range(kb, N, M)[1] - ca + 1
            steps = []
            for k in range(kb, ka - 1, -1):
                i0, i1 = _diag_range(k, N, M)
                n = i1 - i0 + 1
                w0 = (k % G2 - ra) * width + (i0 - ca)
                g0 = (i0 - 1) * M + (k - i0 - 1)  # gradient row of cell (i0, k - i0)
                e, ed, eg = (k % 3) * G1 + i0, ((k + 1) % 3) * G1 + i0 + 1, ((k + 2) % 3) * G1 + i0 + 1
                steps.append(
                    (k, slice(w0, w0 + n), slice(e, e + n), slice(ed, ed + n), slice(ed - 1, ed - 1 + n),
                     slice(eg, eg + n), slice(0, n), slice(g0, g0 + (n - 1) * step + 1, step))
                )
            blocks.append((ka, kb, tuple(steps)))
            kb = ka - 1
    return tuple(blocks)


def _forward_torch(X: torch.Tensor, Y: torch.Tensor, N: int, M: int, offsets: torch.Tensor, banded: bool) -> None:
    """In place: X (logical [Bc, G2, G1], batch-inner) holds ``c`` on the interior and
    the S borders; afterwards X holds S - offsets[k] on the interior of anti-diagonal k and Y the
    log-sum-exp of each cell's predecessors, in the units X had when the cell was computed.
    ``offsets`` (float64 ``[N + M + 3, Bc]``) is filled here.

    Every ``_RENORM_EVERY`` diagonals the two live diagonals of X are shifted by their maximum (per
    element), so the stored values stay small: float32 then keeps ~1e-7 relative precision on them
    instead of rounding at the scale of the whole accumulated cost (|S| ~ (N + M) C / gamma), which
    otherwise costs the gradients ~1e-3 to 1e-2 at gamma <= 0.1 and N ~ 1000. The only weight this
    changes in the backward is from diagonal k - 2 (shifted) to its successors on k - 1 (whose Y was
    computed before the shift): there, exp(S_ij - L_succ) = exp(X_ij - Y_succ + shift)."""
    Bc = X.shape[0]
    Xf = _physical(X, True).reshape(-1)
    Yf = _physical(Y, True).reshape(-1)
    lae = torch.logaddexp
    plan = _forward_plan(N, M, Bc)
    shifts = []
    for idx, (cell, diag, up, left) in enumerate(plan):
        if idx >= 2 and idx % _RENORM_EVERY == 0:  # diagonal k = idx + 2
            x1, x2 = Xf[plan[idx - 1][0]].view(-1, Bc), Xf[plan[idx - 2][0]].view(-1, Bc)  # k - 1, k - 2
            shift = x1.amax(0)
            if banded:  # a diagonal may lie wholly outside the band
                shift = torch.where(torch.isfinite(shift), shift, 0.0)
            x1.sub_(shift)
            x2.sub_(shift)
            shifts.append((idx, shift))  # applies from diagonal k - 2 = idx on
        yk = Yf[cell]
        lae(Xf[diag], Xf[up], out=yk)
        lae(yk, Xf[left], out=yk)
        Xf[cell].add_(yk)
    offsets.zero_()
    if shifts:
        offsets[[i for i, _ in shifts]] = torch.stack([sh for _, sh in shifts]).to(offsets.dtype)
        torch.cumsum(offsets, 0, out=offsets)


def _backward_torch(
    X, Y, grad, N: int, M: int, n_len: list, m_len: list, go: torch.Tensor, offsets: torch.Tensor, banded: bool
) -> None:
    """Write ``go_b dValue_b/dC`` into ``grad`` (``[N * M, Bc]``, cell (i, j) at row
    ``(i - 1) M + j - 1``; any strides), from X = S and Y = L (logical
    ``[Bc, G2, G1]``, batch-inner). ``E_ij = sum_succ E_succ exp(S_ij - L_succ)`` runs over the
    anti-diagonals in descending order, started at each element's end cell ``(n_b, m_b)`` (elements
    with an empty side get no start and stay 0). Only three diagonals of E are kept (a ring, zero
    where never written, which covers the trailing borders); each finished diagonal goes straight
    to the gradient. ``offsets``: ``[N + M + 3, Bc]`` from :func:`_forward_torch`."""
    Bc, G2, G1 = X.shape
    Xp, Yp = _physical(X, True), _physical(Y, True)
    # numpy's slicing and ufunc calls cost ~4x less than torch's; "torch-gpu" keeps the device path.
    use_numpy = X.device.type == "cpu" and _backend() != "torch-gpu"
    starts: dict[int, tuple] = {}
    for b in range(Bc):
        n, m = n_len[b], m_len[b]
        if n > 0 and m > 0:
            entry = starts.setdefault(n + m, ([], []))
            entry[0].append(((n + m) % 3) * G1 + n)
            entry[1].append(b)
    for k, (rows, bs) in list(starts.items()):
        if use_numpy:
            starts[k] = (np.asarray(rows), np.asarray(bs), go[bs].numpy())
        else:
            dev = X.device
            starts[k] = (torch.tensor(rows, device=dev), torch.tensor(bs, device=dev), go[bs])
    rows_per_block = max(1, _WEIGHT_BLOCK_ELEMS // (Bc * (N + 1)))
    plan = _backward_plan(N, M, Bc, rows_per_block)
    # The forward's re-centring: diagonal k was shifted by offsets[k] - offsets[k - 1] after its
    # successors' Y on k + 1 were computed (see _forward_torch).
    shifts = (offsets[1:] - offsets[:-1]).to(X.dtype)  # row k - 1: the shift of diagonal k
    shifted = {k + 1: shifts[k] for k in shifts.ne(0).any(1).nonzero().flatten().tolist()}
    if use_numpy:
        Xn, Yn = Xp.numpy(), Yp.numpy()
        ring = np.zeros((3 * G1, Bc), dtype=Xn.dtype)
        tmp = np.empty((G1, Bc), dtype=ring.dtype)
        wbuf = np.empty((3, rows_per_block * (N + 1) * Bc), dtype=ring.dtype)
        gr = grad.numpy()
        mul, add, copy = np.multiply, np.add, np.copyto
        if shifted:
            shifted = {k: v.numpy() for k, v in shifted.items()}
    else:
        ring = torch.zeros(3 * G1, Bc, dtype=X.dtype, device=X.device)
        gr = grad
    for ka, kb, steps in plan:
        corr = [(k - ka, shifted[k]) for k in range(ka, kb + 1) if k in shifted] if shifted else None
        if use_numpy:
            wd, wr, wg = (w.reshape(-1, Bc) for w in _weight_block_numpy(Xn, Yn, ka, kb, N, M, banded, corr, wbuf))
            for k, w, e, down, right, diag, head, g in steps:
                ek = ring[e]
                t = tmp[head]
                mul(wd[w], ring[down], out=ek)
                mul(wr[w], ring[right], out=t)
                add(ek, t, out=ek)
                mul(wg[w], ring[diag], out=t)
                add(ek, t, out=ek)
                if k in starts:
                    ring[starts[k][0], starts[k][1]] = starts[k][2]
                copy(gr[g], ek)
        else:
            wd, wr, wg = (w.view(-1, Bc) for w in _weight_block(Xp, Yp, ka, kb, N, M, banded, corr))
            for k, w, e, down, right, diag, _, g in steps:
                ek = ring[e]
                torch.mul(wd[w], ring[down], out=ek)
                ek.addcmul_(wr[w], ring[right])
                ek.addcmul_(wg[w], ring[diag])
                if k in starts:
                    ring[starts[k][0], starts[k][1]] = starts[k][2]
                gr[g] = ek


def _weight_block(Xp, Yp, ka: int, kb: int, N: int, M: int, banded: bool, corr=None):
    """Weights ``exp(S_ij - L_succ)`` for the three successors of every cell of diagonals ka..kb
    (which share no wrap), flat in [rows, width, Bc] order (rows from ka's, columns from ka's first
    interior row to kb's last). Xp, Yp: physical [G2, G1, Bc]; ``corr``: None or a list of
    (row in the block, shift [Bc]) to add to the exponents towards the next diagonal."""
    G2 = Xp.shape[0]
    ra = ka if ka < G2 else ka - G2
    rb = kb if kb < G2 else kb - G2
    ca = _diag_range(ka, N, M)[0]
    cb = _diag_range(kb, N, M)[1]
    s = Xp[ra : rb + 1, ca : cb + 1]
    if rb + 2 < G2:
        nxt = Yp[ra + 1 : rb + 3, ca : cb + 2]
    else:  # successors of the last rows wrap to rows 0 and 1
        nxt = torch.cat([Yp[ra + 1 :, ca : cb + 2], Yp[: rb + 3 - G2, ca : cb + 2]], 0)
    # Clamp the exponent where exp would return a subnormal or 0 (20x slower on x86 than a normal
    # result): such weights (< 1e-34 in float32) are negligible next to the others, and borders
    # and padding, whose weights are multiplied by an exact 0, stay exact.
    lo = -80.0 if s.dtype == torch.float32 else -700.0
    wd = torch.sub(s, nxt[:-1, 1:])
    wr = torch.sub(s, nxt[:-1, :-1])
    wg = torch.sub(s, nxt[1:, 1:])
    for row, shift in corr or ():
        wd[row].add_(shift)
        wr[row].add_(shift)
    wd.clamp_min_(lo).exp_()
    wr.clamp_min_(lo).exp_()
    wg.clamp_min_(lo).exp_()
    if banded:  # cells outside the band (S = -inf) carry no gradient (and -inf - -inf is NaN)
        banned = s == -math.inf
        wd.masked_fill_(banned, 0.0)
        wr.masked_fill_(banned, 0.0)
        wg.masked_fill_(banned, 0.0)
    return wd.view(-1), wr.view(-1), wg.view(-1)


def _weight_block_numpy(Xn, Yn, ka: int, kb: int, N: int, M: int, banded: bool, corr, buf):
    """:func:`_weight_block` with numpy on CPU (into ``buf`` [3, >= rows * width * Bc]). numpy's
    ufuncs run single-threaded: ATen's exp goes parallel from 2048 elements, and an OpenMP barrier
    per small op stalls for whole scheduler slices when the other cores are busy. numpy's float32 exp
    has no slow path for subnormal results; its float64 exp does, hence the clamp there."""
    G2, _, Bc = Xn.shape
    ra = ka if ka < G2 else ka - G2
    rb = kb if kb < G2 else kb - G2
    ca = _diag_range(ka, N, M)[0]
    cb = _diag_range(kb, N, M)[1]
    s = Xn[ra : rb + 1, ca : cb + 1]
    if rb + 2 < G2:
        nxt = Yn[ra + 1 : rb + 3, ca : cb + 2]
    else:  # successors of the last rows wrap to rows 0 and 1
        nxt = np.concatenate([Yn[ra + 1 :, ca : cb + 2], Yn[: rb + 3 - G2, ca : cb + 2]], 0)
    size = s.size
    wd, wr, wg = (buf[t, :size].reshape(s.shape) for t in range(3))
    # Border and banned cells in the block give inf - inf or overflow: weights never used.
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(s, nxt[:-1, 1:], out=wd)
        np.subtract(s, nxt[:-1, :-1], out=wr)
        np.subtract(s, nxt[1:, 1:], out=wg)
        for row, shift in corr or ():
            wd[row] += shift
            wr[row] += shift
        for w in (wd, wr, wg):
            if w.dtype == np.float64:
                np.maximum(w, -700.0, out=w)
            np.exp(w, out=w)
    if banded:  # cells outside the band (S = -inf) carry no gradient (and -inf - -inf is NaN)
        banned = s == -np.inf
        for w in (wd, wr, wg):
            w[banned] = 0.0
    return wd, wr, wg


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


def _index_grid(t: torch.Tensor, x_order, y_order) -> tuple:
    B, N, M = t.shape
    bi = torch.arange(B, device=t.device).view(B, 1, 1)
    xi = x_order if x_order is not None else torch.arange(N, device=t.device).expand(B, N)
    yi = y_order if y_order is not None else torch.arange(M, device=t.device).expand(B, M)
    return bi, xi.unsqueeze(2), yi.unsqueeze(1)


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
            _backward_torch(X, Y, store, N, M, n_len.tolist(), m_len.tolist(), go, offsets.t(), ctx.banded)
        if ctx.transposed:
            grad = grad.transpose(1, 2)
        x_order, y_order = ctx.orders
        if x_order is not None or y_order is not None:
            full = torch.zeros(B, N0, M0, dtype=ctx.cost_dtype, device=device)
            full[_index_grid(full, x_order, y_order)] = grad.to(ctx.cost_dtype)
            return full, None, None, None, None, None, None
        return grad.to(ctx.cost_dtype), None, None, None, None, None, None

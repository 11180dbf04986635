"""Soft-DTW input preparation and grid layout (private; used by :mod:`dwakd.align.soft_dtw`).

- Argument checks and mask handling: validation of ``gamma``, sequences and masks, each mask's valid
  lengths and compaction order (and the index that gathers / scatters the compacted grid), padding
  of costs and masks to a common size.
- The wrapped-skew layout shared by the torch DP (:mod:`dwakd.align._sdtw_torch`) and the Triton
  kernels (:mod:`dwakd.align._sdtw_triton`): allocation, storage-order views, the scaled cost grid
  with the S borders and its copy into wrapped storage.
"""

from __future__ import annotations

import math

import torch

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


def _index_grid(t: torch.Tensor, x_order, y_order) -> tuple:
    """Advanced-indexing triple that gathers the compacted ``[B, N, M]`` grid from ``t`` (valid
    positions first, per the orders; None = identity), and scatters a gradient back."""
    B, N, M = t.shape
    bi = torch.arange(B, device=t.device).view(B, 1, 1)
    xi = x_order if x_order is not None else torch.arange(N, device=t.device).expand(B, N)
    yi = y_order if y_order is not None else torch.arange(M, device=t.device).expand(B, M)
    return bi, xi.unsqueeze(2), yi.unsqueeze(1)


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

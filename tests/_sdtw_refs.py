"""Independent float64 references for the soft-DTW tests (plain loops, written for clarity only)."""

from __future__ import annotations

import math

import torch


def naive_sdtw(C: torch.Tensor, gamma: float, band: int | None = None) -> torch.Tensor:
    """Soft-DTW of one ``[n, m]`` cost matrix by the textbook double loop; autograd flows through
    the Python scalars. ``band``: Sakoe-Chiba half-width on ``j - i`` (widened by ``|n - m|``)."""
    n, m = C.shape
    inf = torch.tensor(math.inf, dtype=C.dtype)
    R = [[inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = torch.tensor(0.0, dtype=C.dtype)
    lo = hi = None
    if band is not None:
        lo, hi = -band - max(0, n - m), band + max(0, m - n)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if band is not None and not (lo <= j - i <= hi):
                continue
            prev = torch.stack([R[i - 1][j - 1], R[i - 1][j], R[i][j - 1]])
            R[i][j] = C[i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, 0)
    return R[n][m]


def hard_dtw(C: torch.Tensor) -> float:
    """Plain DTW (min over paths of the summed cost)."""
    n, m = C.shape
    R = [[math.inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i][j] = float(C[i - 1, j - 1]) + min(R[i - 1][j - 1], R[i - 1][j], R[i][j - 1])
    return R[n][m]


def diag_autograd_sdtw(C: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft-DTW of a batch ``[B, n, m]`` (no masks) with plain autograd through a loop over
    anti-diagonals (no custom backward): a second, faster reference for mid-size inputs."""
    B, n, m = C.shape
    R = torch.full((B, n + 1, m + 1), math.inf, dtype=C.dtype)
    R[:, 0, 0] = 0.0
    for k in range(2, n + m + 1):
        i = torch.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        prev = torch.stack([R[:, i - 1, j - 1], R[:, i - 1, j], R[:, i, j - 1]])
        val = C[:, i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, 0)
        R = R.index_put((torch.arange(B)[:, None], i[None, :], j[None, :]), val)
    return R[:, n, m]


def compact(C: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """The valid rows and columns of one ``[N, M]`` cost matrix, in order."""
    return C[x_mask][:, y_mask]

"""Independent float64 pieces of the CDM references (tests/test_methods_cdm.py, the contract test)."""

from __future__ import annotations

import math

import torch


def dtw_path(cost):
    """Textbook DTW with backtrack (diagonal, then up, then left on ties): the path as a set."""
    n, m = len(cost), len(cost[0])
    R = [[math.inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i][j] = cost[i - 1][j - 1] + min(R[i - 1][j - 1], R[i - 1][j], R[i][j - 1])
    path, i, j = set(), n, m
    while i > 0 and j > 0:
        path.add((i - 1, j - 1))
        d, u, left = R[i - 1][j - 1], R[i - 1][j], R[i][j - 1]
        if d <= u and d <= left:
            i, j = i - 1, j - 1
        elif u <= left:
            i -= 1
        else:
            j -= 1
    return path


def iou_cost(a, b):
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    if union > 0:
        return 1 - inter / union
    return 0.0 if a[0] == b[0] else 1.0


def norm_entropy(row):
    p = torch.softmax(row, -1)
    return float(-(p * torch.log(p)).sum()) / math.log(row.numel())

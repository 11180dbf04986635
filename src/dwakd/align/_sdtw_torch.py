"""Soft-DTW's torch dynamic programmes (private; used by :mod:`dwakd.align.soft_dtw`).

The anti-diagonal forward (:func:`_forward_torch`, with its periodic re-centring) and the
expected-alignment backward (:func:`_backward_torch`) on the batch-inner wrapped layout of
:mod:`dwakd.align._sdtw_grid`, their cached slicing plans, and the backward's blocks of weights
(:func:`_weight_block` in torch, :func:`_weight_block_numpy` for the CPU path). This is the path for
CPU tensors, and the fallback for CUDA tensors when the Triton kernels are not used.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from dwakd.align._sdtw_grid import _physical

# Size (elements) of one block of expected-alignment weights in the torch backward (stays in L2).
_WEIGHT_BLOCK_ELEMS = 24576
# The torch forward re-centres the stored diagonals every this many diagonals (see _forward_torch).
_RENORM_EVERY = 16


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
    X,
    Y,
    grad,
    N: int,
    M: int,
    n_len: list,
    m_len: list,
    go: torch.Tensor,
    offsets: torch.Tensor,
    banded: bool,
    use_numpy: bool,
) -> None:
    """Write ``go_b dValue_b/dC`` into ``grad`` (``[N * M, Bc]``, cell (i, j) at row
    ``(i - 1) M + j - 1``; any strides), from X = S and Y = L (logical
    ``[Bc, G2, G1]``, batch-inner). ``E_ij = sum_succ E_succ exp(S_ij - L_succ)`` runs over the
    anti-diagonals in descending order, started at each element's end cell ``(n_b, m_b)`` (elements
    with an empty side get no start and stay 0). Only three diagonals of E are kept (a ring, zero
    where never written, which covers the trailing borders); each finished diagonal goes straight
    to the gradient. ``offsets``: ``[N + M + 3, Bc]`` from :func:`_forward_torch`. ``use_numpy``:
    run the weights and the loop with numpy (CPU tensors only; the caller decides, from the backend
    switch), else with torch ops on the tensors' device."""
    Bc, G2, G1 = X.shape
    Xp, Yp = _physical(X, True), _physical(Y, True)
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


def _block(X, Y, ka: int, kb: int, N: int, M: int, cat):
    """The cells of diagonals ka..kb in physical layout ``X`` [G2, G1, Bc] and the rows of their
    successors in ``Y`` (one row and one column further; ``cat`` joins the wrapped rows: torch.cat
    or np.concatenate)."""
    G2 = X.shape[0]
    ra = ka if ka < G2 else ka - G2
    rb = kb if kb < G2 else kb - G2
    ca = _diag_range(ka, N, M)[0]
    cb = _diag_range(kb, N, M)[1]
    s = X[ra : rb + 1, ca : cb + 1]
    if rb + 2 < G2:
        nxt = Y[ra + 1 : rb + 3, ca : cb + 2]
    else:  # successors of the last rows wrap to rows 0 and 1
        nxt = cat([Y[ra + 1 :, ca : cb + 2], Y[: rb + 3 - G2, ca : cb + 2]], 0)
    return s, nxt


def _weight_block(Xp, Yp, ka: int, kb: int, N: int, M: int, banded: bool, corr=None):
    """Weights ``exp(S_ij - L_succ)`` for the three successors of every cell of diagonals ka..kb
    (which share no wrap), flat in [rows, width, Bc] order (rows from ka's, columns from ka's first
    interior row to kb's last). Xp, Yp: physical [G2, G1, Bc]; ``corr``: None or a list of
    (row in the block, shift [Bc]) to add to the exponents towards the next diagonal."""
    s, nxt = _block(Xp, Yp, ka, kb, N, M, torch.cat)
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
    s, nxt = _block(Xn, Yn, ka, kb, N, M, np.concatenate)
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

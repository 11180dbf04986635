"""Triton kernels for the soft-DTW DP (GPU path of :mod:`dwakd.align.soft_dtw`).

Imported only when triton is installed (optional extra ``[triton]``) and the tensors are CUDA
(tests also run it on CPU tensors under ``TRITON_INTERPRET=1``). Both kernels work on the buffers the
torch path uses, in the wrapped-skew layout ``[B, G2, G1]`` (``G1 = N + 2`` rows of the grid,
``G2 = M + 2`` columns; grid cell ``(i, j)`` at ``[(i + j) mod G2, i]``), so that an anti-diagonal is a
contiguous, coalesced slice:

- ``X``: on entry the scaled cost ``c = -C / gamma`` on the interior and the borders of
  ``S = -R / gamma`` (``-inf``, and 0 at ``(0, 0)``); on exit ``S`` on each element's valid region.
- ``Y``: on exit the log-sum-exp of each cell's three predecessors (``c - S``).
- the backward keeps three diagonals of E (``dS_end/dS`` times the incoming gradient) in a small
  ring and writes each finished diagonal straight into the ``[B, N, M]`` gradient.

One launch per pass, one program per batch element, the whole DP inside: a loop over the
anti-diagonals of that element's own ``n_b x m_b`` region, each diagonal handled in tiles of
``BLOCK`` cells (any length), with a barrier between diagonals so the next one sees this one's
writes (all in global memory; loads bypass L1 with ``.cg``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 256
_NUM_WARPS = 4


def available() -> bool:
    """True when triton imported (this module loading at all means it did)."""
    return True


@triton.jit
def _sdtw_fwd_kernel(X, Y, SH, NL, ML, G1, G2, K, RENORM: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(NL + b).to(tl.int32)
    m = tl.load(ML + b).to(tl.int32)
    base = b.to(tl.int64) * G1 * G2
    Xb = X + base
    Yb = Y + base
    lanes = tl.arange(0, BLOCK)
    for k in range(2, n + m + 1):
        r = k % G2
        r1 = (k - 1) % G2
        r2 = (k - 2) % G2
        if (k >= 4) & ((k - 2) % RENORM == 0):
            # Re-centre the two live diagonals on the maximum of k - 1 (see _sdtw_torch._forward_torch).
            a0 = tl.maximum(k - 1 - m, 1)
            a1 = tl.minimum(k - 2, n)
            best = tl.full([BLOCK], float("-inf"), X.dtype.element_ty)
            for s in range(a0, a1 + 1, BLOCK):
                i = s + lanes
                v = tl.load(Xb + r1 * G1 + i, mask=i <= a1, other=float("-inf"), cache_modifier=".cg")
                best = tl.maximum(best, v)
            shift = tl.max(best, 0)
            shift = tl.where(shift == float("-inf"), 0.0, shift)
            tl.debug_barrier()
            for s in range(a0, a1 + 1, BLOCK):
                i = s + lanes
                ok = i <= a1
                v = tl.load(Xb + r1 * G1 + i, mask=ok, other=0.0, cache_modifier=".cg")
                tl.store(Xb + r1 * G1 + i, v - shift, mask=ok)
            c0 = tl.maximum(k - 2 - m, 1)
            c1 = tl.minimum(k - 3, n)
            for s in range(c0, c1 + 1, BLOCK):
                i = s + lanes
                ok = i <= c1
                v = tl.load(Xb + r2 * G1 + i, mask=ok, other=0.0, cache_modifier=".cg")
                tl.store(Xb + r2 * G1 + i, v - shift, mask=ok)
            tl.store(SH + b.to(tl.int64) * K + k - 2, shift)
            tl.debug_barrier()
        i0 = tl.maximum(k - m, 1)
        i1 = tl.minimum(k - 1, n)
        for s in range(i0, i1 + 1, BLOCK):
            i = s + lanes
            ok = i <= i1
            p1 = tl.load(Xb + r2 * G1 + i - 1, mask=ok, other=float("-inf"), cache_modifier=".cg")
            p2 = tl.load(Xb + r1 * G1 + i - 1, mask=ok, other=float("-inf"), cache_modifier=".cg")
            p3 = tl.load(Xb + r1 * G1 + i, mask=ok, other=float("-inf"), cache_modifier=".cg")
            mx = tl.maximum(tl.maximum(p1, p2), p3)
            mx = tl.where(mx == float("-inf"), 0.0, mx)  # all three -inf (band): lse = -inf, no NaN
            lse = mx + tl.log(tl.exp(p1 - mx) + tl.exp(p2 - mx) + tl.exp(p3 - mx))
            c = tl.load(Xb + r * G1 + i, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(Yb + r * G1 + i, lse, mask=ok)
            tl.store(Xb + r * G1 + i, c + lse, mask=ok)
        tl.debug_barrier()


@triton.jit
def _sdtw_bwd_kernel(X, Y, R, G, SH, NL, ML, GO, G1, G2, N, M, K, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(NL + b).to(tl.int32)
    m = tl.load(ML + b).to(tl.int32)
    go = tl.load(GO + b)
    base = b.to(tl.int64) * G1 * G2
    Xb = X + base
    Yb = Y + base
    Rb = R + b.to(tl.int64) * 3 * G1  # ring of three diagonals of E, zero where never written
    Gb = G + b.to(tl.int64) * N * M
    lanes = tl.arange(0, BLOCK)
    for kk in range(0, n + m - 1):
        k = n + m - kk
        i0 = tl.maximum(k - m, 1)
        i1 = tl.minimum(k - 1, n)
        r = k % G2
        rp1 = (k + 1) % G2
        rp2 = (k + 2) % G2
        e0 = (k % 3) * G1
        sh = tl.load(SH + b.to(tl.int64) * K + k)  # re-centring of diagonal k after its successors' Y
        e1 = ((k + 1) % 3) * G1
        e2 = ((k + 2) % 3) * G1
        for s in range(i0, i1 + 1, BLOCK):
            i = s + lanes
            ok = i <= i1
            j = k - i
            sij = tl.load(Xb + r * G1 + i, mask=ok, other=float("-inf"), cache_modifier=".cg")
            dn = ok & (i + 1 <= n)  # successor (i + 1, j)
            rt = ok & (j + 1 <= m)  # successor (i, j + 1)
            dg = dn & (j + 1 <= m)  # successor (i + 1, j + 1)
            ld = tl.load(Yb + rp1 * G1 + i + 1, mask=dn, other=float("inf"), cache_modifier=".cg")
            lr = tl.load(Yb + rp1 * G1 + i, mask=rt, other=float("inf"), cache_modifier=".cg")
            lg = tl.load(Yb + rp2 * G1 + i + 1, mask=dg, other=float("inf"), cache_modifier=".cg")
            ed = tl.load(Rb + e1 + i + 1, mask=dn, other=0.0, cache_modifier=".cg")
            er = tl.load(Rb + e1 + i, mask=rt, other=0.0, cache_modifier=".cg")
            eg = tl.load(Rb + e2 + i + 1, mask=dg, other=0.0, cache_modifier=".cg")
            banned = sij == float("-inf")  # outside the band: no gradient (and no -inf - -inf)
            s0 = tl.where(banned, 0.0, sij)
            # weights exp(S_ij - L_succ) <= 1; the clamp only matters in banned cells (masked below)
            wd = tl.exp(tl.minimum(s0 - ld + sh, 0.0))
            wr = tl.exp(tl.minimum(s0 - lr + sh, 0.0))
            wg = tl.exp(tl.minimum(s0 - lg, 0.0))
            e = wd * ed + wr * er + wg * eg
            e = tl.where(banned, 0.0, e)
            e = tl.where((i == n) & (j == m), go, e)
            tl.store(Rb + e0 + i, e, mask=ok)
            tl.store(Gb + (i - 1).to(tl.int64) * M + (j - 1), e, mask=ok)
        tl.debug_barrier()


def forward(X: torch.Tensor, Y: torch.Tensor, n_len: torch.Tensor, m_len: torch.Tensor, offsets: torch.Tensor) -> None:
    """Run the forward DP in place (see the module docstring for the buffers); ``offsets``
    (float64 ``[B, K]``) receives the cumulative re-centring of each anti-diagonal."""
    from dwakd.align._sdtw_torch import _RENORM_EVERY

    B, G2, G1 = X.shape
    K = offsets.shape[1]
    shifts = torch.zeros(B, K, dtype=X.dtype, device=X.device)
    _sdtw_fwd_kernel[(B,)](
        X, Y, shifts, n_len, m_len, G1, G2, K, RENORM=_RENORM_EVERY, BLOCK=_BLOCK, num_warps=_NUM_WARPS
    )
    torch.cumsum(shifts.to(offsets.dtype), 1, out=offsets)


def backward(
    X: torch.Tensor,
    Y: torch.Tensor,
    grad: torch.Tensor,
    n_len: torch.Tensor,
    m_len: torch.Tensor,
    go: torch.Tensor,
    offsets: torch.Tensor,
    banded: bool,
) -> None:
    """Write ``go_b dValue_b/dC`` into ``grad`` (``[B, N, M]``, zero on entry: only each element's
    own region is written)."""
    del banded  # handled in the kernel by testing S == -inf
    B, G2, G1 = X.shape
    K = offsets.shape[1]
    shifts = torch.diff(offsets, dim=1, prepend=offsets[:, :1]).to(X.dtype).contiguous()
    ring = torch.zeros(B, 3, G1, dtype=X.dtype, device=X.device)
    _sdtw_bwd_kernel[(B,)](
        X, Y, ring, grad, shifts, n_len, m_len, go.contiguous(), G1, G2, G1 - 2, G2 - 2, K,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )

"""Run by tests/test_soft_dtw_triton.py in a subprocess with TRITON_INTERPRET=1 (the interpreter must
be on before triton is first imported, which a subprocess guarantees): the Triton soft-DTW kernels
on CPU tensors against the naive float64 double loop. Exits non-zero on any mismatch."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sdtw_refs import compact, naive_sdtw  # noqa: E402

assert os.environ.get("TRITON_INTERPRET") == "1", "run me with TRITON_INTERPRET=1"
sdtw_mod = importlib.import_module("dwakd.align.soft_dtw")
kernels = importlib.import_module("dwakd.align._sdtw_triton")
sdtw_mod._BACKEND_OVERRIDE = "triton"
warnings.simplefilter("ignore")  # numpy warnings of the interpreter (log(0) in banned cells)


def check(name, C, xm, ym, gamma, band, w, tol):
    Cg = C.detach().clone().requires_grad_(True)
    v = sdtw_mod.soft_dtw(Cg, gamma, x_mask=xm, y_mask=ym, bandwidth=band)
    (g,) = torch.autograd.grad((v * w).sum(), Cg)
    C64 = C.detach().double().requires_grad_(True)
    refs = []
    for b in range(C.shape[0]):
        Cc = compact(C64[b], xm[b], ym[b])
        refs.append(C64[b].sum() * 0 if Cc.numel() == 0 else naive_sdtw(Cc, gamma, band))
    ref = torch.stack(refs)
    (g_ref,) = torch.autograd.grad((ref * w.double()).sum(), C64)
    torch.testing.assert_close(v.double(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), g_ref, rtol=tol, atol=tol)
    if band is not None:
        assert (g[g_ref == 0] == 0).all(), "nonzero gradient outside the band"
    print(f"ok {name}")


gen = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
    for band in (None, 1):
        B, N, M = 4, 6, 8
        C = torch.rand(B, N, M, generator=gen, dtype=dtype)
        xm = torch.rand(B, N, generator=gen) > 0.3
        ym = torch.rand(B, M, generator=gen) > 0.3
        xm[0] = True
        ym[3] = False  # an empty side
        check(f"{dtype} band={band}", C, xm, ym, 0.5, band, torch.randn(B, generator=gen, dtype=dtype), tol)

# Diagonals longer than a tile (BLOCK shrunk to 8), N > M (transposed), holes, and more than
# _RENORM_EVERY diagonals (the kernel's re-centring and its backward correction).
kernels._BLOCK = 8
C = torch.rand(2, 23, 19, generator=gen, dtype=torch.float64)
xm = torch.ones(2, 23, dtype=torch.bool)
xm[1, ::4] = False
ym = torch.ones(2, 19, dtype=torch.bool)
ym[0, 5] = False
assert 23 + 19 > 2 * sdtw_mod._RENORM_EVERY
check("multi-tile", C, xm, ym, 0.3, None, torch.tensor([1.0, -2.0], dtype=torch.float64), 1e-9)
check("multi-tile band", C, xm, ym, 0.3, 2, torch.tensor([1.0, -2.0], dtype=torch.float64), 1e-9)

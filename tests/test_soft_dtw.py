"""Soft-DTW operator (dwakd.align.soft_dtw) against independent float64 references."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from _sdtw_refs import compact, diag_autograd_sdtw, hard_dtw, naive_sdtw
from dwakd.align import pairwise_cost, soft_dtw, soft_dtw_divergence

# ``import dwakd.align.soft_dtw as m`` would give the function the package re-exports.
sdtw_mod = importlib.import_module("dwakd.align.soft_dtw")
# The torch DP (weight blocks, their size) lives in a private module: patch it there.
sdtw_torch = importlib.import_module("dwakd.align._sdtw_torch")

F64 = torch.float64


# Every test runs on both torch backends through the documented switch (DWAKD_SDTW_BACKEND):
# "torch" (CPU: numpy-assisted backward) and "torch-gpu" (the backward a GPU without triton runs:
# _weight_block and torch ops), so the GPU torch path is checked against the same references here.
@pytest.fixture(autouse=True, params=["torch", "torch-gpu"])
def backend(request, monkeypatch):
    monkeypatch.setattr(sdtw_mod, "_BACKEND_OVERRIDE", None)
    monkeypatch.setenv("DWAKD_SDTW_BACKEND", request.param)
    return request.param


def test_backend_switch_routes_the_backward(backend, monkeypatch):
    """The switch decides which weight function the backward calls (and nothing else does)."""
    calls = {"torch": 0, "numpy": 0}
    real_t, real_n = sdtw_torch._weight_block, sdtw_torch._weight_block_numpy

    def count_t(*a, **k):
        calls["torch"] += 1
        return real_t(*a, **k)

    def count_n(*a, **k):
        calls["numpy"] += 1
        return real_n(*a, **k)

    monkeypatch.setattr(sdtw_torch, "_weight_block", count_t)
    monkeypatch.setattr(sdtw_torch, "_weight_block_numpy", count_n)
    C = torch.rand(2, 5, 6, dtype=F64, requires_grad=True)
    soft_dtw(C, 0.3).sum().backward()
    if backend == "torch-gpu":
        assert calls["torch"] > 0 and calls["numpy"] == 0
    else:
        assert calls["numpy"] > 0 and calls["torch"] == 0


def test_backend_switch_rejects_unknown_name(monkeypatch):
    monkeypatch.setenv("DWAKD_SDTW_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="DWAKD_SDTW_BACKEND"):
        soft_dtw(torch.rand(1, 3, 3), 1.0)


def _random_masks(gen, B, N, M, p=0.3):
    xm = torch.rand(B, N, generator=gen) > p
    ym = torch.rand(B, M, generator=gen) > p
    return xm, ym


def _reference(C, xm, ym, gamma, band=None):
    """Per-element naive values (0 for an empty side) as one differentiable [B] tensor."""
    vals = []
    for b in range(C.shape[0]):
        Cc = compact(C[b], xm[b], ym[b])
        vals.append(C[b].sum() * 0.0 if Cc.numel() == 0 else naive_sdtw(Cc, gamma, band))
    return torch.stack(vals)


def _value_and_grad(fn, C, weights):
    C = C.detach().clone().requires_grad_(True)
    v = fn(C)
    (grad,) = torch.autograd.grad((v * weights).sum(), C, allow_unused=True)
    return v.detach(), torch.zeros_like(C) if grad is None else grad


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 7, 4), (1, 1, 1), (2, 1, 6), (3, 8, 3), (4, 6, 6)])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_matches_naive_loop_with_random_masks(shape, gamma):
    gen = torch.Generator().manual_seed(hash((shape, gamma)) % 1000)
    B, N, M = shape
    C = torch.rand(B, N, M, generator=gen, dtype=F64) * 2
    xm, ym = _random_masks(gen, B, N, M)
    xm[0] = True  # at least one full, contiguous row
    if B > 2:
        ym[2] = False  # one element with an empty side
    w = torch.randn(B, generator=gen, dtype=F64)
    v, g = _value_and_grad(lambda c: soft_dtw(c, gamma, x_mask=xm, y_mask=ym), C, w)
    v_ref, g_ref = _value_and_grad(lambda c: _reference(c, xm, ym, gamma), C, w)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    # Masked positions get exactly zero gradient.
    assert (g[~(xm[:, :, None] & ym[:, None, :])] == 0).all()


def test_no_masks_and_dtype():
    gen = torch.Generator().manual_seed(1)
    C = torch.rand(2, 6, 5, generator=gen, dtype=F64)
    v = soft_dtw(C, 0.5)
    assert v.dtype == F64 and v.shape == (2,)
    ref = torch.stack([naive_sdtw(C[b], 0.5) for b in range(2)])
    torch.testing.assert_close(v, ref, rtol=1e-12, atol=1e-12)
    v32 = soft_dtw(C.float(), 0.5)
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), ref, rtol=1e-5, atol=1e-5)


def test_mid_size_against_diagonal_autograd(monkeypatch):
    """Several weight blocks, the row wrap, re-centring (N + M > 16) and ragged lengths."""
    monkeypatch.setattr(sdtw_torch, "_WEIGHT_BLOCK_ELEMS", 200)
    gen = torch.Generator().manual_seed(2)
    B, N, M = 3, 23, 31
    C = torch.rand(B, N, M, generator=gen, dtype=F64)
    lens_x, lens_y = [23, 17, 9], [31, 31, 20]
    xm = torch.arange(N)[None, :] < torch.tensor(lens_x)[:, None]
    ym = torch.arange(M)[None, :] < torch.tensor(lens_y)[:, None]
    w = torch.randn(B, generator=gen, dtype=F64)
    v, g = _value_and_grad(lambda c: soft_dtw(c, 0.3, x_mask=xm, y_mask=ym), C, w)

    def ref(c):
        return torch.stack([diag_autograd_sdtw(c[b : b + 1, : lens_x[b], : lens_y[b]], 0.3)[0] for b in range(B)])

    v_ref, g_ref = _value_and_grad(ref, C, w)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_gradcheck_small():
    gen = torch.Generator().manual_seed(3)
    C = torch.rand(3, 4, 5, generator=gen, dtype=F64, requires_grad=True)
    xm = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda c: soft_dtw(c, 0.7, x_mask=xm, y_mask=ym), (C,))
    assert torch.autograd.gradcheck(lambda c: soft_dtw(c, 0.2, bandwidth=1), (C,))


def test_gamma_to_zero_approaches_hard_dtw():
    gen = torch.Generator().manual_seed(4)
    C = torch.rand(3, 7, 9, generator=gen, dtype=F64)
    for gamma in (1e-2, 1e-3):
        v = soft_dtw(C, gamma)
        for b in range(3):
            hard = hard_dtw(C[b])
            # min_g over paths lies in [min - g log(#paths), min]; #paths < 3 ** (n + m).
            assert hard - gamma * (7 + 9) * math.log(3) - 1e-12 <= float(v[b]) <= hard + 1e-12


@pytest.mark.parametrize("band", [0, 1, 3])
def test_bandwidth_matches_banded_naive(band):
    gen = torch.Generator().manual_seed(5 + band)
    B, N, M = 3, 7, 5
    C = torch.rand(B, N, M, generator=gen, dtype=F64)
    xm, ym = _random_masks(gen, B, N, M, p=0.2)
    w = torch.randn(B, generator=gen, dtype=F64)
    v, g = _value_and_grad(lambda c: soft_dtw(c, 0.5, x_mask=xm, y_mask=ym, bandwidth=band), C, w)
    v_ref, g_ref = _value_and_grad(lambda c: _reference(c, xm, ym, 0.5, band), C, w)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(g).all() and (g[g_ref == 0] == 0).all()  # exactly 0 outside the band


def test_padding_side_and_holes_give_same_value_and_gradient():
    gen = torch.Generator().manual_seed(6)
    n, m, pad = 5, 6, 3
    core = torch.rand(n, m, generator=gen, dtype=F64)
    layouts = {
        "right": (list(range(n)), list(range(m))),
        "left": (list(range(pad, pad + n)), list(range(pad, pad + m))),
        "holes": ([0, 2, 3, 5, 7], [1, 2, 4, 5, 6, 8]),
    }
    N, M = n + pad, m + pad
    vals, grads = [], []
    for rows, cols in layouts.values():
        C = torch.full((1, N, M), float("nan"), dtype=F64)  # garbage (NaN) in every padded cell
        C[0, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = core
        xm = torch.zeros(1, N, dtype=torch.bool)
        ym = torch.zeros(1, M, dtype=torch.bool)
        xm[0, rows] = True
        ym[0, cols] = True
        C.requires_grad_(True)
        v = soft_dtw(C, 0.4, x_mask=xm, y_mask=ym)
        (g,) = torch.autograd.grad(v.sum(), C)
        assert torch.isfinite(g).all()
        vals.append(v.detach())
        grads.append(g[0, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]].clone())
        g[0, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = 0.0
        assert (g == 0).all()  # nothing leaks into padding
    for v, g in zip(vals[1:], grads[1:]):
        torch.testing.assert_close(v, vals[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=1e-12)


def test_half_precision_inputs_match_float32():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 30, 16, generator=gen)
    y = torch.randn(2, 25, 16, generator=gen)
    C32 = pairwise_cost(x, y)
    ref = soft_dtw(C32, 0.5)
    for dt in (torch.bfloat16, torch.float16):
        Ch = C32.to(dt).requires_grad_(True)
        v = soft_dtw(Ch, 0.5)
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, ref, rtol=2e-2, atol=0.0)
        (g,) = torch.autograd.grad(v.sum(), Ch)
        assert g.dtype == dt and torch.isfinite(g.float()).all()
        # The DP accumulates in float32: same answer as float32 on the rounded cost.
        torch.testing.assert_close(v, soft_dtw(Ch.detach().float(), 0.5), rtol=1e-6, atol=1e-5)
        vd = soft_dtw_divergence(x.to(dt), y.to(dt), 0.5)
        torch.testing.assert_close(vd, soft_dtw_divergence(x, y, 0.5), rtol=5e-2, atol=5e-2)


def test_float32_gradients_accurate_at_small_gamma():
    """|S| ~ (N + M) C / gamma ~ 4e4 here: without re-centring the stored diagonals, float32
    rounding at that scale costs ~5e-4 on the gradient; with it, ~3e-5."""
    x = torch.randn(2, 100, 16, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 90, 16, generator=torch.Generator().manual_seed(1))
    C = pairwise_cost(x, y)
    v_ref, g_ref = _value_and_grad(lambda c: diag_autograd_sdtw(c, 0.005), C.double(), torch.ones(2, dtype=F64))
    v, g = _value_and_grad(lambda c: soft_dtw(c, 0.005), C, torch.ones(2))
    torch.testing.assert_close(v.double(), v_ref, rtol=1e-6, atol=0)
    assert (g.double() - g_ref).abs().max() < 1e-4


def test_gamma_tensor_and_large_gamma_small_gamma_stay_finite():
    gen = torch.Generator().manual_seed(8)
    C = torch.rand(2, 40, 50, generator=gen).requires_grad_(True)
    for gamma in (torch.tensor(0.01), 1e-4, 50.0):
        v = soft_dtw(C, gamma)
        (g,) = torch.autograd.grad(v.sum(), C)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()


# --------------------------------------------------------------------------- empty sides


def test_empty_side_is_zero_with_zero_gradient_and_counted():
    C = torch.rand(3, 4, 5, dtype=F64, requires_grad=True)
    xm = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    v, stats = soft_dtw(C, 1.0, x_mask=xm, y_mask=ym, return_stats=True)
    assert stats == {"empty": 2}
    assert v[1] == 0 and v[2] == 0
    torch.testing.assert_close(v[0], naive_sdtw(C[0, :2].detach(), 1.0), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(v.sum(), C)
    assert (g[1:] == 0).all() and torch.isfinite(g).all()
    # All empty, and zero-size inputs.
    v0 = soft_dtw(C, 1.0, x_mask=torch.zeros(3, 4, dtype=torch.bool))
    assert (v0 == 0).all()
    assert soft_dtw(torch.zeros(2, 0, 3), 1.0).tolist() == [0.0, 0.0]
    assert soft_dtw(torch.zeros(0, 3, 3), 1.0).shape == (0,)


# --------------------------------------------------------------------------- divergence


def test_divergence_matches_three_naive_terms_with_penalty_and_holes():
    gen = torch.Generator().manual_seed(9)
    B, N, M, D = 3, 6, 5, 4
    x = torch.randn(B, N, D, generator=gen, dtype=F64)
    y = torch.randn(B, M, D, generator=gen, dtype=F64)
    xm, ym = _random_masks(gen, B, N, M, p=0.25)
    xm[:, 0] = True
    ym[:, 0] = True
    x[~xm] = float("nan")  # padding garbage must not leak
    pen = torch.rand(B, N, M, generator=gen, dtype=F64)
    x_ = x.clone().requires_grad_(True)
    v = soft_dtw_divergence(x_, y, 0.5, x_mask=xm, y_mask=ym, cross_penalty=pen)
    (gx,) = torch.autograd.grad(v.sum(), x_)
    assert torch.isfinite(gx).all() and (gx[~xm] == 0).all()

    def cos_cost(a, b):  # explicit loop over pairs
        out = torch.empty(a.shape[0], b.shape[0], dtype=F64)
        for i in range(a.shape[0]):
            for j in range(b.shape[0]):
                out[i, j] = 1 - torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm())
        return out

    for b in range(B):
        xb, yb = x[b][xm[b]], y[b][ym[b]]
        cross = naive_sdtw(cos_cost(xb, yb) + compact(pen[b], xm[b], ym[b]), 0.5)
        ref = cross - 0.5 * (naive_sdtw(cos_cost(xb, xb), 0.5) + naive_sdtw(cos_cost(yb, yb), 0.5))
        torch.testing.assert_close(v[b], ref, rtol=1e-9, atol=1e-9)


def test_divergence_self_zero_and_symmetric():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(3, 7, 5, generator=gen, dtype=F64)
    y = torch.randn(3, 9, 5, generator=gen, dtype=F64)
    xm = torch.rand(3, 7, generator=gen) > 0.3
    ym = torch.rand(3, 9, generator=gen) > 0.3
    xm[:, 0] = ym[:, 0] = True
    for kind in ("cosine", "sqeuclidean"):
        d_self = soft_dtw_divergence(x, x, 1.0, x_mask=xm, y_mask=xm, cost=kind)
        torch.testing.assert_close(d_self, torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)
        d_xy = soft_dtw_divergence(x, y, 1.0, x_mask=xm, y_mask=ym, cost=kind)
        d_yx = soft_dtw_divergence(y, x, 1.0, x_mask=ym, y_mask=xm, cost=kind)
        torch.testing.assert_close(d_xy, d_yx, rtol=1e-10, atol=1e-10)


def test_divergence_stats_empty_and_negative():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 5, 4, generator=gen)
    y = torch.randn(3, 6, 4, generator=gen)
    xm = torch.ones(3, 5, dtype=torch.bool)
    xm[1] = False
    x_ = x.clone().requires_grad_(True)
    v, stats = soft_dtw_divergence(x_, y, 1.0, x_mask=xm, return_stats=True)
    assert v[1] == 0 and stats["empty"] == 1
    assert stats["negative"] == int((v[[0, 2]] < 0).sum())
    (g,) = torch.autograd.grad(v.sum(), x_)
    assert (g[1] == 0).all() and torch.isfinite(g).all()
    # A negative cross penalty on element 0 makes its divergence negative: counted, not clamped.
    pen = torch.zeros(3, 5, 6)
    pen[0] = -10.0
    x_ = x.clone().requires_grad_(True)
    v, stats = soft_dtw_divergence(x_, y, 1.0, x_mask=xm, cross_penalty=pen, return_stats=True)
    assert v[0] < 0 and stats == {"empty": 1, "negative": 1 + int(v[2] < 0)}
    (g,) = torch.autograd.grad(v[0], x_)
    assert g[0].abs().sum() > 0


# --------------------------------------------------------------------------- costs


def test_pairwise_cost_against_loops_and_zero_vectors():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 4, 3, generator=gen, dtype=F64)
    y = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    x[0, 1] = 0.0
    x_ = x.clone().requires_grad_(True)
    cos = pairwise_cost(x_, y, "cosine")
    sq = pairwise_cost(x, y, "sqeuclidean")
    for b in range(2):
        for i in range(4):
            for j in range(5):
                nx, ny = x[b, i].norm(), y[b, j].norm()
                c = 1.0 if nx == 0 else 1 - float(torch.dot(x[b, i], y[b, j]) / (nx * ny))
                assert abs(float(cos[b, i, j].detach()) - c) < 1e-12
                assert abs(float(sq[b, i, j]) - float(((x[b, i] - y[b, j]) ** 2).sum())) < 1e-12
    (g,) = torch.autograd.grad(cos.sum(), x_)
    assert torch.isfinite(g).all()
    assert pairwise_cost(x.half(), y.half()).dtype == torch.float32


# --------------------------------------------------------------------------- errors


def test_errors():
    C = torch.rand(2, 3, 4)
    x = torch.rand(2, 3, 5)
    y = torch.rand(2, 4, 5)
    cases = [
        (lambda: soft_dtw(C, 0.0), "gamma"),
        (lambda: soft_dtw(C, -1.0), "gamma"),
        (lambda: soft_dtw(C, float("nan")), "gamma"),
        (lambda: soft_dtw(C, torch.tensor([1.0, 2.0])), "gamma"),
        (lambda: soft_dtw(C[0], 1.0), "cost"),
        (lambda: soft_dtw(C.long(), 1.0), "cost"),
        (lambda: soft_dtw(C, 1.0, x_mask=torch.ones(2, 4, dtype=torch.bool)), "x_mask"),
        (lambda: soft_dtw(C, 1.0, y_mask=torch.ones(3, 4, dtype=torch.bool)), "y_mask"),
        (lambda: soft_dtw(C, 1.0, y_mask=torch.ones(2, 4)), "y_mask"),
        (lambda: soft_dtw(C, 1.0, bandwidth=-1), "bandwidth"),
        (lambda: soft_dtw_divergence(x, torch.rand(2, 4, 6), 1.0), "agree"),
        (lambda: soft_dtw_divergence(x, torch.rand(3, 4, 5), 1.0), "agree"),
        (lambda: soft_dtw_divergence(x, y, 1.0, cost="l1"), "cost"),
        (lambda: soft_dtw_divergence(x, y, 1.0, cross_penalty=torch.zeros(2, 4, 3)), "cross_penalty"),
        (lambda: soft_dtw_divergence(x, y, 1.0, x_mask=torch.ones(2, 4, dtype=torch.bool)), "x_mask"),
        (lambda: soft_dtw_divergence(x, y, 0.0), "gamma"),
        (lambda: pairwise_cost(x, y, "manhattan"), "kind"),
        (lambda: pairwise_cost(x[0], y), "x"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError, match=word):
            fn()

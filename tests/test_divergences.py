"""Token divergences and the chunked vocabulary op, against float64 recomputations (tests/_methods_ref.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _methods_batches import single_thread  # noqa: F401 (a fixture)
from _methods_ref import ref_divergence
from dwakd.errors import ConfigError
from dwakd.methods._chunked import RowSide, fused_rows
from dwakd.methods.divergences import KINDS, token_divergence

pytestmark = pytest.mark.usefixtures("single_thread")


def _logits(*shape, seed, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_value_and_gradient_match_float64_reference(kind, temperature):
    s = _logits(3, 5, 17, seed=1).requires_grad_()
    t = _logits(3, 5, 17, seed=2)
    w = _logits(3, 5, seed=3, scale=1.0)
    got = token_divergence(kind, s, t, temperature=temperature, skew=0.2, alpha=0.4)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    (got * w).sum().backward()
    s64 = s.detach().double().requires_grad_()
    want = ref_divergence(kind, s64.reshape(-1, 17), t.reshape(-1, 17), temperature, 0.2, 0.4).reshape(3, 5)
    (want * w.double()).sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_of_a_distribution_with_itself_is_zero(kind):
    s = _logits(4, 9, seed=4).requires_grad_()
    v = token_divergence(kind, s, s.detach().clone(), temperature=1.5)
    torch.testing.assert_close(v, torch.zeros(4), atol=1e-6, rtol=0)
    v.sum().backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), atol=1e-6, rtol=0)


def test_skew_zero_reduces_to_fkl_and_rkl():
    s, t = _logits(6, 11, seed=5), _logits(6, 11, seed=6)
    torch.testing.assert_close(token_divergence("skl", s, t, skew=0.0), token_divergence("fkl", s, t))
    torch.testing.assert_close(token_divergence("srkl", s, t, skew=0.0), token_divergence("rkl", s, t))


def test_tvd_bounds_and_akl_between_fkl_and_rkl():
    s, t = _logits(50, 8, seed=7, scale=4.0), _logits(50, 8, seed=8, scale=4.0)
    tvd = token_divergence("tvd", s, t)
    assert bool((tvd >= 0).all()) and bool((tvd <= 1).all())
    # disjoint supports: tvd = 1
    far = torch.full((1, 4), -1e4)
    far_s, far_t = far.clone(), far.clone()
    far_s[0, 0], far_t[0, 1] = 0.0, 0.0
    assert abs(float(token_divergence("tvd", far_s, far_t)) - 1.0) < 1e-6
    fkl, rkl, akl = (token_divergence(k, s, t) for k in ("fkl", "rkl", "akl"))
    lo, hi = torch.minimum(fkl, rkl), torch.maximum(fkl, rkl)
    assert bool((akl >= lo - 1e-5).all()) and bool((akl <= hi + 1e-5).all())


@pytest.mark.parametrize(("alpha", "tail"), [(0.6, (1, 2)), (0.2, (2,)), (0.1, ()), (0.9, (1, 2))])
def test_akl_alpha_has_the_official_meaning(alpha, tail):
    # official adaptive_kl: q ascending [0.2, 0.3, 0.5], cumulative [0.2, 0.5, 1.0]; the tail is the
    # prefix with cumulative mass <= alpha. (The old dwakd reading put the 0.5 entry in the *head*
    # prefix reaching alpha, i.e. it was akl(1 - alpha).) By hand, in float64:
    q = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    p = torch.tensor([[0.2, 0.2, 0.6]], dtype=torch.float64)
    gaps = (q - p).abs()[0].tolist()
    g_tail = sum(gaps[v] for v in tail)
    g_head = sum(gaps) - g_tail
    fkl = float((q * (q.log() - p.log())).sum())
    rkl = float((p * (p.log() - q.log())).sum())
    want = (g_head * fkl + g_tail * rkl) / (g_head + g_tail)
    got = float(token_divergence("akl", p.float().log(), q.float().log(), alpha=alpha))
    assert abs(got - want) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_no_nan_or_inf_on_extreme_masked_and_empty_rows(kind):
    s = _logits(5, 12, seed=9, scale=1e4).requires_grad_()
    t = _logits(5, 12, seed=10, scale=1e4)
    with torch.no_grad():
        s[1, :6] = float("-inf")  # masked vocabulary entries on the student side
        t[2, 3:] = float("-inf")  # ... and on the teacher side
        s[3] = float("-inf")  # an all-masked row
        t[4] = float("-inf")
    v = token_divergence(kind, s, t, temperature=2.0)
    assert bool(torch.isfinite(v).all()) and bool((v >= -1e-4).all())
    assert float(v[3].detach()) == 0.0 and float(v[4].detach()) == 0.0
    v.sum().backward()
    assert bool(torch.isfinite(s.grad).all())
    assert float(s.grad[3].abs().sum()) == 0.0


@pytest.mark.parametrize("kind", ["fkl", "srkl", "akl"])
def test_bf16_inputs_match_float32_within_bf16_tolerance(kind):
    s, t = _logits(8, 40, seed=11), _logits(8, 40, seed=12)
    ref = token_divergence(kind, s, t, temperature=2.0)
    bf = token_divergence(kind, s.bfloat16(), t.bfloat16(), temperature=2.0)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, ref, rtol=5e-2, atol=2e-2)
    # on the rounded values themselves the computation is float32: identical up to float32 rounding
    exact = token_divergence(kind, s.bfloat16().float(), t.bfloat16().float(), temperature=2.0)
    torch.testing.assert_close(bf, exact, rtol=1e-6, atol=1e-7)


def test_unknown_kind_and_shape_mismatch_are_reported():
    with pytest.raises(ConfigError, match="unknown divergence 'kl'"):
        token_divergence("kl", torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        token_divergence("fkl", torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- the fused op
def test_fused_projection_matches_explicit_logits_and_its_gradients():
    """p = hidden @ W^T fused (several chunks), q indexed rows of a larger tensor (duplicates allowed),
    CE on both sides, entropies and peak; inputs are left untouched."""
    gen = torch.Generator().manual_seed(13)
    n = 70  # chunks of 32 rows (min_projected_rows): 3 chunks here
    h = torch.randn(n, 5, generator=gen).requires_grad_()
    w = torch.randn(23, 5, generator=gen)
    big = torch.randn(100, 23, generator=gen).requires_grad_()
    idx = torch.randint(0, 90, (n,), generator=gen)
    gold = torch.randint(0, 23, (n,), generator=gen)
    h_copy, big_copy = h.detach().clone(), big.detach().clone()
    out = fused_rows(
        RowSide(h, weight=w, targets=gold), RowSide(big, index=idx, targets=gold),
        kind="srkl", temperature=2.0, entropy_p=True, entropy_q=True, q_peak=True, chunk_elements=23 * 2,
        min_projected_rows=32,
    )
    gw = torch.randn(3, n, generator=gen)
    (gw[0] * out.div + gw[1] * out.ce_p + gw[2] * out.ce_q).sum().backward()
    assert torch.equal(h.detach(), h_copy) and torch.equal(big.detach(), big_copy)

    h64, big64 = h.detach().double().requires_grad_(), big.detach().double().requires_grad_()
    zp, zq = h64 @ w.double().t(), big64[idx]
    div = ref_divergence("srkl", zp, zq.detach(), 2.0, 0.1)
    ce_p = F.cross_entropy(zp, gold, reduction="none")
    ce_q = F.cross_entropy(zq, gold, reduction="none")
    (gw[0].double() * div + gw[1].double() * ce_p + gw[2].double() * ce_q).sum().backward()
    lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.div.double(), div.detach(), **close)
    torch.testing.assert_close(out.ce_p.double(), ce_p.detach(), **close)
    torch.testing.assert_close(out.ce_q.double(), ce_q.detach(), **close)
    torch.testing.assert_close(out.entropy_p.double(), -(lp.exp() * lp).sum(-1).detach(), **close)
    torch.testing.assert_close(out.entropy_q.double(), -(lq.exp() * lq).sum(-1).detach(), **close)
    torch.testing.assert_close(out.q_peak.double(), lq.exp().max(-1).values.detach(), **close)
    assert torch.equal(out.q_argmax, zq.argmax(-1))
    torch.testing.assert_close(h.grad.double(), h64.grad, **close)
    torch.testing.assert_close(big.grad.double(), big64.grad, **close)
    assert float(big.grad[90:].abs().sum()) == 0.0  # rows never selected get no gradient


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ce_and_divergence_on_the_same_side_at_any_temperature(temperature):
    """p carries both the divergence and its CE (the shared-buffer path when temperature is 1)."""
    s = _logits(6, 9, seed=16).requires_grad_()
    t = _logits(6, 9, seed=17)
    gold = torch.tensor([0, 8, 3, 3, 1, 5])
    s_copy = s.detach().clone()
    out = fused_rows(RowSide(s, targets=gold), RowSide(t), kind="rkl", temperature=temperature, entropy_p=True)
    (out.div * 0.3 + out.ce_p * 0.7).sum().backward()
    assert torch.equal(s.detach(), s_copy)
    s64 = s.detach().double().requires_grad_()
    ref = ref_divergence("rkl", s64, t, temperature) * 0.3 + F.cross_entropy(s64, gold, reduction="none") * 0.7
    ref.sum().backward()
    torch.testing.assert_close((out.div * 0.3 + out.ce_p * 0.7).double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_results():
    s, t = _logits(9, 31, seed=14).requires_grad_(), _logits(9, 31, seed=15)
    s_copy = s.detach().clone()
    outs = []
    for chunk in (1, 31 * 2, 10_000):
        s.grad = None
        v = fused_rows(RowSide(s), RowSide(t), kind="js", chunk_elements=chunk).div
        v.sum().backward()
        outs.append((v.detach(), s.grad.clone()))
    assert torch.equal(s.detach(), s_copy)
    for v, g in outs[1:]:
        torch.testing.assert_close(v, outs[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(g, outs[0][1], rtol=0, atol=1e-7)


def test_zero_rows_is_fine():
    s = torch.zeros(0, 5, requires_grad=True)
    out = fused_rows(RowSide(s, targets=torch.zeros(0, dtype=torch.long)), RowSide(torch.zeros(0, 5)), kind="fkl")
    assert out.div.shape == (0,) and out.ce_p.shape == (0,)
    (out.div.sum() + out.ce_p.sum()).backward()
    assert s.grad is None or s.grad.shape == (0, 5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("layout", ["proj-plain", "plain-proj", "proj-proj", "proj(w grad)-plain"])
def test_every_side_layout_matches_autograd(layout, temperature):
    """Projected / plain sides, gradients computed in the forward (frozen head) or recomputed in
    the backward (plain logits, or a head that requires grad), several chunks, CE on both sides."""
    gen = torch.Generator().manual_seed(21)
    n, d, v = 45, 4, 19
    p_kind, q_kind = layout.split("-")

    def make(kind):
        if kind == "plain":
            return torch.randn(n + 5, v, generator=gen).requires_grad_(), None
        w = torch.randn(v, d, generator=gen).requires_grad_(kind == "proj(w grad)")
        return torch.randn(n + 5, d, generator=gen).requires_grad_(), w

    (px, pw), (qx, qw) = make(p_kind), make(q_kind)
    idx_p, idx_q = torch.randperm(n + 5, generator=gen)[:n], torch.randperm(n + 5, generator=gen)[:n]
    gold = torch.randint(0, v, (n,), generator=gen)
    out = fused_rows(RowSide(px, pw, idx_p, gold), RowSide(qx, qw, idx_q, gold), kind="akl",
                     temperature=temperature, entropy_p=True, q_peak=True, chunk_elements=v * 8,
                     min_projected_rows=16)
    gw = torch.randn(3, n, generator=gen)
    (gw[0] * out.div + gw[1] * out.ce_p + gw[2] * out.ce_q).sum().backward()

    leaves = [t for t in (px, pw, qx, qw) if t is not None and t.requires_grad]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    lookup = dict(zip(map(id, leaves), leaves64))

    def logits(x, w, idx):
        x64 = lookup[id(x)][idx]
        return x64 if w is None else x64 @ (lookup[id(w)] if id(w) in lookup else w.double()).t()

    zp, zq = logits(px, pw, idx_p), logits(qx, qw, idx_q)
    div = ref_divergence("akl", zp, zq.detach(), temperature)
    ce_p, ce_q = F.cross_entropy(zp, gold, reduction="none"), F.cross_entropy(zq, gold, reduction="none")
    (gw[0].double() * div + gw[1].double() * ce_p + gw[2].double() * ce_q).sum().backward()
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.div.double(), div.detach(), **close)
    torch.testing.assert_close(out.ce_q.double(), ce_q.detach(), **close)
    for t, t64 in zip(leaves, leaves64):
        torch.testing.assert_close(t.grad.double(), t64.grad, **close)


@pytest.mark.parametrize("kind", ["rkl", "srkl"])
def test_float32_gradients_within_1e5_of_float64_at_sharp_logits(kind):
    # issue 11: at logit scale 4 the analytic float32 gradients must stay within 1e-5 of float64
    for seed in range(3):
        s = _logits(6, 4000, seed=100 + seed, scale=4.0).requires_grad_()
        t = _logits(6, 4000, seed=200 + seed, scale=4.0)
        token_divergence(kind, s, t, skew=0.1).sum().backward()
        s64 = s.detach().double().requires_grad_()
        ref_divergence(kind, s64, t, 1.0, 0.1, 0.5).sum().backward()
        assert float((s.grad.double() - s64.grad).abs().max()) < 1e-5

"""DWA-KD and DWA-KD-ETA: weights, band, the whole objective against a plain float64 reference
(loops for Soft-DTW and the band), ablation switches, gradient routing, invariances, edge cases,
schedules, and a short training run on the tiny pair."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from _methods_batches import (  # noqa: F401 (single_thread is a fixture)
    D_S,
    D_T,
    STUDENT_EXAMPLES,
    TEACHER_EXAMPLES,
    V_S,
    V_T,
    StubLM,
    load_dolly,
    placed_outputs,
    real_batch,
    single_thread,
    stub_outputs,
    stub_pair,
    synthetic_batch,
    train_losses,
)
from _methods_ref import ref_band, ref_method
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options
from dwakd.methods.dwakd import band_penalty, confidence_weights, entropy_weights

KD_TERMS = ("ce", "kd_stu", "kd_tea", "ce_t2s")

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(method, s_model, t_model, batch, *, teacher_grad=False):
    s_out = stub_outputs(s_model, batch.student)
    if teacher_grad:
        return method(s_out, stub_outputs(t_model, batch.teacher), batch)
    with torch.no_grad():
        t_out = stub_outputs(t_model, batch.teacher)
    return method(s_out, t_out, batch)


# ----------------------------------------------------------------------------- weights
def _entropy(logits):
    p = torch.softmax(logits.double(), -1)
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


# entropy_weights / confidence_weights are what DWAKD._weights calls on the fused op's entropies
def test_student_weights_on_crafted_entropies_and_gate():
    peaked = torch.tensor([6.0, 0.0, 0.0, 0.0, 0.0])
    s = peaked.repeat(2, 4, 1)
    s[0, 1] = 0.0  # uniform: maximal entropy
    s[1, 2] = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ent = _entropy(s).float()
    w = entropy_weights(ent, mask, torch.ones(2, 4))  # gate 1 (a one-hot projected teacher)
    assert w.shape == (2, 4) and not w.requires_grad
    assert float(w[0, 3]) == 0.0
    assert int(w[0].argmax()) == 1 and int(w[1].argmax()) == 2
    torch.testing.assert_close(w.sum(1), torch.tensor([3.0, 4.0]))
    want = ent.double() * mask * mask.sum(1, keepdim=True) / (ent.double() * mask).sum(1, keepdim=True)
    torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-6)
    # the gate multiplies after the renormalisation (METHOD.md section 3, [C])
    gate = torch.ones(2, 4)
    gate[0, 0] = 0.5  # two equal top tokens: peak 0.5
    w2 = entropy_weights(ent, mask, gate)
    torch.testing.assert_close(w2[0, 0], 0.5 * w[0, 0])
    torch.testing.assert_close(w2[0, 1:], w[0, 1:])


def test_teacher_weights_on_crafted_entropies():
    t = torch.zeros(2, 3, 8)  # uniform rows: confidence 0
    t[0, 0, 2] = 1e4  # one-hot: confidence 1
    t[0, 2] = torch.tensor([3.0, 1.0, 0, 0, 0, 0, 0, 0])
    t[1, :, 5] = 1e4
    mask = torch.tensor([[True, True, True], [True, False, True]])
    w = confidence_weights(_entropy(t).float(), mask, 8)
    p = torch.softmax(t[0, 2].double(), -1)
    conf2 = 1 - float(-(p * p.log()).sum()) / math.log(8)
    want0 = torch.tensor([1.0, 0.0, conf2], dtype=torch.float64) * 3 / (1 + conf2)
    torch.testing.assert_close(w[0].double(), want0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w[1], torch.tensor([1.0, 0.0, 1.0]))
    # a sequence whose every position is uniform has nothing to renormalise: 1 on each position
    torch.testing.assert_close(confidence_weights(torch.full((1, 2), math.log(8)), torch.ones(1, 2, dtype=torch.bool), 8),
                               torch.ones(1, 2))


# ----------------------------------------------------------------------------- band
def test_band_penalty_matches_loops_and_is_zero_outside_lengths():
    gen = torch.Generator().manual_seed(0)
    s_len, t_len = torch.tensor([9, 5]), torch.tensor([12, 3])
    scores = torch.randn(2, 9, 12, generator=gen) * 3
    valid = (torch.arange(9)[None, :, None] < s_len[:, None, None]) & (torch.arange(12)[None, None, :] < t_len[:, None, None])
    att = torch.softmax(scores.masked_fill(~valid, -1e9), -1) * valid
    for kw in (dict(b=1.0, beta=0.5, alpha=0.7, lam=1.0), dict(b=2.0, beta=2.0, alpha=0.3, lam=0.5)):
        pen = band_penalty(att, s_len, t_len, **kw)
        for b in range(2):
            s, t = int(s_len[b]), int(t_len[b])
            want = ref_band(att[b, :s, :t].double(), kw["b"], kw["beta"], kw["alpha"], kw["lam"])
            torch.testing.assert_close(pen[b, :s, :t].double(), want)
            assert float(pen[b, s:].abs().sum()) == 0.0 and float(pen[b, :, t:].abs().sum()) == 0.0
        assert float(pen.sum()) > 0


def test_band_penalty_on_a_diagonal_attention():
    att = torch.eye(20)[None]
    pen = band_penalty(att, torch.tensor([20]), torch.tensor([20]), b=1.0, beta=0.0, lam=2.0)
    i, j = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    torch.testing.assert_close(pen[0], 2.0 * ((i - j).abs() > 1).float())


# ----------------------------------------------------------------------------- the objective
ABLATIONS = [
    dict(band_b=0.5, band_beta=0.5),  # full, with an active band on these short sequences
    dict(weights="entropy", dtw="hidden", band=False),  # no gate, plain Soft-DTW
    dict(weights="none", dtw="embed", divergence="fkl", gamma=0.5),
    dict(dtw="none"),  # EW only
    dict(dtw_positions="prefix", band_b=0.5, band_beta=0.2, temperature=1.0),
    dict(preset="authors-code"),  # the fork: no band, detached projections, prefix positions, padded std
    dict(preset="authors-code", divergence="akl", akl_alpha=0.9),
]


@pytest.mark.parametrize("name", ["dwakd", "dwakd-eta"])
@pytest.mark.parametrize("opts", ABLATIONS)
def test_matches_float64_reference_values_and_gradients(name, opts):
    torch.manual_seed(0)
    s_model, t_model = stub_pair(seed=11)
    batch = synthetic_batch()
    method = build_method(name, s_model, t_model, **opts)
    out = _run(method, s_model, t_model, batch)
    ref, s64, p64 = ref_method(method, s_model, t_model, batch, stub_outputs, eta=name.endswith("eta"), dwakd=True)
    assert set(out.terms) == set(ref)
    for k in ref:
        torch.testing.assert_close(out.terms[k].double(), ref[k].detach(), rtol=1e-4, atol=1e-5, msg=k)
    o = method.options
    for k in out.terms:
        want = o.rate_ce if k == "ce" else o.rate_dtw if k.startswith("dtw") else o.rate_wkd
        assert out.rates[k] == want
    out.total().backward()
    sum(out.rates[k] * ref[k] for k in ref).backward()
    for (n, p), p_ref in zip(s_model.named_parameters(), s64.parameters()):
        torch.testing.assert_close(p.grad.double(), p_ref.grad, rtol=1e-3, atol=1e-5, msg=n)
    for n, p in method.named_parameters():
        want = p64[n].grad if p64[n].grad is not None else torch.zeros_like(p64[n])
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-5, msg=n)
    if o.dtw != "none":
        assert float(out.stats["gamma"]) == o.gamma
    if o.preset == "authors-code":  # P_e never trained; t2s only through the KD terms
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in method.embed_proj.parameters())


def test_identical_teacher_and_student_give_zero_kd_terms_and_gradients():
    """Same tokenizer (every position aligned), identity projectors: every KD term ~0, gradient ~0."""
    model = StubLM(V_S, D_S, seed=2)
    batch = synthetic_batch(teacher=STUDENT_EXAMPLES)
    method = build_method("dwakd-eta", model, model, band=False, projector_init="default")
    with torch.no_grad():
        for proj in (method.align.t2s, method.align.s2t, method.embed_proj):
            proj.weight.copy_(torch.eye(D_S))
            proj.bias.zero_()
    out = _run(method, model, model, batch)
    assert out.stats["aligned_student_frac"] == 1.0
    kd = ("kd_stu", "kd_tea", "dtw_hidden", "dtw_embed")
    for k in kd:
        assert abs(float(out.terms[k].detach())) < 1e-5, (k, float(out.terms[k]))
    sum(out.terms[k] for k in kd).backward()
    for n, p in model.named_parameters():
        assert float(p.grad.abs().max()) < 1e-4, n


def test_gradient_routing_follows_the_detach_rules():
    s_model, t_model = stub_pair(seed=13)
    batch = synthetic_batch()
    method = build_method("dwakd", s_model, t_model, band_b=0.5, band_beta=0.5)
    reached = {}
    for term in (*KD_TERMS, "dtw_hidden", "dtw_embed"):
        for p in [*s_model.parameters(), *t_model.parameters(), *method.parameters()]:
            p.grad = None
        _run(method, s_model, t_model, batch, teacher_grad=True).terms[term].backward()
        groups = {
            "s.embed": s_model.embed.weight, "s.body": s_model.body.weight, "s.head": s_model.head.weight,
            **{f"m.{n}": p for n, p in method.named_parameters() if n.endswith("weight")},
        }
        reached[term] = {k for k, p in groups.items() if p.grad is not None and float(p.grad.abs().sum()) > 0}
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in t_model.parameters()), term
    student = {"s.embed", "s.body", "s.head"}
    assert reached["ce"] == student
    assert reached["kd_stu"] == student  # target, weights and gate detached: no projector
    assert reached["kd_tea"] == {"s.embed", "s.body", "m.align.s2t.weight", "m.align.query.weight"}
    assert reached["ce_t2s"] == {"m.align.t2s.weight", "m.align.query.weight"}
    # the band is built from the detached attention: no gradient to the query projector
    assert reached["dtw_hidden"] == {"s.embed", "s.body", "m.align.t2s.weight"}
    assert reached["dtw_embed"] == {"s.embed", "m.embed_proj.weight"}


# the defaults are held to padding invariance by the method contract (test_methods_contract.py);
# here the options that read positions differently
@pytest.mark.parametrize("name,opts", [("dwakd", dict(dtw_positions="prefix")), ("dwakd", dict(band_b=0.5, band_beta=0.5)),
                                       ("dwakd-eta", dict(band_b=0.5, band_beta=0.5))])
def test_padding_side_and_extra_padding_leave_every_term_unchanged(name, opts):
    s_model, t_model = stub_pair(seed=15)
    results = []
    for side, extra, junk in (("right", 0, 1), ("left", 3, 2), ("left", 0, 4), ("right", 4, 3)):
        batch = synthetic_batch(padding_side=side, extra_pad=extra)
        s_out = placed_outputs(batch.student, STUDENT_EXAMPLES, V_S, D_S, seed=1, junk_seed=junk)
        t_out = placed_outputs(batch.teacher, TEACHER_EXAMPLES, V_T, D_T, seed=2, junk_seed=junk + 100)
        torch.manual_seed(0)
        method = build_method(name, s_model, t_model, **opts)
        results.append({k: float(v.detach()) for k, v in method(s_out, t_out, batch).terms.items()})
    assert len(results[0]) == 6
    for r in results[1:]:
        for k, v in results[0].items():
            assert r[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k


@pytest.mark.parametrize("name", ["dwakd", "dwakd-eta"])
def test_bf16_outputs_match_float32_within_bf16_tolerance(name):
    s_model, t_model = stub_pair(seed=17)
    batch = synthetic_batch()
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        s_out = placed_outputs(batch.student, STUDENT_EXAMPLES, V_S, D_S, seed=1, junk_seed=1, dtype=dtype)
        t_out = placed_outputs(batch.teacher, TEACHER_EXAMPLES, V_T, D_T, seed=2, junk_seed=2, dtype=dtype)
        torch.manual_seed(0)
        method = build_method(name, s_model, t_model)
        terms = method(s_out, t_out, batch).terms
        assert all(v.dtype == torch.float32 for v in terms.values())
        outs.append({k: float(v.detach()) for k, v in terms.items()})
    for k, v in outs[0].items():
        assert outs[1][k] == pytest.approx(v, rel=3e-2, abs=3e-2), k


@pytest.mark.parametrize("name", ["dwakd", "dwakd-eta"])
def test_edge_cases_give_finite_terms_and_gradients(name):
    """An example without response tokens on either side, one-token responses, logits of +-1e4."""
    student = [([1], [], []), ([2, 3], [4], [(0, 0)]), ([1, 2], [5, 6], [(0, 2), (2, 2)]), ([3], [4], [(0, 0)])]
    teacher = [([1, 2], [3], [(0, 0)]), ([4], [5], [(0, 0)]), ([6], [], []), ([2], [7, 8], [(0, 1), (1, 1)])]
    batch = synthetic_batch(student=student, teacher=teacher)
    s_model, t_model = stub_pair(seed=19)
    with torch.no_grad():
        s_model.head.weight.mul_(1e4)
        t_model.head.weight.mul_(1e4)
    method = build_method(name, s_model, t_model)
    out = _run(method, s_model, t_model, batch)
    assert int(out.n_tokens) == 4
    for k, v in out.terms.items():
        assert bool(torch.isfinite(v)), k
    assert all(math.isfinite(v) for v in out.stats.values())
    out.total().backward()
    for p in [*s_model.parameters(), *method.parameters()]:
        assert p.grad is None or bool(torch.isfinite(p.grad).all())


def test_gamma_annealing_and_gate_warmup_follow_set_progress():
    s_model, t_model = stub_pair(seed=21)
    batch = synthetic_batch()
    method = build_method("dwakd", s_model, t_model, gamma=2.0, gamma_final=0.5)
    method.set_progress(5, 10)
    assert method.current_gamma() == pytest.approx(1.25)
    assert float(_run(method, s_model, t_model, batch).stats["gamma"]) == pytest.approx(1.25)
    torch.manual_seed(0)
    warm = build_method("dwakd", s_model, t_model, gate_warmup_steps=10, dtw="none")
    torch.manual_seed(0)
    no_gate = build_method("dwakd", s_model, t_model, weights="entropy", dtw="none")
    torch.manual_seed(0)
    gated = build_method("dwakd", s_model, t_model, dtw="none")
    warm.set_progress(0, 100)
    def kd_stu(method):
        return float(_run(method, s_model, t_model, batch).terms["kd_stu"].detach())

    assert kd_stu(warm) == pytest.approx(kd_stu(no_gate), rel=1e-6)
    warm.set_progress(10, 100)
    assert kd_stu(warm) == pytest.approx(kd_stu(gated), rel=1e-6)
    assert kd_stu(gated) != pytest.approx(kd_stu(no_gate), rel=1e-3)


def test_options_are_validated_with_field_names():
    for key, bad in (("weights", "gate"), ("dtw", "all"), ("dtw_positions", "first"), ("band_alpha", 2.0),
                     ("gamma", 0.0), ("rate_dtw", -1.0), ("gate_warmup_steps", -3), ("band", "yes")):
        with pytest.raises(ConfigError, match=rf"method\.{key}"):
            validate_method_options("dwakd", {key: bad})
    opts = validate_method_options("dwakd", {})
    assert (opts.divergence, opts.skew, opts.temperature, opts.gamma) == ("srkl", 0.1, 2.0, 2.0)
    assert (opts.band_b, opts.band_beta, opts.band_alpha, opts.band_lambda) == (5.0, 2.0, 0.7, 1.0)
    assert (opts.rate_ce, opts.rate_wkd, opts.rate_dtw) == (0.5, 0.5, 0.2)
    assert validate_method_options("dwakd-eta", {}).projector_init == "pinv"


@pytest.mark.parametrize("name", ["dwakd", "dwakd-eta"])
def test_thirty_steps_reduce_the_loss_on_the_tiny_pair(name, tiny_student, tiny_teacher, tiny_dolly_path):
    torch.manual_seed(0)
    student = copy.deepcopy(tiny_student[0])
    teacher = tiny_teacher[0]
    batch = real_batch(tiny_student[1], tiny_teacher[1], load_dolly(tiny_dolly_path, 4))
    method = build_method(name, student, teacher)
    method.attach_tokenizers(tiny_student[1], tiny_teacher[1])
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.7 * losses[0], losses

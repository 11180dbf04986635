"""DSKD (cross-model attention) and DSKD-ETA against plain float64 references, gradient routing,
padding invariance, edge cases, projector init, and a short training run on the tiny pair."""

from __future__ import annotations

import copy

import pytest
import torch

from _methods_batches import (  # noqa: F401 (single_thread is a fixture)
    D_S,
    D_T,
    STUDENT_EXAMPLES,
    TEACHER_EXAMPLES,
    V_S,
    V_T,
    load_dolly,
    placed_outputs,
    real_batch,
    single_thread,
    stub_outputs,
    stub_pair,
    synthetic_batch,
    train_losses,
)
from _methods_ref import ref_method
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options
from dwakd.methods.projectors import init_logit_preserving_, make_projector, shared_vocabulary

TERMS = ("ce", "kd_stu", "kd_tea", "ce_t2s")

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(method, s_model, t_model, batch, *, teacher_grad=False):
    s_out = stub_outputs(s_model, batch.student)
    if teacher_grad:
        t_out = stub_outputs(t_model, batch.teacher)
    else:
        with torch.no_grad():
            t_out = stub_outputs(t_model, batch.teacher)
    return method(s_out, t_out, batch)


def _grads(params):
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["dskd", "dskd-eta"])
@pytest.mark.parametrize("opts", [dict(argmax_mask=False), dict(divergence="akl", teacher_divergence="rkl"),
                                  dict(argmax_mask=True, temperature=1.0),
                                  dict(cma_std="padded-batch", argmax_mask=False),
                                  dict(cma_std="padded-batch", divergence="akl", akl_alpha=0.9)])
def test_matches_float64_reference_values_and_gradients(name, opts):
    torch.manual_seed(0)
    s_model, t_model = stub_pair(seed=3)
    batch = synthetic_batch()
    method = build_method(name, s_model, t_model, **opts)
    out = _run(method, s_model, t_model, batch)
    ref, s64, p64 = ref_method(method, s_model, t_model, batch, stub_outputs, eta=name.endswith("eta"))
    assert set(out.terms) == set(TERMS)
    for k in TERMS:
        torch.testing.assert_close(out.terms[k].double(), ref[k].detach(), rtol=1e-4, atol=1e-5, msg=k)
    assert int(out.n_tokens) == sum(len(r) for _, r, _ in STUDENT_EXAMPLES)
    a = method.options.kd_rate
    assert out.rates == {"ce": 1 - a, "kd_stu": a, "kd_tea": a, "ce_t2s": a}
    out.total().backward()
    sum(out.rates[k] * ref[k] for k in TERMS).backward()
    for (n, p), p_ref in zip(s_model.named_parameters(), s64.parameters()):
        torch.testing.assert_close(p.grad.double(), p_ref.grad, rtol=1e-3, atol=1e-5, msg=n)
    for n, p in method.named_parameters():
        want = p64[n].grad if p64[n].grad is not None else torch.zeros_like(p64[n])
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-5, msg=n)


def test_eta_aligns_identical_spans_and_eos_only():
    from dwakd.methods.dual_space import eta_matrix
    from dwakd.methods.rows import compact

    batch = synthetic_batch(padding_side="left", extra_pad=2)
    m = eta_matrix(batch, compact(batch.student.target_mask), compact(batch.teacher.target_mask))
    # example 0: (0,2) and (2,3) and the EOS (5,5); example 1: only the EOS; example 2: (0,1), (3,4), EOS
    assert m[0].nonzero().tolist() == [[0, 0], [1, 1], [3, 4]]
    assert m[1].nonzero().tolist() == [[1, 2]]
    assert m[2].nonzero().tolist() == [[0, 0], [3, 2], [4, 3]]


@pytest.mark.parametrize("name", ["dskd", "dskd-eta"])
def test_gradient_routing_follows_the_detach_rules(name):
    """Which parameters each term reaches (METHOD.md section 2); the teacher never gets any."""
    s_model, t_model = stub_pair(seed=5)
    batch = synthetic_batch()
    method = build_method(name, s_model, t_model, argmax_mask=False)
    eta = name.endswith("eta")
    reached = {}
    for term in TERMS:
        for p in [*s_model.parameters(), *t_model.parameters(), *method.parameters()]:
            p.grad = None
        out = _run(method, s_model, t_model, batch, teacher_grad=True)
        out.terms[term].backward()
        groups = {
            "s.embed": s_model.embed.weight, "s.body": s_model.body.weight, "s.head": s_model.head.weight,
            **{f"m.{n}": p for n, p in method.named_parameters() if n.endswith("weight")},
        }
        reached[term] = {k for k, p in groups.items() if p.grad is not None and float(p.grad.abs().sum()) > 0}
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in t_model.parameters()), term
    assert reached["ce"] == {"s.embed", "s.body", "s.head"}
    assert reached["kd_stu"] == {"s.embed", "s.body", "s.head"}  # target detached, gate/weights too
    # teacher space: through h_s -> P_s2t -> A_st; the student head is not involved
    assert reached["kd_tea"] == {"s.embed", "s.body", "m.align.s2t.weight"} | (set() if eta else {"m.align.query.weight"})
    # projected CE: student head detached and query inputs detached: no student parameter at all
    assert reached["ce_t2s"] == {"m.align.t2s.weight"} | (set() if eta else {"m.align.query.weight"})


@pytest.mark.parametrize("name", ["dskd", "dskd-eta"])
def test_edge_cases_give_finite_terms_and_gradients(name):
    """An example without response tokens, one-token responses, logits of +-1e4."""
    student = [([1], [], []), ([2, 3], [4], [(0, 0)]), ([1, 2], [5, 6], [(0, 2), (2, 2)])]
    teacher = [([1, 2], [3], [(0, 0)]), ([4], [5], [(0, 0)]), ([6], [], [])]
    batch = synthetic_batch(student=student, teacher=teacher)
    s_model, t_model = stub_pair(seed=9)
    with torch.no_grad():
        s_model.head.weight.mul_(1e4)
        t_model.head.weight.mul_(1e4)
    method = build_method(name, s_model, t_model)
    out = _run(method, s_model, t_model, batch)
    assert int(out.n_tokens) == 3
    for k, v in out.terms.items():
        assert bool(torch.isfinite(v)), k
    out.total().backward()
    for p in [*s_model.parameters(), *method.parameters()]:
        assert p.grad is None or bool(torch.isfinite(p.grad).all())


def test_logit_preserving_init_is_exact_when_the_heads_allow():
    gen = torch.Generator().manual_seed(0)
    w_b = torch.randn(40, 6, generator=gen)  # target head, full column rank
    w_a = w_b @ torch.randn(6, 9, generator=gen)  # source head whose rows lie in w_b's span
    proj = make_projector(9, 6)
    residual = init_logit_preserving_(proj, w_a, w_b)
    assert residual < 1e-6
    h = torch.randn(5, 9, generator=gen)
    torch.testing.assert_close(proj(h) @ w_b.t(), h @ w_a.t(), rtol=1e-4, atol=1e-4)
    assert float(proj.bias.detach().abs().sum()) == 0.0


def test_attach_tokenizers_initialises_eta_projectors(tiny_student, tiny_teacher):
    s_model, s_tok = tiny_student
    t_model, t_tok = tiny_teacher
    s_ids, t_ids = shared_vocabulary(s_tok, t_tok)
    assert s_ids.numel() > 50
    s_vocab, t_vocab = s_tok.convert_ids_to_tokens(s_ids.tolist()), t_tok.convert_ids_to_tokens(t_ids.tolist())
    norm = {"\u0120": " ", "\u2581": " ", "\u010a": "\n"}
    for a, b in zip(s_vocab, t_vocab):
        assert "".join(norm.get(c, c) for c in a) == "".join(norm.get(c, c) for c in b)
    method = build_method("dskd-eta", s_model, t_model)
    before = method.align.t2s.weight.detach().clone()
    method.attach_tokenizers(s_tok, t_tok)
    assert not torch.equal(before, method.align.t2s.weight)
    assert 0 <= method.init_report["t2s_residual"] < 1.0
    plain = build_method("dskd", s_model, t_model)
    before = plain.align.t2s.weight.detach().clone()
    plain.attach_tokenizers(s_tok, t_tok)  # projector_init: default -> untouched
    assert torch.equal(before, plain.align.t2s.weight)


def test_options_are_validated_with_field_names():
    with pytest.raises(ConfigError, match=r"method\.divergence"):
        validate_method_options("dskd", {"divergence": "kl"})
    with pytest.raises(ConfigError, match=r"method\.kd_rate"):
        validate_method_options("dskd", {"kd_rate": 1.5})
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        validate_method_options("dskd-eta", {"temprature": 2.0})
    with pytest.raises(ConfigError, match=r"method\.projector_init"):
        validate_method_options("dskd-eta", {"projector_init": "svd"})
    assert validate_method_options("dskd-eta", {}).projector_init == "pinv"


@pytest.mark.parametrize("name", ["dskd", "dskd-eta"])
def test_thirty_steps_reduce_the_loss_on_the_tiny_pair(name, tiny_student, tiny_teacher, tiny_dolly_path):
    torch.manual_seed(0)
    student = copy.deepcopy(tiny_student[0])
    teacher = tiny_teacher[0]
    batch = real_batch(tiny_student[1], tiny_teacher[1], load_dolly(tiny_dolly_path, 4))
    method = build_method(name, student, teacher)
    method.attach_tokenizers(tiny_student[1], tiny_teacher[1])
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(map(lambda v: v == v, losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_official_padded_batch_std_depends_on_padding_and_the_default_does_not():
    s_model, t_model = stub_pair(seed=7)
    values = {}
    for std in ("response", "padded-batch"):
        for extra in (0, 4):
            batch = synthetic_batch(extra_pad=extra)
            torch.manual_seed(0)
            method = build_method("dskd", s_model, t_model, argmax_mask=False, cma_std=std)
            values[std, extra] = float(_run(method, s_model, t_model, batch).terms["ce_t2s"].detach())
    assert values["response", 0] == pytest.approx(values["response", 4], rel=1e-6)
    assert abs(values["padded-batch", 0] - values["padded-batch", 4]) > 1e-4 * abs(values["padded-batch", 0])

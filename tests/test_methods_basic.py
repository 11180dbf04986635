"""SFT, same-tokenizer KD and the registry: values against plain recomputations, vocabulary checks,
padding invariance, identical models, and short training runs on the tiny fixture models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from _methods_batches import (  # noqa: F401 (single_thread is a fixture)
    STUDENT_EXAMPLES,
    V_S,
    StubLM,
    load_dolly,
    placed_outputs,
    real_batch,
    single_thread,
    stub_outputs,
    synthetic_batch,
    train_losses,
)
from _methods_ref import ref_divergence
from dwakd.errors import ConfigError
from dwakd.methods import DistillMethod, MethodOptions, available_methods, build_method
from dwakd.methods.registry import method_class

pytestmark = pytest.mark.usefixtures("single_thread")

MINE = ("sft", "kd", "dskd", "dskd-eta", "dwakd", "dwakd-eta")
# the same responses as the student's (same tokenizer), behind a different prompt
SAME_TOKENIZER_TEACHER = [([4, 4, 1], r, sp) for _, r, sp in STUDENT_EXAMPLES]


def _response_rows(side, logits):
    return [logits[b, side.target_mask[b]] for b in range(logits.shape[0])]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_method_with_a_description():
    names = available_methods()
    for name in MINE:
        assert name in names and names[name], name
        cls = method_class(name)
        assert issubclass(cls, DistillMethod) and issubclass(cls.Options, MethodOptions)
        assert cls.name == name
    assert set(names) >= {"uld", "mined", "multilevel-ot"}


def test_registry_errors_name_the_problem():
    with pytest.raises(ConfigError, match="did you mean 'dwakd'"):
        build_method("dwakdd", None, None)
    s, t = StubLM(V_S, 6), StubLM(V_S, 8)
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method("dwakd", s, None)
    with pytest.raises(ConfigError, match="method 'kd': unknown key 'method.temp' in the options of method 'kd'; did you mean 'temperature'"):
        build_method("kd", s, t, temp=2.0)


# ----------------------------------------------------------------------------- sft
def test_sft_is_the_gold_cross_entropy_over_response_tokens():
    model = StubLM(V_S, 6, seed=1)
    batch = synthetic_batch(padding_side="left", extra_pad=2)
    method = build_method("sft", model, None)
    assert method.needs_teacher is False and list(method.parameters()) == []
    out = method(stub_outputs(model, batch.student), None, batch)
    logits = stub_outputs(model, batch.student).logits.double()
    want = sum(
        F.cross_entropy(logits[b, batch.student.target_mask[b]], batch.student.target_ids[b, batch.student.target_mask[b]],
                        reduction="sum")
        for b in range(3)
    )
    torch.testing.assert_close(out.terms["ce"].double(), want.detach(), rtol=1e-5, atol=1e-5)
    assert int(out.n_tokens) == 11 and out.rates == {"ce": 1.0}


# ----------------------------------------------------------------------------- kd
def _kd_reference(method, s_logits, t_logits, batch):
    o = method.options
    v = method.vocab
    s_rows = _response_rows(batch.student, s_logits.double())
    t_rows = _response_rows(batch.teacher, t_logits.double())
    kd = sum(ref_divergence(o.divergence, s[:, :v], t[:, :v], o.temperature, o.skew, o.akl_alpha).sum()
             for s, t in zip(s_rows, t_rows))
    gold = [batch.student.target_ids[b, batch.student.target_mask[b]] for b in range(len(s_rows))]
    ce = sum(F.cross_entropy(s, g, reduction="sum") for s, g in zip(s_rows, gold))
    return kd, ce


@pytest.mark.parametrize("opts", [{}, dict(divergence="srkl", temperature=1.0), dict(divergence="akl")])
def test_kd_matches_reference_values_and_gradients(opts):
    s_model, t_model = StubLM(V_S, 6, seed=1), StubLM(V_S + 2, 8, seed=2)  # teacher head padded by 2 rows
    batch = synthetic_batch(teacher=SAME_TOKENIZER_TEACHER)
    method = build_method("kd", s_model, t_model, **opts)
    assert method.vocab == V_S
    s_logits = stub_outputs(s_model, batch.student).logits.detach().requires_grad_()
    with torch.no_grad():
        t_out = stub_outputs(t_model, batch.teacher)
    s_out = stub_outputs(s_model, batch.student)
    s_out.logits = s_logits
    out = method(s_out, t_out, batch)
    s64 = s_logits.detach().double().requires_grad_()
    kd, ce = _kd_reference(method, s64, t_out.logits, batch)
    torch.testing.assert_close(out.terms["kd"].double(), kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["ce"].double(), ce.detach(), rtol=1e-5, atol=1e-5)
    assert out.rates == {"ce": 0.5, "kd": 0.5} and out.stats["target_mismatch"] == 0.0
    out.total().backward()
    (0.5 * kd + 0.5 * ce).backward()
    torch.testing.assert_close(s_logits.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_kd_with_identical_teacher_and_student_is_zero_with_zero_gradient():
    model = StubLM(V_S, 6, seed=4)
    batch = synthetic_batch(teacher=STUDENT_EXAMPLES)
    method = build_method("kd", model, model, divergence="srkl")
    with torch.no_grad():
        t_out = stub_outputs(model, batch.teacher)
    out = method(stub_outputs(model, batch.student), t_out, batch)
    assert abs(float(out.terms["kd"].detach())) < 1e-6
    out.terms["kd"].backward()
    for n, p in model.named_parameters():
        assert float(p.grad.abs().max()) < 1e-6, n


def test_kd_refuses_different_vocabularies(tiny_student, tiny_teacher):
    (s_model, s_tok), (t_model, t_tok) = tiny_student, tiny_teacher
    with pytest.raises(ConfigError, match="different tokenizers.*dwakd"):
        build_method("kd", s_model, t_model)
    kd_cls = method_class("kd")
    with pytest.raises(ConfigError, match="share one tokenizer.*differ at .* ids.*dskd"):
        kd_cls.check_tokenizers(s_tok, t_tok)
    kd_cls.check_tokenizers(s_tok, s_tok)  # the same tokenizer passes
    teacher_copy = copy.deepcopy(s_model)
    method = build_method("kd", s_model, teacher_copy)
    method.attach_tokenizers(s_tok, s_tok)
    assert method.vocab == min(len(s_tok), s_model.get_output_embeddings().weight.shape[0])
    with pytest.raises(ConfigError, match="share one tokenizer"):
        method.attach_tokenizers(s_tok, t_tok)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", ["sft", "kd"])
def test_thirty_steps_reduce_the_loss_on_the_tiny_models(name, tiny_student, tiny_dolly_path):
    torch.manual_seed(0)
    student, tok = copy.deepcopy(tiny_student[0]), tiny_student[1]
    teacher = None
    if name == "kd":  # a same-tokenizer teacher: the student's weights, perturbed
        teacher = copy.deepcopy(tiny_student[0]).eval()
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    batch = real_batch(tok, tok, load_dolly(tiny_dolly_path, 4))
    method = build_method(name, student, teacher)
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.7 * losses[0], losses

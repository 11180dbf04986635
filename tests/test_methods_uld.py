"""ULD against a plain float64 per-position loop, plus invariances, numerics and a training check."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from _methods_batches import collated_batch, outputs, pair, place_rows, side_from_ids, train_losses
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options

VS, VT = 7, 11


def _examples(seed, lengths, vocab, prompt_len=2):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, vocab, (prompt_len + b,), generator=g).tolist(), torch.randint(0, vocab, (n,), generator=g).tolist())
        for b, n in enumerate(lengths)
    ]


def _rows(seed, lengths, vocab, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, vocab), generator=g, dtype=torch.float64) * scale for n in lengths]


def _setup(s_len=(3, 5, 1), t_len=(4, 2, 1), padding_side="right", extra_pad=0, dtype=torch.float32, seed=0):
    s_side = side_from_ids("student", _examples(seed, s_len, VS), padding_side=padding_side, extra_pad=extra_pad)
    t_side = side_from_ids("teacher", _examples(seed + 1, t_len, VT), padding_side=padding_side, extra_pad=extra_pad + 1)
    s_rows, t_rows = _rows(seed + 2, s_len, VS), _rows(seed + 3, t_len, VT)
    s_logits = place_rows(s_side, s_rows, junk_seed=seed + 10).to(dtype).requires_grad_(True)
    t_logits = place_rows(t_side, t_rows, junk_seed=seed + 11).to(dtype)
    return pair(s_side, t_side), s_logits, t_logits, s_rows, t_rows


def _reference(batch, s_rows, t_rows):
    """Plain float64 loop: (ce_sum, uld_sum) as METHOD.md section 6 states ULD."""
    ce, uld = 0.0, 0.0
    for b in range(len(s_rows)):
        golds = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        for k, gold in enumerate(golds):
            row = s_rows[b][k].tolist()
            lse = math.log(sum(math.exp(v) for v in row))
            ce += lse - row[gold]
        for k in range(min(len(s_rows[b]), len(t_rows[b]))):
            ps = sorted((math.exp(v) for v in s_rows[b][k].tolist()), reverse=True)
            pt = sorted((math.exp(v) for v in t_rows[b][k].tolist()), reverse=True)
            zs, zt = sum(ps), sum(pt)
            ps = [v / zs for v in ps] + [0.0] * (max(VS, VT) - VS)
            pt = [v / zt for v in pt] + [0.0] * (max(VS, VT) - VT)
            uld += sum(abs(a - c) for a, c in zip(ps, pt))
    return ce, uld


def _method(**opts):
    return build_method("uld", torch.nn.Identity(), torch.nn.Identity(), **opts)


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_uld_matches_float64_loop(chunk):
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    terms = _method(chunk_positions=chunk)(outputs(s_logits), outputs(t_logits), batch)
    ce_ref, uld_ref = _reference(batch, s_rows, t_rows)
    assert terms.terms["ce"].item() == pytest.approx(ce_ref, rel=1e-5)
    assert terms.terms["uld"].item() == pytest.approx(uld_ref, rel=1e-5)
    assert int(terms.n_tokens) == 3 + 5 + 1
    assert terms.rates == {"ce": 0.5, "uld": 0.5}


def test_uld_gradient_matches_float64_autograd_of_the_loop():
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    terms = _method(chunk_positions=2)(outputs(s_logits), outputs(t_logits), batch)
    terms.total().backward()
    # reference: differentiate the plain definition in float64, row by row
    rows = [r.clone().requires_grad_(True) for r in s_rows]
    total = 0.0
    for b in range(len(rows)):
        golds = batch.student.target_ids[b][batch.student.target_mask[b]]
        total = total + 0.5 * torch.nn.functional.cross_entropy(rows[b], golds, reduction="sum")
        for k in range(min(len(rows[b]), len(t_rows[b]))):
            ps = torch.sort(torch.softmax(rows[b][k], -1), descending=True).values
            pt = torch.sort(torch.softmax(t_rows[b][k], -1), descending=True).values
            total = total + 0.5 * ((ps - pt[:VS]).abs().sum() + pt[VS:].sum())
    total.backward()
    for b in range(len(rows)):
        pos = batch.student.target_mask[b].nonzero().squeeze(1)
        torch.testing.assert_close(s_logits.grad[b, pos].double(), rows[b].grad, rtol=1e-4, atol=1e-6)
        other = torch.ones(s_logits.shape[1], dtype=torch.bool)
        other[pos] = False
        assert torch.all(s_logits.grad[b, other] == 0), "gradient leaked to a non-response position"


def test_identical_distributions_give_zero_uld_even_with_permuted_vocab():
    s_side = side_from_ids("student", _examples(0, (4, 2), 9))
    t_side = side_from_ids("teacher", _examples(1, (4, 2), 9), padding_side="left", extra_pad=2)
    rows = _rows(5, (4, 2), 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    s_logits = place_rows(s_side, rows).float().requires_grad_(True)
    t_logits = place_rows(t_side, [r[:, perm] for r in rows], junk_seed=7).float()
    terms = _method()(outputs(s_logits), outputs(t_logits), pair(s_side, t_side))
    assert terms.terms["uld"].item() == pytest.approx(0.0, abs=1e-6)
    terms.terms["uld"].backward()
    assert s_logits.grad.abs().max().item() < 1e-6


def test_bf16_inputs_match_float32():
    batch, s32, t32, _, _ = _setup()
    m = _method()
    ref = m(outputs(s32), outputs(t32), batch)
    s16 = s32.detach().to(torch.bfloat16).requires_grad_(True)
    got = m(outputs(s16), outputs(t32.to(torch.bfloat16)), batch)
    for name in ref.terms:
        assert got.terms[name].dtype == torch.float32
        assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=2e-2, abs=2e-2)


def test_extreme_logits_empty_and_one_token_responses_stay_finite():
    # example 0: one-token responses; example 1: teacher has no response at all; example 2: neither side
    s_side = side_from_ids("student", [([1], [2]), ([1, 2], [3, 4]), ([1, 2, 3], [])])
    t_side = side_from_ids("teacher", [([1], [5]), ([1, 2, 3], []), ([4], [])], padding_side="left")
    g = torch.Generator().manual_seed(0)
    s_logits = (torch.randint(0, 2, (3, s_side.target_mask.shape[1], VS), generator=g).float() * 2e4 - 1e4)
    t_logits = torch.randint(0, 2, (3, t_side.target_mask.shape[1], VT), generator=g).float() * 2e4 - 1e4
    t_logits[1, 0] = float("nan")  # a padding row of the teacher (left padding) must never be read
    t_logits[2] = float("nan")
    s_logits.requires_grad_(True)
    terms = _method()(outputs(s_logits), outputs(t_logits), pair(s_side, t_side))
    total = terms.total()
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(s_logits.grad).all()
    assert int(terms.n_tokens) == 3


def test_options_are_validated():
    with pytest.raises(ConfigError, match="kd_rate"):
        validate_method_options("uld", {"kd_rate": 1.5})
    with pytest.raises(ConfigError, match="temperature"):
        validate_method_options("uld", {"temperature": 0})
    with pytest.raises(ConfigError, match="uld_weight"):
        validate_method_options("uld", {"uld_wieght": 1.0})
    assert validate_method_options("uld", {"uld_weight": 2.0}).uld_weight == 2.0


def test_thirty_adamw_steps_reduce_the_uld_loss(tiny_teacher, tiny_student, tiny_dolly_path):
    teacher, t_tok = tiny_teacher
    student = copy.deepcopy(tiny_student[0]).eval()
    batch = collated_batch(tiny_student[1], t_tok, tiny_dolly_path, 4)
    method = build_method("uld", student, teacher)
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_all_masked_batch_gives_zero_terms_with_a_graph():
    s_side = side_from_ids("student", [([1, 2], [])])
    t_side = side_from_ids("teacher", [([1], [])])
    s_logits = torch.randn(1, s_side.target_mask.shape[1], VS, requires_grad=True)
    t_logits = torch.randn(1, t_side.target_mask.shape[1], VT)
    terms = _method()(outputs(s_logits), outputs(t_logits), pair(s_side, t_side))
    assert all(v.item() == 0.0 for v in terms.terms.values()) and int(terms.n_tokens) == 0
    terms.total().backward()
    assert torch.all(s_logits.grad == 0)


@pytest.mark.parametrize("v_s, v_t", [(37, 11), (11, 37), (13, 13)])
def test_sorted_l1_orders_only_the_top_entries_yet_equals_the_full_sort(v_s, v_t):
    """sorted_l1 orders only the min(V_s, V_t) largest entries (topk) and takes each tail as a mass;
    value and student gradient equal the definition with full sorts and zero padding, in float64,
    whichever side is wider (the wider student's gradient flows through topk and its tail)."""
    from dwakd.methods.uld import sorted_l1

    g = torch.Generator().manual_seed(v_s * 100 + v_t)
    zs = (torch.randn(6, v_s, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    zt = torch.randn(6, v_t, generator=g, dtype=torch.float64) * 3
    got = sorted_l1(zs.float(), zt.float())
    ref_in = zs.detach().clone().requires_grad_(True)
    width = max(v_s, v_t)
    ps = torch.sort(torch.softmax(ref_in, -1), -1, descending=True).values
    pt = torch.sort(torch.softmax(zt, -1), -1, descending=True).values
    ps = torch.nn.functional.pad(ps, (0, width - v_s))
    pt = torch.nn.functional.pad(pt, (0, width - v_t))
    ref = (ps - pt).abs().sum(-1)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    (got.double() * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(zs.grad, ref_in.grad, rtol=1e-4, atol=1e-6)
    assert float(ref_in.grad.abs().max()) > 1e-3  # the comparison is not of zeros

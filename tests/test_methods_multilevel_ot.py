"""MultiLevelOT against plain float64 loops (numpy Sinkhorn), plus invariances, numerics, training."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from _methods_batches import collated_batch, outputs, pair, place_rows, side_from_ids, train_losses
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options

VS, VT, K = 9, 13, 4
S_LEN, T_LEN = (3, 5, 1), (4, 2, 1)


def _examples(seed, lengths, vocab):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, vocab, (2,), generator=g).tolist(), torch.randint(0, vocab, (n,), generator=g).tolist())
        for n in lengths
    ]


def _rows(seed, lengths, vocab, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, vocab), generator=g, dtype=torch.float64) * scale for n in lengths]


def _setup(padding_side="right", extra_pad=0, seed=0, dtype=torch.float32):
    s_side = side_from_ids("student", _examples(seed, S_LEN, VS), padding_side=padding_side, extra_pad=extra_pad)
    t_side = side_from_ids("teacher", _examples(seed + 1, T_LEN, VT), padding_side=padding_side, extra_pad=extra_pad + 1)
    s_rows, t_rows = _rows(seed + 2, S_LEN, VS), _rows(seed + 3, T_LEN, VT)
    s_logits = place_rows(s_side, s_rows, junk_seed=seed + 5).to(dtype).requires_grad_(True)
    t_logits = place_rows(t_side, t_rows, junk_seed=seed + 6).to(dtype)
    return pair(s_side, t_side), s_logits, t_logits, s_rows, t_rows


def _rank_dist(row, k, temperature=1.0):
    """Plain float64: z-score over the vocabulary, k largest, softmax."""
    x = [float(v) for v in row]
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x) + 1e-8)
    top = sorted(((v - mean) / std for v in x), reverse=True)[:k]
    zmax = max(top)
    e = [math.exp((v - zmax) / temperature) for v in top]
    return [v / sum(e) for v in e]


def _sinkhorn_np(cost, eps, iters):
    """Textbook (non-log) Sinkhorn in float64 numpy: u = a / K v, v = b / K^T u, from v = 1."""
    m, n = cost.shape
    a, b = np.full(m, 1.0 / m), np.full(n, 1.0 / n)
    kern = np.exp(-cost / eps)
    v = np.ones(n)
    for _ in range(iters):
        u = a / (kern @ v)
        v = b / (kern.T @ u)
    plan = u[:, None] * kern * v[None, :]
    return float((plan * cost).sum())


def _reference(batch, s_rows, t_rows, *, k=K, eps=0.1, iters=20, positions="all", debias=False):
    ce = ab = lg = sk = 0.0
    for b in range(len(s_rows)):
        golds = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        for i, gold in enumerate(golds):
            row = s_rows[b][i].tolist()
            ce += math.log(sum(math.exp(v) for v in row)) - row[gold]
        qs = [_rank_dist(r, k) for r in s_rows[b]]
        qt = [_rank_dist(r, k) for r in t_rows[b]]
        for i in range(min(len(qs), len(qt))):
            ab += sum(abs(x - y) for x, y in zip(qs[i], qt[i]))
            lg += sum(y * (math.log(y) - math.log(x)) for x, y in zip(qs[i], qt[i]))
        if positions == "paired":
            m = min(len(qs), len(qt))
            qs, qt = qs[:m], qt[:m]
        if not qs or not qt:
            continue

        def cost(x, y):
            return np.array([[sum(abs(p - q) for p, q in zip(xi, yj)) for yj in y] for xi in x])

        value = _sinkhorn_np(cost(qt, qs), eps, iters)
        if debias:
            value -= 0.5 * (_sinkhorn_np(cost(qt, qt), eps, iters) + _sinkhorn_np(cost(qs, qs), eps, iters))
        sk += len(s_rows[b]) * value
    return {"ce": ce, "ot_abs": ab, "ot_log": lg, "ot_sinkhorn": sk}


def _method(**opts):
    opts.setdefault("top_k", K)
    return build_method("multilevel-ot", torch.nn.Identity(), torch.nn.Identity(), **opts)


@pytest.mark.parametrize(
    "opts",
    [{}, {"chunk_positions": 1}, {"sinkhorn_positions": "paired"}, {"sinkhorn_debias": True, "sinkhorn_iters": 7}],
)
def test_multilevel_ot_matches_float64_loops(opts):
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    terms = _method(**opts)(outputs(s_logits), outputs(t_logits), batch)
    ref = _reference(
        batch, s_rows, t_rows,
        iters=opts.get("sinkhorn_iters", 20),
        positions=opts.get("sinkhorn_positions", "all"),
        debias=opts.get("sinkhorn_debias", False),
    )
    for name, value in ref.items():
        assert terms.terms[name].item() == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert int(terms.n_tokens) == sum(S_LEN)
    assert terms.rates == {"ce": 0.5, "ot_abs": 0.5, "ot_log": 0.5, "ot_sinkhorn": 0.5}


def test_default_top_k_is_fifty_and_clipped_to_the_vocabulary():
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    m = build_method("multilevel-ot", torch.nn.Identity(), torch.nn.Identity())
    assert m.options.top_k == 50
    terms = m(outputs(s_logits), outputs(t_logits), batch)
    ref = _reference(batch, s_rows, t_rows, k=VS)  # 50 > both vocabularies: k = min(V_s, V_t)
    assert terms.terms["ot_abs"].item() == pytest.approx(ref["ot_abs"], rel=1e-4)


def test_gradient_matches_finite_differences_in_float64():
    batch, s_logits, t_logits, _, _ = _setup()
    s64 = s_logits.detach().double().requires_grad_(True)
    m = _method(sinkhorn_iters=5)
    torch.autograd.gradcheck(lambda z: m(outputs(z), outputs(t_logits.double()), batch).total(), (s64,), atol=1e-5, fast_mode=True)


def test_identical_sequences_give_zero_token_terms_and_zero_debiased_sinkhorn():
    s_side = side_from_ids("student", _examples(0, (3, 2), VS))
    t_side = side_from_ids("teacher", _examples(1, (3, 2), VS), padding_side="left", extra_pad=2)
    rows = _rows(4, (3, 2), VS)
    perm = torch.randperm(VS, generator=torch.Generator().manual_seed(3))
    s_logits = place_rows(s_side, rows).float().requires_grad_(True)
    t_logits = place_rows(t_side, [r[:, perm] for r in rows], junk_seed=9).float()
    terms = _method(sinkhorn_debias=True)(outputs(s_logits), outputs(t_logits), pair(s_side, t_side))
    for name in ("ot_abs", "ot_log", "ot_sinkhorn"):
        assert terms.terms[name].item() == pytest.approx(0.0, abs=1e-5), name
    terms.terms["ot_log"].backward()  # the smooth term: its gradient vanishes at identity too
    assert s_logits.grad.abs().max().item() < 1e-5


def test_teacher_gets_no_gradient_and_bf16_matches():
    batch, s_logits, t_logits, _, _ = _setup()
    t_logits.requires_grad_(True)
    m = _method()
    ref = m(outputs(s_logits), outputs(t_logits), batch)
    ref.total().backward()
    assert t_logits.grad is None and s_logits.grad.abs().sum() > 0
    got = m(outputs(s_logits.detach().bfloat16()), outputs(t_logits.detach().bfloat16()), batch)
    for name in ref.terms:
        assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=3e-2, abs=3e-2), name


def test_extreme_logits_and_empty_responses_stay_finite():
    s_side = side_from_ids("student", [([1], [2]), ([1, 2], [3, 4]), ([1, 2, 3], [])])
    t_side = side_from_ids("teacher", [([1], [5]), ([1, 2, 3], []), ([4], [])], padding_side="left")
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randint(0, 2, (3, s_side.target_mask.shape[1], VS), generator=g).float() * 2e4 - 1e4
    t_logits = torch.randint(0, 2, (3, t_side.target_mask.shape[1], VT), generator=g).float() * 2e4 - 1e4
    s_logits[0, 1] = 7.0  # a constant row (zero variance)
    t_logits[1:, 0] = float("nan")
    s_logits.requires_grad_(True)
    for opts in ({}, {"sinkhorn_debias": True}):
        terms = _method(**opts)(outputs(s_logits), outputs(t_logits), pair(s_side, t_side))
        assert torch.isfinite(terms.total())
        terms.total().backward()
        assert torch.isfinite(s_logits.grad).all()


def test_all_masked_batch_gives_zero_terms_with_a_graph():
    s_side = side_from_ids("student", [([1, 2], [])])
    t_side = side_from_ids("teacher", [([1], [])])
    s_logits = torch.randn(1, s_side.target_mask.shape[1], VS, requires_grad=True)
    terms = _method()(outputs(s_logits), outputs(torch.randn(1, t_side.target_mask.shape[1], VT)), pair(s_side, t_side))
    assert all(v.item() == 0.0 for v in terms.terms.values())
    terms.total().backward()
    assert torch.all(s_logits.grad == 0)


def test_options_are_validated():
    for bad, field in [({"top_k": 0}, "top_k"), ({"sinkhorn_epsilon": 0.0}, "sinkhorn_epsilon"),
                       ({"sinkhorn_positions": "some"}, "sinkhorn_positions"), ({"abs_weight": -1}, "abs_weight")]:
        with pytest.raises(ConfigError, match=field):
            validate_method_options("multilevel-ot", bad)


def test_thirty_adamw_steps_reduce_the_multilevel_ot_loss(tiny_teacher, tiny_student, tiny_dolly_path):
    (teacher, t_tok), (student, s_tok) = tiny_teacher, tiny_student
    student = copy.deepcopy(student).eval()
    batch = collated_batch(s_tok, t_tok, tiny_dolly_path, 4)
    method = build_method("multilevel-ot", student, teacher)
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses

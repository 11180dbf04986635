"""CDM against a plain float64 per-example loop (DTW, pair choice, contextual mapping, KL), plus the
batched DTW against a textbook DP, invariances, gradient routing and a training check."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from _cdm_ref import dtw_path, iou_cost, norm_entropy
from _methods_batches import collated_batch, pair, place_rows, side_from_ids, span_sides, train_losses
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options
from dwakd.methods.cdm import dtw_paths
from dwakd.models.outputs import ModelOutputs

VS, VT = 7, 11
# canonical-text ids per vocabulary entry; student 1 and 6 share a text (the context decides),
# teacher 9 has no text, teacher 4 and 5 share a text the student lacks.
TEXT_S = [0, 1, 2, 3, 4, 5, 1]
TEXT_T = [0, 1, 2, 3, 9, 9, 5, 6, 7, -1, 2]
SPANS = [
    ([(0, 2), (3, 4), (4, 5), (5, 5)], [(0, 1), (1, 2), (3, 5), (5, 5)]),
    ([(0, 3), (3, 3)], [(0, 1), (1, 3), (3, 3)]),
    ([(0, 3), (4, 6), (4, 6), (6, 7), (7, 7)], [(0, 3), (3, 4), (4, 6), (6, 7), (7, 7)]),
]


def _setup(padding_side="right", extra_pad=0, seed=0, dtype=torch.float32):
    s_side, t_side, s_spans, t_spans = span_sides(SPANS, VS, VT, seed=seed, padding_side=padding_side,
                                                  extra_pad=extra_pad)
    g = torch.Generator().manual_seed(seed + 2)
    s_rows = [torch.randn((len(s), VS), generator=g, dtype=torch.float64) * 2 for s in s_spans]
    t_rows = [torch.randn((len(t), VT), generator=g, dtype=torch.float64) * 2 for t in t_spans]
    sl = place_rows(s_side, s_rows, junk_seed=seed + 10).to(dtype).requires_grad_(True)
    tl = place_rows(t_side, t_rows, junk_seed=seed + 11).to(dtype)
    return pair(s_side, t_side), sl, tl, s_rows, t_rows


def _outs(logits):
    z = torch.zeros(logits.shape[:2] + (2,), dtype=logits.dtype)
    return ModelOutputs(logits=logits, hidden=z, input_embeds=z, target_embeds=z)


def _method(**opts):
    m = build_method("cdm", torch.nn.Identity(), torch.nn.Identity(), **opts)
    m.set_text_ids(torch.tensor(TEXT_S), torch.tensor(TEXT_T))
    return m


# ----------------------------------------------------------------------------- the reference
def _topk(row, k):
    return sorted(range(row.numel()), key=lambda v: -float(row[v]))[:k]


def _reference(batch, s_rows, t_rows, *, kt=3, ks=3, tau=1.0, weighted=True, max_cost=0.999, fallback=True):
    """(ce, kd, n_pairs) with autograd through the student rows (float64 loop per example)."""
    ce, kd, n_pairs = 0.0, 0.0, 0
    for b in range(len(s_rows)):
        s_sp, t_sp = SPANS[b]
        gold = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        lps = torch.log_softmax(s_rows[b], -1)
        ce = ce - sum(lps[k, g] for k, g in enumerate(gold))
        base = [[iou_cost(a, c) for c in t_sp] for a in s_sp]
        cost = base
        if weighted:
            cs = [1 - norm_entropy(s_rows[b][i].detach()) for i in range(len(s_sp))]
            ct = [1 - norm_entropy(t_rows[b][j]) for j in range(len(t_sp))]
            cost = [[base[i][j] * (1 + 0.5 * (cs[i] + ct[j])) for j in range(len(t_sp))] for i in range(len(s_sp))]
        path = dtw_path(cost)
        for i in range(len(s_sp)):
            js = sorted(j for (a, j) in path if a == i)
            j = min(js, key=lambda jj: (base[i][jj], jj))
            if base[i][j] > max_cost:
                continue
            s_cand = _topk(s_rows[b][i].detach(), ks)
            pt = torch.softmax(t_rows[b][j] / tau, -1)
            q = {}
            for v in _topk(t_rows[b][j], kt):
                u = next((u for u in s_cand if TEXT_T[v] >= 0 and TEXT_S[u] == TEXT_T[v]), None)
                if u is None and fallback and TEXT_T[v] >= 0:
                    u = next((u for u in range(VS) if TEXT_S[u] == TEXT_T[v]), None)
                if u is not None:
                    q[u] = q.get(u, 0.0) + float(pt[v])
            z = sum(q.values())
            if z <= 0:
                continue
            n_pairs += 1
            lp = torch.log_softmax(s_rows[b][i] / tau, -1)
            kd = kd + sum((m / z) * (math.log(m / z) - lp[u]) for u, m in q.items())
    return ce, kd, n_pairs


# ----------------------------------------------------------------------------- tests
def test_batched_dtw_matches_the_textbook_dp_on_ragged_random_costs():
    g = torch.Generator().manual_seed(3)
    lens = [(1, 1), (4, 2), (2, 5), (6, 6), (3, 1), (0, 3)]
    cost = torch.rand((len(lens), 6, 6), generator=g, dtype=torch.float64)
    cost[:, ::2, 1::3] = 0.5  # some ties
    paths = dtw_paths(cost, torch.tensor([a for a, _ in lens]), torch.tensor([c for _, c in lens]))
    for b, (n, m) in enumerate(lens):
        got = {tuple(x) for x in paths[b].nonzero().tolist()}
        want = dtw_path(cost[b, :n, :m].tolist()) if n and m else set()
        assert got == want, b


@pytest.mark.parametrize("opts", [{}, {"entropy_weighted": False}, {"global_fallback": False},
                                  {"temperature": 2.0, "teacher_topk": 5, "student_topk": 2},
                                  {"max_cost": 0.0}])
def test_terms_and_gradients_match_the_float64_loop(opts):
    batch, sl, tl, s_rows, t_rows = _setup(dtype=torch.float64)
    full = {"teacher_topk": 3, "student_topk": 3, **opts}
    terms = _method(**full)(_outs(sl), _outs(tl), batch)
    rows = [r.clone().requires_grad_(True) for r in s_rows]
    ce, kd, n_pairs = _reference(batch, rows, t_rows, kt=full["teacher_topk"], ks=full["student_topk"],
                                 tau=full.get("temperature", 1.0), weighted=full.get("entropy_weighted", True),
                                 max_cost=full.get("max_cost", 0.999), fallback=full.get("global_fallback", True))
    assert terms.stats["cdm_pairs"] == n_pairs
    assert terms.terms["ce"].item() == pytest.approx(float(ce.detach()), rel=1e-5)
    assert terms.terms["kd"].item() == pytest.approx(float(kd.detach()) if n_pairs else 0.0, rel=1e-5, abs=1e-7)
    if n_pairs:
        terms.terms["kd"].backward()
        kd.backward()
        for b in range(len(rows)):
            pos = batch.student.target_mask[b].nonzero().squeeze(1)
            want = rows[b].grad if rows[b].grad is not None else torch.zeros_like(rows[b])
            torch.testing.assert_close(sl.grad[b, pos], want, rtol=1e-4, atol=1e-6)


def test_padding_invariance_and_no_teacher_gradient():
    batch, sl, tl, *_ = _setup()
    ref = _method()(_outs(sl), _outs(tl), batch)
    for side, extra in (("left", 0), ("right", 3), ("left", 2)):
        batch2, sl2, tl2, *_ = _setup(padding_side=side, extra_pad=extra)
        tl2.requires_grad_(True)
        got = _method()(_outs(sl2), _outs(tl2), batch2)
        for name in ("ce", "kd"):
            assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=1e-6)
        got.total().backward()
        assert tl2.grad is None and sl2.grad is not None


def test_missing_tokenizers_and_bad_options_are_named():
    batch, sl, tl, *_ = _setup()
    bare = build_method("cdm", torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(ConfigError, match="tokenizers"):
        bare(_outs(sl), _outs(tl), batch)
    with pytest.raises(ConfigError, match="teacher_topk"):
        validate_method_options("cdm", {"teacher_topk": 0})
    with pytest.raises(ConfigError, match="max_cost"):
        validate_method_options("cdm", {"max_cost": 2})
    with pytest.raises(ConfigError, match="entropy_weighted"):
        validate_method_options("cdm", {"entropy_wieghted": True})


def test_empty_responses_give_zero_terms():
    s_side = side_from_ids("student", [([1, 2], [])], spans=[[]])
    t_side = side_from_ids("teacher", [([1], [])], spans=[[]])
    sl = torch.randn(1, s_side.target_mask.shape[1], VS, requires_grad=True)
    tl = torch.randn(1, t_side.target_mask.shape[1], VT)
    terms = _method()(_outs(sl), _outs(tl), pair(s_side, t_side))
    assert all(v.item() == 0.0 for v in terms.terms.values())
    terms.total().backward()


def test_twenty_adamw_steps_reduce_the_loss_on_the_tiny_pair(tiny_teacher, tiny_student, tiny_dolly_path):
    teacher, t_tok = tiny_teacher
    student, s_tok = copy.deepcopy(tiny_student[0]).eval(), tiny_student[1]
    batch = collated_batch(s_tok, t_tok, tiny_dolly_path, 4)
    method = build_method("cdm", student, teacher)
    method.attach_tokenizers(s_tok, t_tok)
    losses = train_losses(method, student, teacher, batch, steps=20)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses

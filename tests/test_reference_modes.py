"""Reference modes (issue 11): each preset against an independent float64 reference written from the
DESCRIBED official behaviour (METHOD.md section 6 and issue 11), not from dwakd's code.

MinED ``preset: dskd-code`` -- the official DSKD criterion:
- KD temperature 2.0; the student's CE at temperature 1;
- DTW over the INPUT tokens at the response positions, as ``dtw(teacher_tokens, student_tokens)``:
  back-tracking prefers the diagonal, then a teacher step, then a student step;
  edit-distance cost after removing the space marker;
- a student position takes the teacher's distribution only with exactly ONE DTW partner AND
  ``student_input_id == map[teacher_input_id]``; elsewhere the target is the one-hot gold token;
- the teacher distribution in the student vocabulary: for each student id, the logit of the FIRST
  (lowest) teacher id mapped to it; student ids no teacher id maps to get probability 0.
(DSKD-CMA ``cma_std: padded-batch`` and DWA-KD ``preset: authors-code`` are held to the float64
reference of tests/_methods_ref.py in test_methods_dskd.py / test_methods_dwakd.py; AKL's official
alpha in test_divergences.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _methods_batches import outputs, pair, place_rows, side_from_ids
from dwakd.methods import build_method

S_STR = ["Ġthe", "Ġcat", "s", "Ġsat", "Ġon", "Ġa", "Ġmat", "."]
T_STR = ["Ġthe", "Ġca", "t", "s", "Ġsat", "Ġon", "Ġa", "Ġma", "Ġcats", ".", "Ġthem"]
# teacher id -> student id: many-to-one (1, 8 -> 1; 2, 3 -> 2; 0, 10 -> 0), unmapped 7
T2S = [0, 1, 2, 2, 3, 4, 5, -1, 1, 7, 0]
VS, VT = len(S_STR), len(T_STR)


class _Tok:
    def __init__(self, table):
        self.table = table

    def convert_ids_to_tokens(self, ids):
        return [self.table[int(i)] for i in ids]


def _lev(a: str, b: str) -> int:
    d = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[-1]


def _teacher_first_dtw(t_tokens, s_tokens):
    """Per student index, the list of teacher indices on the DTW path (matrix indexed [teacher, student])."""
    n, m = len(t_tokens), len(s_tokens)
    inf = math.inf
    acc = [[inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = _lev(t_tokens[i - 1].replace("Ġ", ""), s_tokens[j - 1].replace("Ġ", ""))
            acc[i][j] = cost + min(acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1])
    partners = [[] for _ in range(m)]
    i, j = n, m
    while True:
        partners[j - 1].append(i - 1)
        if i == 1 and j == 1:
            break
        options = [acc[i - 1][j - 1] if i > 1 and j > 1 else inf,  # diagonal first
                   acc[i - 1][j] if i > 1 else inf,                 # then a teacher step
                   acc[i][j - 1] if j > 1 else inf]                 # then a student step
        move = options.index(min(options))
        i, j = (i - 1, j - 1) if move == 0 else ((i - 1, j) if move == 1 else (i, j - 1))
    return partners


def _examples(seed, lengths, vocab):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (2 + b,), generator=g).tolist(), torch.randint(0, vocab, (n,), generator=g).tolist())
            for b, n in enumerate(lengths)]


def _official_mined(batch, s_rows, t_rows, temperature=2.0, kd_rate=0.5):
    """(loss, ce, kd) in float64 with autograd through ``s_rows`` (list of [n_b, VS] leaves)."""
    first = {}
    for u, v in enumerate(T2S):  # the FIRST teacher id of each student id
        if v >= 0 and v not in first:
            first[v] = u
    ce = kd = torch.zeros((), dtype=torch.float64)
    for b, z_s in enumerate(s_rows):
        s_mask, t_mask = batch.student.target_mask[b], batch.teacher.target_mask[b]
        s_in, t_in = batch.student.input_ids[b][s_mask].tolist(), batch.teacher.input_ids[b][t_mask].tolist()
        gold = batch.student.target_ids[b][s_mask]
        partners = _teacher_first_dtw([T_STR[i] for i in t_in], [S_STR[i] for i in s_in])
        ce = ce + F.cross_entropy(z_s, gold, reduction="sum")
        logp = torch.log_softmax(z_s / temperature, -1)
        for k in range(len(s_in)):
            ok = len(partners[k]) == 1 and T2S[t_in[partners[k][0]]] == s_in[k]
            if not ok:
                kd = kd - logp[k, gold[k]]
                continue
            z_t = t_rows[b][partners[k][0]]
            target = torch.full((VS,), -math.inf, dtype=torch.float64)
            for v, u in first.items():
                target[v] = z_t[u] / temperature
            q = torch.softmax(target, -1)
            kd = kd + sum(q[v] * (math.log(q[v]) - logp[k, v]) for v in range(VS) if q[v] > 0)
    return (1 - kd_rate) * ce + kd_rate * kd, ce, kd


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("seed", [0, 1, 20])  # seed 20: a DTW tie that the back-tracking order decides
def test_mined_dskd_code_preset_matches_the_official_criterion(padding_side, seed):
    s_side = side_from_ids("student", _examples(seed, (5, 4, 6), VS), padding_side=padding_side, extra_pad=1)
    t_side = side_from_ids("teacher", _examples(seed + 10, (4, 6, 5), VT), padding_side=padding_side, extra_pad=2)
    g = torch.Generator().manual_seed(seed + 20)
    s_rows = [torch.randn(int(m.sum()), VS, generator=g, dtype=torch.float64) * 3 for m in s_side.target_mask]
    t_rows = [torch.randn(int(m.sum()), VT, generator=g, dtype=torch.float64) * 3 for m in t_side.target_mask]
    s_logits = place_rows(s_side, s_rows, junk_seed=seed + 5).float().requires_grad_(True)
    t_logits = place_rows(t_side, t_rows, junk_seed=seed + 6).float()
    batch = pair(s_side, t_side)
    method = build_method("mined", torch.nn.Identity(), torch.nn.Identity(), preset="dskd-code")
    method.set_vocab_map(torch.tensor(T2S))
    method.attach_tokenizers(_Tok(S_STR), _Tok(T_STR))
    out = method(outputs(s_logits), outputs(t_logits), batch)
    t32 = [r.float().double() for r in t_rows]  # the teacher rows as the method sees them (float32)
    s32 = [r.float().double().requires_grad_(True) for r in s_rows]
    loss, ce, kd = _official_mined(batch, s32, t32)
    assert out.terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5, abs=1e-6)
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5, abs=1e-6)
    out.total().backward()
    loss.backward()
    for b in range(len(s32)):
        got = s_logits.grad[b][s_side.target_mask[b]].double()
        torch.testing.assert_close(got, s32[b].grad, rtol=1e-4, atol=1e-6)
    # the preset is not the default: the default criterion gives a different kd on the same batch
    default = build_method("mined", torch.nn.Identity(), torch.nn.Identity())
    default.set_vocab_map(torch.tensor(T2S))
    default.attach_tokenizers(_Tok(S_STR), _Tok(T_STR))
    other = default(outputs(s_logits.detach()), outputs(t_logits), batch).terms["kd"].item()
    assert other != pytest.approx(kd.item(), rel=1e-3)

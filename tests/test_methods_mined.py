"""MinED against a dict-based float64 loop, plus alignment rules, invariances, numerics, training."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch

from _baselines_mined_ref import dtw_pairs, vocab_map
from _methods_batches import collated_batch, outputs, pair, place_rows, side_from_ids, train_losses
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options

VS, VT = 6, 9
# teacher id -> student id: many-to-one (1, 2 -> 3; 5, 8 -> 0), unmapped (4, 7)
VOCAB_MAP = [2, 3, 3, 5, -1, 0, 1, -1, 0]
S_LEN, T_LEN = (4, 3, 1), (3, 5, 1)
# response-index DTW pairs per example: example 0 has a 2-to-1 (i=1,2 -> j=1) and a 1-to-2 (i=3 -> j=1? no: j=2)
PAIRS = [
    [(0, 0), (1, 1), (2, 1), (3, 2)],
    [(0, 0), (0, 1), (1, 2), (2, 3), (2, 4)],
    [(0, 0)],
]


def _examples(seed, lengths, vocab):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, vocab, (1 + b,), generator=g).tolist(), torch.randint(0, vocab, (n,), generator=g).tolist())
        for b, n in enumerate(lengths)
    ]


def _rows(seed, lengths, vocab, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, vocab), generator=g, dtype=torch.float64) * scale for n in lengths]


def _setup(padding_side="right", extra_pad=0, seed=0, dtype=torch.float32):
    s_side = side_from_ids("student", _examples(seed, S_LEN, VS), padding_side=padding_side, extra_pad=extra_pad)
    t_side = side_from_ids("teacher", _examples(seed + 1, T_LEN, VT), padding_side=padding_side, extra_pad=extra_pad + 2)
    s_rows, t_rows = _rows(seed + 2, S_LEN, VS), _rows(seed + 3, T_LEN, VT)
    s_logits = place_rows(s_side, s_rows, junk_seed=seed + 5).to(dtype).requires_grad_(True)
    t_logits = place_rows(t_side, t_rows, junk_seed=seed + 6).to(dtype)
    return pair(s_side, t_side, extras={"mined_pairs": PAIRS}), s_logits, t_logits, s_rows, t_rows


def _method(vmap=VOCAB_MAP, **opts):
    m = build_method("mined", torch.nn.Identity(), torch.nn.Identity(), **opts)
    m.set_vocab_map(torch.tensor(vmap))
    return m


def _partners(pairs, match):
    s_count = Counter(i for i, _ in pairs)
    t_count = Counter(j for _, j in pairs)
    out = {}
    for i, j in pairs:
        if s_count[i] == 1 and (match == "single_teacher" or t_count[j] == 1):
            out[i] = j
    return out


def _reference(batch, s_rows, t_rows, match="one_to_one", temperature=1.0):
    """Dict-based float64 loop: (ce_sum, kd_sum)."""
    ce = kd = 0.0
    for b in range(len(s_rows)):
        golds = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        partners = _partners(PAIRS[b], match)
        for i, gold in enumerate(golds):
            row = s_rows[b][i].tolist()
            lse1 = math.log(sum(math.exp(v) for v in row))
            ce += lse1 - row[gold]
            lse = math.log(sum(math.exp(v / temperature) for v in row))
            logps = [v / temperature - lse for v in row]
            if i not in partners:
                kd += -logps[gold]
                continue
            merged = {}
            for u, v in enumerate(VOCAB_MAP):
                if v >= 0:
                    merged[v] = max(merged.get(v, -math.inf), t_rows[b][partners[i]][u].item() / temperature)
            lse_t = math.log(sum(math.exp(x) for x in merged.values()))
            kd += sum(math.exp(x - lse_t) * (x - lse_t - logps[v]) for v, x in merged.items())
    return ce, kd


@pytest.mark.parametrize("match", ["one_to_one", "single_teacher"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_mined_matches_dict_loop(match, chunk):
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    terms = _method(match=match, chunk_positions=chunk)(outputs(s_logits), outputs(t_logits), batch)
    ce_ref, kd_ref = _reference(batch, s_rows, t_rows, match)
    assert terms.terms["ce"].item() == pytest.approx(ce_ref, rel=1e-5)
    assert terms.terms["kd"].item() == pytest.approx(kd_ref, rel=1e-5)
    assert int(terms.n_tokens) == sum(S_LEN)


def test_temperature_and_tensor_pairs():
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    padded = torch.full((3, 5, 2), -1, dtype=torch.long)
    for b, pairs in enumerate(PAIRS):
        padded[b, : len(pairs)] = torch.tensor(pairs)
    batch.extras["mined_pairs"] = padded
    terms = _method(temperature=2.0)(outputs(s_logits), outputs(t_logits), batch)
    _, kd_ref = _reference(batch, s_rows, t_rows, temperature=2.0)
    assert terms.terms["kd"].item() == pytest.approx(kd_ref, rel=1e-5)


def test_gradient_matches_float64_autograd():
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    _method(chunk_positions=1)(outputs(s_logits), outputs(t_logits), batch).total().backward()
    rows = [r.clone().requires_grad_(True) for r in s_rows]
    total = 0.0
    vmap = torch.tensor(VOCAB_MAP)
    for b in range(len(rows)):
        golds = batch.student.target_ids[b][batch.student.target_mask[b]]
        logp = torch.log_softmax(rows[b], -1)
        partners = _partners(PAIRS[b], "one_to_one")
        for i in range(len(golds)):
            total = total - 0.5 * logp[i, golds[i]]
            if i in partners:
                t = t_rows[b][partners[i]]
                merged = torch.full((VS,), -math.inf, dtype=torch.float64)
                for u in range(VT):
                    if vmap[u] >= 0:
                        merged[vmap[u]] = torch.maximum(merged[vmap[u]], t[u])
                q = torch.softmax(merged, -1)
                keep = q > 0
                total = total + 0.5 * (q[keep] * (q[keep].log() - logp[i][keep])).sum()
            else:
                total = total - 0.5 * logp[i, golds[i]]
    total.backward()
    for b in range(len(rows)):
        pos = batch.student.target_mask[b].nonzero().squeeze(1)
        torch.testing.assert_close(s_logits.grad[b, pos].double(), rows[b].grad, rtol=1e-4, atol=1e-6)


def test_identical_mapped_distribution_gives_zero_kd():
    # identity vocabulary map and identical logits, every position aligned one-to-one -> kd = 0
    s_side = side_from_ids("student", _examples(0, (3, 2), VS))
    t_side = side_from_ids("teacher", _examples(1, (3, 2), VS), padding_side="left", extra_pad=1)
    rows = _rows(4, (3, 2), VS)
    s_logits = place_rows(s_side, rows).float().requires_grad_(True)
    t_logits = place_rows(t_side, rows, junk_seed=9).float()
    batch = pair(s_side, t_side, extras={"mined_pairs": [[(0, 0), (1, 1), (2, 2)], [(0, 0), (1, 1)]]})
    terms = _method(vmap=list(range(VS)))(outputs(s_logits), outputs(t_logits), batch)
    assert terms.terms["kd"].item() == pytest.approx(0.0, abs=1e-5)
    terms.terms["kd"].backward()
    assert s_logits.grad.abs().max().item() < 1e-6


def test_teacher_gets_no_gradient_and_bf16_matches():
    batch, s_logits, t_logits, _, _ = _setup()
    t_logits.requires_grad_(True)
    m = _method()
    ref = m(outputs(s_logits), outputs(t_logits), batch)
    ref.total().backward()
    assert t_logits.grad is None and s_logits.grad.abs().sum() > 0
    got = m(outputs(s_logits.detach().bfloat16()), outputs(t_logits.detach().bfloat16()), batch)
    for name in ref.terms:
        assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=2e-2, abs=2e-2)


def test_extreme_logits_and_empty_responses_stay_finite():
    s_side = side_from_ids("student", [([1], [2]), ([1, 2], [3, 4]), ([1, 2, 3], [])])
    t_side = side_from_ids("teacher", [([1], [5]), ([1, 2, 3], []), ([4], [])], padding_side="left")
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randint(0, 2, (3, s_side.target_mask.shape[1], VS), generator=g).float() * 2e4 - 1e4
    t_logits = torch.randint(0, 2, (3, t_side.target_mask.shape[1], VT), generator=g).float() * 2e4 - 1e4
    t_logits[1:, 0] = float("nan")  # teacher padding rows are never read
    s_logits.requires_grad_(True)
    batch = pair(s_side, t_side, extras={"mined_pairs": [[(0, 0)], [], []]})
    terms = _method()(outputs(s_logits), outputs(t_logits), batch)
    assert torch.isfinite(terms.total())
    terms.total().backward()
    assert torch.isfinite(s_logits.grad).all()


def test_missing_map_and_alignments_are_explained():
    batch, s_logits, t_logits, _, _ = _setup()
    m = build_method("mined", torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(ConfigError, match="attach_tokenizers"):
        m(outputs(s_logits), outputs(t_logits), batch)
    m.set_vocab_map(torch.tensor(VOCAB_MAP))
    batch.extras.clear()
    with pytest.raises(ConfigError, match="attach_tokenizers"):
        m(outputs(s_logits), outputs(t_logits), batch)
    with pytest.raises(ConfigError, match="maps no teacher token"):
        m.set_vocab_map(torch.full((VT,), -1))
    with pytest.raises(ConfigError, match="match"):
        validate_method_options("mined", {"match": "many"})
    with pytest.raises(ConfigError, match="vocab_map_path"):
        validate_method_options("mined", {"vocab_map_path": "/nonexistent/map.pt"})


def test_vocab_map_path_option(tmp_path):
    path = tmp_path / "map.pt"
    torch.save(torch.tensor(VOCAB_MAP), path)
    batch, s_logits, t_logits, s_rows, t_rows = _setup()
    m = build_method("mined", torch.nn.Identity(), torch.nn.Identity(), vocab_map_path=str(path))
    m.attach_tokenizers(object(), object())  # a loaded map is kept; tokenizers are only stored
    _, kd_ref = _reference(batch, s_rows, t_rows)
    assert m(outputs(s_logits), outputs(t_logits), batch).terms["kd"].item() == pytest.approx(kd_ref, rel=1e-5)


def _tiny_setup(tiny_teacher, tiny_student, tiny_dolly_path, n=4):
    (teacher, t_tok), (student, s_tok) = tiny_teacher, tiny_student
    batch = collated_batch(s_tok, t_tok, tiny_dolly_path, n)
    return teacher, t_tok, copy.deepcopy(student).eval(), s_tok, batch


def test_tokenizer_path_matches_independent_alignment_and_uses_the_cache(
    tiny_teacher, tiny_student, tiny_dolly_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path))
    teacher, t_tok, student, s_tok, batch = _tiny_setup(tiny_teacher, tiny_student, tiny_dolly_path)
    from dwakd.models.outputs import run_model

    with torch.no_grad():
        s_out, t_out = run_model(student, batch.student), run_model(teacher, batch.teacher)
    method = build_method("mined", student, teacher)
    method.attach_tokenizers(s_tok, t_tok)
    assert method.vocab_map.numel() == len(t_tok)
    assert list((tmp_path / "vocab_maps").glob("*.pt")), "the vocabulary map was not cached on disk"
    got = method(s_out, t_out, batch)
    assert len(method._cache) == batch.batch_size
    # the same batch with alignments from the plain reference DTW, same vocabulary map
    pairs = []
    for b in range(batch.batch_size):
        s_ids = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        t_ids = batch.teacher.target_ids[b][batch.teacher.target_mask[b]].tolist()
        pairs.append(dtw_pairs(s_tok.convert_ids_to_tokens(s_ids), t_tok.convert_ids_to_tokens(t_ids)))
    batch.extras["mined_pairs"] = pairs
    ref = method(s_out, t_out, batch)
    assert got.terms["kd"].item() == pytest.approx(ref.terms["kd"].item(), rel=1e-6)
    assert 0.0 < got.stats["mined_aligned_frac"] <= 1.0


def test_thirty_adamw_steps_reduce_the_mined_loss(tiny_teacher, tiny_student, tiny_dolly_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path))
    teacher, t_tok, student, s_tok, batch = _tiny_setup(tiny_teacher, tiny_student, tiny_dolly_path)
    method = build_method("mined", student, teacher)
    method.attach_tokenizers(s_tok, t_tok)  # what dwakd.train.engine.call_method_hooks does
    losses = train_losses(method, student, teacher, batch, steps=30)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_reference_vocab_map_agrees_with_the_align_module_on_ordinary_tokens(tiny_teacher, tiny_student):
    from dwakd.align import build_vocab_map

    (_, t_tok), (_, s_tok) = tiny_teacher, tiny_student
    got = build_vocab_map(t_tok, s_tok, cache=False).tolist()
    ref = vocab_map(t_tok.get_vocab(), s_tok.get_vocab(), s_tok.all_special_ids)
    special = set(t_tok.all_special_ids)
    ordinary = [i for i in range(len(t_tok)) if i not in special]
    same = sum(got[i] == ref[i] for i in ordinary)
    assert same == len(ordinary), f"{len(ordinary) - same} ordinary teacher tokens map differently"


def test_all_masked_batch_gives_zero_terms_with_a_graph():
    s_side = side_from_ids("student", [([1, 2], [])])
    t_side = side_from_ids("teacher", [([1], [])])
    s_logits = torch.randn(1, s_side.target_mask.shape[1], VS, requires_grad=True)
    t_logits = torch.randn(1, t_side.target_mask.shape[1], VT)
    batch = pair(s_side, t_side, extras={"mined_pairs": [[]]})
    terms = _method()(outputs(s_logits), outputs(t_logits), batch)
    assert all(v.item() == 0.0 for v in terms.terms.values()) and int(terms.n_tokens) == 0
    terms.total().backward()
    assert torch.all(s_logits.grad == 0)

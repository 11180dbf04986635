"""ALM against a plain float64 per-example loop on hand-built chunk examples, plus invariances,
gradient routing, option checks and a short training check on the tiny fixture pair."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from _methods_batches import collated_batch, pair, place_rows, side_from_ids, span_sides, train_losses
from dwakd.errors import ConfigError
from dwakd.methods import build_method, validate_method_options
from dwakd.methods.alm import span_chunks
from dwakd.models.outputs import ModelOutputs

VS, VT, DS, DT = 7, 11, 3, 5

# Hand-built: (student response spans, teacher response spans), each list ending with the EOS.
# Example 0: "ab c" style. Student "ab" | "c"+"de" ; teacher "a" "b" | "cd" "e".
#   common boundaries: 2 (after ab), 5 (end) -> chunks {ab}, {c de}/{cd e}, {eos}.
# Example 1: student one token over 0..3, teacher 0..1, 1..3 -> one chunk, then EOS.
# Example 2: a whitespace-only teacher token (3, 4) the student folds away; student piece-of-char
#   tokens (4, 6), (4, 6) overlap, teacher covers 4..6 with one token.
SPANS = [
    ([(0, 2), (3, 4), (4, 5), (5, 5)], [(0, 1), (1, 2), (3, 5), (5, 5)]),
    ([(0, 3), (3, 3)], [(0, 1), (1, 3), (3, 3)]),
    ([(0, 3), (4, 6), (4, 6), (6, 7), (7, 7)], [(0, 3), (3, 4), (4, 6), (6, 7), (7, 7)]),
]
# Chunk partitions written by hand (student chunk ids, teacher chunk ids), ids up to a renumbering.
EXPECTED = [
    ([0, 1, 1, 2], [0, 0, 1, 2]),
    ([0, 1], [0, 0, 1]),
    ([0, 2, 2, 3, 4], [0, 1, 2, 3, 4]),
]


def _setup(padding_side="right", extra_pad=0, seed=0, spans=SPANS, dtype=torch.float32):
    s_side, t_side, s_spans, t_spans = span_sides(spans, VS, VT, seed=seed, padding_side=padding_side,
                                                  extra_pad=extra_pad)
    g = torch.Generator().manual_seed(seed + 2)
    s_rows = [torch.randn((len(s), VS), generator=g, dtype=torch.float64) * 2 for s in s_spans]
    t_rows = [torch.randn((len(t), VT), generator=g, dtype=torch.float64) * 2 for t in t_spans]
    s_hid = [torch.randn((len(s) + 1, DS), generator=g, dtype=torch.float64) for s in s_spans]
    t_hid = [torch.randn((len(t) + 1, DT), generator=g, dtype=torch.float64) for t in t_spans]
    s_logits = place_rows(s_side, s_rows, junk_seed=seed + 10).to(dtype).requires_grad_(True)
    t_logits = place_rows(t_side, t_rows, junk_seed=seed + 11).to(dtype)
    s_hidden = _place_hidden(s_side, s_hid, seed + 12).to(dtype).requires_grad_(True)
    t_hidden = _place_hidden(t_side, t_hid, seed + 13).to(dtype)
    return pair(s_side, t_side), (s_logits, s_hidden), (t_logits, t_hidden), s_rows, t_rows, s_hid, t_hid


def _place_hidden(side, rows, junk_seed):
    """Hidden rows: rows[b][k] at the k-th response position (k < n) and at the position after the
    last one (k = n: the state that has read the last target token); junk elsewhere."""
    bsz, width = side.target_mask.shape
    g = torch.Generator().manual_seed(junk_seed)
    out = torch.randn((bsz, width, rows[0].shape[1]), generator=g, dtype=torch.float64) * 5
    for b in range(bsz):
        pos = side.target_mask[b].nonzero().squeeze(1)
        pos = torch.cat([pos, pos[-1:] + 1])
        out[b, pos] = rows[b]
    return out


def _outs(logits, hidden):
    return ModelOutputs(logits=logits, hidden=hidden, input_embeds=hidden, target_embeds=hidden)


def _method(**opts):
    return build_method("alm", torch.nn.Identity(), torch.nn.Identity(), **opts)


# ----------------------------------------------------------------------------- the reference
def _boundaries(spans):
    """Every character offset c >= 1 that no span of the side straddles (brute force)."""
    top = max(e for _, e in spans)
    return {c for c in range(1, top + 1) if not any(s < c < e for s, e in spans)}


def _ref_chunks(s_spans, t_spans):
    common = sorted(_boundaries(s_spans) & _boundaries(t_spans))
    return ([sum(c <= s for c in common) for s, _ in s_spans], [sum(c <= s for c in common) for s, _ in t_spans])


def _log_softmax(row, gold):
    vals = row.tolist()
    m = max(vals)
    return vals[gold] - m - math.log(sum(math.exp(v - m) for v in vals))


def _l1mexp(x):
    return math.log(-math.expm1(x))


def _f(kind, lt, ls, temp):
    if kind == "abs":
        return abs(lt - ls)
    a, b = lt / temp - 1e-6, ls / temp - 1e-6
    yt, ys = math.exp(a), math.exp(b)
    if kind == "abs_exp":
        return abs(yt - ys)
    ce = -(yt * b + (1 - yt) * _l1mexp(b))
    if kind == "binary_ce":
        return ce
    if kind == "binary_kl":
        return ce + yt * a + (1 - yt) * _l1mexp(a)
    return ys * (b - a) + (1 - ys) * (_l1mexp(b) - _l1mexp(a))  # reverse_binary_kl


def _reference(batch, s_rows, t_rows, s_hid, t_hid, proj=None, *, kind="binary_ce", temp=100.0,
               weight="chunk", norm="l2_channelwise"):
    ce, alm, pairs = 0.0, 0.0, []
    for b in range(len(s_rows)):
        s_gold = batch.student.target_ids[b][batch.student.target_mask[b]].tolist()
        t_gold = batch.teacher.target_ids[b][batch.teacher.target_mask[b]].tolist()
        s_lp = [_log_softmax(s_rows[b][k], g) for k, g in enumerate(s_gold)]
        t_lp = [_log_softmax(t_rows[b][k], g) for k, g in enumerate(t_gold)]
        ce -= sum(s_lp)
        s_ids, t_ids = _ref_chunks(*SPANS[b])
        for c in sorted(set(s_ids) & set(t_ids)):
            ks = [k for k, i in enumerate(s_ids) if i == c]
            kt = [k for k, i in enumerate(t_ids) if i == c]
            ls, lt = min(0.0, sum(s_lp[k] for k in ks)), min(0.0, sum(t_lp[k] for k in kt))
            alm += _f(kind, lt, ls, temp) * (1 if weight == "chunk" else len(kt))
            pairs.append((s_hid[b][ks[-1] + 1], t_hid[b][kt[-1] + 1]))
    hidden = None
    if proj is not None:
        hs = torch.stack([proj(a) for a, _ in pairs])
        ht = torch.stack([t for _, t in pairs])
        scale = (ht ** 2).mean(0) if norm == "l2_channelwise" else (ht ** 2).mean()
        hidden = float((((hs.detach() - ht) ** 2) / (scale + 1e-8)).mean(-1).sum())
    return ce, alm, hidden


# ----------------------------------------------------------------------------- tests
def _dense(s_ids, t_ids):
    rank = {v: i for i, v in enumerate(sorted(set(s_ids) | set(t_ids)))}
    return [rank[v] for v in s_ids], [rank[v] for v in t_ids]


def test_chunks_match_the_hand_written_partitions_and_the_brute_force_reference():
    batch, *_ = _setup()
    ch = span_chunks(batch.student.target_spans, batch.student.target_mask,
                     batch.teacher.target_spans, batch.teacher.target_mask)
    for b, (exp_s, exp_t) in enumerate(EXPECTED):
        got_s = ch.student[b][batch.student.target_mask[b]].tolist()
        got_t = ch.teacher[b][batch.teacher.target_mask[b]].tolist()
        # the same partition as the brute-force reference and the hand-written one (ids renumbered
        # densely: empty chunks between boundaries that only the reference enumerates disappear)
        assert _dense(got_s, got_t) == _dense(*_ref_chunks(*SPANS[b])) == (exp_s, exp_t)


@pytest.mark.parametrize("kind", ["binary_ce", "binary_kl", "reverse_binary_kl", "abs_exp", "abs"])
@pytest.mark.parametrize("weight", ["chunk", "teacher_tokens"])
def test_terms_match_the_float64_loop(kind, weight):
    batch, (sl, sh), (tl, th), s_rows, t_rows, s_hid, t_hid = _setup()
    temp = 100.0 if kind != "abs_exp" else 3.0
    terms = _method(divergence=kind, chunk_weight=weight, binarization_temp=temp)(_outs(sl, sh), _outs(tl, th), batch)
    ce, alm, _ = _reference(batch, s_rows, t_rows, s_hid, t_hid, kind=kind, temp=temp, weight=weight)
    assert terms.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms.terms["alm"].item() == pytest.approx(alm, rel=1e-4, abs=1e-7)
    assert int(terms.n_tokens) == sum(len(s) for s, _ in SPANS)
    assert terms.stats["alm_chunks"] == 3 + 2 + 4


def test_gradient_matches_float64_autograd_of_the_loop():
    batch, (sl, sh), (tl, th), s_rows, t_rows, s_hid, t_hid = _setup(dtype=torch.float64)
    terms = _method(divergence="binary_kl", binarization_temp=2.0)(_outs(sl, sh), _outs(tl, th), batch)
    terms.terms["alm"].backward()
    rows = [r.clone().requires_grad_(True) for r in s_rows]
    total = 0.0
    for b, r in enumerate(rows):  # the same loop in torch float64 for autograd
        gold = batch.student.target_ids[b][batch.student.target_mask[b]]
        s_lp = torch.log_softmax(r, -1).gather(1, gold[:, None]).squeeze(1)
        t_gold = batch.teacher.target_ids[b][batch.teacher.target_mask[b]]
        t_lp = torch.log_softmax(t_rows[b], -1).gather(1, t_gold[:, None]).squeeze(1)
        s_ids, t_ids = _ref_chunks(*SPANS[b])
        for c in sorted(set(s_ids) & set(t_ids)):
            ls = sum(s_lp[k] for k, i in enumerate(s_ids) if i == c).clamp(max=0) / 2.0 - 1e-6
            lt = sum(t_lp[k] for k, i in enumerate(t_ids) if i == c).clamp(max=0) / 2.0 - 1e-6
            yt = lt.exp()
            l1 = lambda x: torch.log(-torch.expm1(x))  # noqa: E731
            total = total - (yt * ls + (1 - yt) * l1(ls)) + yt * lt + (1 - yt) * l1(lt)
    total.backward()
    for b in range(len(rows)):
        pos = batch.student.target_mask[b].nonzero().squeeze(1)
        torch.testing.assert_close(sl.grad[b, pos], rows[b].grad, rtol=1e-4, atol=1e-7)
        other = torch.ones(sl.shape[1], dtype=torch.bool)
        other[pos] = False
        assert torch.all(sl.grad[b, other] == 0)


def test_hidden_term_matches_the_loop_and_routes_gradients():
    batch, (sl, sh), (tl, th), s_rows, t_rows, s_hid, t_hid = _setup(dtype=torch.float64)
    student, teacher = torch.nn.Module(), torch.nn.Module()
    student.config, teacher.config = SimpleNamespace(hidden_size=DS), SimpleNamespace(hidden_size=DT)
    th.requires_grad_(True)
    tl.requires_grad_(True)
    for norm in ("l2_channelwise", "l2"):
        method = build_method("alm", student, teacher, hidden_rate=0.5, hidden_norm=norm).double()
        terms = method(_outs(sl, sh), _outs(tl, th), batch)
        _, _, ref = _reference(batch, s_rows, t_rows, s_hid, t_hid, proj=method.latent_proj, norm=norm)
        assert terms.terms["hidden"].item() == pytest.approx(ref, rel=1e-9)
        assert terms.rates["hidden"] == pytest.approx(0.25)
    terms.total().backward()
    assert method.latent_proj.weight.grad is not None and method.latent_proj.weight.grad.abs().sum() > 0
    assert sh.grad is not None and sh.grad.abs().sum() > 0
    assert th.grad is None and tl.grad is None  # the teacher gets nothing


@pytest.mark.parametrize("padding_side,extra_pad", [("left", 0), ("right", 3), ("left", 2)])
def test_padding_invariance(padding_side, extra_pad):
    ref_batch, (sl, sh), (tl, th), *_ = _setup()
    ref = _method()(_outs(sl, sh), _outs(tl, th), ref_batch)
    batch, (sl2, sh2), (tl2, th2), *_ = _setup(padding_side=padding_side, extra_pad=extra_pad)
    got = _method()(_outs(sl2, sh2), _outs(tl2, th2), batch)
    for name in ("ce", "alm"):
        assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=1e-6)


def test_identical_chunk_likelihoods_give_zero_binary_kl():
    spans = [([(0, 1), (1, 2), (2, 2)], [(0, 1), (1, 2), (2, 2)])]
    batch, (sl, sh), (tl, th), *_ = _setup(spans=spans)
    sp = batch.student.target_mask[0].nonzero().squeeze(1)
    tp = batch.teacher.target_mask[0].nonzero().squeeze(1)
    batch.teacher.target_ids[0, tp] = batch.student.target_ids[0, sp]
    t_logits = torch.full_like(tl, -1e4)  # the teacher's extra vocabulary has no mass
    t_logits[0, tp, :VS] = sl.detach()[0, sp]
    terms = _method(divergence="binary_kl")(_outs(sl, sh), _outs(t_logits, th), batch)
    assert terms.stats["alm_chunks"] == 3
    assert abs(terms.terms["alm"].item()) < 1e-6


def test_empty_responses_give_zero_terms_with_a_graph():
    s_side = side_from_ids("student", [([1, 2], [])], spans=[[]])
    t_side = side_from_ids("teacher", [([1], [])], spans=[[]])
    sl = torch.randn(1, s_side.target_mask.shape[1], VS, requires_grad=True)
    tl = torch.randn(1, t_side.target_mask.shape[1], VT)
    h = torch.zeros(1, sl.shape[1], DS)
    terms = _method()(_outs(sl, h), _outs(tl, torch.zeros(1, tl.shape[1], DT)), pair(s_side, t_side))
    assert all(v.item() == 0.0 for v in terms.terms.values())
    terms.total().backward()
    assert sl.grad is None or bool(torch.all(sl.grad == 0))


def test_options_are_validated():
    with pytest.raises(ConfigError, match="divergence"):
        validate_method_options("alm", {"divergence": "kl"})
    with pytest.raises(ConfigError, match="binarization_temp"):
        validate_method_options("alm", {"binarization_temp": 0})
    with pytest.raises(ConfigError, match="kd_rate"):
        validate_method_options("alm", {"kd_rate": 2})
    with pytest.raises(ConfigError, match="hidden_rate"):
        validate_method_options("alm", {"hiden_rate": 1})
    assert validate_method_options("alm", {"chunk_weight": "teacher_tokens"}).chunk_weight == "teacher_tokens"


def test_twenty_adamw_steps_reduce_the_loss_on_the_tiny_pair(tiny_teacher, tiny_student, tiny_dolly_path):
    teacher, t_tok = tiny_teacher
    student = copy.deepcopy(tiny_student[0]).eval()
    batch = collated_batch(tiny_student[1], t_tok, tiny_dolly_path, 4)
    method = build_method("alm", student, teacher, hidden_rate=0.1)
    first = method(*_run(student, teacher, batch), batch)
    assert first.stats["alm_chunks"] > 10 and first.stats["alm_tokens_per_chunk"] >= 1.0
    losses = train_losses(method, student, teacher, batch, steps=20)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def _run(student, teacher, batch):
    from dwakd.models.outputs import run_model

    with torch.no_grad():
        return run_model(student, batch.student), run_model(teacher, batch.teacher)


# ----------------------------------------------------------------------------- debiasing (tokenkit's alm_mode)
# The reference below is written from tokenkit's compute_alm_loss (tokenkit/training/losses.py) as a
# plain per-example loop: chunk log-likelihoods from brute-force common boundaries; a chunk's space
# log-probability per side = log of the softmax mass on the space mask in the row after the chunk's
# last target (only when that row is a response position on both sides); merging walks the counted
# chunks in order and closes a merged chunk at a chunk without space term or whose teacher space
# probability exceeds the threshold (summing log-likelihoods and teacher token counts, keeping the last
# member's space terms); append_space adds the space terms.
def _tf(kind, lt, ls, temp):
    if kind == "abs":
        return (lt - ls).abs()
    a, b = lt / temp - 1e-6, ls / temp - 1e-6
    yt = a.exp()
    return -(yt * b + (1 - yt) * torch.log(-torch.expm1(b)))  # binary_ce


def _ref_debiased(batch, s_logits, t_logits, masks, *, append=True, merge=True, thr=0.1, kind="binary_ce",
                  temp=100.0, weight="chunk"):
    total, n_chunks = torch.zeros((), dtype=torch.float64), 0
    for b in range(batch.batch_size):
        sides = []
        for side, logits, mask in ((batch.student, s_logits, masks[0]), (batch.teacher, t_logits, masks[1])):
            toks = []  # (position, span, gold log-prob)
            for p in side.target_mask[b].nonzero().flatten().tolist():
                start, end = (int(v) for v in side.target_spans[b, p])
                if start >= 0:
                    toks.append((p, (start, end), torch.log_softmax(logits[b, p].double(), -1)[side.target_ids[b, p]]))

            def space(p, b=b, side=side, logits=logits, mask=mask):
                nxt = p + 1
                if nxt >= side.target_mask.shape[1] or not bool(side.target_mask[b, nxt]):
                    return None
                row = logits[b, nxt].double()
                m = torch.zeros(row.shape[0], dtype=torch.bool)
                m[:mask.numel()] = mask[:row.shape[0]]
                return torch.clamp(torch.logsumexp(row[m], 0) - torch.logsumexp(row, 0), max=0.0)
            sides.append((toks, space))
        s_ids, t_ids = _ref_chunks([sp for _, sp, _ in sides[0][0]], [sp for _, sp, _ in sides[1][0]])
        chunks = []
        for c in sorted(set(s_ids) & set(t_ids)):
            s_in = [t for t, i in zip(sides[0][0], s_ids) if i == c]
            t_in = [t for t, i in zip(sides[1][0], t_ids) if i == c]
            ls = torch.clamp(sum(lp for _, _, lp in s_in), max=0.0)
            lt = torch.clamp(sum(lp for _, _, lp in t_in), max=0.0)
            ss, ts = sides[0][1](max(p for p, _, _ in s_in)), sides[1][1](max(p for p, _, _ in t_in))
            chunks.append((ls, lt, len(t_in), None if ss is None or ts is None else (ss, ts)))
        if merge:
            merged, cur = [], None
            for ls, lt, nt, sp in chunks:
                cur = (ls, lt, nt, sp) if cur is None else (cur[0] + ls, cur[1] + lt, cur[2] + nt, sp)
                if sp is None or math.exp(float(sp[1])) > thr:
                    merged.append(cur)
                    cur = None
            chunks = merged + ([cur] if cur is not None else [])
        for ls, lt, nt, sp in chunks:
            if append and sp is not None:
                ls, lt = ls + sp[0], lt + sp[1]
            total = total + _tf(kind, lt, ls, temp) * (1 if weight == "chunk" else nt)
            n_chunks += 1
    return total, n_chunks


# hand-picked masks: the teacher's space probabilities fall on both sides of 0.1 on the SPANS batch
MASKS = (torch.tensor([i in (0, 4) for i in range(VS)]), torch.tensor([i == 3 for i in range(VT)]))


def _debiased(**opts):
    m = _method(**opts)
    m.set_space_masks(*MASKS)
    return m


@pytest.mark.parametrize("append,merge", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("kind,weight", [("binary_ce", "chunk"), ("abs", "teacher_tokens")])
def test_debiased_terms_and_gradients_match_the_tokenkit_loop(append, merge, kind, weight):
    batch, (sl, sh), (tl, th), *_ = _setup(dtype=torch.float64)
    method = _debiased(append_space=append, merge_by_space_prob=merge, divergence=kind, chunk_weight=weight)
    terms = method(_outs(sl, sh), _outs(tl, th), batch)
    ref_sl = sl.detach().clone().requires_grad_(True)
    ref, n_chunks = _ref_debiased(batch, ref_sl, tl, MASKS, append=append, merge=merge, kind=kind, weight=weight)
    assert terms.terms["alm"].item() == pytest.approx(float(ref.detach()), rel=1e-6)
    assert terms.stats["alm_chunks"] == n_chunks
    if merge:  # the batch exercises merging: some chunks merge, not all of an example's do
        assert 3 < n_chunks < 9
    terms.terms["alm"].backward()
    ref.backward()
    torch.testing.assert_close(sl.grad, ref_sl.grad, rtol=1e-4, atol=1e-7)


def test_debiasing_changes_the_term_and_tokenkit_preset_is_both_modes():
    batch, (sl, sh), (tl, th), *_ = _setup(dtype=torch.float64)
    plain = _method()(_outs(sl, sh), _outs(tl, th), batch)
    tk = _debiased(preset="tokenkit", divergence="abs")(_outs(sl, sh), _outs(tl, th), batch)
    ref, _ = _ref_debiased(batch, sl, tl, MASKS, kind="abs")
    assert tk.terms["alm"].item() == pytest.approx(float(ref.detach()), rel=1e-6)
    ref_plain, _ = _ref_debiased(batch, sl, tl, MASKS, append=False, merge=False)
    assert plain.terms["alm"].item() == pytest.approx(float(ref_plain.detach()), rel=1e-6)
    assert tk.stats["alm_spaced_chunks"] > 0 and "alm_spaced_chunks" not in plain.stats


def test_merge_threshold_extremes_by_hand():
    batch, (sl, sh), (tl, th), s_rows, t_rows, *_ = _setup(dtype=torch.float64)
    # threshold 0: every chunk with a following row closes (all space probabilities are > 0) -> no merge
    a = _debiased(append_space=True, merge_by_space_prob=True, space_prob_threshold=0.0)(_outs(sl, sh), _outs(tl, th), batch)
    b = _debiased(append_space=True)(_outs(sl, sh), _outs(tl, th), batch)
    assert a.terms["alm"].item() == pytest.approx(b.terms["alm"].item(), rel=1e-9)
    # threshold 1: nothing closes before the EOS chunk (no following row): one chunk per example whose
    # log-likelihood is that of all tokens in counted chunks (EXPECTED, written by hand: example 2's
    # teacher-only whitespace token is left out), with no space term
    c = _debiased(merge_by_space_prob=True, space_prob_threshold=1.0, divergence="abs")(
        _outs(sl, sh), _outs(tl, th), batch)
    assert c.stats["alm_chunks"] == len(SPANS)
    want = 0.0
    for bi, (s_ids, t_ids) in enumerate(EXPECTED):
        s_gold = batch.student.target_ids[bi][batch.student.target_mask[bi]].tolist()
        t_gold = batch.teacher.target_ids[bi][batch.teacher.target_mask[bi]].tolist()
        both = set(s_ids) & set(t_ids)
        want += abs(sum(_log_softmax(t_rows[bi][k], g) for k, g in enumerate(t_gold) if t_ids[k] in both)
                    - sum(_log_softmax(s_rows[bi][k], g) for k, g in enumerate(s_gold) if s_ids[k] in both))
    assert c.terms["alm"].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("padding_side,extra_pad", [("left", 0), ("right", 3), ("left", 2)])
def test_debiased_padding_invariance(padding_side, extra_pad):
    ref_batch, (sl, sh), (tl, th), *_ = _setup()
    ref = _debiased(preset="tokenkit")(_outs(sl, sh), _outs(tl, th), ref_batch)
    batch, (sl2, sh2), (tl2, th2), *_ = _setup(padding_side=padding_side, extra_pad=extra_pad)
    got = _debiased(preset="tokenkit")(_outs(sl2, sh2), _outs(tl2, th2), batch)
    for name in ("ce", "alm"):
        assert got.terms[name].item() == pytest.approx(ref.terms[name].item(), rel=1e-6)


def test_debiased_hidden_rows_plus_head_equal_materialised_logits():
    batch, *_ = _setup(dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    grads, values = [], []
    for lazy in (False, True):
        hs = torch.randn(*batch.student.target_mask.shape, DS, generator=g.manual_seed(5), dtype=torch.float64)
        ht = torch.randn(*batch.teacher.target_mask.shape, DT, generator=g.manual_seed(6), dtype=torch.float64)
        ws = torch.randn(VS, DS, generator=g.manual_seed(7), dtype=torch.float64).requires_grad_(True)
        wt = torch.randn(VT, DT, generator=g.manual_seed(8), dtype=torch.float64)
        hs.requires_grad_(True)
        if lazy:
            so = ModelOutputs(logits=None, hidden=hs, input_embeds=hs, target_embeds=hs, head_weight=ws)
            to = ModelOutputs(logits=None, hidden=ht, input_embeds=ht, target_embeds=ht, head_weight=wt)
        else:
            so, to = _outs(hs @ ws.t(), hs), _outs(ht @ wt.t(), ht)
        terms = _debiased(preset="tokenkit")(so, to, batch)
        terms.terms["alm"].backward()
        values.append(terms.terms["alm"].item())
        grads.append((hs.grad, ws.grad))
    assert values[1] == pytest.approx(values[0], rel=1e-9)
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_debiasing_options_presets_and_missing_masks():
    plain = validate_method_options("alm", {})
    assert (plain.preset, plain.append_space, plain.merge_by_space_prob) == ("plain", False, False)
    tk = validate_method_options("alm", {"preset": "tokenkit"})
    assert (tk.append_space, tk.merge_by_space_prob, tk.space_prob_threshold) == (True, True, 0.1)
    assert validate_method_options("alm", {"preset": "tokenkit", "merge_by_space_prob": False}).merge_by_space_prob is False
    with pytest.raises(ConfigError, match="space_prob_threshold"):
        validate_method_options("alm", {"space_prob_threshold": 1.5})
    with pytest.raises(ConfigError, match="preset"):
        validate_method_options("alm", {"preset": "paper"})
    batch, (sl, sh), (tl, th), *_ = _setup()
    with pytest.raises(ConfigError, match="tokenizers"):
        _method(append_space=True)(_outs(sl, sh), _outs(tl, th), batch)
    with pytest.raises(ConfigError, match="no whitespace-initial"):
        _method(append_space=True).set_space_masks(torch.zeros(VS, dtype=torch.bool), MASKS[1])


def _ref_space_mask(tok):
    """Independent of the token spellings: decode each id after an anchor token and look at the first
    character that the id adds; special ids count too (tokenkit's space+tab+newline+special)."""
    special = set(tok.all_special_ids)
    anchor = next(i for i in range(len(tok)) if i not in special and tok.decode([i]).isalnum())
    prefix = tok.decode([anchor], clean_up_tokenization_spaces=False)
    out = []
    for i in range(len(tok)):
        text = tok.decode([anchor, i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert text.startswith(prefix)
        out.append(i in special or text[len(prefix):][:1] in (" ", "\n", "\t"))
    return torch.tensor(out)


def test_space_masks_of_the_tiny_pair_and_the_debiased_term_on_a_real_batch(tiny_teacher, tiny_student, tiny_dolly_path):
    from dwakd.methods._alm_space import space_initial_mask

    teacher, t_tok = tiny_teacher
    student, s_tok = tiny_student
    masks = (_ref_space_mask(s_tok), _ref_space_mask(t_tok))  # unigram/Metaspace student, byte-level teacher
    assert torch.equal(space_initial_mask(s_tok), masks[0]) and torch.equal(space_initial_mask(t_tok), masks[1])
    assert 10 < int(masks[0].sum()) < len(s_tok) and 10 < int(masks[1].sum()) < len(t_tok)
    student = copy.deepcopy(student).eval()
    batch = collated_batch(s_tok, t_tok, tiny_dolly_path, 3)
    method = build_method("alm", student, teacher, preset="tokenkit", divergence="abs")
    method.attach_tokenizers(s_tok, t_tok)
    s_out, t_out = _run(student, teacher, batch)
    terms = method(s_out, t_out, batch)
    ref, n_chunks = _ref_debiased(batch, s_out.logits, t_out.logits, masks, kind="abs")
    assert terms.terms["alm"].item() == pytest.approx(float(ref.detach()), rel=1e-5)
    assert terms.stats["alm_chunks"] == n_chunks and terms.stats["alm_spaced_chunks"] > 10

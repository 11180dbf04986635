"""Exact token alignment (ETA pairs) and character overlap, against plain loops; ``dwakd align``."""

from __future__ import annotations

import random
import unicodedata

import pytest
import torch

from _data_tokenizers import bpe_student, minilm, qwen2, smollm2, unigram
from dwakd.align.spans import (
    clean_span_mask,
    exact_alignment_matrix,
    exact_token_alignment,
    pairs_to_matrix,
    span_overlap,
)
from dwakd.data import collate_pairs, encode_pair


def pad_rows(rows, width=None):
    """[B, L, 2] tensor from lists of spans (-1 padded)."""
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width, 2), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            out[b, : len(r)] = torch.tensor(r)
    return out


def naive_pairs(s_rows, t_rows):
    """The rule written as plain loops: identical non-empty spans that overlap no other span of their
    row; plus the empty span at the last spanned position of both rows when equal."""

    def clean(row, i):
        s, e = row[i]
        if s < 0 or e <= s:
            return False
        return all(not (s2 >= 0 and e2 > s2 and min(e, e2) > max(s, s2)) for k, (s2, e2) in enumerate(row) if k != i)

    out = []
    for b, (srow, trow) in enumerate(zip(s_rows, t_rows)):
        found = []
        for i in range(len(srow)):
            for j in range(len(trow)):
                if srow[i] == trow[j] and clean(srow, i) and clean(trow, j):
                    found.append((b, i, j))
        ls = max((i for i, sp in enumerate(srow) if sp[0] >= 0), default=None)
        lt = max((j for j, sp in enumerate(trow) if sp[0] >= 0), default=None)
        if ls is not None and lt is not None and srow[ls][0] == srow[ls][1] and srow[ls] == trow[lt]:
            found.append((b, ls, lt))
        out.extend(sorted(found))
    return out


def as_list(pairs):
    return list(zip(pairs.batch.tolist(), pairs.student.tolist(), pairs.teacher.tolist()))


# --------------------------------------------------------------------------- by hand
def test_hand_example():
    # student: "Hi", " there", emoji in 2 pieces, "!", EOS   (response "Hi there🤗!", len 10)
    s = [(-1, -1), (0, 2), (3, 8), (8, 9), (8, 9), (9, 10), (10, 10), (-1, -1)]
    # teacher: "H", "i", " there", emoji whole, "!", EOS
    t = [(-1, -1), (-1, -1), (0, 1), (1, 2), (3, 8), (8, 9), (9, 10), (10, 10)]
    pairs = exact_token_alignment(pad_rows([s]), pad_rows([t]))
    # " there" (2, 4), "!" (5, 6), EOS (6, 7); the student's emoji pieces overlap each other: no pair.
    assert as_list(pairs) == [(0, 2, 4), (0, 5, 6), (0, 6, 7)]
    assert clean_span_mask(pad_rows([s])).tolist() == [[False, True, True, False, False, True, False, False]]
    m = exact_alignment_matrix(pad_rows([s]), pad_rows([t]))
    assert m.shape == (1, 8, 8) and m.sum().item() == 3 and m[0, 2, 4].item() == 1


def test_no_eos_pair_when_truncated_and_unbatched_input():
    s = torch.tensor([[0, 3], [4, 6]])
    t = torch.tensor([[0, 3], [3, 6]])
    assert as_list(exact_token_alignment(s, t)) == [(0, 0, 0)]
    assert as_list(exact_token_alignment(s, t, include_eos=False)) == [(0, 0, 0)]
    s_eos = torch.tensor([[0, 3], [6, 6]])
    t_eos = torch.tensor([[0, 3], [3, 6], [6, 6]])
    assert as_list(exact_token_alignment(s_eos, t_eos)) == [(0, 0, 0), (0, 1, 2)]
    assert as_list(exact_token_alignment(s_eos, t_eos, include_eos=False)) == [(0, 0, 0)]


def test_overlap_by_hand():
    s = pad_rows([[(0, 5), (5, 8), (8, 8)]])
    t = pad_rows([[(0, 2), (2, 6), (6, 8), (8, 8), (-1, -1)]])
    ov = span_overlap(s, t)
    assert ov.tolist() == [[[2, 3, 0, 0, 0], [0, 1, 2, 0, 0], [0, 0, 0, 0, 0]]]
    assert ov.dtype == torch.float32


# --------------------------------------------------------------------------- random vs loops
def random_row(rng, text_len, n_pad_front):
    """Monotone spans like the encoder's: words, whitespace gaps, split characters, EOS."""
    row = [(-1, -1)] * n_pad_front
    pos = 0
    while pos < text_len:
        kind = rng.random()
        if kind < 0.15:  # a character split into 2-3 pieces
            row += [(pos, pos + 1)] * rng.randint(2, 3)
            pos += 1
        elif kind < 0.25:  # whitespace gap
            pos += 1
        elif kind < 0.3:  # zero-width marker
            row.append((pos, pos))
        else:
            n = rng.randint(1, 4)
            row.append((pos, min(text_len, pos + n)))
            pos = min(text_len, pos + n)
    if rng.random() < 0.8:
        row.append((text_len, text_len))
    return row + [(-1, -1)] * rng.randint(0, 3)


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_the_loops(seed):
    rng = random.Random(seed)
    bsz = rng.randint(1, 4)
    s_rows, t_rows = [], []
    for _ in range(bsz):
        n = rng.randint(0, 30)
        s_rows.append(random_row(rng, n, rng.randint(0, 4)))
        t_rows.append(random_row(rng, n, rng.randint(0, 4)))
    s, t = pad_rows(s_rows), pad_rows(t_rows)
    s_rows = [r + [(-1, -1)] * (s.shape[1] - len(r)) for r in s_rows]
    t_rows = [r + [(-1, -1)] * (t.shape[1] - len(r)) for r in t_rows]
    assert as_list(exact_token_alignment(s, t)) == naive_pairs(s_rows, t_rows)
    ov = span_overlap(s, t)
    ov_small = span_overlap(s, t, max_elements=7)  # chunked path
    for b in range(bsz):
        for i, (a0, a1) in enumerate(s_rows[b]):
            for j, (b0, b1) in enumerate(t_rows[b]):
                want = 0 if a0 < 0 or b0 < 0 else max(0, min(a1, b1) - max(a0, b0))
                assert ov[b, i, j].item() == want
    assert torch.equal(ov, ov_small)
    pairs = exact_token_alignment(s, t)
    assert torch.equal(pairs_to_matrix(pairs, (bsz, s.shape[1], t.shape[1])), exact_alignment_matrix(s, t))


def test_empty_inputs():
    e = exact_token_alignment(torch.zeros(2, 0, 2, dtype=torch.long), torch.zeros(2, 5, 2, dtype=torch.long))
    assert len(e) == 0
    assert span_overlap(torch.zeros(1, 0, 2), torch.zeros(1, 3, 2)).shape == (1, 0, 3)
    with pytest.raises(ValueError, match="batch sizes differ"):
        exact_token_alignment(torch.zeros(1, 2, 2), torch.zeros(2, 2, 2))


# --------------------------------------------------------------------------- real tokenizer pairs
TEXTS = [
    " Sunlight scatters off air molecules, and blue light scatters the most.",
    "Emoji 🤗 and CJK 日本語 and café, naïve — plus\ttabs\nand lines.",
    "1234567 + 89 = 1234656; `x = f(y)`",
]


@pytest.mark.parametrize("make", [(bpe_student, smollm2), (smollm2, qwen2), (unigram, minilm), (minilm, qwen2)],
                         ids=lambda m: f"{m[0].__name__}-{m[1].__name__}")
def test_every_exact_pair_has_identical_token_text(make):
    s_tok, t_tok = make[0](), make[1]()
    encs = [encode_pair("Q:", r, s_tok, t_tok, max_length=256, max_prompt_length=8) for r in TEXTS]
    batch = collate_pairs(encs, s_tok, t_tok)
    pairs = exact_token_alignment(batch.student.target_spans, batch.teacher.target_spans)
    assert len(pairs) > 10
    per_row = {}
    for b, i, j in as_list(pairs):
        per_row[b] = per_row.get(b, 0) + 1
        sp_s, sp_t = batch.student.target_spans[b, i].tolist(), batch.teacher.target_spans[b, j].tolist()
        assert sp_s == sp_t
        s_id, t_id = batch.student.target_ids[b, i].item(), batch.teacher.target_ids[b, j].item()
        text = batch.responses[b][sp_s[0]: sp_s[1]]
        if sp_s[0] == sp_s[1]:  # the EOS pair
            assert s_id == encs[b].student.input_ids[-1] and t_id == encs[b].teacher.input_ids[-1]
            continue
        for tok, tid in ((s_tok, s_id), (t_tok, t_id)):
            if tok is minilm():  # uncased, accents stripped
                piece = tok.convert_ids_to_tokens(tid).removeprefix("##")
                folded = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
                assert piece in (folded, "[UNK]"), (piece, text)
            else:
                piece = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(tid)]).replace("\u2581", " ")
                assert text in (piece, piece.lstrip()) or piece == "<unk>", (piece, text)
    assert sorted(per_row) == list(range(len(TEXTS)))
    # the overlap matrix puts each exact pair's full length on its cell
    ov = span_overlap(batch.student.target_spans, batch.teacher.target_spans)
    for b, i, j in as_list(pairs):
        s0, s1 = batch.student.target_spans[b, i].tolist()
        assert ov[b, i, j].item() == s1 - s0
        assert ov[b, i].sum().item() == s1 - s0  # a clean token overlaps only its partner


# --------------------------------------------------------------------------- dwakd align
def test_cli_align_text_and_data(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, capsys):
    from dwakd.cli.main import main

    out = tmp_path / "plots" / "a.png"
    rc = main(["align", "--teacher", str(tiny_teacher_dir), "--student", str(tiny_student_dir),
               "--text", "The capital of France is Paris.", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "exact pairs:" in text and "==" in text and "heatmap:" in text
    rc = main(["align", "--teacher", str(tiny_teacher_dir), "--student", str(tiny_student_dir),
               "--data", str(tiny_dolly_path), "--index", "2", "--no-plot"])
    text = capsys.readouterr().out
    assert rc == 0 and "spider" in text.lower()
    rc = main(["align", "--teacher", str(tiny_teacher_dir), "--student", str(tiny_student_dir),
               "--data", str(tiny_dolly_path), "--index", "99", "--no-plot"])
    assert rc == 2 and "out of range" in capsys.readouterr().err


def test_side_by_side_rows_walk_both_sides_in_order():
    from dwakd.cli.align import side_by_side_rows

    s = [(0, 2), (3, 8), (8, 9), (8, 9), (9, 10), (10, 10)]
    t = [(0, 1), (1, 2), (3, 8), (8, 9), (9, 10), (10, 10)]
    pairs = {1: 2, 4: 4, 5: 5}
    rows = side_by_side_rows(s, t, pairs)
    assert rows == [(0, 0, "~"), (0, 1, "~"), (1, 2, "=="), (2, 3, "~"), (3, None, "<"), (4, 4, "=="), (5, 5, "==")]
    # every token of each side appears, in order
    assert sorted({i for i, _, _ in rows if i is not None}) == list(range(len(s)))
    assert sorted({j for _, j, _ in rows if j is not None}) == list(range(len(t)))

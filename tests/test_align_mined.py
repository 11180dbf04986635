"""MinED: DTW token alignment and the vocabulary map, against plain-Python references; the disk cache."""

from __future__ import annotations

import random
from functools import cache

import numpy as np
import pytest
import torch

from dwakd.align import mined
from dwakd.align.mined import (
    build_vocab_map,
    compute_vocab_map,
    dtw_path,
    mined_token_alignment,
    normalize_token,
    token_cost_matrix,
    vocab_map_path,
)


def lev(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def naive_dtw(cost):
    n, m = len(cost), len(cost[0]) if cost else 0
    if n == 0 or m == 0:
        return []
    inf = float("inf")
    d = [[inf] * (m + 1) for _ in range(n + 1)]
    d[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = cost[i - 1][j - 1] + min(d[i - 1][j - 1], d[i - 1][j], d[i][j - 1])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = min((d[i - 1][j - 1], 0), (d[i - 1][j], 1), (d[i][j - 1], 2))[1]
        i, j = [(i - 1, j - 1), (i - 1, j), (i, j - 1)][step]
    return path[::-1]


def test_normalize_token():
    assert normalize_token("Ġhello") == "hello"
    assert normalize_token("▁hello") == "hello"
    assert normalize_token("##ing") == "ing"
    assert normalize_token("##") == "##"
    assert normalize_token("ĠĠ") == ""
    assert normalize_token("Ċ") == "Ċ"
    assert normalize_token("a▁b") == "ab"


@pytest.mark.parametrize("seed", range(8))
def test_dtw_matches_the_plain_dp_with_ties(seed):
    rng = random.Random(seed)
    n, m = rng.randint(1, 12), rng.randint(1, 12)
    cost = [[rng.randint(0, 2) for _ in range(m)] for _ in range(n)]  # many ties
    assert dtw_path(np.array(cost)) == naive_dtw(cost)


def test_dtw_path_shape():
    rng = np.random.default_rng(0)
    cost = rng.random((30, 17))
    path = dtw_path(cost)
    assert path[0] == (0, 0) and path[-1] == (29, 16)
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1 - i0, j1 - j0) in ((1, 1), (1, 0), (0, 1))
    assert dtw_path(np.zeros((0, 3))) == []


def test_token_costs_are_levenshtein_of_normalised_strings():
    s = ["ĠHello", "Ġwor", "ld", "!", "Ċ"]
    t = ["▁Hel", "lo", "▁world", "##!", "\n"]
    got = token_cost_matrix(s, t)
    want = [[lev(normalize_token(a), normalize_token(b)) for b in t] for a in s]
    assert got.tolist() == want


def test_mined_alignment_by_hand():
    s = ["ĠHello", "Ġwor", "ld"]
    t = ["▁Hel", "lo", "▁world"]
    # costs: Hello/Hel 2, Hello/lo 3, Hello/world 4; wor/Hel 3, wor/lo 2, wor/world 2; ld/Hel 3, ld/lo 1, ld/world 3
    # paths: (0,0)(0,1)(1,2)(2,2): 2+3+2+3 = 10; (0,0)(1,1)(2,2): 2+2+3 = 7; (0,0)(1,1)(1,2)(2,2): 9
    # best is the diagonal, total 7.
    assert mined_token_alignment(s, t) == [(0, 0), (1, 1), (2, 2)]
    assert mined_token_alignment(["Ġa", "Ġb"], ["a", "x", "b"]) == [(0, 0), (0, 1), (1, 2)]
    assert mined_token_alignment([], ["a"]) == []


def test_identical_sequences_align_on_the_diagonal():
    toks = ["ĠThe", "Ġcat", "Ġsat", "."]
    assert mined_token_alignment(toks, toks) == [(k, k) for k in range(4)]


# --------------------------------------------------------------------------- vocabulary map
@cache
def small_pair():
    """(teacher, student): a Unigram of 180 and a byte-level BPE of 300, trained on the fixtures."""
    from conftest import fixture_texts
    from dwakd.models import train_tokenizer

    texts = fixture_texts()
    return train_tokenizer(texts, kind="unigram", vocab_size=180), train_tokenizer(texts, kind="bpe", vocab_size=300)


def naive_vocab_map(teacher, student):
    """The rules of dwakd.align.mined written plainly."""
    roles = ("eos_token", "bos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")
    t_vocab = {i: t for t, i in teacher.get_vocab().items()}
    s_vocab = {i: t for t, i in student.get_vocab().items()}
    t_special, s_special = set(teacher.all_special_ids), set(student.all_special_ids)
    ordinary = [(i, s_vocab[i]) for i in sorted(s_vocab) if i not in s_special]
    out = []
    for tid in range(len(teacher)):
        tok = t_vocab.get(tid)
        if tok is None:
            out.append(-1)
        elif tid in t_special:
            same = [i for i in sorted(s_special) if s_vocab.get(i) == tok]
            if same:
                out.append(same[0])
            else:
                role = [r for r in roles if getattr(teacher, f"{r}_id", None) == tid and getattr(student, f"{r}_id", None) is not None]
                out.append(getattr(student, f"{role[0]}_id") if role else -1)
        else:
            same = [i for i, t in ordinary if t == tok]
            if same:
                out.append(same[0])
            else:
                c = normalize_token(tok)
                out.append(min(ordinary, key=lambda it: (lev(c, normalize_token(it[1])), it[0]))[0])
    return out


@pytest.mark.parametrize("direction", ["unigram->bpe", "bpe->unigram"])
def test_vocab_map_matches_the_plain_rules(direction):
    uni, bpe = small_pair()
    teacher, student = (uni, bpe) if direction == "unigram->bpe" else (bpe, uni)
    got = compute_vocab_map(teacher, student, workers=1, chunk=7)  # small chunks: exercise the loop
    assert got.dtype == torch.long and got.shape == (len(teacher),)
    assert got.tolist() == naive_vocab_map(teacher, student)


def test_vocab_map_special_tokens_by_role():
    uni, bpe = small_pair()
    vm = compute_vocab_map(uni, bpe)
    # both were trained with <s> </s> <pad> <unk>: same text -> same role token
    for name in ("<s>", "</s>", "<pad>", "<unk>"):
        assert vm[uni.convert_tokens_to_ids(name)].item() == bpe.convert_tokens_to_ids(name)
    specials = set(bpe.all_special_ids)
    ordinary = [t for t in range(len(uni)) if t not in set(uni.all_special_ids)]
    assert not any(vm[t].item() in specials for t in ordinary)


# --------------------------------------------------------------------------- cache
def test_vocab_map_cache_roundtrip_and_rebuild(tmp_path, monkeypatch):
    from dwakd.models import train_tokenizer

    uni, bpe = small_pair()
    calls = []
    real = mined.compute_vocab_map

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mined, "compute_vocab_map", counting)
    first = build_vocab_map(uni, bpe, cache_dir=tmp_path)
    path = vocab_map_path(uni, bpe, tmp_path)
    assert path.is_file() and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    again = build_vocab_map(uni, bpe, cache_dir=tmp_path)
    assert torch.equal(first, again) and len(calls) == 1
    # a changed student tokenizer gets its own key and a new build
    from conftest import fixture_texts

    other = train_tokenizer(fixture_texts(), kind="bpe", vocab_size=310)
    assert vocab_map_path(uni, other, tmp_path) != path
    build_vocab_map(uni, other, cache_dir=tmp_path)
    assert len(calls) == 2
    # adding a token changes the hash too
    bpe2 = train_tokenizer(fixture_texts(), kind="bpe", vocab_size=300)
    assert vocab_map_path(uni, bpe2, tmp_path) == path  # same content, same key
    bpe2.add_tokens(["<extra>"])
    assert vocab_map_path(uni, bpe2, tmp_path) != path
    # a corrupt file is rebuilt
    path.write_bytes(b"not a torch file")
    rebuilt = build_vocab_map(uni, bpe, cache_dir=tmp_path)
    assert torch.equal(rebuilt, first) and len(calls) == 3
    # without cache nothing is read or written
    build_vocab_map(uni, bpe, cache=False)
    assert len(calls) == 4


def test_vocab_map_default_cache_dir_is_under_dwakd_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path))
    uni, bpe = small_pair()
    build_vocab_map(uni, bpe)
    files = list((tmp_path / "vocab_maps").glob("*.pt"))
    assert len(files) == 1 and files[0] == vocab_map_path(uni, bpe)

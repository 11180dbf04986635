"""A small, plain reference of the MinED alignment contract, for tests only.

``dtw_pairs(student_tokens, teacher_tokens)``: DTW over token strings with Levenshtein cost
(space markers ``Ġ``/``▁`` stripped), returning the monotone path as ``(i, j)`` pairs;
``vocab_map(teacher_vocab, student_vocab)``: teacher id -> student id by minimum edit distance.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _clean(tok: str) -> str:
    return tok.replace("Ġ", "").replace("▁", "")


def dtw_pairs(student_tokens, teacher_tokens):
    n, m = len(student_tokens), len(teacher_tokens)
    if n == 0 or m == 0:
        return []
    inf = float("inf")
    d = [[inf] * (m + 1) for _ in range(n + 1)]
    d[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = levenshtein(_clean(student_tokens[i - 1]), _clean(teacher_tokens[j - 1]))
            d[i][j] = c + min(d[i - 1][j - 1], d[i - 1][j], d[i][j - 1])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = min((d[i - 1][j - 1], 0), (d[i - 1][j], 1), (d[i][j - 1], 2))[1]
        i, j = (i - 1, j - 1) if step == 0 else ((i - 1, j) if step == 1 else (i, j - 1))
    return path[::-1]


def vocab_map(teacher_vocab: dict, student_vocab: dict, student_special=()) -> list[int]:
    """teacher_vocab / student_vocab: token -> id. Returns a list indexed by teacher id.
    Student ids in ``student_special`` are never the image of an inexact match."""
    size = max(teacher_vocab.values()) + 1
    out = [-1] * size
    s_items = [(_clean(t), i) for t, i in student_vocab.items() if i not in set(student_special)]
    for tok, tid in teacher_vocab.items():
        if tok in student_vocab:
            out[tid] = student_vocab[tok]
            continue
        c = _clean(tok)
        out[tid] = min(s_items, key=lambda it: (levenshtein(c, it[0]), it[1]))[1]
    return out

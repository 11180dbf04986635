"""ROUGE-L against hand-computed longest common subsequences and F-measures."""

from __future__ import annotations

import random

import pytest

from dwakd.errors import DataError
from dwakd.eval.rouge import rouge_l, rouge_l_corpus, rouge_l_scores


def f_measure(lcs: int, n_pred: int, n_ref: int) -> float:
    p, r = lcs / n_pred, lcs / n_ref
    return 0.0 if lcs == 0 else 100.0 * 2 * p * r / (p + r)


def naive_lcs(a: list[str], b: list[str]) -> int:
    """Plain O(len(a) * len(b)) dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table[len(a)][len(b)]


def test_single_reference_hand_lcs():
    # pred: the cat sat on the mat (6) / ref: the cat is on the mat (6); LCS "the cat on the mat" = 5
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(f_measure(5, 6, 6))
    # P = 5/6, R = 5/6 -> F = 83.33 %
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(83.3333333, abs=1e-5)


def test_precision_and_recall_differ():
    # pred: a b c d (4) / ref: a x c y d z (6): LCS a c d = 3 -> P 3/4, R 3/6, F = 0.6
    assert rouge_l("a b c d", "a x c y d z") == pytest.approx(60.0)


def test_case_and_punctuation_are_normalised():
    assert rouge_l("Hello, World!", "hello world") == pytest.approx(100.0)
    # "state-of-the-art" splits into 4 tokens on both sides
    assert rouge_l("State-of-the-art.", "state of the art") == pytest.approx(100.0)


def test_stemming():
    # stemmed (Porter, tokens longer than 3 chars): pred -> the runner were run quickli (5),
    # ref -> a runner run quick (4); LCS "runner run" = 2: P 2/5, R 2/4, F = 44.44 %
    pred, ref = "The runners were running quickly", "A runner runs quick"
    assert rouge_l(pred, ref) == pytest.approx(f_measure(2, 5, 4))
    assert rouge_l(pred, ref) == pytest.approx(44.444444, abs=1e-5)
    # without stemming no token matches
    assert rouge_l(pred, ref, use_stemmer=False) == 0.0


def test_multiple_references_take_the_maximum():
    pred = "Paris is the capital of France"  # 6 tokens
    refs = [
        "The capital is Paris",  # LCS "the capital" = 2 -> P 2/6, R 2/4, F 40 %
        "Paris is the capital city of France",  # LCS 6 -> P 1, R 6/7, F 12/13
    ]
    assert rouge_l(pred, refs[0]) == pytest.approx(40.0)
    assert rouge_l(pred, refs[1]) == pytest.approx(100.0 * 12 / 13)
    assert rouge_l(pred, refs) == pytest.approx(100.0 * 12 / 13)
    assert rouge_l(pred, refs[::-1]) == pytest.approx(100.0 * 12 / 13)


def test_empty_prediction_and_empty_reference_list():
    assert rouge_l("", "anything at all") == 0.0
    assert rouge_l("   ", ["x y"]) == 0.0
    with pytest.raises(DataError):
        rouge_l("x", [])


def test_corpus_mean_and_lengths():
    preds = ["the cat sat on the mat", "a b c d"]
    refs = ["the cat is on the mat", ["a x c y d z"]]
    assert rouge_l_scores(preds, refs) == pytest.approx([f_measure(5, 6, 6), 60.0])
    assert rouge_l_corpus(preds, refs) == pytest.approx((f_measure(5, 6, 6) + 60.0) / 2)
    with pytest.raises(DataError):
        rouge_l_corpus(preds, refs[:1])


def test_random_sequences_against_naive_lcs():
    # words of <= 3 letters are never stemmed, so the naive LCS applies directly
    rng = random.Random(0)
    words = ["ab", "cd", "ef", "gh", "ij", "kl"]
    for _ in range(50):
        a = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        b = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        expected = f_measure(naive_lcs(a, b), len(a), len(b))
        assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(expected)

"""ROUGE-L as the MiniLLM / DSKD / DWA-KD papers compute it, in percent.

Protocol: Google's ``rouge-score`` package, ``RougeScorer(["rougeL"], use_stemmer=True)``; the
score of one prediction is the ROUGE-L **F-measure**, taken as the **maximum over its references**;
a test set's score is the mean over predictions, times 100.

Normalisation is ``rouge-score``'s own tokenizer (the usual one, after Lin's original ROUGE):
lower-case, every run of characters outside ``[a-z0-9]`` becomes a separator, then the Porter
stemmer is applied to tokens longer than 3 characters. Predictions are stripped of surrounding
whitespace beforehand (the papers strip decoded generations). An empty prediction scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from dwakd.errors import DataError


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer, tokenizers

    # The same tokenizer RougeScorer builds by default, passed explicitly (no "Using default tokenizer" log).
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=use_stemmer))


def _as_list(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise DataError("ROUGE-L needs at least one reference; got an empty reference list")
    return refs


def rouge_l(prediction: str, references: str | Sequence[str], *, use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure of ``prediction`` in percent (0..100), maximum over ``references``."""
    scorer = _scorer(use_stemmer)
    pred = prediction.strip()
    return 100.0 * max(scorer.score(target=ref, prediction=pred)["rougeL"].fmeasure for ref in _as_list(references))


def rouge_l_scores(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, use_stemmer: bool = True
) -> list[float]:
    """Per-example ROUGE-L (percent); ``references[i]`` is one string or a list of strings."""
    if len(predictions) != len(references):
        raise DataError(f"ROUGE-L: {len(predictions)} predictions but {len(references)} reference entries")
    return [rouge_l(p, r, use_stemmer=use_stemmer) for p, r in zip(predictions, references)]


def rouge_l_corpus(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, use_stemmer: bool = True
) -> float:
    """Mean per-example ROUGE-L in percent (the number the papers report for one seed)."""
    scores = rouge_l_scores(predictions, references, use_stemmer=use_stemmer)
    return sum(scores) / len(scores) if scores else 0.0

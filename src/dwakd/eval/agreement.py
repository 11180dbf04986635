"""Agreement of a model with a teacher: how closely it reproduces what the teacher would answer.

The teacher answers every test prompt once, **greedily** (its mode: deterministic, no seed),
in its own prompt format and under the same length limits as the evaluation. Two numbers are
then computed for the evaluated model:

- ``agreement.rougeL``: ROUGE-L (percent) of the model's sampled answers (each seed) against the
  teacher's answer as the single reference; mean and spread over seeds like the main ROUGE-L.
  It asks "does the student *say* what the teacher says" on the same sampling protocol.
- ``agreement.teacher_bpb``: bits per byte of the teacher's answers under the model, given the
  prompt (EOS included; see :mod:`dwakd.eval.bpb`). No sampling noise, and tokenizer
  independent: it measures how much probability the student puts on the teacher's own text,
  which is what distillation trains for. Lower is better.

For the teacher's own row, ``rougeL`` is its sampling-vs-greedy self-agreement and
``teacher_bpb`` the cost of its own greedy answers: both are reference points for the students.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from dwakd.eval.generate import GenerationSettings, generate
from dwakd.eval.rouge import rouge_l_corpus


def teacher_answers(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings | None = None, *,
                    progress: bool | str = False, autocast_dtype=None) -> list[str]:
    """The teacher's greedy answers to ``prompts`` (formatted in the teacher's own format)."""
    greedy = replace(settings or GenerationSettings(), greedy=True)
    gens = generate(model, tokenizer, prompts, greedy, seed=0, progress=progress, autocast_dtype=autocast_dtype)
    return [g.text for g in gens]


def agreement_rouge(samples_by_seed: Mapping[int, Sequence[str]], answers: Sequence[str]) -> dict[int, float]:
    """Per seed: mean ROUGE-L (percent) of the model's samples against the teacher's answers."""
    return {int(seed): rouge_l_corpus(samples, list(answers)) for seed, samples in samples_by_seed.items()}

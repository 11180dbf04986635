"""Evaluation: the papers' sampled ROUGE-L protocol plus tokenizer-independent metrics.

- :mod:`dwakd.eval.rouge`: ROUGE-L (percent, stemmed, max over references).
- :mod:`dwakd.eval.generate`: batched left-padded generation, per-example seeded sampling.
- :mod:`dwakd.eval.bpb`: bits per byte of reference responses given the prompt.
- :mod:`dwakd.eval.agreement`: agreement with a teacher's greedy answers.
- :mod:`dwakd.eval.runner`: ``evaluate()`` -> results dict; JSON / Markdown writers.
- :mod:`dwakd.eval.plots`, :mod:`dwakd.eval.report`: figures and the Markdown report.

Submodules are imported lazily (matplotlib and rouge-score load only when used).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rouge_l": "dwakd.eval.rouge",
    "rouge_l_corpus": "dwakd.eval.rouge",
    "GenerationSettings": "dwakd.eval.generate",
    "generate": "dwakd.eval.generate",
    "bits_per_byte": "dwakd.eval.bpb",
    "teacher_answers": "dwakd.eval.agreement",
    "EvalOptions": "dwakd.eval.runner",
    "evaluate": "dwakd.eval.runner",
    "results_markdown": "dwakd.eval.runner",
    "write_results": "dwakd.eval.runner",
    "plot_alignment": "dwakd.eval.plots",
    "plot_loss_curves": "dwakd.eval.plots",
    "plot_metric_bars": "dwakd.eval.plots",
    "write_report": "dwakd.eval.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dwakd.eval' has no attribute '{name}'")

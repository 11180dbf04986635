"""Alignment primitives: pure tensor / string code, no models.

- Soft-DTW (:mod:`dwakd.align.soft_dtw`): ``pairwise_cost``, ``soft_dtw``, ``soft_dtw_divergence``.
- Character-span alignment (:mod:`dwakd.align.spans`): ``exact_token_alignment``, ``span_overlap``.
- MinED (:mod:`dwakd.align.mined`): ``mined_token_alignment`` (DTW over token strings with
  edit-distance cost) and ``build_vocab_map`` (teacher id -> student id by minimum edit distance).
"""

from __future__ import annotations

import importlib

# Imported eagerly: the function ``soft_dtw`` must shadow the submodule of the same name
# (``import dwakd.align.soft_dtw as m`` still reaches the module through sys.modules).
from dwakd.align.soft_dtw import pairwise_cost, soft_dtw, soft_dtw_divergence  # noqa: F401

_EXPORTS = {
    "exact_token_alignment": "dwakd.align.spans",
    "span_overlap": "dwakd.align.spans",
    "mined_token_alignment": "dwakd.align.mined",
    "build_vocab_map": "dwakd.align.mined",
}

__all__ = sorted([*_EXPORTS, "pairwise_cost", "soft_dtw", "soft_dtw_divergence"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dwakd.align' has no attribute '{name}'")

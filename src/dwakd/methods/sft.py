"""SFT: cross-entropy of the student on its gold response tokens (METHOD.md section 6). No teacher.

``ce`` = sum over student response positions of ``-log p_s(gold)`` (rate 1), computed in chunks
of positions in float32 (:mod:`dwakd.methods._chunked`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dwakd.config.typed import option
from dwakd.methods._chunked import DEFAULT_CHUNK_ELEMENTS, RowSide, fused_rows
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions
from dwakd.methods.cma import compact


@dataclass
class SFTOptions(MethodOptions):
    """Options of :class:`SFT`."""

    chunk_elements: int = option(DEFAULT_CHUNK_ELEMENTS, "Rows x vocabulary entries per chunk of the cross-entropy "
                                 "(memory bound; results do not depend on it).", ge=1)


def gold_cross_entropy(logits, side, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """``[n]`` CE of ``logits`` ``[B, L, V]`` against ``side.target_ids`` at the response positions."""
    comp = compact(side.target_mask)
    gold = side.target_ids.reshape(-1).index_select(0, comp.flat)
    out = fused_rows(RowSide(logits.reshape(-1, logits.shape[-1]), index=comp.flat, targets=gold),
                     chunk_elements=chunk_elements)
    return out.ce_p, comp


class SFT(DistillMethod):
    name = "sft"
    description = "Supervised fine-tuning: cross-entropy on the gold response (no teacher)"
    needs_teacher = False
    Options = SFTOptions

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        ce, comp = gold_cross_entropy(student_out.logits, batch.student, self.options.chunk_elements)
        return LossTerms(terms={"ce": ce.sum()}, n_tokens=comp.valid.sum(), rates={"ce": 1.0})

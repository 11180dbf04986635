"""SFT: cross-entropy of the student on its gold response tokens (METHOD.md section 6). No teacher.

``ce`` = sum over student response positions of ``-log p_s(gold)`` (rate 1), computed in chunks
of positions in float32 (:mod:`dwakd.methods._chunked`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dwakd.config.typed import option
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions
from dwakd.methods.divergences import DEFAULT_CHUNK_ELEMENTS
from dwakd.methods.rows import gold_cross_entropy


@dataclass
class SFTOptions(MethodOptions):
    """Options of :class:`SFT`."""

    chunk_elements: int = option(DEFAULT_CHUNK_ELEMENTS, "Rows x vocabulary entries per chunk of the cross-entropy "
                                 "(memory bound; results do not depend on it).", ge=1)


class SFT(DistillMethod):
    name = "sft"
    description = "Supervised fine-tuning: cross-entropy on the gold response (no teacher)"
    needs_teacher = False
    supports_zero3 = True  # reads only the logits of the student's own forward
    Options = SFTOptions

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        ce, comp = gold_cross_entropy(student_out, batch.student, self.options.chunk_elements)
        return LossTerms(terms={"ce": ce.sum()}, n_tokens=comp.valid.sum(), rates={"ce": 1.0})

"""KD with one shared tokenizer (Hinton et al. 2015): ``(1 - a) CE + a D(p_t/tau || p_s/tau)``.

The k-th student response position is paired with the k-th teacher response position (the same
tokenizer gives the same response tokens; a length difference, e.g. from truncation, leaves the
extra positions out of ``kd`` and is counted in the ``unpaired`` stat).

Vocabularies: ``kd`` needs one vocabulary. :meth:`SameTokenizerKD.check_tokenizers` (called by
the trainer before anything is loaded) refuses tokenizers whose id -> token tables differ and
points to the cross-tokenizer methods. Padded vocabularies (a logits width larger than the
tokenizer, e.g. 151,936 vs 151,643) are handled by slicing both logits to the common real
vocabulary: ``vocab_size`` if set, else ``min(len(tokenizers))`` once attached, else the smaller
head width. At build time, heads whose widths differ by more than max(1%, 64 rows) are refused as
different vocabularies (padding adds fewer rows than that; equal widths still need the tokenizer
check). ``ce`` uses the student's full logits.

Defaults [I]: ``divergence: fkl``, ``temperature: 2.0`` (as the dual-space methods), ``kd_rate: 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dwakd.config.typed import option
from dwakd.errors import ConfigError
from dwakd.methods._chunked import fused_rows
from dwakd.methods.base import DistillMethod, LossTerms, TeacherNeeds
from dwakd.methods.divergences import DivergenceOptions
from dwakd.methods.rows import compact, gold_cross_entropy, logit_side

CROSS_TOKENIZER_HINT = (
    "Use a cross-tokenizer method instead: dwakd, dwakd-eta, dskd, dskd-eta, uld, mined or multilevel-ot."
)


@dataclass
class KDOptions(DivergenceOptions):
    """Options of :class:`SameTokenizerKD` (divergence, temperature, skew, akl_alpha as for every divergence)."""

    kd_rate: float = option(0.5, "a in (1 - a) CE + a D(p_t || p_s).", ge=0, le=1)
    vocab_size: int | None = option(None, "The real shared vocabulary (logits are sliced to it); null = automatic "
                                    "(the smaller tokenizer once attached, else the smaller head).", ge=1)


def _id_table(tok) -> list[str | None]:
    table: list[str | None] = [None] * len(tok)
    for token, idx in tok.get_vocab().items():
        if 0 <= idx < len(table):
            table[idx] = token
    return table


class SameTokenizerKD(DistillMethod):
    name = "kd"
    description = "Classic logit KD for a teacher and student sharing one tokenizer"
    Options = KDOptions

    def teacher_needs(self) -> TeacherNeeds:
        """Teacher logits at the response positions only."""
        return TeacherNeeds(hidden=False, embeddings=False)

    def __init__(self, student, teacher, options):
        super().__init__(student, teacher, options)
        v_s, v_t = int(self.student_head_weight().shape[0]), int(self.teacher_head_weight().shape[0])
        if abs(v_s - v_t) > max(0.01 * max(v_s, v_t), 64):
            raise ConfigError(
                f"method 'kd' needs one shared vocabulary, but the student's LM head has {v_s} outputs and "
                f"the teacher's {v_t}: these are different tokenizers. {CROSS_TOKENIZER_HINT}"
            )
        self.vocab = min(v_s, v_t, options.vocab_size or max(v_s, v_t))

    @classmethod
    def check_tokenizers(cls, student_tokenizer, teacher_tokenizer) -> None:
        """Raise :class:`ConfigError` unless both tokenizers map every common id to the same token."""
        a, b = _id_table(student_tokenizer), _id_table(teacher_tokenizer)
        n = min(len(a), len(b))
        diff = [i for i in range(n) if a[i] != b[i]]
        if diff:
            i = diff[0]
            raise ConfigError(
                f"method 'kd' needs the student and teacher to share one tokenizer, but their vocabularies "
                f"differ at {len(diff)} of {n} ids (e.g. id {i}: student {a[i]!r}, teacher {b[i]!r}). "
                f"{CROSS_TOKENIZER_HINT}"
            )

    def attach_tokenizers(self, student_tokenizer, teacher_tokenizer) -> None:
        """Trainer hook: check the pair and slice to the common real vocabulary."""
        self.check_tokenizers(student_tokenizer, teacher_tokenizer)
        if self.options.vocab_size is None:
            self.vocab = min(self.vocab, len(student_tokenizer), len(teacher_tokenizer))

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        o = self.options
        s_comp = compact(batch.student.target_mask)
        t_comp = compact(batch.teacher.target_mask)
        width = max(s_comp.valid.shape[1], t_comp.valid.shape[1])

        def widen(x):
            return F.pad(x, (0, width - x.shape[1]))

        paired = widen(s_comp.valid) & widen(t_comp.valid)
        b = torch.arange(paired.shape[0], device=paired.device)[:, None].expand_as(paired)
        s_flat = (b * s_comp.width + widen(s_comp.index))[paired]
        t_flat = (b * t_comp.width + widen(t_comp.index))[paired]
        v = self.vocab
        kd = fused_rows(
            logit_side(student_out, index=s_flat, vocab=v),
            logit_side(teacher_out, index=t_flat, vocab=v, detach=True),
            kind=o.divergence, temperature=o.temperature, skew=o.skew, alpha=o.akl_alpha,
            chunk_elements=o.chunk_elements,
        )
        ce, _ = gold_cross_entropy(student_out, batch.student, o.chunk_elements)
        s_gold = batch.student.target_ids.reshape(-1).index_select(0, s_flat)
        t_gold = batch.teacher.target_ids.reshape(-1).index_select(0, t_flat)
        stats = {
            "unpaired": s_comp.valid.sum() + t_comp.valid.sum() - 2 * paired.sum(),
            "target_mismatch": (s_gold != t_gold).sum(),
        }
        a = float(o.kd_rate)
        return LossTerms(
            terms={"ce": ce.sum(), "kd": kd.div.sum()},
            n_tokens=s_comp.valid.sum(),
            rates={"ce": 1.0 - a, "kd": a},
            stats=stats,
        )

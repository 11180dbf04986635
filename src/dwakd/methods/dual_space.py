"""The dual-space toolkit (METHOD.md section 2): the base class of DSKD, DSKD-ETA, DWA-KD, DWA-KD-ETA.

:class:`DualSpaceMethod` owns the alignment projectors and runs, in :meth:`DualSpaceMethod.forward`:

1. :meth:`~DualSpaceMethod.alignment`: both sides' response positions compacted and aligned by
   cross-model attention (:class:`~dwakd.methods.cma.CrossModelAttention`) or, with ``use_eta``,
   exact token alignment (``align.matrix`` holds the 0/1 ETA matrix);
2. :meth:`~DualSpaceMethod.space_rows`: the two fused vocabulary passes (student space over V_s,
   teacher space over V_t) giving per-position CE, divergences, entropies and the gate
   (:class:`SpaceRows`); ``z_t->s = h_t->s W_s^T`` with the student head **detached**,
   ``z_s->t = h_s->t W_t^T`` with the frozen teacher head, both inside the chunked op;
3. :meth:`~DualSpaceMethod.combine` -- **the extension point**: a subclass turns the rows into its
   loss terms (DSKD: the argmax mask; DWA-KD: entropy weights and Soft-DTW). It may read the
   alignment (``step.align``: attention, projected hidden states, the ETA matrix) and add terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dwakd.config.typed import option
from dwakd.methods._chunked import RowSide, fused_rows
from dwakd.methods.base import DistillMethod, LossTerms, TeacherNeeds
from dwakd.methods.cma import Alignment, CrossModelAttention, TokenAlignmentProjectors
from dwakd.methods.divergences import Divergence, DivergenceOptions
from dwakd.methods.projectors import init_logit_preserving_, shared_vocabulary
from dwakd.methods.rows import Compact, compact, logit_side, position_ranks

# ----------------------------------------------------------------------------- options
CMA_STD_HELP = (
    "Scalar std of N(a) = a / std(a) in cross-model attention. response: over the teacher's response rows of the "
    "micro-batch (default; independent of padding). padded-batch: the official DSKD value, over the whole padded "
    "batch tensor (prompt and padding rows, whose token ids are replaced by 0 for the embeddings; the teacher's "
    "hidden states at every position), so it changes with padding (2.6-5.7% larger on SmolLM2 batches). "
    "padded-batch needs the teacher's hidden states at every position, so the teacher cache cannot serve it.")


@dataclass
class DualSpaceOptions(DivergenceOptions):
    """Options shared by the dual-space methods (DSKD, DSKD-ETA, DWA-KD, DWA-KD-ETA)."""

    divergence: Divergence = option("fkl", "Student-space divergence D(p_t->s || p_s): fkl, rkl, skl, srkl, js, tvd, akl.")
    teacher_divergence: Divergence = option("fkl", "Teacher-space divergence D(p_t || p_s->t) (METHOD.md: KL = fkl).")
    projector_init: Literal["default", "pinv"] = option(
        "default", "default: PyTorch init; pinv: logit-preserving least squares on the shared vocabulary "
        "(DSKDv2), applied when the trainer attaches the tokenizers.")
    cma_std: Literal["response", "padded-batch"] = option("response", CMA_STD_HELP)



# ----------------------------------------------------------------------------- shared core
@dataclass
class SpaceRows:
    """Per-position results of both spaces, compacted (see :mod:`dwakd.methods.cma`).

    Student space ``[B, Ns]``: ``ce`` (student CE, grad), ``kd_stu`` (D, grad to the student
    logits), ``ce_t2s`` (grad to the projectors), ``entropy_s`` (H of p_s at tau 1, detached),
    ``gate`` (max p_t->s at tau 1, detached), ``hit`` (argmax p_t->s == gold).
    Teacher space ``[B, Nt]``: ``kd_tea`` (grad through h_s->t), ``entropy_t`` (detached).
    """

    ce: torch.Tensor
    kd_stu: torch.Tensor
    ce_t2s: torch.Tensor
    entropy_s: torch.Tensor
    gate: torch.Tensor
    hit: torch.Tensor
    kd_tea: torch.Tensor
    entropy_t: torch.Tensor


@dataclass
class DualSpaceStep:
    """What :meth:`DualSpaceMethod.combine` receives: both compactions, the alignment, the rows."""

    s_comp: Compact
    t_comp: Compact
    align: Alignment
    rows: SpaceRows


def eta_matrix(batch, s_comp: Compact, t_comp: Compact) -> torch.Tensor:
    """``[B, Ns, Nt]`` float 0/1: exact token alignment between compacted response positions.

    Pairs come from :func:`dwakd.align.exact_token_alignment` on both sides' ``target_spans``
    (identical clean spans, plus the EOS pair); only pairs of two response positions are kept.
    """
    from dwakd.align import exact_token_alignment

    dev = s_comp.index.device
    pairs = exact_token_alignment(batch.student.target_spans, batch.teacher.target_spans)
    b, i, j = pairs.batch.to(dev), pairs.student.to(dev), pairs.teacher.to(dev)
    rows = position_ranks(s_comp)[b, i]
    cols = position_ranks(t_comp)[b, j]
    ok = (rows >= 0) & (cols >= 0)
    out = torch.zeros(s_comp.valid.shape[0], s_comp.index.shape[1], t_comp.index.shape[1], device=dev)
    out[b[ok], rows[ok], cols[ok]] = 1.0
    return out


class DualSpaceMethod(DistillMethod):
    """Base of DSKD / DSKD-ETA / DWA-KD / DWA-KD-ETA: owns the alignment projectors.

    ``use_eta`` selects exact token alignment instead of cross-model attention.
    """

    use_eta: bool = False
    #: the student's head weight is read (detached) only through student_head_weight_detached, its
    #: embeddings and logits only through module calls; the projectors are the method's own modules
    supports_zero3 = True

    def __init__(self, student, teacher, options):
        super().__init__(student, teacher, options)
        w_s, w_t = self.student_head_weight(), self.teacher_head_weight()
        d_s, d_t = int(w_s.shape[1]), int(w_t.shape[1])
        e_s = int(student.get_input_embeddings().weight.shape[1])
        e_t = int(teacher.get_input_embeddings().weight.shape[1])
        self.dims = {"d_s": d_s, "d_t": d_t, "e_s": e_s, "e_t": e_t}
        if self.use_eta:
            self.align = TokenAlignmentProjectors(d_s, d_t, device=w_s.device)
        else:
            self.align = CrossModelAttention(d_s, d_t, e_s, e_t, device=w_s.device)
        self.init_report: dict[str, float] = {}

    def projector_parameters(self):
        """The trainable parameters (all projectors): ``self.parameters()``."""
        return self.parameters()

    @torch.no_grad()
    def attach_tokenizers(self, student_tokenizer, teacher_tokenizer) -> None:
        """Trainer hook: with ``projector_init: pinv``, initialise ``t2s`` / ``s2t`` logit-preserving
        on the shared vocabulary (see :mod:`dwakd.methods.projectors`)."""
        if self.options.projector_init != "pinv":
            return
        s_ids, t_ids = shared_vocabulary(student_tokenizer, teacher_tokenizer)
        w_s, w_t = self.student_head_weight(), self.teacher_head_weight()
        keep = (s_ids < w_s.shape[0]) & (t_ids < w_t.shape[0])
        s_ids, t_ids = s_ids[keep], t_ids[keep]
        self.init_report["shared_tokens"] = float(s_ids.numel())
        if s_ids.numel() == 0:
            return
        rows_s, rows_t = w_s[s_ids.to(w_s.device)], w_t[t_ids.to(w_t.device)]
        self.init_report["t2s_residual"] = init_logit_preserving_(self.align.t2s, rows_t, rows_s)
        self.init_report["s2t_residual"] = init_logit_preserving_(self.align.s2t, rows_s, rows_t)

    def alignment(self, student_out, teacher_out, batch) -> tuple[Compact, Compact, Alignment]:
        """Compact both sides' response positions and align them (CMA, or ETA with ``use_eta``).
        ``align.matrix`` is the 0/1 ETA matrix (``None`` for CMA)."""
        s_comp = compact(batch.student.target_mask)
        t_comp = compact(batch.teacher.target_mask)
        if self.use_eta:
            matrix = eta_matrix(batch, s_comp, t_comp)
            return s_comp, t_comp, self.align(student_out, teacher_out, s_comp, t_comp, matrix)
        return s_comp, t_comp, self.align(student_out, teacher_out, s_comp, t_comp, std=self.options.cma_std,
                                          token0_embed=self.token0_embed())

    def teacher_needs(self) -> TeacherNeeds:
        """Logits, hidden states and embeddings at the response positions; every position with
        ``cma_std: padded-batch`` (the official std runs over the whole padded tensor)."""
        if not self.use_eta and self.options.cma_std == "padded-batch":
            return TeacherNeeds(positions="all", why="method option cma_std=padded-batch reads the teacher's hidden "
                                                  "states at every position")
        return TeacherNeeds()

    def token0_embed(self) -> torch.Tensor | None:
        """The teacher's input embedding of token id 0 (only for ``cma_std: padded-batch``)."""
        if self.options.cma_std != "padded-batch":
            return None
        emb = self.teacher_model.get_input_embeddings()
        with torch.no_grad():
            return emb(torch.zeros(1, dtype=torch.long, device=emb.weight.device)).reshape(-1)

    def space_rows(self, student_out, teacher_out, batch, s_comp: Compact, t_comp: Compact,
                       align: Alignment) -> SpaceRows:
        """Run the two fused vocabulary passes (student space over V_s, teacher space over V_t)."""
        o = self.options
        w_s = self.student_head_weight_detached()  # gathered under ZeRO-3 (the head is partitioned there)
        w_t = self.teacher_head_weight().detach()
        gold_s = batch.student.target_ids.reshape(-1).index_select(0, s_comp.flat)
        stu = fused_rows(
            logit_side(student_out, index=s_comp.flat, targets=gold_s),
            RowSide(align.h_t2s[s_comp.valid], weight=w_s, targets=gold_s),
            kind=o.divergence, temperature=o.temperature, skew=o.skew, alpha=o.akl_alpha,
            entropy_p=True, q_peak=True, chunk_elements=o.chunk_elements,
        )
        tea = fused_rows(
            RowSide(align.h_s2t[t_comp.valid], weight=w_t),
            logit_side(teacher_out, index=t_comp.flat, detach=True),
            kind=o.teacher_divergence, temperature=o.temperature, skew=o.skew, alpha=o.akl_alpha,
            entropy_q=True, chunk_elements=o.chunk_elements,
        )
        return SpaceRows(
            ce=s_comp.scatter(stu.ce_p),
            kd_stu=s_comp.scatter(stu.div),
            ce_t2s=s_comp.scatter(stu.ce_q),
            entropy_s=s_comp.scatter(stu.entropy_p),
            gate=s_comp.scatter(stu.q_peak),
            hit=s_comp.scatter(stu.q_argmax == gold_s),
            kd_tea=t_comp.scatter(tea.div),
            entropy_t=t_comp.scatter(tea.entropy_q),
        )

    # -- the extension point ---------------------------------------------------------------
    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        """Template: :meth:`alignment`, then :meth:`space_rows` (the two fused vocabulary passes), then
        :meth:`combine`, which a dual-space method implements to turn the per-position rows into its terms."""
        s_comp, t_comp, align = self.alignment(student_out, teacher_out, batch)
        rows = self.space_rows(student_out, teacher_out, batch, s_comp, t_comp, align)
        return self.combine(student_out, teacher_out, batch, DualSpaceStep(s_comp, t_comp, align, rows))

    def combine(self, student_out, teacher_out, batch, step: DualSpaceStep) -> LossTerms:  # pragma: no cover
        raise NotImplementedError

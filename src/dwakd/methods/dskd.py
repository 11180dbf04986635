"""DSKD (dual-space KD with cross-model attention) and DSKD-ETA (DSKDv2), METHOD.md section 2.

Both spaces, per micro-batch (token sums; ``a`` = ``kd_rate``):

- ``ce``      = sum over student response positions of CE(z_s, gold)            (rate 1 - a)
- ``kd_stu``  = sum_i m(i) D(p_t->s(i)/tau, detached || p_s(i)/tau)               (rate a)
  with DSKD's hard mask ``m(i) = [argmax p_t->s(i) == gold(i)]`` (option ``argmax_mask``)
- ``kd_tea``  = sum_j D_t(p_t(j)/tau || p_s->t(j)/tau)   (D_t = ``teacher_divergence``, KL)  (rate a)
- ``ce_t2s``  = sum_i CE(z_t->s(i), gold(i))  (trains the t2s and query projectors)   (rate a)

``z_t->s = h_t->s W_s^T`` uses the student head **detached**; ``z_s->t = h_s->t W_t^T`` the frozen
teacher head. Both projected logits are produced inside the chunked op
(:mod:`dwakd.methods._chunked`), never for all positions at once.

DSKD-ETA: the alignment is the exact-token-alignment matrix (:func:`dwakd.align.exact_token_alignment`)
instead of CMA, and only aligned positions take part in ``kd_stu``, ``kd_tea`` and ``ce_t2s``.
Projectors are initialised logit-preserving (``projector_init: pinv``) when the trainer attaches
the tokenizers (:meth:`DualSpaceMethod.attach_tokenizers`).

Defaults [I]: ``divergence: fkl`` (METHOD.md writes KL in both spaces), ``temperature: 2.0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dwakd.config.typed import option
from dwakd.methods._chunked import RowSide, fused_rows
from dwakd.methods.base import DistillMethod, LossTerms, TeacherNeeds
from dwakd.methods.cma import Alignment, Compact, CrossModelAttention, TokenAlignmentProjectors, compact
from dwakd.methods.divergences import Divergence, DivergenceOptions
from dwakd.methods.projectors import init_logit_preserving_, shared_vocabulary

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


@dataclass
class DSKDOptions(DualSpaceOptions):
    """DSKD options (see :class:`DualSpaceOptions`)."""

    kd_rate: float = option(0.5, "a in (1 - a) CE + a (kd_stu + kd_tea + ce_t2s).", ge=0, le=1)
    argmax_mask: bool = option(True, "DSKD's hard mask on kd_stu: only positions where the projected "
                               "teacher's argmax equals the gold token.")


@dataclass
class DSKDETAOptions(DSKDOptions):
    """DSKD-ETA options: as DSKD, with the logit-preserving projector init on by default."""

    projector_init: Literal["default", "pinv"] = option("pinv", "default: PyTorch init; pinv: logit-preserving "
                                                        "least squares on the shared vocabulary (DSKDv2).")


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


def dual_space_rows(method: DistillMethod, student_out, teacher_out, batch, s_comp: Compact,
                    t_comp: Compact, align: Alignment) -> SpaceRows:
    """Run the two fused vocabulary passes (student space over V_s, teacher space over V_t)."""
    o = method.options
    w_s = method.student_head_weight().detach()
    w_t = method.teacher_head_weight().detach()
    s_logits = student_out.logits
    t_logits = teacher_out.logits.detach()
    gold_s = batch.student.target_ids.reshape(-1).index_select(0, s_comp.flat)
    stu = fused_rows(
        RowSide(s_logits.reshape(-1, s_logits.shape[-1]), index=s_comp.flat, targets=gold_s),
        RowSide(align.h_t2s[s_comp.valid], weight=w_s, targets=gold_s),
        kind=o.divergence, temperature=o.temperature, skew=o.skew, alpha=o.akl_alpha,
        entropy_p=True, q_peak=True, chunk_elements=o.chunk_elements,
    )
    tea = fused_rows(
        RowSide(align.h_s2t[t_comp.valid], weight=w_t),
        RowSide(t_logits.reshape(-1, t_logits.shape[-1]), index=t_comp.flat),
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


def _rank_table(comp: Compact) -> torch.Tensor:
    """``[B, L]`` long: the compacted row of each selected position (``-1`` elsewhere)."""
    bsz = comp.valid.shape[0]
    table = torch.full((bsz, comp.width), -1, dtype=torch.long, device=comp.index.device)
    ranks = torch.arange(comp.index.shape[1], device=comp.index.device).expand_as(comp.index)
    rows = torch.arange(bsz, device=comp.index.device)[:, None].expand_as(comp.index)
    table[rows[comp.valid], comp.index[comp.valid]] = ranks[comp.valid]
    return table


def eta_matrix(batch, s_comp: Compact, t_comp: Compact) -> torch.Tensor:
    """``[B, Ns, Nt]`` float 0/1: exact token alignment between compacted response positions.

    Pairs come from :func:`dwakd.align.exact_token_alignment` on both sides' ``target_spans``
    (identical clean spans, plus the EOS pair); only pairs of two response positions are kept.
    """
    from dwakd.align import exact_token_alignment

    dev = s_comp.index.device
    pairs = exact_token_alignment(batch.student.target_spans, batch.teacher.target_spans)
    b, i, j = pairs.batch.to(dev), pairs.student.to(dev), pairs.teacher.to(dev)
    rows = _rank_table(s_comp)[b, i]
    cols = _rank_table(t_comp)[b, j]
    ok = (rows >= 0) & (cols >= 0)
    out = torch.zeros(s_comp.valid.shape[0], s_comp.index.shape[1], t_comp.index.shape[1], device=dev)
    out[b[ok], rows[ok], cols[ok]] = 1.0
    return out


class DualSpaceMethod(DistillMethod):
    """Base of DSKD / DSKD-ETA / DWA-KD / DWA-KD-ETA: owns the alignment projectors.

    ``use_eta`` selects exact token alignment instead of cross-model attention.
    """

    use_eta: bool = False

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


# ----------------------------------------------------------------------------- DSKD
class DSKD(DualSpaceMethod):
    name = "dskd"
    description = "Dual-space KD with cross-model attention (Zhang et al. 2024)"
    Options = DSKDOptions

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        o = self.options
        s_comp, t_comp, align = self.alignment(student_out, teacher_out, batch)
        rows = dual_space_rows(self, student_out, teacher_out, batch, s_comp, t_comp, align)
        stu_mask = align.s_aligned & rows.hit if o.argmax_mask else align.s_aligned
        s_al, t_al = align.s_aligned.float(), align.t_aligned.float()
        a = float(o.kd_rate)
        n_tok = s_comp.valid.sum()
        stats = {
            "argmax_hit_rate": float(rows.hit[s_comp.valid].float().mean()) if bool(s_comp.valid.any()) else 0.0,
            "aligned_student_frac": float(s_al.sum() / n_tok.clamp_min(1)),
        }
        return LossTerms(
            terms={
                "ce": rows.ce.sum(),
                "kd_stu": (rows.kd_stu * stu_mask.float()).sum(),
                "kd_tea": (rows.kd_tea * t_al).sum(),
                "ce_t2s": (rows.ce_t2s * s_al).sum(),
            },
            n_tokens=n_tok,
            rates={"ce": 1.0 - a, "kd_stu": a, "kd_tea": a, "ce_t2s": a},
            stats=stats,
        )


class DSKDETA(DSKD):
    name = "dskd-eta"
    description = "DSKDv2: dual-space KD over exact token alignment, logit-preserving projector init"
    Options = DSKDETAOptions
    use_eta = True

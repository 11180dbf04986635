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

from dwakd.config.typed import option
from dwakd.methods.base import LossTerms
from dwakd.methods.dual_space import DualSpaceMethod, DualSpaceOptions, DualSpaceStep


# ----------------------------------------------------------------------------- options
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


# ----------------------------------------------------------------------------- DSKD
class DSKD(DualSpaceMethod):
    name = "dskd"
    description = "Dual-space KD with cross-model attention (Zhang et al. 2024)"
    Options = DSKDOptions

    def combine(self, student_out, teacher_out, batch, step: DualSpaceStep) -> LossTerms:
        o, rows, align = self.options, step.rows, step.align
        stu_mask = align.s_aligned & rows.hit if o.argmax_mask else align.s_aligned
        s_al, t_al = align.s_aligned.float(), align.t_aligned.float()
        a = float(o.kd_rate)
        n_tok = step.s_comp.valid.sum()
        stats = {  # tensors: the loop syncs once per step
            "argmax_hit_rate": (rows.hit & step.s_comp.valid).sum() / n_tok.clamp_min(1),
            "aligned_student_frac": s_al.sum() / n_tok.clamp_min(1),
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

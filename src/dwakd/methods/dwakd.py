"""DWA-KD: dual-space entropy weighting + (banded) Soft-DTW alignment, METHOD.md sections 3-5.

Terms of one micro-batch (token sums; default rates in brackets):

- ``ce``        CE of the student on gold response tokens                          [0.5]
- ``kd_stu``    sum_i w_s(i) D(p_t->s(i)/tau, detached || p_s(i)/tau)   (D = ``divergence``, srkl) [0.5]
- ``kd_tea``    sum_j w_t(j) D_t(p_t(j)/tau || p_s->t(j)/tau)   (D_t = ``teacher_divergence``, fkl) [0.5]
- ``ce_t2s``    sum_i CE(z_t->s(i), gold(i))                                        [0.5]
- ``dtw_hidden`` sum_b nDTW(h_s, P_t2s h_t)  (same t2s projector as CMA, on raw h_t)   [0.2]
- ``dtw_embed``  sum_b nDTW(e_s(x_tgt), P_e e_t(y_tgt).detach())                     [0.2]

Weights (all detached): ``w_s = renorm_to_len(H_s) * g`` with the gate ``g = max_v p_t->s(v)``
multiplying after the renormalisation; ``w_t = renorm_to_len(clamp(1 - H_t / log V_t, 0, 1))``.
``renorm_to_len`` scales a sequence's values to sum to its number of participating positions;
when they sum to 0 it gives 1 on each of them [I]. Entropies and the gate at temperature 1.

Soft-DTW (section 4): cosine cost, no length normalisation by default, ``gamma`` 2.0 with optional
linear annealing to ``gamma_final``. The band comes from the detached CMA attention ``A_ts``
(:func:`band_penalty`) and is added to the cross cost only, for both alignments. Positions are
the compacted response positions (``dtw_positions: response``, default); ``prefix`` takes the first
``n`` real tokens of each sequence, ``n`` = its response-token count, as the authors' code does
(under right padding those are mostly prompt positions; target embeddings there are the
embedding of token 0, as :func:`dwakd.models.outputs.run_model` fills them). The band is indexed
by the compacted response positions in both modes (in ``prefix`` mode it is applied to the prefix
positions of the same indices, as in the authors' code).

The paper's ablations: EW only = ``dtw: none``; +DTW = ``dtw: both, band: false``; +bDTW =
``band: true``; without the gate = ``weights: entropy``; full = the defaults.

DWA-KD-ETA (DWA-KDv2): the same weighting and Soft-DTW on top of DSKD-ETA; only aligned positions
take part in ``kd_stu`` / ``kd_tea`` / ``ce_t2s`` (weights renormalised over them) and the band is
the 0/1 ETA matrix: penalty ``band_lambda`` wherever a pair is not aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dwakd.align import soft_dtw_divergence
from dwakd.config.typed import option
from dwakd.methods.base import LossTerms, TeacherNeeds
from dwakd.methods.divergences import Divergence
from dwakd.methods.dual_space import DualSpaceMethod, DualSpaceOptions, DualSpaceStep
from dwakd.methods.projectors import make_projector
from dwakd.methods.rows import compact, prefix_mask


# ----------------------------------------------------------------------------- weights
def renorm_to_len(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]``: ``values`` zeroed outside ``mask`` and scaled per row to sum to ``mask.sum(1)``.

    A row whose masked values sum to 0 (or less) gets 1 on each masked position.
    """
    m = mask.to(values.dtype)
    v = values * m
    total = v.sum(1, keepdim=True)
    count = m.sum(1, keepdim=True)
    ok = total > 0
    scaled = v * (count / torch.where(ok, total, torch.ones_like(total)))
    return torch.where(ok, scaled, m)


def entropy_weights(entropy: torch.Tensor, mask: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Student weights from per-position entropies (and gate): ``renorm_to_len(H) * gate``."""
    w = renorm_to_len(entropy.detach().float(), mask)
    if gate is not None:
        w = w * gate.detach().float() * mask
    return w


def confidence_weights(entropy: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Teacher weights: ``renorm_to_len(clamp(1 - H / log V, 0, 1))`` (1 everywhere if ``V <= 1``)."""
    if vocab_size <= 1:
        return mask.float()
    conf = (1.0 - entropy.detach().float() / torch.log(torch.tensor(float(vocab_size)))).clamp(0.0, 1.0)
    return renorm_to_len(conf, mask)


# ----------------------------------------------------------------------------- band
def band_penalty(
    attention: torch.Tensor,
    student_lengths: torch.Tensor,
    teacher_lengths: torch.Tensor,
    *,
    b: float = 5.0,
    beta: float = 2.0,
    alpha: float = 0.7,
    lam: float = 1.0,
) -> torch.Tensor:
    """``[B, N, M]`` soft-band penalty for the Soft-DTW cross cost (METHOD.md section 4).

    ``attention`` ``[B, N, M]``: ``A_ts`` over compacted response positions (detached here and
    renormalised over the first ``teacher_lengths[b]`` columns); ``student_lengths`` /
    ``teacher_lengths`` ``[B]``: ``S`` and ``T`` per example. Row ``i`` (0-based):
    ``c_i = alpha * sum_j j A_ij + (1 - alpha) * i * T / S``, ``w_i = b + beta * H(A_i.)``
    (natural log), penalty ``lam * [|j - c_i| > w_i]``. A row with no attention mass uses the
    diagonal prior ``i T / S`` as its centre and entropy 0. Zero outside ``i < S, j < T``.
    """
    a = attention.detach().float()
    bsz, n, m = a.shape
    dev = a.device
    s_len = student_lengths.to(dev).float()
    t_len = teacher_lengths.to(dev).float()
    i = torch.arange(n, device=dev, dtype=torch.float32)
    j = torch.arange(m, device=dev, dtype=torch.float32)
    col_ok = j[None, :] < t_len[:, None]  # [B, M]
    row_ok = i[None, :] < s_len[:, None]  # [B, N]
    a = a * col_ok[:, None, :]
    mass = a.sum(-1, keepdim=True)
    has = mass > 0
    a = a / torch.where(has, mass, torch.ones_like(mass))
    prior = i[None, :] * t_len[:, None] / s_len.clamp_min(1.0)[:, None]  # [B, N]
    expect = (a * j).sum(-1)
    expect = torch.where(has.squeeze(-1), expect, prior)
    centre = alpha * expect + (1.0 - alpha) * prior
    ent = -(torch.where(a > 0, a * a.clamp_min(1e-30).log(), 0.0)).sum(-1)
    width = b + beta * ent
    outside = (j[None, None, :] - centre[:, :, None]).abs() > width[:, :, None]
    valid = row_ok[:, :, None] & col_ok[:, None, :]
    return lam * (outside & valid).float()


# ----------------------------------------------------------------------------- options
AUTHORS_CODE = {"band": False, "dtw_positions": "prefix", "dtw_teacher_grad": False, "cma_std": "padded-batch"}


@dataclass
class DWAKDOptions(DualSpaceOptions):
    """DWA-KD options (plus :class:`~dwakd.methods.dskd.DualSpaceOptions`); METHOD.md sections 3-5.

    Presets: ``paper`` (default) is the paper's reading; ``authors-code`` reproduces the authors'
    fork: no band (its band code is dead), the projected teacher detached in both Soft-DTW terms
    (t2s gets no Soft-DTW gradient, the embedding projector is never trained), prefix positions,
    and (the fork inherits DSKD's CMA) the padded-batch std.
    """

    PRESETS = {"paper": {}, "authors-code": AUTHORS_CODE}

    preset: Literal["paper", "authors-code"] = option(
        "paper", "paper: the paper's equations (band on, Soft-DTW gradients into the projectors, response positions). "
        "authors-code: the authors' fork's loss (band off, projected teacher detached in Soft-DTW, prefix positions, "
        "padded-batch CMA std). Explicit options override the preset.")
    divergence: Divergence = option("srkl", "Student-space divergence D(p_t->s || p_s) (the reported runs: srkl for "
                                    "GPT-2 students, akl for TinyLLaMA/OPT; fkl is the paper's KL).")
    rate_ce: float = option(0.5, "Rate of the student's gold cross-entropy.", ge=0)
    rate_wkd: float = option(0.5, "Rate of kd_stu, kd_tea and ce_t2s (L_WKD).", ge=0)
    rate_dtw: float = option(0.2, "Rate of each Soft-DTW term (L_DTW).", ge=0)
    weights: Literal["none", "entropy", "entropy+gate"] = option(
        "entropy+gate", "Student-space token weights: none, entropy (renormalised H_s) or entropy+gate (times the "
        "projected teacher's peak probability). The teacher space uses its confidence weights unless none.")
    gate_warmup_steps: int = option(0, "Linear warm-up of the gate: g_eff = 1 - r + r g, r = step / N (0 = off).", ge=0)
    dtw: Literal["none", "hidden", "embed", "both"] = option("both", "Soft-DTW terms: none, hidden (h_s vs P_t2s h_t), "
                                                             "embed (e_s vs P_e e_t) or both.")
    dtw_positions: Literal["response", "prefix"] = option(
        "response", "Positions aligned by Soft-DTW: response (the paper) or prefix (the first n real tokens, n = response "
        "length, as the authors' code; reads prompt positions, so the teacher cache cannot serve it).")
    dtw_teacher_grad: bool = option(True, "Soft-DTW gradients flow into the projected teacher (P_t2s, P_e); false "
                                    "detaches it in both terms, as the authors' fork.")
    band: bool = option(True, "Add the soft band from the CMA attention to the Soft-DTW cross cost (bDTW).")
    band_b: float = option(5.0, "Band base width b.", ge=0)
    band_beta: float = option(2.0, "Band width per nat of attention entropy (beta).", ge=0)
    band_alpha: float = option(0.7, "Band centre mix: alpha * attention centre + (1 - alpha) * diagonal.", ge=0, le=1)
    band_lambda: float = option(1.0, "Penalty added outside the band (lambda).", ge=0)
    gamma: float = option(2.0, "Soft-DTW smoothing gamma (1.0 for OPT in the authors' runs).", gt=0)
    gamma_final: float | None = option(None, "Anneal gamma linearly to this value over training (null = off).", gt=0)
    dtw_length_norm: bool = option(False, "Divide each sequence's nDTW by max(S, T) (off = the paper's raw sum).")


@dataclass
class DWAKDETAOptions(DWAKDOptions):
    """DWA-KD-ETA options: as DWA-KD, with the logit-preserving projector init on by default (``cma_std`` unused)."""

    projector_init: Literal["default", "pinv"] = option("pinv", "default: PyTorch init; pinv: logit-preserving "
                                                        "least squares on the shared vocabulary (DSKDv2).")


# ----------------------------------------------------------------------------- method
class DWAKD(DualSpaceMethod):
    name = "dwakd"
    description = "DWA-KD: dual-space entropy-weighted KD + banded Soft-DTW over cross-model attention"
    Options = DWAKDOptions

    def __init__(self, student, teacher, options):
        super().__init__(student, teacher, options)
        if options.dtw in ("embed", "both"):
            self.embed_proj = make_projector(self.dims["e_t"], self.dims["e_s"], device=self.student_head_weight().device)
        self._step, self._total = 0, 0

    def teacher_needs(self) -> TeacherNeeds:
        """As DSKD; every position also with ``dtw_positions: prefix`` (prompt positions are aligned)."""
        if self.options.dtw != "none" and self.options.dtw_positions == "prefix":
            return TeacherNeeds(positions="all", why="method option dtw_positions=prefix reads the teacher's prompt "
                                                  "positions")
        return super().teacher_needs()

    def set_progress(self, step: int, total_steps: int) -> None:
        self._step, self._total = int(step), int(total_steps)

    def current_gamma(self) -> float:
        o = self.options
        if o.gamma_final is None or self._total <= 0:
            return float(o.gamma)
        frac = min(max(self._step / self._total, 0.0), 1.0)
        return float(o.gamma + (o.gamma_final - o.gamma) * frac)

    def gate_ramp(self) -> float:
        n = self.options.gate_warmup_steps
        return 1.0 if n <= 0 else min(max(self._step / n, 0.0), 1.0)

    # -- weights ---------------------------------------------------------------------------
    def _weights(self, rows, s_mask, t_mask, vocab_t):
        o = self.options
        if o.weights == "none":
            return s_mask.float(), t_mask.float()
        gate = None
        if o.weights == "entropy+gate":
            r = self.gate_ramp()
            gate = (1.0 - r) + r * rows.gate
        return entropy_weights(rows.entropy_s, s_mask, gate), confidence_weights(rows.entropy_t, t_mask, vocab_t)

    # -- soft-DTW --------------------------------------------------------------------------
    def _band(self, align, s_comp, t_comp):
        o = self.options
        if not o.band:
            return None
        if align.matrix is not None:  # DWA-KDv2: the band is the 0/1 ETA matrix
            valid = s_comp.valid[:, :, None] & t_comp.valid[:, None, :]
            return o.band_lambda * ((align.matrix < 0.5) & valid).float()
        return band_penalty(align.a_ts, s_comp.lengths, t_comp.lengths, b=o.band_b, beta=o.band_beta,
                            alpha=o.band_alpha, lam=o.band_lambda)

    def _dtw_terms(self, student_out, teacher_out, batch, s_comp, t_comp, align, stats):
        o = self.options
        if o.dtw == "none":
            return {}
        if o.dtw_positions == "prefix":
            s_pos = compact(prefix_mask(batch.student.attention_mask, s_comp.lengths))
            t_pos = compact(prefix_mask(batch.teacher.attention_mask, t_comp.lengths))
        else:
            s_pos, t_pos = s_comp, t_comp
        dt = self.align.t2s.weight.dtype
        pairs = []  # (name, x, y)
        if o.dtw in ("hidden", "both"):
            x = s_pos.gather(student_out.hidden).to(dt)
            y = self.align.t2s(t_pos.gather(teacher_out.hidden).detach().to(dt))
            pairs.append(("dtw_hidden", x, y if o.dtw_teacher_grad else y.detach()))
        if o.dtw in ("embed", "both"):
            x = s_pos.gather(student_out.target_embeds).to(dt)
            y = self.embed_proj(t_pos.gather(teacher_out.target_embeds).detach().to(dt))
            pairs.append(("dtw_embed", x, y if o.dtw_teacher_grad else y.detach()))
        penalty = self._band(align, s_comp, t_comp)
        gamma = self.current_gamma()
        stats["gamma"] = torch.tensor(gamma)
        # One operator call for all alignments of equal feature size (METHOD.md section 9); an example
        # with no position on one side gets the value 0 and no gradient from the operator.
        k = len(pairs)
        xs = torch.cat([x for _, x, _ in pairs])
        ys = torch.cat([y for _, _, y in pairs])
        pen = None if penalty is None else penalty.repeat(k, 1, 1)
        values = soft_dtw_divergence(xs, ys, gamma, x_mask=s_pos.valid.repeat(k, 1), y_mask=t_pos.valid.repeat(k, 1),
                                     cost="cosine", cross_penalty=pen)
        if o.dtw_length_norm:
            longest = torch.maximum(s_pos.lengths, t_pos.lengths).clamp_min(1)
            values = values / longest.repeat(k).to(values.dtype)
        stats["ndtw_negative"] = (values.detach() < 0).sum()
        per = values.view(k, -1)
        return {name: per[n].sum() for n, (name, _, _) in enumerate(pairs)}

    # -- the extension point of the dual-space toolkit ---------------------------------------
    def combine(self, student_out, teacher_out, batch, step: DualSpaceStep) -> LossTerms:
        o, rows, align = self.options, step.rows, step.align
        w_s, w_t = self._weights(rows, align.s_aligned, align.t_aligned, int(self.teacher_head_weight().shape[0]))
        n_tok = step.s_comp.valid.sum()
        stats = {  # tensors: the loop syncs once per step
            "w_s_mean": _masked_mean(w_s, align.s_aligned),
            "w_t_mean": _masked_mean(w_t, align.t_aligned),
            "gate_mean": _masked_mean(rows.gate, align.s_aligned),
            "aligned_student_frac": align.s_aligned.sum() / n_tok.clamp_min(1),
        }
        terms = {
            "ce": rows.ce.sum(),
            "kd_stu": (rows.kd_stu * w_s).sum(),
            "kd_tea": (rows.kd_tea * w_t).sum(),
            "ce_t2s": (rows.ce_t2s * align.s_aligned.float()).sum(),
        }
        rates = {"ce": o.rate_ce, "kd_stu": o.rate_wkd, "kd_tea": o.rate_wkd, "ce_t2s": o.rate_wkd}
        dtw = self._dtw_terms(student_out, teacher_out, batch, step.s_comp, step.t_comp, align, stats)
        for name, value in dtw.items():
            terms[name] = value
            rates[name] = o.rate_dtw
        return LossTerms(terms=terms, n_tokens=n_tok, rates=rates, stats=stats)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x.detach().float() * mask).sum() / mask.sum().clamp_min(1)


class DWAKDETA(DWAKD):
    name = "dwakd-eta"
    description = "DWA-KDv2: DWA-KD weighting and Soft-DTW on top of exact token alignment (DSKDv2)"
    Options = DWAKDETAOptions
    use_eta = True

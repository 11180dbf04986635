"""Cross-model attention (CMA, METHOD.md section 2) and exact-token-alignment attention (DSKDv2).

Both produce an :class:`Alignment` between the two sides' **response positions, compacted**:
example ``b``'s k-th student response position is row ``k`` of ``[B, Ns, ...]`` tensors (``Ns`` =
the longest student response in the batch), likewise ``Nt`` for the teacher. Only response
positions ever take part (prompt and padding never do), so every result is independent of the
padding side and of extra padding.

CMA, exactly as METHOD.md section 2 (``e`` = input-embedding lookup, inputs detached):

- ``Q = P_q([e_s(x_in); e_s(x_tgt)])``  (2 d_s -> 2 d_t)
- ``K = N([e_t(y_in); e_t(y_tgt)])``,  ``V = P_t2s(N(h_t) + N(e_t(y_tgt)))``
- ``N(a) = a / std(a)``: one scalar, the (unbiased) standard deviation of all entries of ``a``
  **over the response positions of the whole micro-batch** [I] (default ``cma_std: response``,
  independent of padding). ``cma_std: padded-batch`` reproduces the official DSKD value exactly:
  the std over the whole padded batch tensor, prompt and padding rows included with their token
  ids replaced by 0 for the embeddings (:func:`padded_batch_stds`).
- Rows whose teacher response is empty (every score masked) are dropped here; the official code
  keeps them with uniform attention over all teacher positions (their ``ce_t2s`` and ``kd_stu``
  count). The data layer drops such records, so this differs only on hand-built batches.
- ``scores = Q K^T / sqrt(2 d_t)`` restricted to student-response x teacher-response;
  ``A_ts = softmax`` over teacher positions, ``A_st = softmax(scores^T)`` over student positions.
- ``h_t->s = A_ts V``  and  ``h_s->t = A_st P_s2t(h_s)``.

ETA (DSKDv2): the attention is the 0/1 exact-token-alignment matrix, row-normalised in each
direction, and the values are the raw projected hidden states: ``h_t->s = A_ts P_t2s(h_t)``,
``h_s->t = A_st P_s2t(h_s)`` (hidden states copied across aligned pairs only), so a
logit-preserving projector init (:mod:`dwakd.methods.projectors`) keeps the logits unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dwakd.errors import ConfigError
from dwakd.methods.projectors import make_projector
from dwakd.methods.rows import Compact


# ----------------------------------------------------------------------------- alignment
@dataclass
class Alignment:
    """Both directions of an alignment over compacted response positions.

    ``a_ts`` ``[B, Ns, Nt]`` (rows sum to 1 where aligned, else 0), ``a_st`` ``[B, Nt, Ns]``,
    ``h_t2s`` ``[B, Ns, d_s]`` (with grad to the projectors), ``h_s2t`` ``[B, Nt, d_t]``,
    ``s_aligned`` ``[B, Ns]`` / ``t_aligned`` ``[B, Nt]`` bool: rows with any partner.
    """

    a_ts: torch.Tensor
    a_st: torch.Tensor
    h_t2s: torch.Tensor
    h_s2t: torch.Tensor
    s_aligned: torch.Tensor
    t_aligned: torch.Tensor
    matrix: torch.Tensor | None = None  # the 0/1 ETA matrix [B, Ns, Nt] (None for CMA)


def masked_std(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased std (one detached float32 scalar) of every entry of ``x`` ``[B, L, d]`` in the rows ``valid`` ``[B, L]``
    (all rows when ``None``); 1 where undefined (fewer than 2 entries) or 0. No host sync."""
    xf = x.detach().float()  # a constant of the loss (the teacher side is never differentiated)
    if valid is None:
        valid = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    m = valid[..., None].to(xf.dtype)
    n = m.sum() * x.shape[-1]
    mean = (xf * m).sum() / n.clamp_min(1.0)
    var = (((xf - mean) * m) ** 2).sum() / (n - 1.0).clamp_min(1.0)
    std = var.sqrt()
    ok = (n >= 2) & torch.isfinite(std) & (std > 0)
    return torch.where(ok, std, torch.ones_like(std))



def _masked_softmax(scores: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    filled = scores.masked_fill(~pair, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * pair.to(scores.dtype)


class CrossModelAttention(nn.Module):
    """The CMA projectors (``query``, ``t2s``, ``s2t``) and the attention itself.

    ``d_s``/``d_t``: hidden sizes; ``e_s``/``e_t``: input-embedding sizes. ``V`` adds ``N(h_t)``
    and ``N(e_t(y_tgt))``, so the teacher's embedding size must equal its hidden size.
    """

    def __init__(self, d_s: int, d_t: int, e_s: int, e_t: int, *, device=None):
        super().__init__()
        if e_t != d_t:
            raise ConfigError(
                f"cross-model attention adds the teacher's hidden states (size {d_t}) to its target "
                f"embeddings (size {e_t}); they must have the same size. Use an -eta method instead."
            )
        self.d_t = d_t
        self.query = make_projector(2 * e_s, 2 * e_t, device=device)
        self.t2s = make_projector(d_t, d_s, device=device)
        self.s2t = make_projector(d_s, d_t, device=device)

    def forward(self, student_out, teacher_out, s_comp: Compact, t_comp: Compact, *, std: str = "response",
                token0_embed: torch.Tensor | None = None) -> Alignment:
        """``std``: ``response`` (default) or ``padded-batch`` (the official DSKD scalar, see
        :func:`padded_batch_stds`; needs ``token0_embed``, the teacher's embedding of token id 0)."""
        dt = self.query.weight.dtype
        s_emb = torch.cat([s_comp.gather(student_out.input_embeds), s_comp.gather(student_out.target_embeds)], -1)
        t_in, t_tgt = t_comp.gather(teacher_out.input_embeds), t_comp.gather(teacher_out.target_embeds)
        t_hid = t_comp.gather(teacher_out.hidden)
        query = self.query(s_emb.detach().to(dt))  # [B, Ns, 2 e_t]
        if std == "padded-batch":
            k_std, h_std, e_std = padded_batch_stds(teacher_out, t_comp, token0_embed)
        else:
            k_std = masked_std(torch.cat([t_in, t_tgt], -1), t_comp.valid)
            h_std, e_std = masked_std(t_hid, t_comp.valid), masked_std(t_tgt, t_comp.valid)
        key = torch.cat([t_in, t_tgt], -1).detach().to(dt) / k_std.to(dt)
        value_in = t_hid.detach().to(dt) / h_std.to(dt) + t_tgt.detach().to(dt) / e_std.to(dt)
        value = self.t2s(value_in)  # [B, Nt, d_s]
        scores = query @ key.transpose(1, 2) / math.sqrt(2 * self.d_t)
        pair = s_comp.valid[:, :, None] & t_comp.valid[:, None, :]
        a_ts = _masked_softmax(scores, pair)
        a_st = _masked_softmax(scores.transpose(1, 2), pair.transpose(1, 2))
        h_s = s_comp.gather(student_out.hidden).to(dt)
        return Alignment(
            a_ts=a_ts,
            a_st=a_st,
            h_t2s=a_ts @ value,
            h_s2t=a_st @ self.s2t(h_s),
            s_aligned=s_comp.valid & t_comp.lengths[:, None].gt(0),
            t_aligned=t_comp.valid & s_comp.lengths[:, None].gt(0),
        )


def padded_batch_stds(teacher_out, t_comp: Compact, token0_embed: torch.Tensor | None):
    """The official DSKD scalars of N(a) = a / std(a), over the whole padded ``[B, T, .]`` teacher tensors.

    - key: ``std([e_t(x_in'); e_t(x_tgt')])`` where ``x'`` = the token ids at response positions and 0
      everywhere else (prompt and padding rows);
    - target embeddings: ``std(e_t(x_tgt'))``;  hidden states: ``std(h_t)`` over every position.
    All unbiased, over every entry; they depend on the batch's padding (that is the point of this mode).
    """
    if token0_embed is None:
        raise ValueError("cma_std=padded-batch needs the teacher's embedding of token 0")
    resp = t_comp.full_mask()[..., None]
    e0 = token0_embed.reshape(1, 1, -1).to(teacher_out.target_embeds.dtype)
    t_in = torch.where(resp, teacher_out.input_embeds, e0)
    t_tgt = torch.where(resp, teacher_out.target_embeds, e0)
    return masked_std(torch.cat([t_in, t_tgt], -1)), masked_std(teacher_out.hidden), masked_std(t_tgt)


def eta_attention(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalise a 0/1 alignment matrix ``[B, Ns, Nt]`` both ways: ``(a_ts, a_st)``."""
    m = matrix.float()
    a_ts = m / m.sum(-1, keepdim=True).clamp_min(1.0)
    mt = m.transpose(1, 2)
    a_st = mt / mt.sum(-1, keepdim=True).clamp_min(1.0)
    return a_ts, a_st


class TokenAlignmentProjectors(nn.Module):
    """ETA (DSKDv2) projectors ``t2s`` (d_t -> d_s) and ``s2t`` (d_s -> d_t)."""

    def __init__(self, d_s: int, d_t: int, *, device=None):
        super().__init__()
        self.t2s = make_projector(d_t, d_s, device=device)
        self.s2t = make_projector(d_s, d_t, device=device)

    def forward(self, student_out, teacher_out, s_comp: Compact, t_comp: Compact, matrix: torch.Tensor) -> Alignment:
        dt = self.t2s.weight.dtype
        a_ts, a_st = eta_attention(matrix.to(s_comp.valid.device))
        h_t = t_comp.gather(teacher_out.hidden).detach().to(dt)
        h_s = s_comp.gather(student_out.hidden).to(dt)
        return Alignment(
            a_ts=a_ts,
            a_st=a_st,
            h_t2s=a_ts @ self.t2s(h_t),
            h_s2t=a_st @ self.s2t(h_s),
            s_aligned=matrix.bool().any(-1) & s_comp.valid,
            t_aligned=matrix.bool().any(1) & t_comp.valid,
            matrix=matrix,
        )

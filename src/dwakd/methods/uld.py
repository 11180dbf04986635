"""ULD: Universal Logit Distillation (Boizard et al. 2024), METHOD.md section 6.

``L = CE_gold + lambda * sum_t sum_k |sort(p_s(t))_k - sort(p_t(t))_k|``: both next-token
distributions sorted descending, the shorter vocabulary zero-padded, so no vocabulary map is
needed. Sequences are aligned by response start: the k-th student response position is paired
with the k-th teacher response position, and the longer response is truncated to the shorter.

The L1 between sorted vectors needs *every* entry (no top-k shortcut is exact), so it is computed
exactly, in chunks of positions, each chunk recomputed in the backward pass
(:func:`chunked_rows`): peak extra memory is ``O(chunk x V)`` instead of ``O(N x V)``. The cost
is one ``torch.sort`` per side and position (``O(V log V)``; on 152k vocabularies this dominates).

This module also holds the small row helpers shared by the other baselines (MinED,
MultiLevelOT): :func:`response_rows`, :func:`chunked_rows`, :func:`gold_log_probs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dwakd.config.typed import option
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions, TeacherNeeds

# Elements (positions x vocabulary) processed per chunk when ``chunk_positions`` is not set.
DEFAULT_CHUNK_ELEMENTS = 1 << 21


# ----------------------------------------------------------------------------- row helpers
@dataclass
class ResponseRows:
    """The student response positions in order, and their response-start teacher partners.

    ``N`` = number of student response positions in the batch (row-major: example, then position).

    - ``s_batch``, ``s_pos``: ``[N]`` long, where each student row sits in ``[B, L_s]``.
    - ``rank``: ``[N]`` long, the row's index within its example's response (0 = first).
    - ``t_pos``: ``[N]`` long, the teacher position holding the teacher's ``rank``-th response
      position of the same example, or ``-1`` when the teacher response is shorter.
    - ``paired``: ``[N]`` bool, ``t_pos >= 0``.
    - ``n_student``, ``n_teacher``: ``[B]`` long, response lengths per example on each side.
    """

    s_batch: torch.Tensor
    s_pos: torch.Tensor
    rank: torch.Tensor
    t_pos: torch.Tensor
    paired: torch.Tensor
    n_student: torch.Tensor
    n_teacher: torch.Tensor


def rank_table(mask: torch.Tensor) -> torch.Tensor:
    """``[B, R]`` long: entry ``[b, k]`` is the position of example ``b``'s k-th True in ``mask``
    (``-1`` past its count). ``R = max count`` (at least 1)."""
    mask = mask.bool()
    counts = mask.sum(1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    table = torch.full((mask.shape[0], width), -1, dtype=torch.long, device=mask.device)
    b, pos = mask.nonzero(as_tuple=True)
    offsets = torch.cumsum(counts, 0) - counts
    table[b, torch.arange(b.numel(), device=mask.device) - offsets[b]] = pos
    return table


def response_rows(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> ResponseRows:
    """Student response rows and their response-start partners (see :class:`ResponseRows`)."""
    smask, tmask = student_mask.bool(), teacher_mask.bool()
    if smask.shape[0] != tmask.shape[0]:
        raise ValueError(f"batch sizes differ: student {smask.shape[0]} vs teacher {tmask.shape[0]}")
    n_s, n_t = smask.sum(1), tmask.sum(1)
    s_batch, s_pos = smask.nonzero(as_tuple=True)
    offsets = torch.cumsum(n_s, 0) - n_s
    rank = torch.arange(s_batch.numel(), device=smask.device) - offsets[s_batch]
    t_table = rank_table(tmask)
    paired = rank < n_t[s_batch]
    t_pos = torch.where(paired, t_table[s_batch, rank.clamp(max=t_table.shape[1] - 1)], -1)
    return ResponseRows(s_batch, s_pos, rank, t_pos, paired, n_s, n_t)


def chunk_size_for(width: int, chunk_positions: int | None) -> int:
    """Positions per chunk: ``chunk_positions`` or a budget of :data:`DEFAULT_CHUNK_ELEMENTS`."""
    if chunk_positions is not None:
        return max(1, int(chunk_positions))
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, width))


def chunked_rows(fn: Callable, *rows: torch.Tensor, chunk: int):
    """Apply ``fn`` to matching chunks of ``rows`` (split on dim 0) and concatenate its outputs.

    ``fn`` returns a tensor or a tuple of tensors whose dim 0 is the chunk's. When gradients are
    needed, every chunk runs under activation checkpointing: the backward pass recomputes the
    chunk, so full-vocabulary intermediates (softmax, sort indices) live for one chunk only.
    ``torch.split`` keeps the backward of the split a single concatenation.
    """
    n = rows[0].shape[0]
    pieces = [r.split(chunk) for r in rows] if n else [(r,) for r in rows]
    outs = []
    for args in zip(*pieces):
        if torch.is_grad_enabled() and any(a.requires_grad for a in args):
            outs.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            outs.append(fn(*args))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 when it already is (half precision never does vocabulary math)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def gold_log_probs(logits: torch.Tensor, gold: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[n]`` float32 ``log softmax(logits / temperature)[gold]`` for ``[n, V]`` logits."""
    logp = F.log_softmax(upcast(logits) / temperature, dim=-1)
    return logp.gather(1, gold.unsqueeze(1)).squeeze(1)


# ----------------------------------------------------------------------------- ULD
def sorted_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """``[n]`` float32: ``sum_k |sort(p_s)_k - sort(p_t)_k|`` per row, shorter vocabulary zero-padded.

    ``student_logits`` ``[n, V_s]``, ``teacher_logits`` ``[n, V_t]`` (any float dtype); both
    softmaxed at ``temperature`` in float32 and sorted descending. The zero padding is implicit:
    past the shorter width the longer side's tail contributes its own (non-negative) mass.
    """
    ps = torch.sort(F.softmax(upcast(student_logits) / temperature, dim=-1), dim=-1, descending=True).values
    pt = torch.sort(F.softmax(upcast(teacher_logits) / temperature, dim=-1), dim=-1, descending=True).values
    v = min(ps.shape[-1], pt.shape[-1])
    head = (ps[:, :v] - pt[:, :v]).abs().sum(-1)
    return head + ps[:, v:].sum(-1) + pt[:, v:].sum(-1)


@dataclass
class ULDOptions(MethodOptions):
    """Options of :class:`ULD`."""

    kd_rate: float = option(0.5, "Objective (1 - kd_rate) ce + kd_rate uld_weight uld (the DSKD code base convention; "
                            "with 0.5 it is half of the ULD paper's CE + lambda ULD).", ge=0, le=1)
    uld_weight: float = option(1.0, "lambda of the ULD paper [I] (METHOD.md does not state it).", ge=0)
    temperature: float = option(1.0, "Softmax temperature of both sides in the ULD term [I].", gt=0)
    chunk_positions: int | None = option(None, "Positions per chunk; null = about 2M vocabulary entries a chunk.", ge=1)


class ULD(DistillMethod):
    """Terms (token sums over student response positions):

    - ``ce``: student cross-entropy on the gold tokens, every student response position.
    - ``uld``: sorted-probability L1 on the response-start pairs (``min(n_s, n_t)`` per example).
    """

    name = "uld"
    description = "Universal Logit Distillation: L1 between sorted probability vectors, aligned by response start"
    Options = ULDOptions

    def teacher_needs(self) -> TeacherNeeds:
        """Teacher logits at the response positions only."""
        return TeacherNeeds(hidden=False, embeddings=False)

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        opts: ULDOptions = self.options
        s_logits, t_logits = student_out.logits, teacher_out.logits.detach()
        rows = response_rows(batch.student.target_mask, batch.teacher.target_mask)
        gold = batch.student.target_ids[rows.s_batch, rows.s_pos]
        zs = s_logits[rows.s_batch, rows.s_pos]  # [N, V_s]
        paired = rows.paired
        t_batch, t_pos = rows.s_batch, rows.t_pos.clamp(min=0)
        temp = opts.temperature

        def per_chunk(zs_c, tb_c, tp_c, gold_c, paired_c):
            # teacher rows gathered per chunk (no grad); unpaired rows (teacher response shorter)
            # are zeroed so no padding value can leak into the result
            zt_c = t_logits[tb_c, tp_c].masked_fill(~paired_c.unsqueeze(1), 0)
            ce = -gold_log_probs(zs_c, gold_c)
            uld = torch.where(paired_c, sorted_l1(zs_c, zt_c, temp), 0.0)
            return ce, uld

        chunk = chunk_size_for(max(zs.shape[-1], t_logits.shape[-1]), opts.chunk_positions)
        ce, uld = chunked_rows(per_chunk, zs, t_batch, t_pos, gold, paired, chunk=chunk)
        n_tok = batch.student.target_mask.sum()
        return LossTerms(
            terms={"ce": ce.sum(), "uld": uld.sum()},
            n_tokens=n_tok,
            rates={"ce": 1.0 - opts.kd_rate, "uld": opts.kd_rate * opts.uld_weight},
            stats={"uld_pairs": float(paired.sum()), "uld_per_pair": float(uld.detach().sum() / paired.sum().clamp(min=1))},
        )

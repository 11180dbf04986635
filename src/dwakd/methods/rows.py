"""The row toolkit every method builds on (no method module imports another; they all import this).

Selecting positions:
- :func:`compact` -> :class:`Compact`: a ``[B, L]`` mask's positions compacted to ``[B, N]`` (gather,
  rows, scatter back, the full mask); :func:`prefix_mask`: the first ``n`` real tokens.
- Rank tables: :func:`rank_table` (``[B, R]``: the position of each example's k-th selected token) and
  :func:`position_ranks` (``[B, L]``: the compacted row of each selected position, the inverse).
- :func:`response_rows` -> :class:`ResponseRows`: student response positions paired with the teacher's
  by response start (ULD, MultiLevelOT, kd).

Computing over rows without ``[N, V]`` intermediates:
- :func:`dwakd.methods._chunked.fused_rows` (re-exported here): the ONE fused op for divergences,
  cross-entropies, entropies and peaks, analytic gradients, sides given as logits rows or as hidden
  rows plus an LM-head weight (``RowSide(x, weight=W)``: projected logits never exist for all rows);
- :func:`chunked_rows`: any other per-row function (sorted L1, top-k, vocabulary gathers), chunked
  under activation checkpointing, with :func:`chunk_size_for` as the chunk policy;
- :func:`gold_cross_entropy`, :func:`gold_log_probs`, :func:`upcast`.

Logits are never required at full ``[B, L, V]``: a model's outputs may carry ``logits=None`` and its
``head_weight`` (:func:`dwakd.models.outputs.run_model` with ``output_logits=False``);
:func:`logit_side` (for :func:`fused_rows`) and :func:`row_source` / :func:`rows_to_logits` (for
:func:`chunked_rows`) work with either form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dwakd.methods._chunked import DEFAULT_CHUNK_ELEMENTS, RowSide, RowTerms, fused_rows

__all__ = [
    "Compact", "ResponseRows", "RowSide", "RowTerms", "chunk_size_for", "chunked_rows", "compact",
    "fused_rows", "gold_cross_entropy", "gold_log_probs", "logit_side", "position_ranks", "prefix_mask",
    "rank_table", "response_rows", "row_source", "rows_to_logits", "upcast",
]

# Elements (positions x vocabulary) per chunk of :func:`chunked_rows` when ``chunk_positions`` is not set
# (smaller than fused_rows' budget: the functions it runs keep autograd intermediates inside a chunk).
CHECKPOINT_CHUNK_ELEMENTS = 1 << 21


# ----------------------------------------------------------------------------- compaction
@dataclass
class Compact:
    """Where the selected positions of a ``[B, L]`` mask sit, compacted to ``[B, N]``.

    ``index`` ``[B, N]`` long positions (0 in padding slots), ``valid`` ``[B, N]`` bool,
    ``lengths`` ``[B]`` long, ``flat`` ``[n]`` long indices into the flattened ``[B * L]`` tensor
    (row-major, the same order as ``valid``'s True entries).
    """

    index: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor
    flat: torch.Tensor
    width: int  # L

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[B, N, ...]``, zeros (not junk) in padding slots."""
        idx = self.index.view(*self.index.shape, *([1] * (x.dim() - 2))).expand(*self.index.shape, *x.shape[2:])
        out = x.gather(1, idx)
        keep = self.valid.view(*self.valid.shape, *([1] * (x.dim() - 2)))
        return out.masked_fill(~keep, 0)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[n, ...]``: the selected rows in order."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.flat)

    def full_mask(self) -> torch.Tensor:
        """``[B, L]`` bool: the selected positions (the mask this was built from)."""
        out = torch.zeros(self.valid.shape[0] * self.width, dtype=torch.bool, device=self.flat.device)
        out[self.flat] = True
        return out.view(self.valid.shape[0], self.width)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n]`` -> ``[B, N]`` (zeros in padding slots)."""
        out = torch.zeros(self.valid.shape, dtype=rows.dtype, device=rows.device)
        out[self.valid] = rows
        return out


def compact(mask: torch.Tensor) -> Compact:
    """:class:`Compact` for a ``[B, L]`` bool mask (``N`` = max count, at least 1)."""
    mask = mask.bool()
    bsz, width = mask.shape
    lengths = mask.sum(1)
    n = max(int(lengths.max()) if bsz else 0, 1)
    # stable sort puts the selected positions first, in order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :n]
    valid = torch.arange(n, device=mask.device)[None, :] < lengths[:, None]
    index = torch.where(valid, order, 0)
    b, pos = mask.nonzero(as_tuple=True)
    return Compact(index, valid, lengths, b * width + pos, width)


def prefix_mask(attention_mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: the first ``counts[b]`` real tokens of each sequence (``attention_mask`` = 1).

    The authors' code takes the first ``n`` positions of the (right-padded) tensor; starting at
    the first real token keeps this identical under right padding and padding-side invariant.
    """
    real = attention_mask.bool()
    rank = torch.cumsum(real.long(), dim=1) - 1
    return real & (rank < counts[:, None])


def position_ranks(comp: Compact) -> torch.Tensor:
    """``[B, L]`` long: the compacted row of each selected position (``-1`` elsewhere); the inverse of
    ``comp.index``."""
    bsz = comp.valid.shape[0]
    table = torch.full((bsz, comp.width), -1, dtype=torch.long, device=comp.index.device)
    ranks = torch.arange(comp.index.shape[1], device=comp.index.device).expand_as(comp.index)
    rows = torch.arange(bsz, device=comp.index.device)[:, None].expand_as(comp.index)
    table[rows[comp.valid], comp.index[comp.valid]] = ranks[comp.valid]
    return table


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
    """Positions per chunk: ``chunk_positions`` or a budget of :data:`CHECKPOINT_CHUNK_ELEMENTS`."""
    if chunk_positions is not None:
        return max(1, int(chunk_positions))
    return max(1, CHECKPOINT_CHUNK_ELEMENTS // max(1, width))


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


def gold_cross_entropy(out, side, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """``[n]`` CE of a model's outputs ``out`` (:class:`~dwakd.models.outputs.ModelOutputs`, or bare
    ``[B, L, V]`` logits) against ``side.target_ids`` at the response positions; ``(ce, compaction)``."""
    comp = compact(side.target_mask)
    gold = side.target_ids.reshape(-1).index_select(0, comp.flat)
    p = logit_side(out, index=comp.flat, targets=gold) if not torch.is_tensor(out) else \
        RowSide(out.reshape(-1, out.shape[-1]), index=comp.flat, targets=gold)
    return fused_rows(p, chunk_elements=chunk_elements).ce_p, comp


# ----------------------------------------------------------------------------- logits without [B, L, V]
def logit_side(out, *, index=None, targets=None, vocab: int | None = None, detach: bool = False) -> RowSide:
    """A model's logits rows as a :func:`fused_rows` side: its materialised logits, or (when
    ``out.logits`` is ``None``) its hidden rows plus its LM-head weight, so the logits of the selected
    rows are computed chunk by chunk and never exist for every position (nor does their gradient).
    ``vocab``: keep the first ``vocab`` logits only; ``detach``: a constant side (the teacher)."""
    if out.logits is not None:
        z = out.logits if vocab is None else out.logits[..., :vocab]
        z = z.detach() if detach else z
        return RowSide(z.reshape(-1, z.shape[-1]), index=index, targets=targets)
    w = out.head_weight if vocab is None else out.head_weight[:vocab]
    h = out.hidden
    if detach:
        h, w = h.detach(), w.detach()
    return RowSide(h.reshape(-1, h.shape[-1]), weight=w, index=index, targets=targets)


def row_source(out, *, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, weight)``: gather rows ``x[b, pos]`` and turn them into logits with :func:`rows_to_logits`
    (``x`` = the logits when materialised, else the hidden states with ``weight`` = the LM head)."""
    if out.logits is not None:
        return (out.logits.detach() if detach else out.logits), None
    if detach:
        return out.hidden.detach(), out.head_weight.detach()
    return out.hidden, out.head_weight


def rows_to_logits(rows: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Logits of gathered rows (see :func:`row_source`); call inside a chunk of :func:`chunked_rows`."""
    return rows if weight is None else rows.to(weight.dtype) @ weight.t()

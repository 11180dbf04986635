"""Alignment from character spans: exact token pairs (DSKDv2 "ETA") and the character-overlap matrix.

Inputs are span tensors in the layout of :attr:`dwakd.data.batch.SideBatch.target_spans`:
``[B, L, 2]`` long, ``(start, end)`` character offsets into that example's response, ``-1`` where a
position has no target token. ``[L, 2]`` (one example) is accepted too. The spans of a row must be
in reading order (starts and ends non-decreasing along the positions that have one), as the data
layer produces them (:mod:`dwakd.data.encode`).

Exact pairs: student position ``i`` and teacher position ``j`` are paired when their spans are
identical, non-empty, and **clean** on both sides: a clean span overlaps no other span of its row.
Pieces of a split character (byte-level BPE splitting a multi-byte character, a normaliser
expanding one character) always overlap a neighbour, so they are never paired; a clean span is
unique within its row, so the pairs are one-to-one. The appended EOS pair is added: the empty span
at the last spanned position of a row, when both sides have one at the same offset. Identical
clean spans cover the same response characters, so both tokens' texts are that substring, and
their decoded prefixes agree (the DSKDv2 rule, with space markers ignored because spans do not
include a token's leading whitespace).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ExactPairs(NamedTuple):
    """Exact pairs as three 1-D long tensors of equal length, sorted by ``(batch, student)``:
    ``batch``, ``student`` (student position) and ``teacher`` (teacher position)."""

    batch: torch.Tensor
    student: torch.Tensor
    teacher: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.batch.numel())


def _batched(spans: torch.Tensor) -> torch.Tensor:
    if spans.dim() == 2:
        spans = spans.unsqueeze(0)
    if spans.dim() != 3 or spans.shape[-1] != 2:
        raise ValueError(f"spans must have shape [B, L, 2] or [L, 2]; got {tuple(spans.shape)}")
    return spans.long()


def clean_span_mask(spans: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: non-empty spans that overlap no other span of their row (see module doc)."""
    spans = _batched(spans)
    start, end = spans[..., 0], spans[..., 1]
    nonempty = (start >= 0) & (end > start)
    if spans.shape[1] == 0:
        return nonempty
    big = torch.iinfo(torch.long).max
    ends = torch.where(nonempty, end, torch.full_like(end, -1))
    prev_end = torch.cummax(ends, dim=1).values
    prev_end = torch.cat([torch.full_like(prev_end[:, :1], -1), prev_end[:, :-1]], dim=1)
    starts = torch.where(nonempty, start, torch.full_like(start, big))
    next_start = torch.flip(torch.cummin(torch.flip(starts, [1]), dim=1).values, [1])
    next_start = torch.cat([next_start[:, 1:], torch.full_like(next_start[:, :1], big)], dim=1)
    return nonempty & (start >= prev_end) & (end <= next_start)


def _eos_positions(spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the last spanned position and whether its span is empty (the EOS); ``[B]`` each."""
    valid = spans[..., 0] >= 0
    idx = torch.arange(spans.shape[1], device=spans.device).expand_as(valid)
    last = torch.where(valid, idx, torch.full_like(idx, -1)).max(dim=1).values
    rows = torch.arange(spans.shape[0], device=spans.device)
    sp = spans[rows, last.clamp(min=0)]
    is_eos = (last >= 0) & (sp[:, 0] == sp[:, 1])
    return last, is_eos & (sp[:, 0] >= 0)


def exact_token_alignment(student_spans: torch.Tensor, teacher_spans: torch.Tensor, *,
                          include_eos: bool = True) -> ExactPairs:
    """Exact pairs between ``student_spans`` ``[B, S, 2]`` and ``teacher_spans`` ``[B, T, 2]``.

    Vectorised: teacher span keys are sorted per row and student keys looked up with
    ``searchsorted`` (O((S + T) log T) per row, no ``[B, S, T]`` tensor).
    """
    s, t = _batched(student_spans), _batched(teacher_spans)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"batch sizes differ: student {s.shape[0]}, teacher {t.shape[0]}")
    device = s.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if s.shape[0] == 0 or s.shape[1] == 0 or t.shape[1] == 0:
        return ExactPairs(empty, empty, empty)
    clean_s, clean_t = clean_span_mask(s), clean_span_mask(t)
    width = int(torch.maximum(s[..., 1].max(), t[..., 1].max()).clamp(min=0)) + 1
    key_s = torch.where(clean_s, s[..., 0] * width + s[..., 1], torch.full_like(s[..., 0], -1))
    # Unclean teacher positions get unique keys above every real key.
    pos_t = torch.arange(t.shape[1], device=device).expand(t.shape[0], -1)
    key_t = torch.where(clean_t, t[..., 0] * width + t[..., 1], width * width + pos_t)
    sorted_t, order = torch.sort(key_t, dim=1)
    idx = torch.searchsorted(sorted_t, key_s.contiguous()).clamp(max=t.shape[1] - 1)
    found = clean_s & (sorted_t.gather(1, idx) == key_s)
    b, i = found.nonzero(as_tuple=True)
    j = order.gather(1, idx)[b, i]
    if include_eos:
        last_s, eos_s = _eos_positions(s)
        last_t, eos_t = _eos_positions(t)
        rows = torch.arange(s.shape[0], device=device)
        same = eos_s & eos_t & (s[rows, last_s.clamp(min=0), 0] == t[rows, last_t.clamp(min=0), 0])
        eb = same.nonzero(as_tuple=True)[0]
        if eb.numel():
            b = torch.cat([b, eb])
            i = torch.cat([i, last_s[eb]])
            j = torch.cat([j, last_t[eb]])
            order_all = torch.argsort(b * s.shape[1] + i)
            b, i, j = b[order_all], i[order_all], j[order_all]
    return ExactPairs(b, i, j)


def pairs_to_matrix(pairs: ExactPairs, shape: tuple[int, int, int], *, dtype=torch.float32) -> torch.Tensor:
    """Dense ``[B, S, T]`` 0/1 matrix with ones at ``pairs``."""
    out = torch.zeros(shape, dtype=dtype, device=pairs.batch.device)
    if len(pairs):
        out[pairs.batch, pairs.student, pairs.teacher] = 1
    return out


def exact_alignment_matrix(student_spans: torch.Tensor, teacher_spans: torch.Tensor, *,
                           include_eos: bool = True, dtype=torch.float32) -> torch.Tensor:
    """Dense ``[B, S, T]`` 0/1 matrix of :func:`exact_token_alignment`."""
    s, t = _batched(student_spans), _batched(teacher_spans)
    pairs = exact_token_alignment(s, t, include_eos=include_eos)
    return pairs_to_matrix(pairs, (s.shape[0], s.shape[1], t.shape[1]), dtype=dtype)


def span_overlap(student_spans: torch.Tensor, teacher_spans: torch.Tensor, *, dtype=torch.float32,
                 max_elements: int = 1 << 26) -> torch.Tensor:
    """``[B, S, T]`` number of response characters student span ``i`` and teacher span ``j`` share.

    ``max(0, min(end_i, end_j) - max(start_i, start_j))``; 0 where either position has no span.
    Empty spans (EOS) overlap nothing. Computed in chunks of student rows so that no intermediate
    holds more than about ``max_elements`` entries.
    """
    s, t = _batched(student_spans), _batched(teacher_spans)
    bsz, n_s, n_t = s.shape[0], s.shape[1], t.shape[1]
    out = torch.zeros((bsz, n_s, n_t), dtype=dtype, device=s.device)
    if bsz == 0 or n_s == 0 or n_t == 0:
        return out
    t_start, t_end = t[..., 0].unsqueeze(1), t[..., 1].unsqueeze(1)
    t_valid = (t[..., 0] >= 0).unsqueeze(1)
    rows = max(1, max_elements // max(1, bsz * n_t))
    for lo in range(0, n_s, rows):
        hi = min(n_s, lo + rows)
        s_start, s_end = s[:, lo:hi, 0].unsqueeze(2), s[:, lo:hi, 1].unsqueeze(2)
        ov = (torch.minimum(s_end, t_end) - torch.maximum(s_start, t_start)).clamp(min=0)
        ov = ov * ((s[:, lo:hi, 0] >= 0).unsqueeze(2) & t_valid)
        out[:, lo:hi] = ov.to(dtype)
    return out

"""Collation: encoded examples -> :class:`~dwakd.data.batch.PairBatch`; prompts -> a generation batch.

Training batches (:func:`collate_pairs`) are padded to the longest example of the batch (optionally
up to a multiple of ``pad_to_multiple_of``), on the right by default. Each side is padded with its
own pad id; ``attention_mask`` is 0 and ``labels`` are ``IGNORE_INDEX`` on padding.
``target_ids = labels`` shifted left by one; ``target_spans[b, p]`` is the span of the token at
``p + 1``, i.e. the response span of the k-th response token sits at the position that *predicts*
it, ``prompt_length + k - 1`` (plus the left padding). ``padding_side="left"`` shifts every row by its
padding and changes nothing else: the spans and pairs of each example are the same once padding
is removed (training code that uses left padding must pass matching ``position_ids`` to the model).

Generation batches (:func:`collate_prompts`) are always left-padded, so every row ends at its last
prompt token and generation continues from the same column for all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dwakd.data.batch import IGNORE_INDEX, PairBatch, SideBatch
from dwakd.data.encode import EncodedPair, EncodedSide, prompt_ids, side_tokenizer

PADDING_SIDES = ("right", "left")


def _padded_width(lengths: Sequence[int], multiple: int | None) -> int:
    width = max(lengths) if lengths else 0
    if multiple and multiple > 1:
        width = -(-width // multiple) * multiple
    return width


def collate_side(
    side: str,
    examples: Sequence[EncodedSide],
    pad_id: int,
    *,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> SideBatch:
    """A :class:`SideBatch` (``[B, L]`` tensors, ``target_spans`` ``[B, L, 2]``) of one side."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}; got '{padding_side}'")
    bsz = len(examples)
    width = _padded_width([len(e.input_ids) for e in examples], pad_to_multiple_of)
    input_ids = torch.full((bsz, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
    spans = torch.full((bsz, width, 2), -1, dtype=torch.long)
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        off = 0 if padding_side == "right" else width - n
        input_ids[b, off : off + n] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention[b, off : off + n] = 1
        labels[b, off : off + n] = torch.tensor(ex.labels, dtype=torch.long)
        if ex.response_spans:
            first = off + ex.prompt_length - 1  # the position predicting response token 0
            sp = torch.tensor(ex.response_spans, dtype=torch.long)
            if first < off:  # empty prompt, no BOS: nothing predicts response token 0
                sp, first = sp[off - first :], off
            spans[b, first : first + sp.shape[0]] = sp
    target_ids = torch.full_like(labels, IGNORE_INDEX)
    target_ids[:, :-1] = labels[:, 1:]
    target_mask = target_ids != IGNORE_INDEX
    spans[~target_mask] = -1
    return SideBatch(side, input_ids, attention, labels, target_ids, target_mask, spans)


def _pad_id(tokenizer, pad_id: int | None) -> int:
    if pad_id is not None:
        return int(pad_id)
    if tokenizer is None:
        raise ValueError("give the tokenizer or its pad id")
    return side_tokenizer(tokenizer).pad_id


def collate_pairs(
    examples: Sequence[EncodedPair],
    student_tokenizer=None,
    teacher_tokenizer=None,
    *,
    student_pad_id: int | None = None,
    teacher_pad_id: int | None = None,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> PairBatch:
    """A training :class:`PairBatch` of ``examples`` (pad ids from the tokenizers unless given).

    ``responses`` holds each example's full response text (the spans index into it).
    """
    s_pad = _pad_id(student_tokenizer, student_pad_id)
    t_pad = _pad_id(teacher_tokenizer, teacher_pad_id)
    kw = dict(padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)
    return PairBatch(
        student=collate_side("student", [e.student for e in examples], s_pad, **kw),
        teacher=collate_side("teacher", [e.teacher for e in examples], t_pad, **kw),
        responses=[e.response for e in examples],
    )


class PairCollator:
    """``collate_fn`` for a ``DataLoader`` over :class:`EncodedPair` examples."""

    def __init__(self, student_tokenizer, teacher_tokenizer, *, padding_side: str = "right",
                 pad_to_multiple_of: int | None = None):
        self.student_pad_id = side_tokenizer(student_tokenizer).pad_id
        self.teacher_pad_id = side_tokenizer(teacher_tokenizer).pad_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[EncodedPair]) -> PairBatch:
        return collate_pairs(
            examples,
            student_pad_id=self.student_pad_id,
            teacher_pad_id=self.teacher_pad_id,
            padding_side=self.padding_side,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )


@dataclass
class PromptBatch:
    """Left-padded prompts for generation: ``input_ids`` / ``attention_mask`` ``[B, L]``; ``lengths`` ``[B]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor

    def to(self, device) -> PromptBatch:
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), self.lengths.to(device))


def collate_prompts(
    prompts: Sequence,
    tokenizer,
    *,
    max_prompt_length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> PromptBatch:
    """Left-padded generation batch of ``prompts``.

    Each prompt is a formatted prompt string (tokenized like the prompts of
    :func:`~dwakd.data.encode.encode_pair`: BOS rule, cut from the left to ``max_prompt_length``),
    a list of token ids, or an :class:`EncodedSide` (its prompt part).
    """
    seqs: list[list[int]] = []
    for p in prompts:
        if isinstance(p, str):
            seqs.append(prompt_ids(p, tokenizer, max_prompt_length))
        elif isinstance(p, EncodedSide):
            seqs.append(p.prompt_ids)
        else:
            seqs.append([int(t) for t in p])
    if any(len(s) == 0 for s in seqs):
        raise ValueError("an empty prompt (zero tokens) cannot be generated from")
    pad = side_tokenizer(tokenizer).pad_id
    width = _padded_width([len(s) for s in seqs], pad_to_multiple_of)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s) :] = 1
    return PromptBatch(ids, mask, torch.tensor([len(s) for s in seqs], dtype=torch.long))

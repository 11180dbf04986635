"""The batch contract between the data layer, the methods and the trainer.

A :class:`PairBatch` carries the *same examples* tokenized twice, once per model, in two
separate :class:`SideBatch` objects named ``student`` and ``teacher``: there is no field a model
could be fed by mistake from the other side (each side also records which side it is).

Position convention (both sides): ``input_ids[:, i]`` is the token at position ``i``;
``labels`` follow Hugging Face (same length as ``input_ids``, equal to it on response tokens,
``IGNORE_INDEX`` on prompt and padding); ``target_ids[:, i] = labels[:, i + 1]`` (and
``IGNORE_INDEX`` at the last position) is the token the prediction at position ``i`` is scored
on, so ``logits[:, i]`` pairs with ``target_ids[:, i]``. ``target_mask = target_ids != IGNORE_INDEX``
marks the positions that take part in every loss ("response positions"). The appended EOS is a
response token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class SideBatch:
    """One model's view of a batch. Shapes ``[B, L]`` unless stated.

    - ``side``: ``"student"`` or ``"teacher"``.
    - ``input_ids``, ``attention_mask`` (1 = real token), ``labels`` (HF convention, see module doc).
    - ``target_ids``: ``labels`` shifted left by one (``IGNORE_INDEX`` outside the response).
    - ``target_mask``: bool, ``target_ids != IGNORE_INDEX``.
    - ``target_spans``: ``[B, L, 2]`` long, the character span ``[start, end)`` of the target token
      within that example's response text; ``-1`` where ``target_mask`` is False; the appended EOS
      has the empty span ``(len(response), len(response))``.
    """

    side: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    target_spans: torch.Tensor

    def to(self, device) -> SideBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if torch.is_tensor(v):
                kw[k] = v.to(device)
        return SideBatch(**kw)

    @property
    def num_response_tokens(self) -> int:
        return int(self.target_mask.sum())


@dataclass
class PairBatch:
    """A training/eval batch: both tokenizations of the same examples.

    ``responses``: the response texts (the spans index into these); ``extras``: optional
    precomputed, method-specific tensors (e.g. MinED token alignments), keyed by name.
    """

    student: SideBatch
    teacher: SideBatch
    responses: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device) -> PairBatch:
        extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extras.items()}
        return PairBatch(self.student.to(device), self.teacher.to(device), list(self.responses), extras)

    @property
    def batch_size(self) -> int:
        return int(self.student.input_ids.shape[0])

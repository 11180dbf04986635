"""What a forward pass hands to a distillation method, and the one function that produces it.

Position convention used everywhere in dwakd (see :mod:`dwakd.data.batch`): position ``i`` of a
side holds the model's prediction *for the next token*; ``target_ids[:, i]`` is that token
(``-100`` where position ``i`` does not predict a response token). ``logits[:, i]`` therefore
pairs with ``target_ids[:, i]`` with no further shifting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutputs:
    """One model's outputs on one side of a :class:`~dwakd.data.batch.PairBatch`.

    Shapes: ``B`` batch, ``L`` that side's padded length, ``V`` logits width, ``d`` hidden size.

    - ``logits``        ``[B, L, V]``: next-token logits (float32 or the autocast dtype).
    - ``hidden``        ``[B, L, d]``: last-layer hidden states after the final norm (what the head reads).
    - ``input_embeds``  ``[B, L, d]``: input-embedding lookup of ``input_ids`` (``e(x_in)``).
    - ``target_embeds`` ``[B, L, d]``: input-embedding lookup of the next tokens (``e(x_tgt)``);
      rows where the target is ignored hold the embedding of token 0 and must be masked by users.

    For the teacher every field is computed under ``no_grad``; for the student with grad.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    input_embeds: torch.Tensor
    target_embeds: torch.Tensor


def run_model(model, side, *, output_logits: bool = True) -> ModelOutputs:
    """Run ``model`` on one side (a :class:`~dwakd.data.batch.SideBatch`) and collect :class:`ModelOutputs`.

    Gradient mode is the caller's: wrap in ``torch.no_grad()`` for the teacher.
    """
    emb = model.get_input_embeddings()
    out = model(
        input_ids=side.input_ids,
        attention_mask=side.attention_mask,
        output_hidden_states=True,
        use_cache=False,
    )
    targets = side.target_ids.clamp(min=0)
    return ModelOutputs(
        logits=out.logits,
        hidden=out.hidden_states[-1],
        input_embeds=emb(side.input_ids),
        target_embeds=emb(targets),
    )

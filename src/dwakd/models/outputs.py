"""What a forward pass hands to a distillation method, and the one function that produces it.

Position convention used everywhere in dwakd (see :mod:`dwakd.data.batch`): position ``i`` of a
side holds the model's prediction *for the next token*; ``target_ids[:, i]`` is that token
(``-100`` where position ``i`` does not predict a response token). ``logits[:, i]`` therefore
pairs with ``target_ids[:, i]`` with no further shifting.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class ModelOutputs:
    """One model's outputs on one side of a :class:`~dwakd.data.batch.PairBatch`.

    Shapes: ``B`` batch, ``L`` that side's padded length, ``V`` logits width, ``d`` hidden size.

    - ``logits``        ``[B, L, V]``: next-token logits (float32 or the autocast dtype), or ``None``
      when they were not materialised: then ``logits = hidden @ head_weight^T`` and the methods
      compute them only for the rows they need, chunk by chunk (``dwakd.methods.rows.logit_side``).
    - ``hidden``        ``[B, L, d]``: last-layer hidden states after the final norm (what the head reads).
    - ``input_embeds``  ``[B, L, d]``: input-embedding lookup of ``input_ids`` (``e(x_in)``).
    - ``target_embeds`` ``[B, L, d]``: input-embedding lookup of the next tokens (``e(x_tgt)``);
      rows where the target is ignored hold the embedding of token 0 and must be masked by users.
    - ``head_weight``   ``[V, d]``: the LM head's weight (set when ``logits`` is ``None``).

    For the teacher every field is computed under ``no_grad``; for the student with grad.
    """

    logits: torch.Tensor | None
    hidden: torch.Tensor
    input_embeds: torch.Tensor
    target_embeds: torch.Tensor
    head_weight: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        """The logits width ``V``."""
        return int(self.logits.shape[-1] if self.logits is not None else self.head_weight.shape[0])

    def full_logits(self) -> torch.Tensor:
        """``[B, L, V]`` logits, materialised from the hidden states if needed (memory: the whole tensor)."""
        if self.logits is not None:
            return self.logits
        return self.hidden.to(self.head_weight.dtype) @ self.head_weight.t()


def plain_head(model) -> torch.Tensor | None:
    """The LM head weight when ``logits == hidden @ W^T`` exactly (no bias, no soft-capping, no scaling),
    else ``None`` (such models keep materialised logits)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None or not hasattr(head, "weight"):
        return None
    if hasattr(head.weight, "ds_id") or head.weight.numel() == 0:
        return None  # a DeepSpeed ZeRO-3 partition: the full weight exists only inside the module call
    cfg = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(cfg, key, None)
        if value not in (None, 1, 1.0):
            return None
    return head.weight


def run_model(model, side, *, output_logits: bool = True) -> ModelOutputs:
    """Run ``model`` on one side (a :class:`~dwakd.data.batch.SideBatch`) and collect :class:`ModelOutputs`.

    ``output_logits=False``: do not materialise the ``[B, L, V]`` logits (nor their gradient) when the
    head is a plain linear map (:func:`plain_head`) and the model accepts ``logits_to_keep``; the
    outputs then carry ``head_weight`` and ``logits=None``. Gradient mode is the caller's: wrap in
    ``torch.no_grad()`` for the teacher.
    """
    emb = model.get_input_embeddings()
    head = None if output_logits else plain_head(model)
    kwargs = {}
    if head is not None:
        forward = getattr(model, "forward", None)
        try:
            accepts = "logits_to_keep" in inspect.signature(forward).parameters
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            kwargs["logits_to_keep"] = 1  # the head runs on the last position only
        else:
            head = None
    out = model(
        input_ids=side.input_ids,
        attention_mask=side.attention_mask,
        output_hidden_states=True,
        use_cache=False,
        **kwargs,
    )
    targets = side.target_ids.clamp(min=0)
    return ModelOutputs(
        logits=None if head is not None else out.logits,
        hidden=out.hidden_states[-1],
        input_embeds=emb(side.input_ids),
        target_embeds=emb(targets),
        head_weight=head,
    )

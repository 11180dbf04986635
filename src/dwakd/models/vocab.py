"""Vocabulary facts every later layer needs, computed in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VocabFacts:
    """What a tokenizer/model pair looks like to dwakd.

    ``tokenizer_size``: ``len(tokenizer)`` (ids the tokenizer can emit).
    ``logits_width``: the model's output dimension, which may be larger (padded vocabularies,
    e.g. Qwen's 151,936 vs 151,643); ids in ``[tokenizer_size, logits_width)`` never occur.
    ``adds_bos``: the tokenizer prepends BOS when ``add_special_tokens=True``.
    ``pad_is_eos``: the pad token was set to EOS (see :func:`dwakd.models.load_tokenizer`).
    """

    tokenizer_size: int
    logits_width: int | None
    pad_id: int
    eos_id: int | None
    bos_id: int | None
    adds_bos: bool
    has_chat_template: bool
    padding_side: str
    pad_is_eos: bool

    @property
    def padded_vocab(self) -> bool:
        return self.logits_width is not None and self.logits_width != self.tokenizer_size


def vocab_facts(tokenizer, model=None) -> VocabFacts:
    """Collect :class:`VocabFacts` for ``tokenizer`` (and ``model``'s logits width when given)."""
    logits_width = None
    if model is not None:
        head = model.get_output_embeddings()
        logits_width = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    return VocabFacts(
        tokenizer_size=len(tokenizer),
        logits_width=logits_width,
        pad_id=int(tokenizer.pad_token_id),
        eos_id=tokenizer.eos_token_id,
        bos_id=bos,
        adds_bos=adds_bos,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        padding_side=tokenizer.padding_side,
        pad_is_eos=tokenizer.pad_token_id == tokenizer.eos_token_id,
    )

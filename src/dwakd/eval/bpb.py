"""Bits per byte of reference responses under a model, given the prompt.

For one example with prompt ``x`` and response text ``y``::

    bits(y | x) = sum_t -log2 p(y_t | x, y_<t)      over the response tokens, plus the end token
    bpb         = sum_examples bits / sum_examples len(y.encode("utf-8"))

**EOS is included** (default ``include_eos=True``): the model's own stop token (the tokenizer's
EOS, e.g. ``</s>`` or a chat model's ``<|im_end|>``) is scored after the response, so the number
is the cost of the exact string *as a complete answer*; every model pays exactly one end marker
per answer whatever its tokenizer, and a model that rambles on is charged for it. Prompt and
response are tokenized exactly as training encodes them (:mod:`dwakd.data.encode`: separately,
BOS rule, special-token text inside the response kept as plain text); only that canonical
tokenization is scored. Dividing by UTF-8 bytes
of the response text (not tokens) makes models with different tokenizers comparable.

The corpus value is the ratio of sums (a byte-weighted mean). Prompts are left-truncated to
``max_prompt_tokens``; when prompt + response (+ EOS) exceeds ``max_length`` (or the model's
positions), the response is cut after the last token that fits, EOS is not scored, and only
the bytes of the kept prefix (up to the end of the last kept token's character span) are counted: such
examples are reported as ``truncated``. Responses of zero bytes are skipped (``skipped``).
Ids at or above ``len(tokenizer)`` are excluded from the softmax, as in generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from dwakd.data.encode import response_tokens, side_tokenizer
from dwakd.eval.generate import _model_device, cut_prompt_ids, encode_prompt, model_max_positions

LN2 = math.log(2.0)


@dataclass
class ExampleBits:
    """One example: ``bits`` (sum of -log2 p), ``n_bytes`` scored, ``n_tokens`` scored (EOS included
    when scored), ``truncated`` (response cut to fit), ``skipped`` (zero-byte response)."""

    bits: float
    n_bytes: int
    n_tokens: int
    truncated: bool = False
    skipped: bool = False


@dataclass
class BitsPerByte:
    """Corpus totals; ``value`` = bits / bytes (NaN when no byte was scored)."""

    bits: float
    n_bytes: int
    n_tokens: int
    n_examples: int
    truncated: int
    skipped: int

    @property
    def value(self) -> float:
        return self.bits / self.n_bytes if self.n_bytes else float("nan")

    @property
    def bits_per_token(self) -> float:
        return self.bits / self.n_tokens if self.n_tokens else float("nan")

    def to_dict(self) -> dict:
        return {"value": self.value, "bits_per_token": self.bits_per_token, **asdict(self)}

    @classmethod
    def total(cls, items: Sequence[ExampleBits]) -> BitsPerByte:
        used = [e for e in items if not e.skipped]
        return cls(
            bits=float(sum(e.bits for e in used)),
            n_bytes=int(sum(e.n_bytes for e in used)),
            n_tokens=int(sum(e.n_tokens for e in used)),
            n_examples=len(used),
            truncated=sum(e.truncated for e in used),
            skipped=len(items) - len(used),
        )


def _plan(model, tokenizer, prompt, response: str, *, include_eos: bool, max_prompt_tokens: int,
          max_length: int) -> tuple[list[int], list[int], int, bool]:
    """(prompt ids, target ids, bytes scored, truncated) for one example, tokenized as training
    does (:func:`dwakd.data.encode.response_tokens`: special-token text in the response is plain text)."""
    if isinstance(prompt, str):
        p_ids = encode_prompt(tokenizer, prompt, max_prompt_tokens)
    else:
        p_ids = cut_prompt_ids([int(t) for t in prompt], tokenizer.bos_token_id, max_prompt_tokens)
    r_ids, spans = response_tokens(response, tokenizer)
    limit = max_length
    positions = model_max_positions(model)
    if positions is not None:
        limit = min(limit, positions)
    room = max(limit - len(p_ids), 0)
    targets = r_ids + ([side_tokenizer(tokenizer).eos_id] if include_eos else [])
    if len(targets) <= room:
        return p_ids, targets, len(response.encode("utf-8")), False
    kept = r_ids[:room]
    end_char = spans[len(kept) - 1][1] if kept else 0
    return p_ids, kept, len(response[:end_char].encode("utf-8")), True


@torch.inference_mode()
def response_bits(model, tokenizer, prompts: Sequence[str | Sequence[int]], responses: Sequence[str], *,
                  include_eos: bool = True, max_prompt_tokens: int = 256, max_length: int = 512,
                  tokens_per_batch: int = 2048, autocast_dtype=None) -> list[ExampleBits]:
    """Per-example :class:`ExampleBits` of ``responses[i]`` after ``prompts[i]`` (a formatted prompt
    string, encoded with :func:`~dwakd.eval.generate.encode_prompt`, or prompt token ids).

    Batches are right-padded and hold at most ``tokens_per_batch`` padded tokens (at least one
    example), which bounds the ``[B, L, V]`` logits memory.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    plans = [_plan(model, tokenizer, p, r, include_eos=include_eos, max_prompt_tokens=max_prompt_tokens,
                   max_length=max_length) for p, r in zip(prompts, responses)]
    results: list[ExampleBits | None] = [None] * len(plans)
    todo = []
    for i, (_, targets, n_bytes, truncated) in enumerate(plans):
        if n_bytes == 0 or not targets:
            results[i] = ExampleBits(0.0, 0, 0, truncated, skipped=True)
        else:
            todo.append(i)
    todo.sort(key=lambda i: -(len(plans[i][0]) + len(plans[i][1])))
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vocab_limit = len(tokenizer)
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(todo):
            width = len(plans[todo[start]][0]) + len(plans[todo[start]][1])
            count = max(1, tokens_per_batch // max(width, 1))
            rows = todo[start:start + count]
            start += len(rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, i in enumerate(rows):
                seq = plans[i][0] + plans[i][1]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for b, i in enumerate(rows):
                p_ids, targets, n_bytes, truncated = plans[i]
                first = len(p_ids) - 1  # logits at position t predict token t + 1
                row = logits[b, first:first + len(targets), :vocab_limit].float()
                logp = row.log_softmax(-1).gather(-1, torch.tensor(targets, device=device)[:, None])
                results[i] = ExampleBits(float(-logp.double().sum()) / LN2, n_bytes, len(targets), truncated)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def bits_per_byte(model, tokenizer, prompts: Sequence[str | Sequence[int]], responses: Sequence[str],
                  **kwargs) -> BitsPerByte:
    """Corpus :class:`BitsPerByte` (ratio of sums); keyword arguments as :func:`response_bits`."""
    return BitsPerByte.total(response_bits(model, tokenizer, prompts, responses, **kwargs))

"""Batched, left-padded generation with per-example seeded sampling (the papers' protocol).

Defaults follow MiniLLM / DSKD / DWA-KD: temperature 1, top_p 1, top_k 0 (disabled), prompt at
most 256 tokens (left-truncated: the *end* of a long prompt is kept, BOS re-attached), prompt plus
generation at most 512 tokens, stop at EOS. ``greedy=True`` takes the argmax instead.

The decoding loop is dwakd's own (a KV-cached forward per step), not ``model.generate``: a
model's ``generation_config.json`` (repetition penalties, default top-k 50, ...) can therefore
never leak into the protocol, and every example draws from its **own** ``torch.Generator``
seeded from ``(seed, example key)``. The samples of an example thus depend on the seed and the
example only, not on the batch size or on which other prompts share its batch (up to float
round-off from padding). Finished rows are dropped from the batch (and the cache) as they end.

Every row may generate ``min(max_new_tokens, max_length - its prompt length, model positions -
its prompt length)`` tokens. EOS ids: the tokenizer's EOS plus the model's
``generation_config.eos_token_id`` (a chat model's end-of-turn token). Ids at or above
``len(tokenizer)`` (padded logits rows) are never sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from dwakd.data.collate import collate_prompts
from dwakd.data.encode import prompt_ids, side_tokenizer
from dwakd.errors import ConfigError

DEFAULT_SEEDS = (10, 20, 30, 40, 50)


@dataclass
class GenerationSettings:
    """Decoding settings; the defaults are the papers' protocol."""

    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_prompt_tokens: int = 256
    max_length: int = 512
    max_new_tokens: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (use greedy for argmax); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it); got {self.top_k}")
        if self.max_prompt_tokens < 1 or self.max_length <= self.max_prompt_tokens:
            raise ConfigError(
                f"need 1 <= max_prompt_tokens < max_length; got {self.max_prompt_tokens} and {self.max_length}"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """One generated answer: ``text`` (decoded, special tokens skipped, stripped), ``token_ids``
    (the new tokens, EOS excluded), ``stopped_at_eos`` (False: it hit the length limit)."""

    text: str
    token_ids: list[int]
    stopped_at_eos: bool


def encode_prompt(tokenizer, text: str, max_prompt_tokens: int) -> list[int]:
    """Token ids of a formatted prompt, exactly as training sees it (:func:`dwakd.data.prompt_ids`):
    special-token text recognised, BOS prepended only when the tokenizer prepends one and the
    text does not already start with it, then cut from the left to ``max_prompt_tokens`` with a
    leading BOS kept."""
    return prompt_ids(text, tokenizer, max_prompt_tokens)


def cut_prompt_ids(ids: list[int], bos_id: int | None, max_prompt_tokens: int) -> list[int]:
    """Left-truncate prompt ids to ``max_prompt_tokens``, keeping a leading BOS."""
    if len(ids) <= max_prompt_tokens:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [ids[0], *ids[len(ids) - max_prompt_tokens + 1:]]
    return ids[len(ids) - max_prompt_tokens:]


def eos_ids(model, tokenizer) -> set[int]:
    """The ids that end a generation: the tokenizer's end token (as training appends it,
    :func:`dwakd.data.encode.side_tokenizer`) plus the model's generation-config EOS."""
    ids = {int(side_tokenizer(tokenizer).eos_id)}
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    return ids


def model_max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def example_generator(seed: int, key: int, device) -> torch.Generator:
    """The random stream of one example: a function of ``(seed, key)`` only."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(key) * 7_919 + 12_345) % (2**63 - 1))
    return g


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering on ``[B, V]`` float logits (masked entries become -inf)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _forward_kwargs(model) -> tuple[str, dict]:
    """The KV-cache argument name (``cache`` in recent transformers, else ``past_key_values``) and
    ``{"logits_to_keep": 1}`` when the model supports it (the prefill then skips the head on
    every prompt position but the last)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values", {}
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), extra


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts: list[list[int]], gens: list[torch.Generator], budgets: list[int],
                    settings: GenerationSettings, stop: set[int], vocab_limit: int, autocast_dtype=None,
                    on_finished=None) -> list[tuple[list[int], bool]]:
    """Generate for one left-padded batch; ``on_finished(n)`` is called as rows end (progress)."""
    device = _model_device(model)
    n = len(prompts)
    batch = collate_prompts(prompts, tokenizer).to(device)  # left-padded
    ids, mask = batch.input_ids, batch.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    stop_t = torch.tensor(sorted(stop), device=device)
    outs: list[list[int]] = [[] for _ in range(n)]
    ended = [False] * n
    alive = list(range(n))  # original row of each current batch row
    cache = None
    cache_kw, extra = _forward_kwargs(model)
    while alive:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                        **{cache_kw: cache}, **extra)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        logits = out.logits[:, -1, :].float()
        if logits.shape[-1] > vocab_limit:
            logits[:, vocab_limit:] = float("-inf")
        if settings.greedy:
            nxt = logits.argmax(-1)
        else:
            logits = _filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
            probs = logits.softmax(-1)
            nxt = torch.stack([torch.multinomial(probs[b], 1, generator=gens[r])[0] for b, r in enumerate(alive)])
        is_stop = torch.isin(nxt, stop_t).tolist()
        toks = nxt.tolist()
        keep = []
        for b, r in enumerate(alive):
            if is_stop[b]:
                ended[r] = True
                continue
            outs[r].append(toks[b])
            if len(outs[r]) < budgets[r]:
                keep.append(b)
        if on_finished is not None and len(keep) < len(alive):
            on_finished(len(alive) - len(keep))
        if not keep:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep, device=device)
            if cache is not None:
                if not hasattr(cache, "batch_select_indices"):  # pragma: no cover - very old transformers
                    raise ConfigError("this transformers version's cache cannot drop finished rows; upgrade it")
                cache.batch_select_indices(idx)
            nxt, mask, pos = nxt[idx], mask[idx], pos[idx]
            alive = [alive[b] for b in keep]
        ids = nxt.unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        pos = pos[:, -1:] + 1
    return [(outs[r], ended[r]) for r in range(n)]


def generate(model, tokenizer, prompts: Sequence[str | Sequence[int]], settings: GenerationSettings | None = None,
             *, seed: int = 10, keys: Sequence[int] | None = None, progress: bool | str = False,
             autocast_dtype=None) -> list[Generation]:
    """Answer every prompt once; returns one :class:`Generation` per prompt, in input order.

    ``prompts``: formatted prompt strings (encoded with :func:`encode_prompt`) or token-id lists
    (left-truncated the same way). ``seed`` + ``keys[i]`` (default ``i``) seed example ``i``'s
    sampler, so a later call with the same seed and keys reproduces the samples. ``progress``:
    a tqdm bar (a string is its description). ``autocast_dtype``: e.g. ``torch.bfloat16``.
    """
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    keys = list(range(len(prompts))) if keys is None else list(keys)
    if len(keys) != len(prompts):
        raise ConfigError(f"{len(keys)} keys for {len(prompts)} prompts")
    encoded = []
    for p in prompts:
        if isinstance(p, str):
            encoded.append(encode_prompt(tokenizer, p, settings.max_prompt_tokens))
        else:
            encoded.append(cut_prompt_ids([int(t) for t in p], tokenizer.bos_token_id, settings.max_prompt_tokens))
    if any(len(e) == 0 for e in encoded):
        raise ConfigError("an empty prompt cannot be answered (a prompt encoded to zero tokens)")
    positions = model_max_positions(model)
    budgets = []
    for e in encoded:
        b = settings.max_length - len(e)
        if settings.max_new_tokens is not None:
            b = min(b, settings.max_new_tokens)
        if positions is not None:
            b = min(b, positions - len(e))
        if b < 1:
            raise ConfigError(f"a prompt of {len(e)} tokens leaves no room to generate in the model's {positions} "
                              f"positions; lower max_prompt_tokens below {positions}")
        budgets.append(b)
    stop = eos_ids(model, tokenizer)
    device = _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    results: list[Generation | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    desc = progress if isinstance(progress, str) else "generating"
    bar = tqdm(total=len(encoded), desc=desc, unit="ex", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            gens = [example_generator(seed, keys[i], device) for i in rows]
            got = _generate_batch(model, tokenizer, [encoded[i] for i in rows], gens, [budgets[i] for i in rows],
                                  settings, stop, len(tokenizer), autocast_dtype, on_finished=bar.update)
            for i, (toks, ended) in zip(rows, got):
                text = tokenizer.decode(toks, skip_special_tokens=True).strip()
                results[i] = Generation(text=text, token_ids=toks, stopped_at_eos=ended)
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]

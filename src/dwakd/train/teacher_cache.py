"""Teacher cache: run the frozen teacher once over the training data, reuse its outputs every step.

What is stored, per example, is what the methods need from the teacher and cannot get cheaply:
the last hidden states (after the final norm) at the teacher's *response positions* (the
positions whose ``target_mask`` is True), in bfloat16. Everything else is recomputed on the fly
from the frozen teacher's own modules, which stay loaded but never run a forward pass:

- logits = LM head (hidden), in float32 (exactly the teacher's logits up to the bf16 rounding of
  the stored hidden state);
- input and target embeddings = the teacher's embedding lookup of the batch's ids.

Outside the response positions the rebuilt hidden states and logits are zero: every method reads
teacher outputs only where ``batch.teacher.target_mask`` is True (the default
``TeacherNeeds.positions == "response"``); a method that declares ``all`` positions (e.g.
``dtw_positions: prefix`` or ``cma_std: padded-batch``) is refused with its reason
(:func:`cache_can_serve`).

Keys. Each example is keyed by a hash of its teacher-side ``input_ids`` and ``labels`` (so the
key changes with the data, the teacher tokenizer, the prompt format and the truncation rule), and
the whole cache by the teacher's fingerprint (config, weight files, tokenizer). A cache built for
another teacher, or lacking an example of the current batch, is refused with a clear message.
Files are written atomically and durably (temporary directory, fsync, rename: :mod:`dwakd.fsio`).

Integrity. ``meta.json`` records the size and SHA-256 of ``hidden.safetensors``; opening a cache
checks both, then that the tensors read, that their offsets are consistent and that every cached
value is finite. A truncated, corrupted or NaN-poisoned cache is refused with a
:class:`TeacherCacheError` that says to rebuild it (``dwakd cache-teacher`` rebuilds a damaged
cache by itself). When a cache exists for this teacher but for other data (the data, prompt format
or truncation changed), training runs the teacher live and says so.

Layout of a cache directory: ``hidden.safetensors`` (``hidden [N_tokens, d] bf16``,
``offsets [K + 1] int64``) and ``meta.json`` (fingerprint, example keys in row order, shapes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dwakd.errors import DwakdError
from dwakd.fsio import atomic_directory, sha256_file, update_with_model_files
from dwakd.models.home import dwakd_home
from dwakd.models.outputs import ModelOutputs, plain_head

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: meta.json records the size and SHA-256 of hidden.safetensors


class TeacherCacheError(DwakdError):
    """A teacher cache is stale, foreign or unreadable."""


# --------------------------------------------------------------------------- identities
def teacher_fingerprint(model_dir: str | Path, tokenizer) -> str:
    """Hash of the teacher's identity: its config, weight files (name, size, first/last MiB) and tokenizer."""
    h = hashlib.sha256()
    root = Path(model_dir)
    if root.is_dir():
        update_with_model_files(h, root)
    else:  # a hub name: its revision is what the hub resolves; the name and tokenizer must do
        h.update(str(model_dir).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()[:32]


def example_key(input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """Key of one example: its teacher-side token ids and labels (unpadded)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(torch.tensor(list(input_ids), dtype=torch.int64).numpy().tobytes())
    h.update(torch.tensor(list(labels), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def data_key(keys: Sequence[str]) -> str:
    """Hash of a set of example keys (order-independent)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def default_cache_dir(fingerprint: str, keys: Sequence[str]) -> Path:
    """``$DWAKD_HOME/teacher_cache/<teacher fingerprint>-<data hash>``."""
    return dwakd_home() / "teacher_cache" / f"{fingerprint[:16]}-{data_key(keys)}"


def _row_keys(side) -> list[str]:
    """Example keys of every row of a padded :class:`~dwakd.data.batch.SideBatch` (any padding side)."""
    keys = []
    for ids, mask, labels in zip(side.input_ids.tolist(), side.attention_mask.tolist(), side.labels.tolist()):
        keep = [i for i, m in enumerate(mask) if m]
        keys.append(example_key([ids[i] for i in keep], [labels[i] for i in keep]))
    return keys


def cache_can_serve(needs) -> str | None:
    """``None`` when the cache can serve a method declaring ``needs``
    (:class:`dwakd.methods.TeacherNeeds`), else the reason it cannot. The cache rebuilds logits and
    hidden states at the response positions only; embeddings everywhere."""
    if needs is None:
        return "the method needs no teacher"
    if needs.positions != "response" and (needs.hidden or needs.logits):
        return (needs.why or "the method reads teacher outputs outside the response positions") + \
            ", which the cache does not store"
    return None


# --------------------------------------------------------------------------- building
@torch.no_grad()
def build_teacher_cache(teacher, examples: Sequence, collator, out_dir: str | Path, *, fingerprint: str,
                        batch_size: int = 8, autocast_dtype: torch.dtype | None = torch.bfloat16,
                        progress: bool = True) -> dict:
    """Run ``teacher`` over ``examples`` (:class:`~dwakd.data.EncodedPair`) and write the cache.

    ``collator``: the training collator (its teacher side is what the trainer feeds the teacher).
    Returns a summary: examples, response tokens, bytes per token, seconds.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    device = next(teacher.parameters()).device
    keys: list[str] = []
    chunks: list[torch.Tensor] = []
    offsets = [0]
    seen: set[str] = set()
    bar = tqdm(total=len(examples), desc="teacher cache", unit="ex", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = collator(list(examples[start:start + batch_size]))
        side = batch.teacher.to(device)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            out = teacher(input_ids=side.input_ids, attention_mask=side.attention_mask,
                          output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        for row, key in enumerate(_row_keys(side)):
            if key in seen:  # identical examples share one entry
                continue
            seen.add(key)
            keys.append(key)
            rows = hidden[row][side.target_mask[row]].to(torch.bfloat16).cpu()
            chunks.append(rows)
            offsets.append(offsets[-1] + rows.shape[0])
        bar.update(min(batch_size, len(examples) - start))
    bar.close()
    hidden_all = torch.cat(chunks) if chunks else torch.zeros(0, 0, dtype=torch.bfloat16)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "examples": len(keys),
        "tokens": int(hidden_all.shape[0]),
        "hidden_size": int(hidden_all.shape[1]) if hidden_all.ndim == 2 else 0,
        "dtype": "bfloat16",
        "keys": keys,
    }
    _write(Path(out_dir), hidden_all, torch.tensor(offsets, dtype=torch.int64), meta)
    seconds = time.time() - t0
    n_bytes = hidden_all.numel() * hidden_all.element_size()
    summary = {"path": str(out_dir), "examples": len(keys), "tokens": meta["tokens"],
               "bytes": n_bytes, "bytes_per_token": n_bytes / max(1, meta["tokens"]), "seconds": seconds}
    log.info("teacher cache: %d examples, %d tokens, %.0f bytes/token, %.1fs -> %s", len(keys), meta["tokens"],
             summary["bytes_per_token"], seconds, out_dir)
    return summary


def _write(out: Path, hidden: torch.Tensor, offsets: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_directory(out) as tmp:
        save_file({"hidden": hidden.contiguous(), "offsets": offsets}, str(tmp / "hidden.safetensors"))
        meta = dict(meta, hidden_bytes=(tmp / "hidden.safetensors").stat().st_size,
                    hidden_sha256=sha256_file(tmp / "hidden.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


# --------------------------------------------------------------------------- using
@dataclass
class TeacherCache:
    """A loaded cache: ``hidden [N, d] bf16``, ``offsets [K + 1]``, ``index`` key -> row number."""

    path: Path
    hidden: torch.Tensor
    offsets: torch.Tensor
    index: dict[str, int]
    fingerprint: str

    @classmethod
    def load(cls, path: str | Path, *, fingerprint: str | None = None) -> TeacherCache:
        """Load and validate; ``fingerprint``: the current teacher's (a mismatch is refused)."""
        from safetensors.torch import load_file

        path = Path(path)
        rebuild = ("rebuild it with `dwakd cache-teacher CONFIG` (or train with model.teacher_cache=off to run "
                   "the teacher live)")
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("keys"), list):
                raise ValueError("meta.json is not a cache description")
        except (OSError, ValueError) as e:
            raise TeacherCacheError(f"teacher cache {path} is missing or unreadable ({e}); {rebuild}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise TeacherCacheError(f"teacher cache {path} has format {meta.get('format_version')}, expected "
                                    f"{FORMAT_VERSION} (older caches carry no checksum); {rebuild}")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise TeacherCacheError(
                f"teacher cache {path} was built for another teacher (fingerprint {str(meta.get('fingerprint'))[:12]}"
                f"..., this teacher {fingerprint[:12]}...); rebuild it with `dwakd cache-teacher CONFIG` or remove it")
        data_file = path / "hidden.safetensors"
        size = data_file.stat().st_size if data_file.is_file() else None
        if size != meta.get("hidden_bytes"):
            raise TeacherCacheError(f"teacher cache {path}: hidden.safetensors has {size} bytes, "
                                    f"{meta.get('hidden_bytes')} were written (truncated or replaced); {rebuild}")
        if sha256_file(data_file) != meta.get("hidden_sha256"):
            raise TeacherCacheError(f"teacher cache {path}: hidden.safetensors does not match its checksum "
                                    f"(corrupted); {rebuild}")
        try:
            tensors = load_file(str(data_file))
            hidden, offsets = tensors["hidden"], tensors["offsets"]
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise TeacherCacheError(f"teacher cache {path} is unreadable ({type(e).__name__}: {e}); {rebuild}") from e
        if (offsets.ndim != 1 or offsets.numel() != len(meta["keys"]) + 1 or int(offsets[0]) != 0
                or int(offsets[-1]) != hidden.shape[0] or bool((offsets[1:] < offsets[:-1]).any())):
            raise TeacherCacheError(f"teacher cache {path} is inconsistent (offsets vs rows); {rebuild}")
        if hidden.numel() and not bool(torch.isfinite(hidden).all()):
            n = int((~torch.isfinite(hidden)).sum())
            raise TeacherCacheError(f"teacher cache {path} holds {n} non-finite values (NaN/inf); {rebuild}")
        return cls(path, hidden, offsets, {k: i for i, k in enumerate(meta["keys"])}, meta["fingerprint"])

    def covers(self, keys: Sequence[str]) -> bool:
        return all(k in self.index for k in keys)

    def outputs(self, teacher, side) -> ModelOutputs:
        """Rebuild the teacher's :class:`ModelOutputs` for one padded teacher side from the cache."""
        device = side.input_ids.device
        head = teacher.get_output_embeddings()
        emb = teacher.get_input_embeddings()
        B, L = side.input_ids.shape
        d = self.hidden.shape[1]
        hidden = torch.zeros(B, L, d, dtype=torch.float32, device=device)
        for row, key in enumerate(_row_keys(side)):
            k = self.index.get(key)
            if k is None:
                raise TeacherCacheError(
                    f"teacher cache {self.path} has no entry for an example of this batch: it was built for other "
                    "data, another prompt format or other truncation settings; rebuild it with "
                    "`dwakd cache-teacher CONFIG` (or remove it to run the teacher live)")
            rows = self.hidden[int(self.offsets[k]):int(self.offsets[k + 1])]
            positions = side.target_mask[row].nonzero().squeeze(1)
            if positions.numel() != rows.shape[0]:
                raise TeacherCacheError(f"teacher cache {self.path}: an example has {rows.shape[0]} cached response "
                                        f"positions but the batch has {positions.numel()}; rebuild the cache")
            hidden[row, positions] = rows.to(device=device, dtype=torch.float32)
        if plain_head(teacher) is not None:  # the methods form logits rows from hidden rows + head
            return ModelOutputs(logits=None, hidden=hidden, input_embeds=emb(side.input_ids),
                                target_embeds=emb(side.target_ids.clamp(min=0)), head_weight=head.weight)
        with torch.no_grad():
            # The head runs on the response rows only; other rows stay zero (no method reads them).
            weight = head.weight
            mask = side.target_mask
            logits = torch.zeros(B, L, weight.shape[0], dtype=torch.float32, device=device)
            rows = hidden[mask].to(weight.dtype) @ weight.T
            if getattr(head, "bias", None) is not None:
                rows = rows + head.bias
            logits[mask] = rows.float()
            return ModelOutputs(
                logits=logits.float(),
                hidden=hidden,
                input_embeds=emb(side.input_ids),
                target_embeds=emb(side.target_ids.clamp(min=0)),
            )


class CachedTeacherRunner:
    """Drop-in for :class:`dwakd.train.teacher.TeacherRunner` that reads a :class:`TeacherCache`."""

    def __init__(self, model: torch.nn.Module, cache: TeacherCache):
        self.model = model
        self.cache = cache

    def can_serve(self, needs) -> str | None:
        return cache_can_serve(needs)

    def __call__(self, batch) -> ModelOutputs:
        return self.cache.outputs(self.model, batch.teacher)


# --------------------------------------------------------------------------- config-level entry points
def cache_keys(examples: Sequence, collator) -> list[str]:
    """Example keys of ``examples`` as the collator presents them to the teacher."""
    keys: list[str] = []
    for start in range(0, len(examples), 64):
        keys += _row_keys(collator(list(examples[start:start + 64])).teacher)
    return keys


def locate_cache(teacher_spec: str, teacher_tokenizer, examples: Sequence, collator) -> tuple[Path, str]:
    """``(default cache directory, teacher fingerprint)`` for this teacher and these examples."""
    from dwakd.models.loading import resolve_spec

    fingerprint = teacher_fingerprint(resolve_spec(teacher_spec), teacher_tokenizer)
    return default_cache_dir(fingerprint, cache_keys(examples, collator)), fingerprint


def open_cache_if_present(teacher_spec: str, teacher_tokenizer, examples: Sequence, collator) -> TeacherCache | None:
    """The cache matching this teacher and exactly these examples, if one was built; else ``None``."""
    path, fingerprint = locate_cache(teacher_spec, teacher_tokenizer, examples, collator)
    if not (path / "meta.json").is_file():
        others = sorted(p for p in path.parent.glob(f"{fingerprint[:16]}-*") if p.is_dir()) if path.parent.is_dir() else []
        if others:
            log.warning("a teacher cache exists for this teacher (%s) but not for this data: the training data, prompt "
                        "format or truncation changed since `dwakd cache-teacher` ran. The teacher runs live (slower); "
                        "rebuild the cache with `dwakd cache-teacher CONFIG` to use it again", others[-1])
        return None
    return TeacherCache.load(path, fingerprint=fingerprint)


def build_cache_for_config(cfg, *, batch_size: int = 8, force: bool = False, progress: bool = True) -> dict:
    """Build (or find) the cache for a training config: same data path as ``dwakd train``."""
    from accelerate import Accelerator

    from dwakd.errors import ConfigError
    from dwakd.train.checks import check_method
    from dwakd.train.run import prepare
    from dwakd.train.teacher import load_teacher

    if not cfg.model.teacher:
        raise ConfigError("model.teacher: the config names no teacher, so there is nothing to cache")
    method_cls = check_method(cfg)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data, _ = prepare(cfg, accelerator, method_cls)
    examples = list(data.train) + list(data.dev)
    path, fingerprint = locate_cache(cfg.model.teacher, data.teacher_tokenizer, examples, data.collator)
    if (path / "meta.json").is_file() and not force:
        try:
            cache = TeacherCache.load(path, fingerprint=fingerprint)
        except TeacherCacheError as e:
            log.warning("%s; rebuilding it", e)
        else:
            n = int(cache.hidden.shape[0])
            return {"path": str(path), "examples": len(cache.index), "tokens": n, "bytes": cache.hidden.numel() * 2,
                    "bytes_per_token": cache.hidden.shape[1] * 2.0, "seconds": 0.0, "reused": True}
    teacher = load_teacher(cfg.model.teacher, dtype=torch.float32, device=accelerator.device)
    autocast = torch.bfloat16 if accelerator.device.type == "cpu" or torch.cuda.is_bf16_supported() else None
    return build_teacher_cache(teacher, examples, data.collator, path, fingerprint=fingerprint,
                               batch_size=batch_size, autocast_dtype=autocast, progress=progress)

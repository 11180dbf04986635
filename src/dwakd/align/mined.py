"""MinED (Wan et al. 2024, FuseLLM): edit-distance token alignment and vocabulary map.

Token strings are compared after :func:`normalize_token`: the space markers ``Ġ`` (byte-level BPE)
and ``▁`` (SentencePiece/Metaspace) are removed wherever they occur and a WordPiece continuation
prefix ``##`` is stripped; nothing else changes (byte-level ``Ċ`` stays ``Ċ``). Edit distance is
Levenshtein (unit insert/delete/substitute) from ``rapidfuzz`` (C++).

- :func:`mined_token_alignment`: DTW over the two token sequences with cost
  ``lev(norm(s_i), norm(t_j))``, steps (1, 1), (1, 0), (0, 1); the optimal monotone path from
  ``(0, 0)`` to ``(S-1, T-1)`` as ``(i, j)`` pairs. Ties on the way back prefer the diagonal, then
  ``(i-1, j)``, then ``(i, j-1)``.
- :func:`build_vocab_map`: teacher id -> student id (``-1`` = unmapped), one entry per teacher id
  ``0 .. len(teacher_tokenizer) - 1``:

  1. a teacher *special* token maps to the student token with the same text, else to the student's
     special token of the same role (eos, bos, pad, unk, sep, cls, mask), else ``-1``;
  2. an ordinary token maps to the student's ordinary token with the same text, else to the
     ordinary student token at minimum edit distance after normalisation; ties go to the lowest
     student id (a normalised exact match is distance 0). Student special tokens are never
     targets of ordinary tokens; ids with no token are ``-1``.

  The map is cached on disk under ``$DWAKD_HOME/vocab_maps/``, keyed by both tokenizers' content
  hashes (:func:`tokenizer_hash`), so a change to either tokenizer builds a new map. Files are
  written atomically (temporary file + rename).

Build speed: exact matches are dictionary look-ups; the rest are searched bucket by bucket of
normalised length (distance >= length difference, so a bucket is skipped once every query in it has
a better candidate) with ``rapidfuzz.process.cdist`` on all cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MAP_VERSION = "mined-vocab-map-v1"
SPECIAL_ROLES = ("eos_token", "bos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")


def normalize_token(token: str) -> str:
    """Token text for edit distances: ``Ġ`` and ``▁`` removed, a leading ``##`` stripped."""
    if token.startswith("##") and len(token) > 2:
        token = token[2:]
    return token.replace("Ġ", "").replace("▁", "")


# --------------------------------------------------------------------------- DTW
def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Optimal monotone DTW path through ``cost`` ``[S, T]`` (steps (1,1), (1,0), (0,1)).

    The accumulated-cost table is filled one anti-diagonal at a time (vectorised); the path is
    read back from ``(S-1, T-1)`` with ties preferring the diagonal, then ``(i-1, j)``, then ``(i, j-1)``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        return []
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        best = np.minimum(np.minimum(acc[i - 1, j - 1], acc[i - 1, j]), acc[i, j - 1])
        acc[i, j] = cost[i - 1, j - 1] + best
    path = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        if diag <= up and diag <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return path


def token_cost_matrix(student_tokens: Sequence[str], teacher_tokens: Sequence[str]) -> np.ndarray:
    """``[S, T]`` int32 Levenshtein distances between normalised token strings."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    a = [normalize_token(t) for t in student_tokens]
    b = [normalize_token(t) for t in teacher_tokens]
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.int32)
    return cdist(a, b, scorer=Levenshtein.distance, dtype=np.int32, workers=1)


def mined_token_alignment(student_tokens: Sequence[str], teacher_tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Monotone MinED alignment ``[(i, j), ...]`` of two token-string sequences (module doc).

    Every student and every teacher index appears at least once; the path starts at ``(0, 0)``
    and ends at ``(S-1, T-1)``. Empty input gives ``[]``.
    """
    return dtw_path(token_cost_matrix(student_tokens, teacher_tokens))


# --------------------------------------------------------------------------- vocabulary map
def tokenizer_hash(tokenizer) -> str:
    """sha256 of a fast tokenizer's full serialisation, size and special-token roles."""
    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    h.update(str(len(tokenizer)).encode())
    roles = {r: getattr(tokenizer, r, None) for r in SPECIAL_ROLES}
    h.update(json.dumps(roles, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def _id_to_token(tokenizer) -> dict[int, str]:
    return {int(i): t for t, i in tokenizer.get_vocab().items()}


def _special_ids(tokenizer) -> set[int]:
    ids = set(int(i) for i in (tokenizer.all_special_ids or []))
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def _nearest(queries: list[str], cand_strings: list[str], cand_ids: np.ndarray, workers: int,
             chunk: int) -> np.ndarray:
    """For each query, the candidate id at minimum Levenshtein distance (lowest id on ties)."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    buckets: dict[int, tuple[list[str], np.ndarray]] = {}
    by_len: dict[int, list[int]] = defaultdict(list)
    for k, s in enumerate(cand_strings):
        by_len[len(s)].append(k)
    for length, idx in by_len.items():
        order = sorted(idx, key=lambda k: cand_ids[k])
        buckets[length] = ([cand_strings[k] for k in order], cand_ids[order])
    max_len = max(buckets) if buckets else 0
    result = np.full(len(queries), -1, dtype=np.int64)
    q_by_len: dict[int, list[int]] = defaultdict(list)
    for k, q in enumerate(queries):
        q_by_len[len(q)].append(k)
    big = np.iinfo(np.int64).max
    for qlen, q_idx in q_by_len.items():
        q_strings = [queries[k] for k in q_idx]
        best_d = np.full(len(q_idx), big, dtype=np.int64)
        best_id = np.full(len(q_idx), big, dtype=np.int64)
        delta = 0
        while delta <= max(qlen, max_len) and bool((best_d >= delta).any()):
            for blen in sorted({qlen - delta, qlen + delta}):
                if blen not in buckets:
                    continue
                b_strings, b_ids = buckets[blen]
                active = np.nonzero(best_d >= delta)[0]
                for lo in range(0, len(active), chunk):
                    rows = active[lo : lo + chunk]
                    cutoff = int(best_d[rows].max())
                    dist = cdist(
                        [q_strings[r] for r in rows], b_strings, scorer=Levenshtein.distance, dtype=np.int32,
                        workers=workers, score_cutoff=None if cutoff == big else cutoff,
                    )
                    arg = dist.argmin(axis=1)
                    d = dist[np.arange(len(rows)), arg].astype(np.int64)
                    cand = b_ids[arg]
                    better = (d < best_d[rows]) | ((d == best_d[rows]) & (cand < best_id[rows]))
                    best_d[rows[better]] = d[better]
                    best_id[rows[better]] = cand[better]
            delta += 1
        found = best_id != big
        result[np.asarray(q_idx)[found]] = best_id[found]
    return result


def compute_vocab_map(teacher_tokenizer, student_tokenizer, *, workers: int = -1, chunk: int = 1024) -> torch.Tensor:
    """Build the teacher id -> student id map (no cache; rules in the module doc)."""
    t_tokens = _id_to_token(teacher_tokenizer)
    s_tokens = _id_to_token(student_tokenizer)
    t_special, s_special = _special_ids(teacher_tokenizer), _special_ids(student_tokenizer)
    size = len(teacher_tokenizer)
    out = np.full(size, -1, dtype=np.int64)

    s_by_text = {}
    s_by_norm: dict[str, int] = {}
    for sid in sorted(s_tokens):
        if sid in s_special:
            continue
        tok = s_tokens[sid]
        s_by_text.setdefault(tok, sid)
        s_by_norm.setdefault(normalize_token(tok), sid)
    s_special_by_text = {s_tokens[i]: i for i in sorted(s_special) if i in s_tokens}
    s_role = {r: getattr(student_tokenizer, f"{r}_id", None) for r in SPECIAL_ROLES}

    pending_ids, pending_norm = [], []
    for tid in range(size):
        tok = t_tokens.get(tid)
        if tok is None:
            continue
        if tid in t_special:
            if tok in s_special_by_text:
                out[tid] = s_special_by_text[tok]
            else:
                for r in SPECIAL_ROLES:
                    if getattr(teacher_tokenizer, f"{r}_id", None) == tid and s_role[r] is not None:
                        out[tid] = s_role[r]
                        break
            continue
        if tok in s_by_text:
            out[tid] = s_by_text[tok]
            continue
        norm = normalize_token(tok)
        if norm in s_by_norm:
            out[tid] = s_by_norm[norm]
            continue
        pending_ids.append(tid)
        pending_norm.append(norm)
    if pending_ids and s_by_norm:
        cand = sorted(s_by_norm.items(), key=lambda kv: kv[1])  # one candidate per normalised text
        found = _nearest(pending_norm, [c for c, _ in cand], np.array([i for _, i in cand], dtype=np.int64),
                         workers, chunk)
        out[np.asarray(pending_ids)] = found
    return torch.from_numpy(out)


def vocab_map_path(teacher_tokenizer, student_tokenizer, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached map of this tokenizer pair lives."""
    from dwakd.models.home import dwakd_home

    root = Path(cache_dir) if cache_dir is not None else dwakd_home() / "vocab_maps"
    key = f"{tokenizer_hash(teacher_tokenizer)[:24]}-{tokenizer_hash(student_tokenizer)[:24]}-{MAP_VERSION}"
    return root / f"{key}.pt"


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_vocab_map(teacher_tokenizer, student_tokenizer, *, cache: bool = True,
                    cache_dir: str | os.PathLike | None = None, workers: int = -1) -> torch.Tensor:
    """Teacher id -> student id (1-D long tensor of length ``len(teacher_tokenizer)``; ``-1`` = unmapped).

    With ``cache`` the map is read from / written to :func:`vocab_map_path` (``cache_dir``
    overrides ``$DWAKD_HOME/vocab_maps``); a missing, unreadable or mismatched file is rebuilt.
    Teacher logits wider than the tokenizer (padded vocabularies) have no entry: those ids never occur.
    """
    path = vocab_map_path(teacher_tokenizer, student_tokenizer, cache_dir) if cache else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            vm = saved["map"]
            if saved.get("version") == MAP_VERSION and vm.numel() == len(teacher_tokenizer):
                return vm.long()
            log.info("vocabulary map %s does not match the tokenizers; rebuilding", path)
        except Exception as e:  # noqa: BLE001 - a bad cache file is rebuilt
            log.warning("could not read vocabulary map %s (%s); rebuilding", path, e)
    t0 = time.perf_counter()
    vm = compute_vocab_map(teacher_tokenizer, student_tokenizer, workers=workers)
    seconds = time.perf_counter() - t0
    log.info("built MinED vocabulary map %d -> %d tokens in %.1f s", len(teacher_tokenizer), len(student_tokenizer), seconds)
    if path is not None:
        _atomic_save({"map": vm, "version": MAP_VERSION, "build_seconds": seconds,
                      "teacher_size": len(teacher_tokenizer), "student_size": len(student_tokenizer)}, path)
    return vm

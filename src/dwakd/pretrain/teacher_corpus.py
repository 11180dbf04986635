"""A pretraining corpus written by the teacher: corpus kind ``teacher`` of ``dwakd pretrain``.

::

    corpus:
      - {kind: teacher, name: smollm2-135m-instruct, limit: 2000, max_new_tokens: 192, seed: 0}

``limit`` seed prompts are made from templates x topics (:func:`seed_prompts`, deterministic in
``seed``); the teacher answers each once by sampling (temperature 1, its chat template when it has
one), in batches. Example ``i`` is sampled with the generator seeded by ``(seed, i)``, so a document
does not depend on the batch it ran in, and an interrupted run that resumes writes exactly the
documents an uninterrupted one would have.

Cache: ``$DWAKD_HOME/corpora/<key>/docs.jsonl`` (one ``{"i", "prompt", "text"}`` line per answered
prompt, appended and fsynced batch by batch; a torn last line is dropped on resume) and
``COMPLETE.json`` (count and SHA-256 of ``docs.jsonl``, written atomically last). ``key`` hashes the
teacher (its alias checksum, or its config, tokenizer files and weights: name, size, first and last
MiB of each), the prompts and the sampling settings, so another teacher or other settings never
reuse a corpus. One process writes a corpus at a
time (a lock on its directory; a second one gets :class:`~dwakd.errors.RunLockedError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from dwakd.errors import DataError
from dwakd.train.rundir import RunLock

log = logging.getLogger(__name__)

TEMPLATES = [
    "Write a short encyclopedia paragraph about {topic}.",
    "Explain how {topic} works, in a few sentences.",
    "Write a short story in which {topic} matters.",
    "Describe the history of {topic} briefly.",
    "Write a short news report about {topic}.",
    "Give three facts about {topic} and explain each one.",
    "Write a letter to a friend about {topic}.",
    "What are common misconceptions about {topic}?",
    "Compare {topic} with {other}.",
    "Write a short lesson for students about {topic}.",
]


def seed_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` varied instruction prompts (templates x topics), deterministic in ``seed``."""
    from dwakd.demo.instructions import CATEGORIES, TOPICS

    topics = list(TOPICS) + list(CATEGORIES)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic, other = rng.sample(topics, 2)
        out.append(rng.choice(TEMPLATES).format(topic=topic, other=other))
    return out


def _teacher_identity(spec: str) -> dict:
    """What identifies the teacher: an alias's GGUF checksum; a directory's config, weights (name,
    size, first and last MiB) and small files whole; else the hub name."""
    from dwakd.models.aliases import ALIASES

    alias = ALIASES.get(str(spec).lower())
    if alias is not None:  # its GGUF checksum: known without converting it (a cached student needs no teacher)
        return {"alias_sha256": alias.sha256}
    path = Path(spec).expanduser()
    if path.is_dir():
        marker = path / "dwakd_alias.json"
        if marker.is_file():  # a converted alias given by its directory
            return {"alias_sha256": json.loads(marker.read_text(encoding="utf-8")).get("sha256")}
        from dwakd.fsio import update_with_model_files

        h = hashlib.sha256()
        update_with_model_files(h, path)  # config and weights (sizes alone cannot tell two fine-tunes apart)
        for f in sorted(path.iterdir()):  # tokenizer, chat template, generation config: small, hashed whole
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".gguf", ".pt") and f.name != "config.json" \
                    and f.stat().st_size < (16 << 20):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
        return {"model_files": h.hexdigest()}
    return {"hub": spec}


def corpus_key(spec: str, prompts: list[str], max_new_tokens: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"teacher": _teacher_identity(spec), "max_new_tokens": max_new_tokens, "seed": seed,
                         "sampling": "temperature 1, top_p 1", "format": 1}, sort_keys=True).encode())
    for p in prompts:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def _read_done(path: Path) -> dict[int, dict]:
    """Complete lines of ``docs.jsonl`` by index (a torn last line, from a kill, is ignored)."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_bytes().split(b"\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # empty or torn
        if isinstance(row, dict) and isinstance(row.get("i"), int) and isinstance(row.get("text"), str):
            done[row["i"]] = row
    return done


def teacher_corpus(spec: str, n: int, *, max_new_tokens: int = 192, seed: int = 0, batch_size: int = 16,
                   progress: bool = True) -> list[str]:
    """The teacher's answers to :func:`seed_prompts` ``(n, seed)`` (non-empty ones, in prompt order),
    generated once and cached (see the module docstring); resumes an interrupted run."""
    from dwakd.fsio import sha256_file
    from dwakd.models.home import dwakd_home

    prompts = seed_prompts(n, seed)
    key = corpus_key(spec, prompts, max_new_tokens, seed)
    root = dwakd_home() / "corpora" / key
    docs_path, complete = root / "docs.jsonl", root / "COMPLETE.json"
    if complete.is_file():
        info = json.loads(complete.read_text(encoding="utf-8"))
        if docs_path.is_file() and sha256_file(docs_path) == info.get("sha256"):
            done = _read_done(docs_path)
            log.info("teacher corpus: reusing %s (%d documents)", root, len(done))
            return [done[i]["text"] for i in sorted(done) if done[i]["text"].strip()]
        log.warning("teacher corpus %s does not match its checksum; writing it again", root)
        complete.unlink()
        docs_path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):  # one writer per corpus: a second one would append to a file being replaced
        return _write_corpus(spec, prompts, root, max_new_tokens=max_new_tokens, seed=seed,
                             batch_size=batch_size, progress=progress)


def _write_corpus(spec, prompts, root: Path, *, max_new_tokens, seed, batch_size, progress) -> list[str]:
    from dwakd.fsio import sha256_file, write_text_atomic

    n = len(prompts)
    docs_path, complete = root / "docs.jsonl", root / "COMPLETE.json"
    done = _read_done(docs_path)
    todo = [i for i in range(n) if i not in done]
    if done:
        # rewrite without a torn tail, so appends start on a line boundary
        write_text_atomic(docs_path, "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)))
        print(f"teacher corpus: resuming {root} ({len(done)} of {n} documents written)", flush=True)
    if todo:
        _generate_into(spec, prompts, todo, docs_path, max_new_tokens=max_new_tokens, seed=seed,
                       batch_size=batch_size, progress=progress)
        done = _read_done(docs_path)
    missing = [i for i in range(n) if i not in done]
    if missing:
        raise DataError(f"teacher corpus {root}: {len(missing)} documents missing after generation")
    write_text_atomic(complete, json.dumps({"documents": n, "sha256": sha256_file(docs_path), "teacher": spec,
                                            "max_new_tokens": max_new_tokens, "seed": seed}, indent=2) + "\n")
    return [done[i]["text"] for i in range(n) if done[i]["text"].strip()]


def _generate_into(spec, prompts, todo, docs_path: Path, *, max_new_tokens, seed, batch_size, progress) -> None:
    import torch
    from tqdm.auto import tqdm

    from dwakd.data import Record
    from dwakd.eval.generate import GenerationSettings, generate
    from dwakd.eval.runner import format_prompts
    from dwakd.models import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    model = load_model(spec, dtype=torch.bfloat16).eval()
    chat = getattr(tok, "chat_template", None) is not None
    texts = format_prompts([Record(format="dolly", response="", instruction=prompts[i]) for i in todo], tok, chat=chat)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, max_prompt_tokens=128,
                                  max_length=128 + max_new_tokens)
    bar = tqdm(total=len(todo), desc="teacher corpus", unit="doc", disable=not progress)
    step = batch_size * 4  # a few batches per append: progress survives a kill
    with open(docs_path, "ab") as fh:
        for lo in range(0, len(todo), step):
            idx = todo[lo:lo + step]
            gens = generate(model, tok, texts[lo:lo + step], settings, seed=seed, keys=idx)
            fh.write("".join(json.dumps({"i": i, "prompt": prompts[i], "text": g.text}, ensure_ascii=False) + "\n"
                             for i, g in zip(idx, gens)).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(idx))
    bar.close()

"""The paper's evaluation / training sets, built from the hub or a local copy, with their provenance.

``prepare_set(name, source, out_dir, ...)`` writes JSONL files in the MiniLLM/DSKD layout
(``instruction``, ``input``, ``output``, ``prompt`` = the plain template applied; Dolly keeps
``context``/``response`` too) and ``PROVENANCE.json`` (source, its SHA-256 when it is a file, the rule
applied, counts, dwakd version, time).

- ``dolly``: databricks-dolly-15k (hub ``databricks/databricks-dolly-15k`` or a local copy), in its
  original order. The MiniLLM/DSKD split: rows whose prompt exceeds ``max_prompt_tokens`` tokens of
  ``tokenizer`` are dropped (no filter without a tokenizer; the rule is recorded); the first
  ``dev_num`` (1000) remaining rows are the held-out part, of which the first ``test_num`` (500) are
  ``test.jsonl`` and the rest ``valid.jsonl``; every later row is ``train.jsonl``.
- ``selfinst``, ``vicuna``: the whole set as ``test.jsonl`` (raw Self-Instruct rows with
  ``instances`` are flattened to their first instance).
- ``sni``, ``unni``: Super-NaturalInstructions / Unnatural Instructions test rows whose references are
  long enough (``min_ref_words`` 11 by default, the paper's wording; or ``min_ref_tokens`` with a
  tokenizer): a row is kept when its longest reference reaches the threshold. Raw Unnatural
  Instructions rows (``instances``) are flattened to their first instance.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dwakd.data.prompts import plain_prompt
from dwakd.data.records import load_records
from dwakd.errors import ConfigError, DataError
from dwakd.fsio import sha256_file, write_text_atomic

SETS = ("dolly", "selfinst", "vicuna", "sni", "unni")
HUB_SOURCES = {"dolly": "databricks/databricks-dolly-15k"}


def _flatten(rows: list[dict]) -> list[dict]:
    """Raw Self-Instruct / Unnatural Instructions rows (``instances``) -> one row per first instance."""
    out = []
    for r in rows:
        inst = r.get("instances")
        if isinstance(inst, list) and inst and isinstance(inst[0], dict):
            first = inst[0]
            out.append({"instruction": r.get("instruction") or first.get("instruction", ""),
                        "input": first.get("input", ""), "output": first.get("output", "")})
        else:
            out.append(r)
    return out


def _raw_rows(source, split: str) -> list[dict]:
    from dwakd.data.sources import open_source

    raw, name, word = open_source(source, split)
    rows = []
    for loc, obj, err in raw:
        if err is not None:
            raise DataError(f"{name}:{loc}: {err}" if word == "line" else f"{name} {word} {loc}: {err}")
        rows.append(dict(obj))
    return rows


def _minillm(rec) -> dict:
    """A record as a MiniLLM/DSKD row (prompt = the plain template)."""
    ins = rec.instruction if rec.instruction is not None else None
    inp = rec.context or ""
    prompt = rec.prompt if rec.prompt is not None else plain_prompt(ins or "", inp or None)
    out = {"instruction": ins if ins is not None else prompt, "input": inp, "prompt": prompt,
           "output": rec.references if len(rec.references) > 1 else rec.response}
    if rec.format == "dolly":
        out.update(context=inp, response=rec.response)
    return out


def _write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def prepare_set(name: str, source: str | None, out_dir: str | Path, *, split: str = "train", tokenizer=None,
                max_prompt_tokens: int = 256, dev_num: int = 1000, test_num: int = 500,
                min_ref_words: int | None = 11, min_ref_tokens: int | None = None) -> dict:
    """Build set ``name`` from ``source`` (a local file/folder or hub name; default: :data:`HUB_SOURCES`)
    into ``out_dir``; returns the provenance dict (also written as ``PROVENANCE.json``)."""
    import dwakd

    if name not in SETS:
        raise ConfigError(f"unknown set '{name}'; choose one of: {', '.join(SETS)}")
    source = source or HUB_SOURCES.get(name)
    if source is None:
        raise ConfigError(f"set '{name}' has no hub source dwakd can vouch for: give a local copy with --from "
                          "(a MiniLLM/DSKD-processed JSONL, or the raw release) or a hub dataset name")
    if min_ref_tokens is not None and tokenizer is None:
        raise ConfigError("min_ref_tokens needs a tokenizer (--tokenizer)")
    rows = _flatten(_raw_rows(source, split))
    records = load_records(rows).records
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov: dict = {"set": name, "source": str(source), "split": split, "dwakd": dwakd.__version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows_read": len(rows)}
    p = Path(str(source)).expanduser()
    if p.is_file():
        prov["source_sha256"] = sha256_file(p)
    files: dict[str, list[dict]] = {}
    if name == "dolly":
        kept = records
        if tokenizer is not None:
            kept = [r for r in records
                    if len(tokenizer(plain_prompt(r.instruction or "", r.context), add_special_tokens=False)["input_ids"])
                    <= max_prompt_tokens]
            prov["rule"] = (f"original order; rows whose plain-template prompt exceeds {max_prompt_tokens} tokens of "
                            f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')} dropped; ")
        else:
            prov["rule"] = "original order; no prompt-length filter (no tokenizer given); "
        prov["rule"] += f"first {dev_num} rows held out (first {test_num} = test, rest = valid); the rest = train"
        held, train = kept[:dev_num], kept[dev_num:]
        files = {"train.jsonl": [_minillm(r) for r in train], "valid.jsonl": [_minillm(r) for r in held[test_num:]],
                 "test.jsonl": [_minillm(r) for r in held[:test_num]]}
    elif name in ("sni", "unni"):
        def length(text: str) -> int:
            if min_ref_tokens is not None:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return len(text.split())

        need = min_ref_tokens if min_ref_tokens is not None else (min_ref_words or 0)
        unit = "tokens" if min_ref_tokens is not None else "words"
        kept = [r for r in records if max(length(t) for t in r.references) >= need]
        prov["rule"] = f"rows whose longest reference has >= {need} {unit}"
        files = {"test.jsonl": [_minillm(r) for r in kept]}
    else:
        prov["rule"] = "every row"
        files = {"test.jsonl": [_minillm(r) for r in records]}
    for fname, frows in files.items():
        _write(out / fname, frows)
    prov["files"] = {f: {"rows": len(r), "sha256": sha256_file(out / f)} for f, r in files.items()}
    write_text_atomic(out / "PROVENANCE.json", json.dumps(prov, indent=2) + "\n")
    return prov

"""Running a comparison grid: every cell an ordinary ``dwakd train`` run directory, resumable.

``<output_dir>/``::

    cells/<label>-s<seed>/run/       the training run (config.yaml, metrics.jsonl, checkpoints/, final/)
    cells/<label>-s<seed>/cell.json  identity (label, seed, hash of the resolved config) and timings
    cells/<label>-s<seed>/eval.json  the evaluation summary (written last: its presence means "done")
    cells/<label>-s<seed>/eval/      full evaluation results (samples) of :func:`dwakd.eval.write_results`
    refs/<label>/eval.json           the same for reference models (teacher, pretrained student)
    report.md, results.json, *.png   :mod:`dwakd.compare.report`

A cell whose ``eval.json`` exists is skipped. A cell with a run directory but no final model
continues from its newest checkpoint (``--resume auto``); one with a final model but no evaluation
is only evaluated. A cell started under a different resolved config is refused rather than mixed.
Cells share nothing but the pretrained student (read-only) and the teacher cache (read-only): the
training seed fixes the data order, so every method sees the same batches for the same seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from dwakd.compare.config import CompareConfig
from dwakd.config.loader import config_from_dict, config_to_dict
from dwakd.config.yamlio import apply_overrides, read_yaml
from dwakd.errors import ConfigError

log = logging.getLogger(__name__)
# Keys that may change between an interrupted run and its continuation without changing the cell.
VOLATILE = {("train", "stop_at_step"), ("model", "teacher_cache")}


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def cell_dir(cc: CompareConfig, label: str, seed: int) -> Path:
    return cc.output_dir / "cells" / f"{label}-s{seed}"


def cell_config(cc: CompareConfig, label: str, seed: int, student: Path | None):
    """The resolved training config of one cell."""
    data, marks = read_yaml(cc.base)
    data = apply_overrides(copy.deepcopy(data), list(cc.train_overrides), marks)
    block = copy.deepcopy(cc.methods[label])
    train_over = block.pop("train", {}) or {}
    name = block.pop("name", label)
    data["method"] = {"name": name, **block}
    data.setdefault("train", {}).update(train_over)
    data["train"]["seed"] = seed
    if student is not None:
        data.setdefault("model", {})["student"] = str(student)
        data["model"].pop("build", None)
    data["output_dir"] = str(cell_dir(cc, label, seed) / "run")
    return config_from_dict(data, marks=marks, origin=str(cc.base))


def config_hash(cfg) -> str:
    d = config_to_dict(cfg)
    for section, key in VOLATILE:
        d.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_options(cc: CompareConfig):
    from dwakd.eval.generate import GenerationSettings
    from dwakd.eval.runner import EvalOptions

    e = cc.eval
    return EvalOptions(seeds=e.seeds, dtype=e.dtype, progress=False,
                       generation=GenerationSettings(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                                     max_prompt_tokens=e.max_prompt_tokens, max_length=e.max_length))


def evaluate_model(cc: CompareConfig, spec: str, name: str, out: Path) -> dict:
    """Evaluate ``spec`` on every set (each with its own limit); writes ``out/eval/`` and ``out/eval.json``."""
    from dwakd.eval.runner import evaluate, write_results

    opts = eval_options(cc)
    sets: dict = {}
    full = []
    t0 = time.time()
    for set_name, s in cc.eval.sets.items():
        opts.limit = s.limit
        r = evaluate(spec, {set_name: s.path}, opts, name=name)
        full.append(r)
        sets[set_name] = r["sets"][set_name]
    merged = dict(full[0], sets=sets)
    merged["samples"] = {k: v for r in full for k, v in r["samples"].items()}
    merged["options"]["limits"] = {k: s.limit for k, s in cc.eval.sets.items()}
    write_results(merged, out / "eval")
    summary = {"name": name, "model": str(spec), "seconds": time.time() - t0, "seeds": list(cc.eval.seeds),
               "sets": {k: {"n": v["n"], "rougeL": v["rougeL"], "bpb": v.get("bpb", {}).get("value")}
                        for k, v in sets.items()}}
    write_json(out / "eval.json", summary)
    return summary


def cell_done(cc: CompareConfig, label: str, seed: int) -> bool:
    d = cell_dir(cc, label, seed)
    if cc.eval is None:
        return (d / "run" / "final" / "config.json").is_file()
    return (d / "eval.json").is_file()


def check_finished_cells(cc: CompareConfig, student: Path | None) -> None:
    """Refuse a grid whose finished cells were trained under another config than the current one.

    A finished cell is otherwise skipped, and the report would mix results of two configs. Raises one
    :class:`~dwakd.errors.ConfigError` naming every such cell, before anything is trained."""
    stale = []
    for label, seed in cc.cells():
        d = cell_dir(cc, label, seed)
        if not cell_done(cc, label, seed):
            continue
        meta_path = d / "cell.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        h = config_hash(cell_config(cc, label, seed, student))
        if meta.get("config_hash") != h:
            stale.append(f"{label}-s{seed} (hash {meta.get('config_hash')}, now {h})")
    if stale:
        raise ConfigError(f"{len(stale)} finished cell(s) of {cc.output_dir} were trained with another config than "
                          f"{cc.path} and its overrides now give: {', '.join(stale)}. Rerun with the overrides they "
                          f"were trained with, remove those cell directories, or use another --output-dir")


def run_cell(cc: CompareConfig, label: str, seed: int, student: Path | None) -> dict:
    """Train (or continue) and evaluate one cell; returns its ``cell.json``. The cell directory is
    locked meanwhile, so several ``dwakd compare`` processes can share one grid."""
    from dwakd.train.rundir import RunLock

    d = cell_dir(cc, label, seed)
    d.mkdir(parents=True, exist_ok=True)
    with RunLock(d):  # one worker per cell (another `dwakd compare` on the same grid skips it: RunLockedError)
        return _run_cell_locked(cc, label, seed, student, d)


def _run_cell_locked(cc: CompareConfig, label: str, seed: int, student: Path | None, d: Path) -> dict:
    from dwakd.train import train

    cfg = cell_config(cc, label, seed, student)
    h = config_hash(cfg)
    meta_path = d / "cell.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta.get("config_hash") != h:
        raise ConfigError(f"cell {d} was started with a different config (hash {meta.get('config_hash')}, now {h}); "
                          f"remove that directory or use another output directory")
    meta = meta or {"label": label, "seed": seed, "method": cfg.method.name, "config_hash": h, "train_seconds": 0.0}
    write_json(meta_path, meta)
    final = d / "run" / "final"
    if not (final / "config.json").is_file():
        t0 = time.time()
        result = train(cfg, resume="auto")
        meta["train_seconds"] += time.time() - t0
        meta["train_sessions"] = meta.get("train_sessions", 0) + 1
        write_json(meta_path, meta)
        if result.final_dir is None:
            raise ConfigError(f"cell {label}-s{seed} stopped before its last step (train.stop_at_step?)")
    if cc.eval is not None and not (d / "eval.json").is_file():
        summary = evaluate_model(cc, str(final), f"{label}-s{seed}", d)
        meta["eval_seconds"] = summary["seconds"]
        write_json(meta_path, meta)
    meta["done"] = True
    write_json(meta_path, meta)
    return meta


def reference_spec(cc: CompareConfig, label: str, student: Path | None) -> str:
    value = cc.references[label]
    if value == "pretrained":
        if student is None:
            raise ConfigError(f"references.{label}: 'pretrained' needs a pretrain: entry in {cc.path}")
        return str(student)
    if value == "teacher":
        data, marks = read_yaml(cc.base)
        data = apply_overrides(copy.deepcopy(data), list(cc.train_overrides), marks)
        teacher = (data.get("model") or {}).get("teacher")
        if not teacher:
            raise ConfigError(f"references.{label}: the base config names no teacher")
        return str(teacher)
    return value


def run_reference(cc: CompareConfig, label: str, student: Path | None) -> dict | None:
    d = cc.output_dir / "refs" / label
    if cc.eval is None:
        return None
    if (d / "eval.json").is_file():
        return json.loads((d / "eval.json").read_text())
    return evaluate_model(cc, reference_spec(cc, label, student), label, d)

"""Checks that need no model and no method code: ranges, combinations, files on disk, trackers."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

from dwakd.config.inputs import KNOWN_FIELDS, looks_like_local, resolve_report_to
from dwakd.config.schema import DwakdConfig
from dwakd.config.typed import Problems


def looks_like_path(spec: str) -> bool:
    """A model spec that must be a local directory (hub names have one '/', aliases none)."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1


def _positive(problems: Problems, key: str, value, *, zero_ok: bool = False) -> None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return  # reported by _finite
    if value < 0 or (value == 0 and not zero_ok):
        problems.add(key, f"'{key}' must be {'>= 0' if zero_ok else '> 0'}, got {value}")


def _where_pair(problems: Problems, key: str, other: str) -> str:
    """Of two keys in one rule, the one to blame: the one a command-line override set, if only one was."""
    from_override = [k for k in (key, other) if problems.where(k).startswith("override")]
    return from_override[0] if len(from_override) == 1 else key


def _finite(problems: Problems, obj, prefix: str) -> None:
    """Every number of the config must be finite (``.nan`` / ``.inf`` can only fail a run)."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _finite(problems, getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(problems, v, f"{prefix}.{k}")
        return
    if isinstance(obj, float) and not math.isfinite(obj):
        key = prefix.replace(".options.", ".")
        problems.add(key, f"'{key}' must be a finite number, got {obj}")


def _check_model(cfg: DwakdConfig, problems: Problems, check_files: bool) -> None:
    m = cfg.model
    if m.student is None and m.build is None:
        problems.add("model", "give the student: 'model.student' (hub name, directory or alias) or a 'model.build' block")
    if m.student is not None and m.build is not None:
        problems.add("model.build", "'model.student' and 'model.build' are both set; keep one")
    for key, spec in (("model.teacher", m.teacher), ("model.student", m.student)):
        if spec and check_files and looks_like_path(spec) and not Path(spec).expanduser().exists():
            problems.add(key, f"'{key}' is the local path {spec}, which does not exist")
    if m.build is not None:
        b = m.build
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions", "vocab_size"):
            _positive(problems, f"model.build.{name}", getattr(b, name))
        if b.num_heads and b.hidden_size and b.hidden_size % b.num_heads:
            problems.add(_where_pair(problems, "model.build.num_heads", "model.build.hidden_size"), f"model.build.hidden_size {b.hidden_size} is not divisible by num_heads {b.num_heads}")
        if b.max_positions < cfg.data.max_length:
            problems.add(_where_pair(problems, "model.build.max_positions", "data.max_length"),
                         f"model.build.max_positions ({b.max_positions}) is smaller than data.max_length ({cfg.data.max_length})")
        if b.vocab_size < 300:
            problems.add("model.build.vocab_size", f"model.build.vocab_size {b.vocab_size} is too small (>= 300: 256 bytes + specials)")
    if m.lora is not None:
        _positive(problems, "model.lora.r", m.lora.r)
        _positive(problems, "model.lora.alpha", m.lora.alpha)
        if not 0.0 <= m.lora.dropout < 1.0:
            problems.add("model.lora.dropout", f"model.lora.dropout must be in [0, 1), got {m.lora.dropout}")
        if importlib.util.find_spec("peft") is None:
            problems.add("model.lora", "LoRA needs the 'peft' package: pip install peft")
        if m.build is not None:
            # A built student is random-init and lives in $DWAKD_HOME: low-rank adapters on random weights
            # learn little, and the adapter would name a cache path as its base model.
            problems.add("model.lora", "'model.lora' needs a pretrained 'model.student'; a 'model.build' student is "
                                       "random-init, so train all its weights (model.lora: null), or pretrain it first "
                                       "(dwakd pretrain) and give that directory as model.student")


def _check_data(cfg: DwakdConfig, problems: Problems, check_files: bool) -> None:
    d = cfg.data
    if not d.train:
        problems.add("data.train", "'data.train' (the training records: file, save_to_disk folder or hub name) is required")
    for key, spec in (("data.train", d.train), ("data.dev", d.dev)):
        # a local-looking spec must exist; anything else may be a hub dataset name (checked when loaded)
        if spec and check_files and looks_like_local(spec) and not Path(spec).expanduser().exists():
            problems.add(key, f"{key} {spec} does not exist (relative paths are read from {Path.cwd()})")
    for ours in d.fields or {}:
        if ours not in KNOWN_FIELDS:
            problems.add(f"data.fields.{ours}", f"data.fields: unknown dwakd field '{ours}' (known: {', '.join(KNOWN_FIELDS)}); "
                         "write {dwakd name: your field name}")
    if not 0.0 <= d.dev_fraction < 1.0:
        problems.add("data.dev_fraction", f"data.dev_fraction must be in [0, 1), got {d.dev_fraction}")
    _positive(problems, "data.max_length", d.max_length)
    _positive(problems, "data.max_prompt_length", d.max_prompt_length)
    if d.max_length and d.max_prompt_length and d.max_prompt_length >= d.max_length:
        problems.add(_where_pair(problems, "data.max_prompt_length", "data.max_length"), f"data.max_prompt_length ({d.max_prompt_length}) must be smaller than "
                                               f"data.max_length ({d.max_length}) to leave room for the response")
    _positive(problems, "data.max_train_records", d.max_train_records)
    _positive(problems, "data.max_dev_records", d.max_dev_records)


def _check_train(cfg: DwakdConfig, problems: Problems) -> None:
    t = cfg.train
    for name in ("lr", "projector_lr", "adam_eps", "epochs", "batch_size", "grad_accum", "max_bad_steps", "log_every",
                 "keep_last_n"):
        _positive(problems, f"train.{name}", getattr(t, name))
    for name in ("max_steps", "stop_at_step", "eval_batch_size"):
        _positive(problems, f"train.{name}", getattr(t, name))
    for name in ("weight_decay", "warmup_steps", "max_grad_norm", "eval_every", "save_every", "keep_best_n"):
        _positive(problems, f"train.{name}", getattr(t, name), zero_ok=True)
    if not 0.0 <= t.warmup_ratio < 1.0:
        problems.add("train.warmup_ratio", f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        problems.add("train.min_lr_ratio", f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(t, name) < 1.0:
            problems.add(f"train.{name}", f"train.{name} must be in [0, 1), got {getattr(t, name)}")
    if t.stop_at_step is not None and t.max_steps is not None and t.stop_at_step > t.max_steps:
        problems.add(_where_pair(problems, "train.stop_at_step", "train.max_steps"), f"train.stop_at_step ({t.stop_at_step}) is beyond train.max_steps ({t.max_steps})")
    if t.final_model == "best" and t.keep_best_n < 1:
        problems.add(_where_pair(problems, "train.final_model", "train.keep_best_n"), "train.final_model 'best' needs train.keep_best_n >= 1")
    key = "train.trackers" if t.trackers is not None and not t.report_to else "train.report_to"
    if t.trackers is not None and t.report_to and t.trackers != t.report_to:
        problems.add("train.trackers", "train.trackers is an alias of train.report_to; set only one")
    try:
        t.report_to = resolve_report_to(t.report_to or t.trackers)
    except ValueError as e:
        problems.add(key, f"{key}: {e}")
    t.trackers = None


def validate_config(cfg: DwakdConfig, problems: Problems, *, check_files: bool = True) -> None:
    """Record every model-independent problem of ``cfg`` in ``problems``."""
    _finite(problems, cfg, "")
    _check_model(cfg, problems, check_files)
    _check_data(cfg, problems, check_files)
    _check_train(cfg, problems)
    if not cfg.method.name:
        problems.add("method.name", "'method.name' is required (e.g. dwakd, dskd, sft)")

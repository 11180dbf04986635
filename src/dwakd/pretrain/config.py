"""The ``dwakd pretrain`` configuration (YAML), parsed with the same typed checks as training configs.

::

    student:          # a BuildStudentConfig block (as model.build in a training config)
      family: llama
      hidden_size: 256
      ...
    corpus:
      - {kind: wikitext, path: ../shared/data/wikitext-2/valid.txt}
      - {kind: jsonl, path: my.jsonl, field: text}
      - {kind: datasets, name: wikitext, config: wikitext-2-raw-v1, split: train, field: text}
      - {kind: teacher, name: smollm2-135m-instruct, limit: 2000, max_new_tokens: 192, seed: 0}
    heldout_fraction: 0.05
    train: {block_size: 256, batch_size: 16, lr: 2.0e-3, epochs: 3, ...}
    output_dir: null  # default: $DWAKD_HOME/pretrained/<hash of this config and the corpus>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dwakd.config.schema import BuildStudentConfig
from dwakd.config.typed import Problems, build_dataclass
from dwakd.config.yamlio import apply_overrides, read_yaml
from dwakd.errors import ConfigError


@dataclass
class CorpusSource:
    """One source of documents (see :mod:`dwakd.pretrain.corpus`)."""

    kind: Literal["text", "jsonl", "wikitext", "datasets", "teacher"] = "text"
    path: str | None = None
    field: str = "text"
    name: str | None = None
    config: str | None = None
    split: str = "train"
    limit: int | None = None
    # kind teacher (dwakd.pretrain.teacher_corpus): name = the teacher, limit = documents to write
    max_new_tokens: int = 192
    seed: int = 0
    batch_size: int = 16


# The keys each corpus kind reads (besides ``kind``); any other CorpusSource key on it is an error.
KIND_KEYS = {
    "text": ("path", "limit"),
    "wikitext": ("path", "limit"),
    "jsonl": ("path", "field", "limit"),
    "datasets": ("name", "config", "split", "field", "limit"),
    "teacher": ("name", "limit", "max_new_tokens", "seed", "batch_size"),
}
CORPUS_KEYS = set().union(*KIND_KEYS.values())


@dataclass
class PretrainTrainConfig:
    """Causal-LM training on fixed-length blocks of the concatenated documents (EOS between them)."""

    block_size: int = 256
    batch_size: int = 16
    lr: float = 2e-3
    epochs: int = 2
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    bf16: bool = True
    seed: int = 0
    log_every: int = 20


@dataclass
class PretrainConfig:
    student: BuildStudentConfig = field(default_factory=BuildStudentConfig)
    corpus: list[CorpusSource] = field(default_factory=list)
    heldout_fraction: float = 0.05
    max_heldout_bytes: int = 200_000
    output_dir: str | None = None
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)


def pretrain_config_from_dict(data: dict, *, marks: dict | None = None, origin: str = "config",
                              base_dir: Path | None = None) -> PretrainConfig:
    """Typed config from plain data; relative corpus paths resolve against ``base_dir`` when given."""
    problems = Problems(marks or {}, origin)
    known = {"student", "corpus", "heldout_fraction", "max_heldout_bytes", "output_dir", "train"}
    for key in data:
        if key not in known:
            problems.add(key, f"unknown key '{key}' (known keys: {', '.join(sorted(known))})")
    student = build_dataclass(BuildStudentConfig, data.get("student") or {}, "student", problems)
    train = build_dataclass(PretrainTrainConfig, data.get("train") or {}, "train", problems)
    corpus = []
    raw = data.get("corpus")
    if not isinstance(raw, list) or not raw:
        problems.add("corpus", "corpus must be a non-empty list of sources ({kind: text|jsonl|wikitext|datasets|teacher, ...})")
        raw = []
    for i, item in enumerate(raw):
        key = f"corpus[{i}]"
        if not isinstance(item, dict):
            problems.add("corpus", f"{key} must be a mapping, got {item!r}")
            continue
        src = build_dataclass(CorpusSource, item, key, problems)
        allowed = KIND_KEYS.get(src.kind)
        if allowed is not None:
            for k in item:
                if k != "kind" and k not in allowed and k in CORPUS_KEYS:
                    problems.add("corpus", f"{key}.{k}: '{k}' does not apply to kind '{src.kind}' "
                                               f"(its keys: kind, {', '.join(allowed)})")
        if src.kind in ("datasets", "teacher") and not src.name:
            problems.add("corpus", f"{key}: kind '{src.kind}' needs name"
                         + (" (the teacher model, e.g. smollm2-135m-instruct)" if src.kind == "teacher" else ""))
        if src.kind == "teacher":
            if (isinstance(src.name, str) and base_dir is not None and not Path(src.name).is_absolute()
                    and not Path(src.name).exists() and (base_dir / src.name).is_dir()):
                src.name = str((base_dir / src.name).resolve())  # a teacher directory next to the YAML
            for name in ("limit", "max_new_tokens", "batch_size"):
                v = getattr(src, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    problems.add("corpus", f"{key}: kind 'teacher' needs {name} as an integer >= 1, got {v!r}")
        if src.kind not in ("datasets", "teacher"):
            if not src.path:
                problems.add("corpus", f"{key}: kind '{src.kind}' needs path")
            elif base_dir is not None and not Path(src.path).is_absolute() and not Path(src.path).exists():
                src.path = str((base_dir / src.path).resolve())
        corpus.append(src)
    frac = data.get("heldout_fraction", 0.05)
    if not isinstance(frac, (int, float)) or not 0 < frac < 0.5:
        problems.add("heldout_fraction", f"heldout_fraction must be a number in (0, 0.5), got {frac!r}")
    for name in ("block_size", "batch_size", "epochs"):
        v = getattr(train, name)
        if not isinstance(v, int) or v < 1:
            problems.add(f"train.{name}", f"train.{name} must be an integer >= 1, got {v!r}")
    if isinstance(train.block_size, int) and isinstance(student.max_positions, int) and train.block_size > student.max_positions:
        problems.add("train.block_size", f"train.block_size ({train.block_size}) exceeds student.max_positions "
                                         f"({student.max_positions})")
    if not isinstance(train.lr, (int, float)) or train.lr <= 0:
        problems.add("train.lr", f"train.lr must be > 0, got {train.lr!r}")
    problems.raise_if_any()
    return PretrainConfig(student=student, corpus=corpus, heldout_fraction=float(frac),
                          max_heldout_bytes=int(data.get("max_heldout_bytes", 200_000)),
                          output_dir=data.get("output_dir"), train=train)


def load_pretrain_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    data, marks = read_yaml(path)
    data = apply_overrides(data, list(overrides), marks)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping")
    return pretrain_config_from_dict(data, marks=marks, origin=str(path), base_dir=Path(path).resolve().parent)

"""The ``dwakd compare`` configuration: a base training config, methods, seeds, references, evaluation.

::

    base: ../demo.yaml              # a dwakd train config (relative to this file)
    pretrain: pretrain.yaml         # optional: model.student = that pretrained student
    output_dir: runs/compare
    methods:                        # label -> method block; {} means "the method named like the label"
      sft: {}
      dskd: {}
      dwakd-nogate: {name: dwakd, weights: entropy}
      sft-lr1e-3: {name: sft, train: {lr: 1.0e-3}}   # a "train" mapping overrides train.* for that label
    references:                     # models evaluated with the same protocol, not trained
      student-pretrained: pretrained  # "pretrained" | "teacher" (the base config's teacher) | a model spec
      teacher: teacher
    grid:                           # run in this order; a cell is (label, training seed)
      - {methods: [sft, dskd], seeds: [1, 2]}
      - {references: [student-pretrained, teacher]}
      - {methods: [dwakd-nogate], seeds: [1, 2]}
    compare_to: [sft, dskd]         # paired differences against these labels
    teacher_cache: true             # build the teacher cache once before the first KD cell
    eval:                           # null: no evaluation (training + dev loss only)
      sets: {dolly: {path: data/dolly-test.jsonl, limit: 100}}
      seeds: [10, 20, 30]
      max_new_tokens: 128
      max_prompt_tokens: 128
      max_length: 384
      batch_size: 16
      dtype: bfloat16
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dwakd.config.yamlio import read_yaml
from dwakd.errors import ConfigError


@dataclass
class EvalSet:
    path: str
    limit: int | None = None


@dataclass
class EvalSpec:
    sets: dict[str, EvalSet]
    seeds: tuple[int, ...] = (10, 20, 30)
    max_new_tokens: int = 128
    max_prompt_tokens: int = 128
    max_length: int = 384
    batch_size: int = 16
    dtype: str = "bfloat16"


@dataclass
class CompareConfig:
    path: Path
    base: Path
    output_dir: Path
    pretrain: Path | None
    methods: dict[str, dict]
    references: dict[str, str]
    grid: list[tuple[str, str, int | None]]  # (kind "cell" | "ref", label, seed)
    compare_to: list[str]
    teacher_cache: bool
    eval: EvalSpec | None
    train_overrides: list[str] = field(default_factory=list)

    def cells(self) -> list[tuple[str, int]]:
        return [(label, seed) for kind, label, seed in self.grid if kind == "cell"]


KNOWN = {"base", "pretrain", "output_dir", "methods", "references", "grid", "compare_to", "teacher_cache", "eval"}
EVAL_KEYS = {"sets", "seeds", "max_new_tokens", "max_prompt_tokens", "max_length", "batch_size", "dtype"}


def _resolve(base_dir: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir / q).resolve()


def load_compare_config(path: str | Path, *, output_dir: str | None = None,
                        train_overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """Parse and check a compare YAML; errors name the file, line and key."""
    path = Path(path)
    data, marks = read_yaml(path)
    here = path.resolve().parent

    def err(key: str, msg: str):
        raise ConfigError(f"{marks.get(key, str(path))}: {key}: {msg}")

    for key in data:
        if key not in KNOWN:
            err(key, f"unknown key (known keys: {', '.join(sorted(KNOWN))})")
    if not data.get("base"):
        err("base", "give the base training config (base: path/to/config.yaml)")
    base = _resolve(here, str(data["base"]))
    if not base.is_file():
        err("base", f"{base} does not exist")
    pretrain = _resolve(here, str(data["pretrain"])) if data.get("pretrain") else None
    if pretrain is not None and not pretrain.is_file():
        err("pretrain", f"{pretrain} does not exist")
    methods = data.get("methods") or {}
    if not isinstance(methods, dict) or not methods:
        err("methods", "a mapping of label -> method block is needed")
    for label, block in methods.items():
        if block is None:
            methods[label] = block = {}
        if not isinstance(block, dict):
            err(f"methods.{label}", f"must be a mapping (method options), got {block!r}")
        if "train" in block and not isinstance(block["train"], dict):
            err(f"methods.{label}.train", "must be a mapping of train.* keys")
    refs = data.get("references") or {}
    if not isinstance(refs, dict):
        err("references", "must be a mapping of label -> model ('pretrained', 'teacher' or a model spec)")
    grid: list[tuple[str, str, int | None]] = []
    raw_grid = data.get("grid")
    if not isinstance(raw_grid, list) or not raw_grid:
        err("grid", "a list of {methods: [...], seeds: [...]} / {references: [...]} entries is needed")
    seen = set()
    for i, entry in enumerate(raw_grid):
        key = f"grid[{i}]"
        if not isinstance(entry, dict) or not (set(entry) <= {"methods", "seeds", "references"}):
            err("grid", f"{key} must be {{methods: [...], seeds: [...]}} or {{references: [...]}}, got {entry!r}")
        for ref in entry.get("references") or []:
            if ref not in refs:
                err("grid", f"{key}: reference '{ref}' is not under references ({', '.join(refs) or 'none'})")
            if ("ref", ref) not in seen:
                grid.append(("ref", ref, None))
                seen.add(("ref", ref))
        if entry.get("methods"):
            seeds = entry.get("seeds")
            if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
                err("grid", f"{key}: seeds must be a non-empty list of integers")
            for label in entry["methods"]:
                if label not in methods:
                    err("grid", f"{key}: method '{label}' is not under methods ({', '.join(methods)})")
                for s in seeds:
                    if (label, s) not in seen:
                        grid.append(("cell", label, s))
                        seen.add((label, s))
    compare_to = list(data.get("compare_to") or [])
    for c in compare_to:
        if c not in methods:
            err("compare_to", f"'{c}' is not a method label")
    ev = data.get("eval", "missing")
    spec = None
    if ev == "missing":
        err("eval", "give the evaluation protocol (or eval: null for training only)")
    if ev is not None:
        if not isinstance(ev, dict) or not isinstance(ev.get("sets"), dict) or not ev["sets"]:
            err("eval", "eval.sets must map set names to {path: ..., limit: N}")
        for k in ev:
            if k not in EVAL_KEYS:
                err(f"eval.{k}", f"unknown key (known: {', '.join(sorted(EVAL_KEYS))})")
        sets = {}
        for name, s in ev["sets"].items():
            s = {"path": s} if isinstance(s, str) else s
            if not isinstance(s, dict) or "path" not in s:
                err(f"eval.sets.{name}", "must be a path or {path: ..., limit: N}")
            p = _resolve(here, str(s["path"]))
            if not p.is_file():
                err(f"eval.sets.{name}", f"{p} does not exist")
            sets[name] = EvalSet(path=str(p), limit=s.get("limit"))
        kw = {k: ev[k] for k in EVAL_KEYS - {"sets"} if k in ev}
        if "seeds" in kw:
            kw["seeds"] = tuple(int(x) for x in kw["seeds"])
        spec = EvalSpec(sets=sets, **kw)
    out = Path(output_dir) if output_dir else _resolve(here, str(data.get("output_dir") or "runs/compare"))
    if output_dir is None and data.get("output_dir") and not Path(str(data["output_dir"])).is_absolute():
        out = Path(str(data["output_dir"]))  # relative to the working directory, like dwakd train
    return CompareConfig(path=path, base=base, output_dir=out, pretrain=pretrain, methods=methods,
                         references={k: str(v) for k, v in refs.items()}, grid=grid, compare_to=compare_to,
                         teacher_cache=bool(data.get("teacher_cache", True)), eval=spec,
                         train_overrides=list(train_overrides))

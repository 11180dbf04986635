"""An evaluation's output folder, written as it goes: nothing finished is lost, nothing is overwritten silently.

``<out>/``::

    identity.json          the model, test sets and options of this evaluation (checked by --resume)
    progress.jsonl         one line per finished piece: {"kind": "seed", "set", "seed", "rougeL", ...},
                           {"kind": "bpb", "set", ...}, {"kind": "teacher", "set"}, {"kind": "agreement", ...}
    samples.jsonl          one row per (set, seed, example): prompt, references, output, per-example ROUGE-L
    teacher_answers.jsonl  (with a teacher) one row per (set, example)
    results.json / results.md   at the end

Each (set, seed) appends its sample rows and then its progress line, both flushed and fsynced; on
``--resume`` sample rows without a progress line (a kill between the two) are dropped and only the
missing pieces run. A folder that already holds an evaluation is refused unless ``resume`` (continue
it; the identity must match) or ``overwrite`` (start again) is given.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from dwakd.errors import ConfigError

FILES = ("identity.json", "progress.jsonl", "samples.jsonl", "teacher_answers.jsonl", "results.json", "results.md")


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, allow_nan=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return out


class EvalStore:
    """The output folder of one evaluation (see the module doc)."""

    def __init__(self, out_dir: str | Path, identity: dict, *, resume: bool = False, overwrite: bool = False):
        self.out = Path(out_dir)
        present = [f for f in FILES if (self.out / f).exists()]
        if present and not (resume or overwrite):
            raise ConfigError(f"--out {self.out} already holds an evaluation ({', '.join(present)}); continue it with "
                              f"--resume, replace it with --overwrite, or choose another --out")
        if overwrite and not resume:
            for f in present:
                (self.out / f).unlink()
            present = []
        ident = json.loads(json.dumps(identity))  # as it reads back
        self._identity = ident
        self._started = False
        if resume and (self.out / "identity.json").is_file():
            old = json.loads((self.out / "identity.json").read_text(encoding="utf-8"))
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            if diff:
                raise ConfigError(f"--resume: {self.out} holds an evaluation with different {', '.join(diff)} "
                                  f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use the same command, or "
                                  f"--overwrite to start again")
        self.progress = _read_jsonl(self.out / "progress.jsonl") if resume else []
        done = {(p["set"], str(p["seed"])) for p in self.progress if p.get("kind") == "seed"}
        # keep only sample rows of finished (set, seed) pairs; teacher answers of finished sets
        rows = [r for r in _read_jsonl(self.out / "samples.jsonl") if (r.get("set"), str(r.get("seed"))) in done]
        if (self.out / "samples.jsonl").exists():
            write_atomic(self.out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._samples: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
        for r in rows:
            self._samples[(r["set"], str(r["seed"]))][int(r["key"])] = r["output"]
        t_done = {p["set"] for p in self.progress if p.get("kind") == "teacher"}
        t_rows = [r for r in _read_jsonl(self.out / "teacher_answers.jsonl") if r.get("set") in t_done]
        if t_rows or (self.out / "teacher_answers.jsonl").exists():
            write_atomic(self.out / "teacher_answers.jsonl",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in t_rows))
        self._teacher: dict[str, dict[int, str]] = defaultdict(dict)
        for r in t_rows:
            self._teacher[r["set"]][int(r["key"])] = r["text"]

    # ------------------------------------------------------------------ reading back
    def done(self, kind: str, set_name: str, seed=None) -> dict | None:
        for p in self.progress:
            if p.get("kind") == kind and p.get("set") == set_name and (seed is None or str(p.get("seed")) == str(seed)):
                return p
        return None

    def samples(self, set_name: str, seed, n: int) -> list[str]:
        got = self._samples[(set_name, str(seed))]
        return [got.get(k, "") for k in range(n)]

    def teacher_answers(self, set_name: str, n: int) -> list[str]:
        got = self._teacher[set_name]
        return [got.get(k, "") for k in range(n)]

    @property
    def resumed_pieces(self) -> int:
        return len(self.progress)

    # ------------------------------------------------------------------ writing
    def _start(self) -> None:
        """Nothing is written before the first finished piece (a failed start leaves no folder behind)."""
        if not self._started:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out / "identity.json", json.dumps(self._identity, indent=2) + "\n")
            self._started = True

    def _mark(self, line: dict) -> None:
        _append(self.out / "progress.jsonl", [line])
        self.progress.append(line)

    def add_seed(self, set_name: str, seed, rows: list[dict], info: dict) -> None:
        self._start()
        _append(self.out / "samples.jsonl", rows)
        self._mark({"kind": "seed", "set": set_name, "seed": seed, **info})

    def add_teacher(self, set_name: str, answers: list[str]) -> None:
        self._start()
        _append(self.out / "teacher_answers.jsonl", [{"set": set_name, "key": k, "text": t} for k, t in enumerate(answers)])
        self._mark({"kind": "teacher", "set": set_name})

    def add(self, kind: str, set_name: str, value: dict) -> None:
        self._start()
        self._mark({"kind": kind, "set": set_name, **value})

    def paths(self) -> dict[str, Path]:
        self._start()
        names = {"json": "results.json", "md": "results.md", "samples": "samples.jsonl",
                 "teacher_answers": "teacher_answers.jsonl", "progress": "progress.jsonl", "identity": "identity.json"}
        return {k: self.out / v for k, v in names.items() if (self.out / v).exists()}

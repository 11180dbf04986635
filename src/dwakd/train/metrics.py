"""Metrics: a JSONL file always (``<run>/metrics.jsonl``), Accelerate trackers when asked.

One JSON object per line: ``{"step": int, "time": unix seconds, "kind": "train"|"eval"|"event", ...}``.
Train lines carry ``loss`` (the step objective, per response token), ``term/<name>`` (each loss
term's token sum / response tokens of the step, before its rate), ``stat/<name>`` (method
statistics, mean over this process's micro-batches), ``lr/<group>``, ``grad_norm``,
``n_tokens`` (response tokens of the step, all processes), ``tokens_per_s`` (student input
tokens per second, all processes), ``step_time_s`` and ``peak_mem_mb``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this process in MiB: CUDA max allocated on a GPU, else the peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _clean(value):
    if torch.is_tensor(value):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsWriter:
    """Writes metric records on the main process (others ignore calls)."""

    def __init__(self, path: Path, accelerator, *, trackers: bool = False):
        self.path = Path(path)
        self.accelerator = accelerator
        self.trackers = trackers
        self.main = accelerator.is_main_process

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (left by a run that died after its last checkpoint)."""
        if not self.main or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def log(self, step: int, kind: str, values: dict) -> None:
        if not self.main:
            return
        record = {"step": int(step), "time": round(time.time(), 3), "kind": kind}
        record.update({k: _clean(v) for k, v in values.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers:
            numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
            self.accelerator.log(tracker_values(kind, numeric), step=step)


def tracker_values(kind: str, values: dict) -> dict:
    """Tracker tag names: ``train/<key>`` and ``event/<key>``; dev keys already carry ``dev/`` (no ``eval/dev/``)."""
    return {k if k.startswith("dev/") else f"{kind}/{k}": v for k, v in values.items()}


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """All records of a metrics file (optionally only one ``kind``)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if kind is None or rec.get("kind") == kind:
            out.append(rec)
    return out

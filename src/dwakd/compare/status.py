"""``dwakd compare CONFIG --status``: what each grid item is doing, read from the grid directory only.

No model loads and nothing is written, so it is safe while workers run. Each cell is one of:

- ``done``: evaluated (``eval.json``; with ``eval: null``, trained: ``run/final``), with its avg ROUGE-L;
- ``running``: a live process holds the cell's lock (pid, host, since when, last logged step);
- ``interrupted``: started, unfinished, and no live process holds it (the next ``dwakd compare``
  continues it from its last checkpoint, named here);
- ``pending``: not started.

A lock held from another host cannot be checked from here: it is reported as ``running`` with that host.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dwakd.compare.config import CompareConfig
from dwakd.compare.grid import cell_dir, cell_done
from dwakd.compare.report import _read, _scores


def _last_step(run: Path) -> int | None:
    """The last logged training step (a torn last line, from a write in progress, is skipped)."""
    p = run / "metrics.jsonl"
    if not p.is_file():
        return None
    step = None
    for line in p.read_bytes().split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            step = rec["step"]
    return step


def _avg(summary: dict | None) -> float | None:
    return _scores(summary)[1] if summary else None


def grid_status(cc: CompareConfig) -> list[dict]:
    """One dict per grid item, in grid order: ``{"name", "kind", "state", "detail"}``."""
    from dwakd.train.checkpoint import checkpoint_step, complete_checkpoints
    from dwakd.train.rundir import RunLock

    out = []
    for kind, label, seed in cc.grid:
        if kind == "ref":
            d = cc.output_dir / "refs" / label
            avg = _avg(_read(d / "eval.json"))
            state = "done" if avg is not None or cc.eval is None else "pending"
            detail = f"avg ROUGE-L {avg:.2f}" if avg is not None else ""
            out.append({"name": label, "kind": "reference", "state": state, "detail": detail})
            continue
        d = cell_dir(cc, label, seed)
        name = f"{label}-s{seed}"
        if cell_done(cc, label, seed):
            avg = _avg(_read(d / "eval.json"))
            out.append({"name": name, "kind": "cell", "state": "done",
                        "detail": f"avg ROUGE-L {avg:.2f}" if avg is not None else "trained"})
            continue
        if not d.exists():
            out.append({"name": name, "kind": "cell", "state": "pending", "detail": ""})
            continue
        lock = RunLock(d)
        holder = lock._holder()
        ckpts = complete_checkpoints(d / "run" / "checkpoints")
        ck = ckpts[-1].name if ckpts else None
        steps = [x for x in (_last_step(d / "run"), checkpoint_step(ckpts[-1]) if ckpts else None) if x is not None]
        at = f"step {max(steps)}" if steps else "no step logged yet"
        if holder is not None and not lock._stale(holder):
            out.append({"name": name, "kind": "cell", "state": "running",
                        "detail": f"{at}; pid {holder.get('pid')} on {holder.get('host')} since "
                                  f"{holder.get('started')}"})
        else:
            out.append({"name": name, "kind": "cell", "state": "interrupted",
                        "detail": f"{at}; resumes from {ck}" if ck else f"{at}; no checkpoint, restarts"})
    return out


def format_status(cc: CompareConfig, rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    width = max((len(r["name"]) for r in rows), default=4)
    lines = [f"grid {cc.output_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')}): "
             + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("done", "running", "interrupted", "pending"))]
    lines += [f"  {r['name']:<{width}}  {r['state']:<11}  {r['detail']}".rstrip() for r in rows]
    return "\n".join(lines)

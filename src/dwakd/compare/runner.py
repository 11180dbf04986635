"""``run_grid``: pretrained student -> teacher cache -> cells and references in grid order -> report.

Prints one progress line per grid item: ``[grid 7/25] dwakd-s2 done in 612s | 6 done, 18 left,
ETA 3h05m``; the ETA sums, for every unfinished item, the mean time of finished cells of the same
method (else of all finished cells of the same kind: SFT, distillation, or reference).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from dwakd.compare.config import CompareConfig
from dwakd.compare.grid import cell_config, cell_dir, cell_done, check_finished_cells, run_cell, run_reference
from dwakd.errors import RunLockedError

log = logging.getLogger(__name__)


def _fmt(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cell_seconds(cc: CompareConfig) -> dict[tuple[str, int], float]:
    out = {}
    for label, seed in cc.cells():
        p = cell_dir(cc, label, seed) / "cell.json"
        if p.is_file():
            m = json.loads(p.read_text())
            if m.get("done"):
                out[(label, seed)] = m.get("train_seconds", 0.0) + m.get("eval_seconds", 0.0)
    return out


def eta_seconds(cc: CompareConfig, pending: list[tuple[str, str, int | None]], ref_seconds: list[float]) -> float | None:
    """Estimated seconds for ``pending`` grid items from the finished ones (None when nothing is known)."""
    done = _cell_seconds(cc)
    if not done and not ref_seconds:
        return None

    def method_of(label):
        return (cc.methods[label] or {}).get("name", label)

    by_label: dict[str, list[float]] = {}
    by_kind: dict[str, list[float]] = {}
    for (label, _), s in done.items():
        by_label.setdefault(method_of(label), []).append(s)
        by_kind.setdefault("sft" if method_of(label) == "sft" else "kd", []).append(s)
    every = [s for v in done.values() for s in [v]] or ref_seconds
    total = 0.0
    for kind, label, _ in pending:
        if kind == "ref":
            xs = ref_seconds or every
        else:
            m = method_of(label)
            xs = by_label.get(m) or by_kind.get("sft" if m == "sft" else "kd") or every
        total += sum(xs) / len(xs)
    return total


def run_grid(cc: CompareConfig, *, progress: bool = True, report: bool = True) -> dict:
    """Run every unfinished grid item in order; returns ``{"done": n, "total": n, "seconds": s, "busy": [...]}``
    (``busy``: cells another process was running, skipped here; rerun to pick up any it left)."""
    from dwakd.compare.report import write_report

    cc.output_dir.mkdir(parents=True, exist_ok=True)
    student = None
    if cc.pretrain is not None:
        from dwakd.pretrain import describe, ensure_pretrained, load_pretrain_config

        student, rep = ensure_pretrained(load_pretrain_config(cc.pretrain))
        print(("reused " if rep.get("reused") else "") + f"pretrained student {student}: {describe(rep)}", flush=True)
        (cc.output_dir / "pretrain.json").write_text(json.dumps({k: v for k, v in rep.items() if k != "curve"},
                                                                indent=2, default=str))
    check_finished_cells(cc, student)
    items = list(cc.grid)
    ref_seconds: list[float] = []
    cache_ready = False
    t_start = time.time()
    n_done = 0
    busy: list[str] = []
    for i, (kind, label, seed) in enumerate(items, 1):
        name = label if kind == "ref" else f"{label}-s{seed}"
        t0 = time.time()
        if kind == "ref":
            was = (cc.output_dir / "refs" / label / "eval.json").is_file()
            summary = run_reference(cc, label, student)
            if summary is not None and not was:
                ref_seconds.append(summary["seconds"])
            skipped = was
        else:
            skipped = cell_done(cc, label, seed)
            if not skipped:
                if cc.teacher_cache and not cache_ready:
                    cache_ready = _ensure_cache(cc, label, seed, student)
                try:
                    run_cell(cc, label, seed, student)
                except RunLockedError as e:  # another worker on this grid runs it: leave it to that one
                    busy.append(name)
                    if progress:
                        print(f"[grid {i}/{len(items)}] {name} is being run by another process ({e}); skipped",
                              flush=True)
                    continue
        n_done += 1
        pending = items[i:]
        eta = eta_seconds(cc, [p for p in pending if not _item_done(cc, p)], ref_seconds)
        if progress:
            what = "already done" if skipped else f"done in {_fmt(time.time() - t0)}"
            left = sum(1 for p in pending if not _item_done(cc, p))
            print(f"[grid {i}/{len(items)}] {name} {what} | {left} left, ETA "
                  f"{_fmt(eta) if eta is not None else '?'} (elapsed {_fmt(time.time() - t_start)})", flush=True)
        if report and not skipped:
            write_report(cc)
    if report:
        write_report(cc)
    return {"done": n_done, "total": len(items), "seconds": time.time() - t_start, "busy": busy}


def _item_done(cc: CompareConfig, item) -> bool:
    kind, label, seed = item
    if kind == "ref":
        return cc.eval is None or (cc.output_dir / "refs" / label / "eval.json").is_file()
    return cell_done(cc, label, seed)


def _ensure_cache(cc: CompareConfig, label: str, seed: int, student: Path | None) -> bool:
    """Build the teacher cache for the grid's data once (only needed when some cell distils)."""
    cfg = cell_config(cc, label, seed, student)
    if not cfg.model.teacher or cfg.method.name == "sft" or cfg.model.teacher_cache == "off":
        return False
    from dwakd.train.teacher_cache import build_cache_for_config

    summary = build_cache_for_config(cfg)
    how = "reused" if summary.get("reused") else f"built in {summary.get('seconds', 0.0):.0f}s"
    print(f"teacher cache: {summary['path']} ({summary['tokens']} tokens, {how})", flush=True)
    return True

"""``report.md`` + ``results.json`` of a comparison grid (rewritten after every finished item).

results.json::

    {"config": ..., "protocol": {...}, "cells": [{label, seed, method, done, scores: {set: ROUGE-L}, avg, bpb, dev_loss}],
     "methods": {label: {"seeds": [...], "avg": {mean, std, n}, "sets": {set: {mean, std, n}}, "bpb": {...}}},
     "differences": {"dwakd - sft": {"avg": {mean, ci95, n, seeds, ...}, "sets": {...}}, ...},
     "references": {label: {"avg": ROUGE-L, "sets": {...}, "bpb": ...}}, "pending": ["label-sN", ...]}
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from dwakd.compare.config import CompareConfig
from dwakd.compare.grid import cell_dir, write_json
from dwakd.compare.stats import mean_std, paired_difference


def _read(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def _dev_loss(run: Path):
    last = None
    p = run / "metrics.jsonl"
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("kind") == "eval" and isinstance(r.get("dev/loss"), int | float):
                last = r["dev/loss"]
    return last


def _scores(summary: dict) -> tuple[dict, float, float | None]:
    sets = {k: v["rougeL"]["mean"] for k, v in summary["sets"].items()}
    bpbs = [v.get("bpb") for v in summary["sets"].values()]
    bpb = sum(bpbs) / len(bpbs) if bpbs and all(isinstance(b, int | float) for b in bpbs) else None
    return sets, sum(sets.values()) / len(sets), bpb


def collect(cc: CompareConfig) -> dict:
    cells, pending = [], []
    per: dict[str, dict[int, dict]] = {}
    for label, seed in cc.cells():
        d = cell_dir(cc, label, seed)
        meta = _read(d / "cell.json") or {}
        summary = _read(d / "eval.json")
        final = (d / "run" / "final" / "config.json").is_file()
        done = summary is not None if cc.eval is not None else final
        row = {"label": label, "seed": seed, "method": (cc.methods[label] or {}).get("name", label), "done": done,
               "dev_loss": _dev_loss(d / "run") if final else None, "train_seconds": meta.get("train_seconds"),
               "eval_seconds": meta.get("eval_seconds")}
        if summary is not None:
            row["sets"], row["avg"], row["bpb"] = _scores(summary)
        cells.append(row)
        if done:
            per.setdefault(label, {})[seed] = row
        else:
            pending.append(f"{label}-s{seed}")
    set_names = list(cc.eval.sets) if cc.eval else []
    methods = {}
    for label in cc.methods:
        rows = per.get(label, {})
        if not rows:
            continue
        m = {"seeds": sorted(rows), "dev_loss": mean_std([r["dev_loss"] for r in rows.values() if r["dev_loss"] is not None])}
        if cc.eval is not None:
            m["avg"] = mean_std([rows[s]["avg"] for s in sorted(rows)])
            m["sets"] = {k: mean_std([rows[s]["sets"][k] for s in sorted(rows)]) for k in set_names}
            m["bpb"] = mean_std([rows[s]["bpb"] for s in sorted(rows) if rows[s]["bpb"] is not None])
        methods[label] = m
    diffs = {}
    if cc.eval is not None:
        for base in cc.compare_to:
            for label in cc.methods:
                if label == base or label not in per or base not in per:
                    continue
                a, b = per[label], per[base]
                diffs[f"{label} - {base}"] = {
                    "avg": paired_difference({s: r["avg"] for s, r in a.items()}, {s: r["avg"] for s, r in b.items()}),
                    "bpb": paired_difference({s: r["bpb"] for s, r in a.items() if r.get("bpb") is not None},
                                             {s: r["bpb"] for s, r in b.items() if r.get("bpb") is not None}),
                    "sets": {k: paired_difference({s: r["sets"][k] for s, r in a.items()},
                                                  {s: r["sets"][k] for s, r in b.items()}) for k in set_names},
                }
    refs = {}
    for label in cc.references:
        s = _read(cc.output_dir / "refs" / label / "eval.json")
        if s is not None:
            sets, avg, bpb = _scores(s)
            refs[label] = {"model": s["model"], "sets": sets, "avg": avg, "bpb": bpb,
                           "sampling_std": {k: v["rougeL"].get("std") for k, v in s["sets"].items()}}
        else:
            pending.append(f"reference {label}")
    protocol = None
    if cc.eval is not None:
        e = cc.eval
        protocol = {"sets": {k: {"path": v.path, "limit": v.limit} for k, v in e.sets.items()},
                    "sampling_seeds": list(e.seeds), "max_new_tokens": e.max_new_tokens,
                    "max_prompt_tokens": e.max_prompt_tokens, "max_length": e.max_length, "dtype": e.dtype}
    return {"config": str(cc.path), "base": str(cc.base), "train_overrides": cc.train_overrides,
            "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "protocol": protocol,
            "cells": cells, "methods": methods, "differences": diffs, "references": refs, "pending": pending}


def _n(x, fmt="{:.2f}"):
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _ms(st: dict, fmt="{:.2f}") -> str:
    if not st or st.get("mean") is None:
        return "–"
    return _n(st["mean"], fmt) + (f" ± {_n(st['std'], fmt)}" if st.get("std") is not None else "")


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d or d.get("mean") is None:
        return "–"
    f = f"{{:+.{digits}f}}"
    if d.get("ci95") is None:
        return f"{f.format(d['mean'])} (n={d['n']}, no interval)"
    lo, hi = d["ci95"]
    return f"{f.format(d['mean'])} [{f.format(lo)}, {f.format(hi)}] (n={d['n']})"


def tables(res: dict, set_names: list[str]) -> str:
    head = "| model | training seeds | " + " | ".join(set_names) + " | avg ROUGE-L | bits/byte | dev loss |"
    lines = [head, "|" + "---|" * (len(set_names) + 5)]
    for label, r in res["references"].items():
        lines.append(f"| {label} (reference) | – | " + " | ".join(_n(r["sets"].get(k)) for k in set_names)
                     + f" | {_n(r['avg'])} | {_n(r['bpb'], '{:.3f}')} | – |")
    for label, m in res["methods"].items():
        lines.append(f"| {label} | {', '.join(map(str, m['seeds']))} | "
                     + " | ".join(_ms(m.get("sets", {}).get(k)) for k in set_names)
                     + f" | **{_ms(m.get('avg'))}** | {_ms(m.get('bpb'), '{:.3f}')} | {_ms(m['dev_loss'], '{:.3f}')} |")
    out = "\n".join(lines)
    if res["differences"]:
        dl = ["| difference (paired by training seed) | avg ROUGE-L, 95% CI | " + " | ".join(set_names)
              + " | bits/byte, 95% CI (lower is better) |", "|" + "---|" * (len(set_names) + 3)]
        for name, d in res["differences"].items():
            dl.append(f"| {name} | {_ci(d['avg'])} | " + " | ".join(_ci(d["sets"][k]) for k in set_names)
                      + f" | {_ci(d.get('bpb'), 3)} |")
        out += "\n\n" + "\n".join(dl)
    return out


def plot_bars(res: dict, out: Path) -> Path | None:
    """Mean avg ROUGE-L per method with its 95% t-interval over training seeds; dots = single seeds."""
    from dwakd.compare.stats import t975

    methods = [(k, m) for k, m in res["methods"].items() if m.get("avg", {}).get("mean") is not None]
    if not methods:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 3.8))
    for i, (label, m) in enumerate(methods):
        st = m["avg"]
        hw = t975(st["n"] - 1) * st["std"] / math.sqrt(st["n"]) if st["n"] > 1 else 0.0
        ax.bar(i, st["mean"], yerr=hw if st["n"] > 1 else None, capsize=4, color=f"C{i % 10}", alpha=0.8)
        seeds = [c["avg"] for c in res["cells"] if c["label"] == label and c.get("avg") is not None]
        ax.plot([i] * len(seeds), seeds, "k.", markersize=5)
    for j, (label, r) in enumerate(res["references"].items()):
        ax.axhline(r["avg"], color=f"C{(j + 5) % 10}", linestyle="--", linewidth=1, label=f"{label} (reference)")
    ax.set_xticks(range(len(methods)), [k for k, _ in methods], rotation=25, ha="right")
    ax.set_ylabel("avg ROUGE-L (%)")
    ax.set_title("mean over training seeds, 95% t-interval; dots: single seeds")
    if res["references"]:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(cc: CompareConfig) -> Path:
    res = collect(cc)
    out = cc.output_dir
    write_json(out / "results.json", res)
    set_names = list(cc.eval.sets) if cc.eval else []
    images = []
    try:
        bars = plot_bars(res, out / "bars.png")
        if bars:
            images.append(("avg ROUGE-L per method (95% interval over training seeds)", bars.name))
        runs = {}
        for label in cc.methods:
            seeds = res["methods"].get(label, {}).get("seeds") or []
            if seeds and (cell_dir(cc, label, seeds[0]) / "run" / "metrics.jsonl").is_file():
                runs[f"{label} (seed {seeds[0]})"] = str(cell_dir(cc, label, seeds[0]) / "run" / "metrics.jsonl")
        if runs:
            from dwakd.eval.plots import plot_loss_curves

            plot_loss_curves(runs, out / "loss_curves.png", prefix="term/", smooth=5)
            images.append(("training loss terms per method (first finished seed)", "loss_curves.png"))
    except Exception as e:  # noqa: BLE001 - a figure must never lose the tables
        images.append((f"figures failed: {type(e).__name__}: {e}", ""))
    n_done = sum(c["done"] for c in res["cells"])
    lines = [f"# Comparison: {Path(cc.path).name}", "", f"_written {res['written']}_", "",
             f"{n_done} of {len(res['cells'])} cells done."
             + (f" Pending: {', '.join(res['pending'])}." if res["pending"] else ""), ""]
    if res["protocol"]:
        p = res["protocol"]
        lines += ["Protocol: ROUGE-L (%) sampled at temperature 1 with seeds "
                  f"{p['sampling_seeds']} (a training seed's score is the mean over them), "
                  + ", ".join(f"{k} first {v['limit'] or 'all'}" for k, v in p["sets"].items())
                  + f"; at most {p['max_new_tokens']} new tokens; bits per byte of the references. "
                  "Methods: mean ± sample std over training seeds. Differences: paired by training seed, "
                  "95% t-interval.", ""]
    lines += [tables(res, set_names), ""]
    for caption, img in images:
        lines += [f"![{caption}]({img})" if img else f"_{caption}_", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"

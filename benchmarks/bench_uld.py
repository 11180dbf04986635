"""ULD's sorted-probability L1: full sorts of both sides (before) vs ordering only the top
``min(V_s, V_t)`` entries with ``torch.topk`` (dwakd.methods.uld.sorted_l1, after).

Forward + backward of one chunk of rows, the two variants interleaved repetition by repetition
(ratios side by side in one run). Writes ``benchmarks/results/bench_uld.md``.

Usage: ``.venv/bin/python benchmarks/bench_uld.py [--quick] [--threads 1] [--note TEXT]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _machine import cpu_model  # noqa: E402

from dwakd.methods.uld import sorted_l1  # noqa: E402

# (label, rows, V_s, V_t)
CASES = [
    ("study pair: 4k student, SmolLM2 49k teacher", 256, 4096, 49152),
    ("GPT-2 student, Qwen2 teacher", 64, 50257, 151936),
    ("equal vocabularies (both sorted fully either way)", 256, 8192, 8192),
]


def full_sort(zs, zt):
    """The previous implementation: both sides sorted in full, tails summed."""
    ps = torch.sort(F.softmax(zs.float(), -1), -1, descending=True).values
    pt = torch.sort(F.softmax(zt.float(), -1), -1, descending=True).values
    v = min(ps.shape[-1], pt.shape[-1])
    return (ps[:, :v] - pt[:, :v]).abs().sum(-1) + ps[:, v:].sum(-1) + pt[:, v:].sum(-1)


def once(fn, zs, zt) -> float:
    x = zs.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    fn(x, zt).sum().backward()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else args.reps
    rows_out = []
    for label, n, vs, vt in CASES:
        g = torch.Generator().manual_seed(0)
        zs, zt = torch.randn(n, vs, generator=g) * 3, torch.randn(n, vt, generator=g) * 3
        diff = float((full_sort(zs, zt) - sorted_l1(zs, zt)).abs().max())
        once(full_sort, zs, zt), once(sorted_l1, zs, zt)  # warm-up
        before, after = [], []
        for _ in range(reps):
            before.append(once(full_sort, zs, zt))
            after.append(once(sorted_l1, zs, zt))
        b, a = statistics.median(before), statistics.median(after)
        rows_out.append(f"| {label} | {n} | {vs:,} | {vt:,} | {b * 1e3:.0f} | {a * 1e3:.0f} | {b / a:.1f}x | {diff:.1e} |")
        print(rows_out[-1], flush=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## ULD sorted L1: full sort vs top-k (`benchmarks/bench_uld.py`)", "",
        f"Machine: {cpu_model()}, torch {torch.__version__} ({args.threads} thread), Python "
        f"{platform.python_version()}. Date: {now}. Command: `.venv/bin/python benchmarks/bench_uld.py"
        f"{' --quick' if args.quick else ''} --threads {args.threads}`. Median of {reps} interleaved "
        "repetitions of forward + backward of one chunk of rows." + (f" {args.note}" if args.note else ""), "",
        "| case | rows | V_s | V_t | full sort (ms) | top-k (ms) | speed-up | max abs difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows_out, "",
    ]
    out = HERE / "results" / "bench_uld.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every benchmark in this folder, then rebuild BENCHMARKS.md from benchmarks/results/*.md.

Usage: ``.venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--collect-only]``
(``make bench`` installs the peers' packages first). Each benchmark writes its own
``results/<name>.md`` with the machine and date; this script only orders and concatenates them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ["bench_soft_dtw", "bench_divergence_memory", "bench_methods_step", "bench_teacher_cache", "bench_data", "bench_uld"]


def collect() -> None:
    parts = [
        "# Benchmarks\n",
        "Speed and memory targets live here, not in timed tests. Each section was produced by the "
        "script named in it (`.venv/bin/python benchmarks/<script>.py`), which records the machine "
        "and the date; `make bench` reruns them all and rebuilds this file. Ratios are measured side by "
        "side in one run, since the machine is noisy.\n",
    ]
    names = [n for n in ORDER if (HERE / "results" / f"{n}.md").is_file()]
    names += sorted(p.stem for p in (HERE / "results").glob("*.md") if p.stem not in ORDER)
    for name in names:
        parts.append((HERE / "results" / f"{name}.md").read_text(encoding="utf-8").strip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote BENCHMARKS.md ({len(names)} sections)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark script names to run")
    ap.add_argument("--collect-only", action="store_true", help="only rebuild BENCHMARKS.md")
    args = ap.parse_args()
    if not args.collect_only:
        scripts = [HERE / f"{n}.py" for n in (args.only or ORDER)]
        for script in scripts:
            if not script.is_file():
                continue
            cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
            print("running", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

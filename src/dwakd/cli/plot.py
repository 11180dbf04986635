"""``dwakd plot RUN [RUN ...]``: loss, dev loss, learning-rate and per-term curves of one or several runs."""

from __future__ import annotations

from pathlib import Path

NAME = "plot"
HELP = "draw the loss, dev loss, learning-rate and per-term curves of one or several training runs (PNG)"
EXAMPLES = [
    "dwakd plot runs/quickstart                 (writes runs/quickstart/curves.png)",
    "dwakd plot runs/demo/sft runs/demo/dwakd --out docs/compare.png --smooth 5   (the make demo runs)",
]


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (holding metrics.jsonl) or metrics files")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/curves.png for one run, runs/curves.png for several)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window over logged points (default: %(default)s)")
    p.add_argument("--names", default=None, help="comma-separated labels (default: the run directories' names)")


def run(args) -> int:
    from dwakd.errors import ConfigError
    from dwakd.eval.plots import plot_run_curves

    names = args.names.split(",") if args.names else [Path(r.rstrip("/")).name for r in args.runs]
    if len(names) != len(args.runs):
        raise ConfigError(f"--names has {len(names)} labels for {len(args.runs)} runs")
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    if args.smooth < 1:
        raise ConfigError(f"--smooth must be >= 1; got {args.smooth}")
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 and Path(args.runs[0]).is_dir()
                                           else Path("runs") / "curves.png")
    path = plot_run_curves(dict(zip(names, args.runs)), out, smooth=args.smooth)
    print(f"wrote {path}")
    return 0

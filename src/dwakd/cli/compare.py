"""``dwakd compare CONFIG [key.sub=value ...] [--output-dir DIR] [--report-only | --status]``.

Runs (or continues) the grid of a compare config; the overrides apply to the base training config
of every cell (e.g. ``train.lr=1e-3 model.teacher=runs/teacher/final``). Rerun the same command to
resume: finished cells are skipped and an interrupted cell continues from its last checkpoint.

Exit status: 0 when every cell and reference is done; 75 (``EX_TEMPFAIL``) when some cells were left
to other ``dwakd compare`` processes running on the same grid (rerun once they end, to pick up any
they left); 2 for a config error.
"""

from __future__ import annotations

NAME = "compare"
EXIT_BUSY = 75  # sysexits EX_TEMPFAIL: some cells are still being run by other processes
HELP = "train and evaluate a grid of methods x training seeds; report means, paired differences and 95%% CIs"


def add_arguments(p) -> None:
    p.add_argument("config", help="compare YAML, e.g. configs/study/compare.yaml")
    import argparse

    # REMAINDER so options may follow overrides (``CONFIG a=1 --output-dir D``); see dwakd.cli._remainder.
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key.sub=value",
                   help="overrides of the base training config")
    p.add_argument("--output-dir", default=None, help="grid directory (default: output_dir of the config)")
    p.add_argument("--report-only", action="store_true", help="only rewrite report.md / results.json from finished cells")
    p.add_argument("--status", action="store_true",
                   help="print each cell's state (done / running / interrupted / pending) and exit; writes nothing")


def _split_remainder(args) -> None:
    """Move ``--output-dir D`` / ``--output-dir=D`` / ``--report-only`` found among the overrides onto ``args``."""
    from dwakd.cli._remainder import split_remainder

    split_remainder(args, flags=("--report-only", "--status"), valued=("--output-dir",),
                    usage="--output-dir DIR, --report-only, --status")


def run(args) -> int:
    from dwakd.compare import load_compare_config, run_grid

    _split_remainder(args)
    from dwakd.compare.report import write_report

    cc = load_compare_config(args.config, output_dir=args.output_dir, train_overrides=args.overrides)
    if args.status:
        from dwakd.compare.status import format_status, grid_status

        print(format_status(cc, grid_status(cc)))
        return 0
    if args.report_only:
        print(f"report: {write_report(cc)}")
        return 0
    summary = run_grid(cc)
    busy = summary.get("busy") or []
    print(f"grid finished: {summary['done']}/{summary['total']} items"
          + (f" ({len(busy)} left to another process: {', '.join(busy)})" if busy else "")
          + f"; report: {cc.output_dir / 'report.md'}")
    return EXIT_BUSY if busy else 0

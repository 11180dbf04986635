"""``dwakd demo [--quick] [--out DIR]``: the embedded default job, end to end (what ``make demo`` runs)."""

from __future__ import annotations

NAME = "demo"
HELP = "distil SmolLM2-135M-Instruct into a small student with its own tokenizer; train SFT, DSKD, DWA-KD; evaluate; report"


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed (about two minutes)")
    p.add_argument("--out", default=None, help="output directory (default runs/demo, or runs/demo-quick with --quick)")


def run(args) -> int:
    import os

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    from dwakd.demo.pipeline import run_demo

    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    run_demo(out, quick=args.quick)
    return 0

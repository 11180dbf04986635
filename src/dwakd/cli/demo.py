"""``dwakd demo [--quick] [--out DIR]``: the embedded default job, end to end (what ``make demo`` runs)."""

from __future__ import annotations

NAME = "demo"
HELP = "distil SmolLM2-135M-Instruct into a small student with its own tokenizer; train SFT, DSKD, DWA-KD; evaluate; report"


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed (about two minutes)")
    p.add_argument("--out", default=None, help="output directory (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--threads", default="auto",
                   help="torch intra-op threads; auto = every core on an idle machine, 1 when other processes "
                        "already load the cores (a contended second OpenMP thread made steps 10-20x slower here)")


def run(args) -> int:
    import os

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import torch

    from dwakd.demo.pipeline import run_demo

    if args.threads == "auto":
        cores = os.cpu_count() or 1
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        threads = 1 if busy > 0.5 else cores
    else:
        threads = int(args.threads)
    torch.set_num_threads(max(1, threads))
    print(f"torch threads: {torch.get_num_threads()}")

    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    run_demo(out, quick=args.quick)
    return 0

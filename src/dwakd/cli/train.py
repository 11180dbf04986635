"""``dwakd train CONFIG [key.sub=value ...] [--dry-run] [--resume auto|PATH]``.

Multi-process / multi-GPU: ``accelerate launch [--multi_gpu] --num_processes N -m dwakd.cli.main
train CONFIG ...`` (the back-end comes from the accelerate config or flags). The global batch is
``train.batch_size x train.grad_accum x processes``; resuming needs the same global batch.

- one process (CPU or one GPU): tested.
- DDP: tested on CPU with 2 processes over gloo (``--multi_gpu`` on a host without GPUs, or with
  ``CUDA_VISIBLE_DEVICES=""``; accelerate 1.x's ``--cpu --num_processes 2`` needs ``mpirun``).
- FSDP (FSDP2, ``--use_fsdp --fsdp_version 2``): tested on CPU with 2 processes over gloo
  (tests/test_fsdp.py). The teacher is a replicated inference copy per process.
- DeepSpeed ZeRO-2/3 (``--use_deepspeed --zero_stage 2|3``): tested on CPU with DeepSpeed's CPU
  accelerator and 2 processes (tests/test_deepspeed.py); not yet run on GPUs. The teacher stays a
  replicated inference module.
- ``--dry-run --processes N --device cuda``: the per-GPU sizing estimate (docs/SCALING.md).
"""

from __future__ import annotations

NAME = "train"
HELP = "distil a student from a teacher as a YAML config describes (dwakd train CONFIG [key.sub=value ...])"
EXAMPLES = [
    "dwakd train configs/demo.yaml --dry-run",
    "dwakd train configs/demo.yaml method.name=dskd train.lr=5e-4 output_dir=runs/quickstart-dskd",
    "dwakd train configs/demo.yaml output_dir=runs/quickstart-dskd --resume auto   (the same overrides, to continue)",
    "dwakd train --print-config-reference",
]


def resume_command(config: str, overrides: list[str]) -> str:
    """The command that continues this run: the same config and overrides, plus ``--resume auto``."""
    import shlex

    return shlex.join(["dwakd", "train", config, *overrides, "--resume", "auto"])


def add_arguments(p) -> None:
    import argparse

    p.add_argument("config", nargs="?", help="YAML config, e.g. configs/demo.yaml")
    # REMAINDER so options may follow overrides (``CONFIG a=1 --dry-run b=2``); see _split_remainder.
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key.sub=value",
                   help="dotted overrides, e.g. train.lr=5e-4 method.gamma=1.0 output_dir=runs/x (values are YAML)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, parameter counts, a memory estimate and the first batch; write nothing")
    p.add_argument("--resume", metavar="auto|PATH", default=None,
                   help="continue from the newest complete checkpoint of output_dir (auto) or from a checkpoint directory")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: apply config values that differ from the checkpoint's (lr, data, method "
                        "options, ...) instead of refusing; the change is logged and config.yaml updated")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="with --dry-run: also print the per-GPU memory / launch / tokens-per-second estimate for N processes")
    p.add_argument("--device", default=None, metavar="cuda[:h100|a100|a100-40|24gb]",
                   help="with --dry-run: the GPU kind of that estimate (default cuda = H100 80GB)")
    p.add_argument("--print-config-reference", action="store_true", help="print every config key with its meaning and exit")


def _split_remainder(args) -> None:
    """Move ``--dry-run`` / ``--resume X`` / ``--resume=X`` (and the other options) found among the overrides onto ``args``."""
    from dwakd.cli._remainder import split_remainder
    from dwakd.errors import ConfigError

    split_remainder(args, flags=("--dry-run", "--print-config-reference", "--allow-config-change"),
                    valued=("--resume", "--processes", "--device"),
                    usage="--dry-run, --resume auto|PATH, --allow-config-change, --processes N, --device D")
    if args.processes is not None:
        try:
            args.processes = int(args.processes)
        except ValueError:
            raise ConfigError(f"--processes must be a whole number, got {args.processes!r}") from None
        if args.processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {args.processes}")


def run(args) -> int:
    from dwakd.config import load_config

    _split_remainder(args)
    if args.print_config_reference:
        from dwakd.methods.registry import config_reference

        print(config_reference())
        return 0
    if not args.config:
        from dwakd.errors import ConfigError

        raise ConfigError("give a config file: dwakd train CONFIG (see configs/demo.yaml)")
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from dwakd.train import dry_run

        dry_run(cfg, processes=args.processes, device=args.device)
        return 0
    if args.processes is not None or args.device is not None:
        from dwakd.errors import ConfigError

        raise ConfigError("--processes / --device only size a launch with --dry-run; start processes with accelerate launch")
    if args.allow_config_change and not args.resume:
        from dwakd.errors import ConfigError

        raise ConfigError("--allow-config-change applies to a resumed run; add --resume auto (or a checkpoint path)")
    import sys

    from dwakd.errors import TrainingInterrupted
    from dwakd.train import train

    try:
        result = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    except TrainingInterrupted as e:
        print(f"dwakd train: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    if result.final_dir is not None:
        print(f"done: {result.state.global_step} steps; student saved to {result.final_dir}")
    else:
        print(f"stopped at step {result.state.global_step} of {result.state.total_steps}; checkpoint "
              f"{result.last_checkpoint}; continue with: {resume_command(args.config, args.overrides)}")
    return 0

"""``dwakd`` entry point: ``dwakd <command> ...``.

Each subcommand lives in its own module under :mod:`dwakd.cli` exposing ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int`` (and optionally ``EXAMPLES``, shown by ``--help``).
``-v`` / ``--verbose`` is accepted anywhere on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dwakd import __version__
from dwakd.errors import DwakdError

COMMANDS = ["prepare_teacher", "align", "train", "eval", "cache_teacher", "demo", "data", "plot", "judge", "pretrain", "compare"]

EXAMPLES = """examples:
  dwakd prepare-teacher
  dwakd data prepare demo --out data/demo
  dwakd train configs/demo.yaml --dry-run
  dwakd train configs/demo.yaml method.name=dskd output_dir=runs/quickstart-dskd
  dwakd eval runs/quickstart/final --data data/demo/test.jsonl
  dwakd plot runs/quickstart runs/quickstart-dskd
  dwakd <command> --help        (each command's options and examples)"""


def _load_commands():
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"dwakd.cli.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"dwakd.cli.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="dwakd", description="Cross-tokenizer knowledge distillation (DWA-KD).",
                                     epilog=EXAMPLES, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"dwakd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        examples = getattr(mod, "EXAMPLES", None)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP.replace("%%", "%"), formatter_class=fmt,
                           epilog=("examples:\n" + "\n".join(f"  {e}" for e in examples)) if examples else None)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _pull_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Take ``-v`` / ``--verbose`` out of the argument list wherever it is (before a literal ``--``)."""
    out, verbose, passthrough = [], False, False
    for a in argv:
        if not passthrough and a in ("-v", "--verbose"):
            verbose = True
            continue
        passthrough = passthrough or a == "--"
        out.append(a)
    return out, verbose


def _rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _pull_verbose(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = verbose
    # One process prints: other ranks log warnings and errors only.
    level = logging.DEBUG if verbose else (logging.INFO if _rank() == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from dwakd.train.console import quiet_libraries

    quiet_libraries(verbose)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DwakdError as e:
        print(f"dwakd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dwakd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``dwakd`` entry point: ``dwakd <command> ...``.

Each subcommand lives in its own module under :mod:`dwakd.cli` exposing ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dwakd import __version__
from dwakd.errors import DwakdError

COMMANDS = ["prepare_teacher", "align", "train", "eval", "cache_teacher", "demo", "pretrain", "compare"]


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
    parser = argparse.ArgumentParser(prog="dwakd", description="Cross-tokenizer knowledge distillation (DWA-KD).")
    parser.add_argument("--version", action="version", version=f"dwakd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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

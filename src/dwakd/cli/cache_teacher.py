"""``dwakd cache-teacher CONFIG [overrides]``: run the teacher once over the training data and cache it.

Training with the same config (same teacher, data, prompt format, truncation) then reads the
cache instead of running the teacher every step. See :mod:`dwakd.train.teacher_cache`.
"""

from __future__ import annotations

NAME = "cache-teacher"
HELP = "cache the teacher's outputs on the training (and dev) data of a config, for faster training"


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML training config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, as for dwakd train")
    p.add_argument("--batch-size", type=int, default=8, help="teacher batch size (default %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching cache exists")


def run(args) -> int:
    from dwakd.config import load_config
    from dwakd.train.teacher_cache import build_cache_for_config

    cfg = load_config(args.config, args.overrides)
    try:
        summary = build_cache_for_config(cfg, batch_size=args.batch_size, force=args.force)
    except OSError as e:
        from dwakd.errors import DwakdError, StorageError
        from dwakd.fsio import storage_reason

        reason = None if isinstance(e, DwakdError) else storage_reason(e)
        if reason is None:
            raise
        raise StorageError(f"{reason} while writing the teacher cache ({e}); nothing partial was kept, an existing "
                           f"cache is unchanged. Free space (or set DWAKD_HOME elsewhere) and run it again") from e
    print(f"teacher cache: {summary['path']}")
    print(f"  examples {summary['examples']}, response tokens {summary['tokens']}, "
          f"{summary['bytes_per_token']:.0f} bytes/token, {summary['bytes'] / 2**20:.1f} MiB, "
          f"{summary['seconds']:.1f}s{' (already present)' if summary.get('reused') else ''}")
    return 0

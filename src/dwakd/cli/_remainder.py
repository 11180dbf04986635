"""Options that follow overrides: ``dwakd train CONFIG a=1 --dry-run b=2``.

The overrides are an ``argparse.REMAINDER`` (so ``key=value`` items and options may interleave);
:func:`split_remainder` moves the command's own options found among them onto ``args``.
"""

from __future__ import annotations


def split_remainder(args, *, flags: tuple[str, ...] = (), valued: tuple[str, ...] = (), usage: str = "") -> None:
    """Move ``--flag`` (set True), ``--key VALUE`` and ``--key=VALUE`` items from ``args.overrides`` onto
    ``args`` (attribute = the option without dashes, ``-`` as ``_``); anything else starting with ``-``
    is a :class:`~dwakd.errors.ConfigError` listing ``usage``."""
    from dwakd.errors import ConfigError

    def attr(opt: str) -> str:
        return opt[2:].replace("-", "_")

    rest, items = [], list(args.overrides or [])
    while items:
        item = items.pop(0)
        key, eq, val = item.partition("=")
        if item in flags:
            setattr(args, attr(item), True)
        elif key in valued:
            if not eq:
                if not items or items[0].startswith("--"):  # ``--resume --dry-run``: the next option is no value
                    raise ConfigError(f"{item} needs a value ({usage})")
                val = items.pop(0)
            setattr(args, attr(key), val)
        elif item.startswith("-"):
            raise ConfigError(f"unknown option '{item}' (options: {usage})")
        else:
            rest.append(item)
    args.overrides = rest
    for opt in valued:  # empty values, given among the overrides or before them (parsed by argparse itself)
        val = getattr(args, attr(opt), None)
        if isinstance(val, str) and not val.strip():
            raise ConfigError(f"{opt} needs a non-empty value ({usage})")

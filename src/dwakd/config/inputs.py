"""Names shared by the config checks and the layers above: data specs, record fields, trackers.

Kept here (the lowest layer) so :mod:`dwakd.config.validate` needs nothing from ``data`` or ``train``.
"""

from __future__ import annotations

import importlib.util
import os

#: file suffix -> ``datasets`` packaged builder
DATASETS_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
FILE_SUFFIXES = tuple(JSON_SUFFIXES) + tuple(DATASETS_SUFFIXES)

#: field names the record formats use (a field mapping renames the source's fields to these)
KNOWN_FIELDS = ("instruction", "context", "input", "response", "output", "prompt", "completion", "messages",
                "conversations")


def looks_like_local(spec: str) -> bool:
    """A data spec meant as a local file or folder (not a hub dataset name ``name`` / ``owner/name``)."""
    s = str(spec)
    return (s.startswith(("/", "~", ".")) or s.lower().endswith(FILE_SUFFIXES) or s.count("/") > 1
            or (os.sep != "/" and os.sep in s))


#: tracker -> the module it needs (Accelerate's integrations; ``accelerate.tracking.LOGGER_TYPE_TO_CLASS``)
_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",),
                    "comet_ml": ("comet_ml",), "mlflow": ("mlflow",), "aim": ("aim",), "clearml": ("clearml",),
                    "dvclive": ("dvclive",), "swanlab": ("swanlab",)}


def supported_trackers() -> list[str]:
    """The trackers this Accelerate supports (falls back to the known list when it cannot be read)."""
    try:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        return list(LOGGER_TYPE_TO_CLASS)
    except ImportError:  # pragma: no cover
        return list(_TRACKER_MODULES)


def tracker_installed(name: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in _TRACKER_MODULES.get(name, (name,)))


def resolve_report_to(value) -> list[str]:
    """``train.report_to`` (a name, a comma list, a list, ``all``, ``none``/null) -> tracker names.

    Raises ``ValueError`` with the reason (unknown name with a suggestion, or a missing package).
    ``all`` means every supported tracker that is installed (as in TRL/transformers).
    """
    from dwakd.config.typed import did_you_mean

    if value is None:
        return []
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n]
    supported = supported_trackers()
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return [t for t in supported if tracker_installed(t)]
    out = []
    for n in names:
        if n in ("all", "none"):
            raise ValueError(f"'{n}' must be used alone")
        if n not in supported:
            raise ValueError(f"unknown tracker '{n}' (supported: {', '.join(supported)}, all, none)"
                             f"{did_you_mean(n, supported)}")
        if not tracker_installed(n):
            raise ValueError(f"tracker '{n}' needs the '{_TRACKER_MODULES.get(n, (n,))[0]}' package: "
                             f"pip install {_TRACKER_MODULES.get(n, (n,))[0]}")
        if n not in out:
            out.append(n)
    return out

"""Where dwakd keeps its caches: ``$DWAKD_HOME`` (default ``~/.cache/dwakd``)."""

from __future__ import annotations

import os
from pathlib import Path

from dwakd.fsio import atomic_directory  # noqa: F401  (re-exported: fsync + rename, see dwakd.fsio)


def dwakd_home() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("DWAKD_HOME", Path.home() / ".cache" / "dwakd")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root

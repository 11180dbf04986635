"""Where dwakd keeps its caches: ``$DWAKD_HOME`` (default ``~/.cache/dwakd``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def dwakd_home() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("DWAKD_HOME", Path.home() / ".cache" / "dwakd")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def atomic_directory(final: Path):
    """Yield a temporary directory next to ``final``; rename it to ``final`` only on success.

    An exception (or a killed process) leaves ``final`` untouched: either absent or the previous
    complete version. The temporary directory is removed on failure.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

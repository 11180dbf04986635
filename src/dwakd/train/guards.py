"""Guards of the training loop: SIGINT/SIGTERM at step boundaries, and storage faults named as such."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from dwakd.errors import StorageError
from dwakd.fsio import storage_reason

log = logging.getLogger(__name__)


class StopFlag:
    """SIGINT / SIGTERM -> a flag read at step boundaries (installed only in the main thread)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum
        log.warning("%s received: a checkpoint is written at the end of this step, then the run stops "
                    "(SIGINT again to stop at once)", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


@contextlib.contextmanager
def storage_errors(what: str):
    """A failed write of the machine's making (disk full, ...) -> :class:`StorageError` saying so."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        reason = storage_reason(e)
        if reason is None:
            raise
        raise StorageError(f"{reason} while {what}; the partial directory was removed, the checkpoints are intact: "
                           f"free space and continue with --resume auto") from e

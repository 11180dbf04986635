"""The run directory: resolved config, environment, status, and the final student's model card.

``<output_dir>/``::

    config.yaml        the resolved configuration (defaults filled in, overrides applied)
    environment.json   package versions, git revision of dwakd, command line, processes, devices
    status.json        {"status": "running" | "completed" | "stopped" | "interrupted" | "failed", ...};
                       a failed run says why (``error``), e.g. "disk full while writing checkpoint 40 ..."
    .dwakd.lock        held while a process writes the run: {"pid", "host", "started"} (see RunLock)
    metrics.jsonl      see :mod:`dwakd.train.metrics`
    checkpoints/       see :mod:`dwakd.train.checkpoint`
    final/             the trained student (HF directory + tokenizer + README.md), only on success

Nothing is created before every check that needs no model has passed (config, data, tokenizers).
Every bookkeeping file is written atomically and fsynced (:mod:`dwakd.fsio`). One process at a
time writes a run directory (:class:`RunLock`); a directory that exists and holds anything other
than a dwakd run is refused.
"""

from __future__ import annotations

import errno
import importlib.metadata as md
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import dwakd
from dwakd.config import DwakdConfig, dump_config
from dwakd.errors import ConfigError, RunLockedError
from dwakd.fsio import fsync_dir, remove_stale_temps, write_text_atomic

log = logging.getLogger(__name__)

LOCK_FILE = ".dwakd.lock"
#: files a dwakd run writes at its top level (a directory holding only these is a run, or a run's start)
RUN_FILES = ("status.json", "config.yaml", "environment.json", "metrics.jsonl", "checkpoints", "final", LOCK_FILE)

PACKAGES = ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "numpy", "pyyaml")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"dwakd": dwakd.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, str | bool | None]:
    """The git commit of the dwakd source tree (and whether it has uncommitted changes), when it is a checkout."""
    src = Path(dwakd.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"status": "unreadable"}


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to start a fresh run on top of an existing one, in a folder that holds other files, or where
    nothing can be written (before anything is loaded or written)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} exists and is a file, not a directory; choose another output_dir")
    base = _nearest_existing(run_dir)
    if not base.is_dir():
        raise ConfigError(f"output_dir {run_dir}: {base} is a file, so the directory cannot be created; choose "
                          f"another output_dir")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {run_dir}: {base} is not writable by this user; choose another output_dir "
                          f"(e.g. the override output_dir=runs/<name>)")
    status = read_status(run_dir)
    if status is not None and resume is None:
        state = status.get("status")
        if state == "running":
            holder = RunLock(run_dir)._holder()
            state = ("running, in process " + str(holder.get("pid")) if holder and not RunLock(run_dir)._stale(holder)
                     else "running when it was killed: no process holds it now")
        raise ConfigError(
            f"output_dir {run_dir} already holds a run (status: {state}). Continue it with "
            f"--resume auto, or start a new one elsewhere, e.g. with the override output_dir=runs/<new name>"
        )
    if status is None and run_dir.is_dir():
        foreign = sorted(p.name for p in run_dir.iterdir()
                         if p.name not in RUN_FILES and not p.name.startswith((".final.", ".status.json.",
                                                                               ".config.yaml.", ".environment.json.")))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(
                f"output_dir {run_dir} exists and holds files that are not a dwakd run ({shown}); dwakd writes "
                f"only into a new or empty directory. Choose another output_dir, e.g. output_dir=runs/<name>")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), to tell a live lock holder from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive lock on a run directory: ``<run>/.dwakd.lock`` created with O_EXCL, holding pid and host.

    A lock left by a process that no longer exists on this host (killed, crashed, machine rebooted:
    the pid is gone or belongs to another process now) is stale and taken over with a warning. A lock
    held by a live process, or by a process on another host (whose liveness cannot be checked), is
    refused with the holder named.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv[:8]}

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if not holder:  # unreadable: a writer killed between create and write, or garbage
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 1e9
            return age > 60
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder.get("pid", -1))
        if pid == os.getpid():
            return True  # this very process (a previous run in the same interpreter that did not release)
        if pid <= 0 or not _alive(pid):
            return True
        start = holder.get("start")
        return start is not None and _process_start(pid) not in (None, start)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if self._stale(holder):
                    log.warning("removing the stale lock %s (pid %s on %s is gone)", self.path, holder.get("pid"),
                                holder.get("host"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"output_dir {self.path.parent} is in use by another dwakd process (pid {holder.get('pid')} on "
                    f"host {holder.get('host')}, started {holder.get('started')}). Wait for it to finish, or "
                    f"use another output_dir. If that process is certainly gone, delete {self.path}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self._info()))
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self.path.parent)
            self.held = True
            return
        raise RunLockedError(f"could not lock {self.path.parent}: the lock file {self.path} keeps changing")

    def release(self) -> None:
        if self.held:
            holder = self._holder() or {}
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def clean_stale_temps(run_dir: Path) -> list[str]:
    """Remove temporary files and directories that killed writers left at the top of a run directory."""
    gone = remove_stale_temps(run_dir, ("final", "status.json", "config.yaml", "environment.json"))
    return [f"removed the unfinished {p.name}" for p in gone]


class RunDir:
    """Writes the run directory's bookkeeping files (main process only; others get no-ops)."""

    def __init__(self, path: Path, *, main: bool):
        self.path = Path(path)
        self.main = main

    def _write(self, name: str, text: str) -> None:
        if self.main:
            write_text_atomic(self.path / name, text)

    def start(self, cfg: DwakdConfig, *, extra: dict | None = None, resumed_from: str | None = None,
              write_config: bool = True) -> None:
        """Mark the run ``running`` and record the environment; ``write_config``: (re)write ``config.yaml``
        (a resume writes it only once the checkpoint has loaded and any config change was applied)."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.status("running", resumed_from=resumed_from)
        if write_config:
            self.write_config(cfg)
        env = {
            "packages": package_versions(),
            "git": git_revision(),
            "command": sys.argv,
            "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
        }
        self._write("environment.json", json.dumps(env, indent=2))

    def write_config(self, cfg: DwakdConfig) -> None:
        self._write("config.yaml", dump_config(cfg))

    def status(self, status: str, **info) -> None:
        """Write ``status.json``. On a full disk the atomic write may fail: then overwrite in place (small)."""
        text = json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, indent=2)
        try:
            self._write("status.json", text)
        except OSError as e:
            if not self.main or e.errno not in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
                raise
            with open(self.path / "status.json", "w", encoding="utf-8") as fh:
                fh.write(text)

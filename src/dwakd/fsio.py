"""Durable file writes: fsync before rename, checksummed directories, and clear disk-full errors.

Every file dwakd must not lose goes through here:

- :func:`write_text_atomic` — write a temporary file beside the target, ``fsync`` it, ``os.replace``
  it onto the target, ``fsync`` the directory (a crash leaves the old or the new file, never half);
- :func:`atomic_directory` — build a directory under a temporary name, ``fsync`` every file and
  directory in it, rename it into place, ``fsync`` the parent;
- :func:`write_manifest` / :func:`verify_manifest` — a ``MANIFEST.json`` with the size and SHA-256
  of every file of a directory, checked when the directory is opened again;
- :func:`storage_error` — turns ``ENOSPC`` / ``EDQUOT`` / ``EFBIG`` (and torch's "unexpected pos"
  for the same causes) into a :class:`StorageError` whose message says what happened.

This module depends only on :mod:`dwakd.errors` (every layer may use it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dwakd.errors import StorageError

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 22

__all__ = ["StorageError", "atomic_directory", "write_text_atomic", "write_manifest", "verify_manifest",
           "storage_reason", "fsync_tree", "remove_stale_temps"]


# --------------------------------------------------------------------------- fsync
def fsync_file(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (its entries: names created, renamed or removed). A no-op where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up, then ``root`` itself."""
    root = Path(root)
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fsync_file(p)
        fsync_dir(dirpath)


# --------------------------------------------------------------------------- atomic writes
def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def replace_directory(tmp: Path, final: Path) -> None:
    """Move the complete directory ``tmp`` onto ``final`` (replacing an old ``final``), durably."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        remove_tree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        remove_tree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_directory(final: str | Path, *, manifest: bool = False):
    """Yield a temporary directory next to ``final``; on success fsync it and rename it to ``final``.

    An exception (or a killed process) leaves ``final`` untouched: absent or the previous complete
    version (a kill may leave a ``.<name>.tmp-*`` directory, which :func:`remove_stale_temps` clears).
    ``manifest``: write a :data:`MANIFEST` of checksums into it before the rename.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        fsync_tree(tmp)
        replace_directory(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise


def remove_stale_temps(directory: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the ``.<name>.tmp-*`` / ``.<name>.old-*`` leftovers of killed writers; return what went."""
    directory = Path(directory)
    gone = []
    if not directory.is_dir():
        return gone
    for name in names:
        for pattern in (f".{name}.tmp*", f".{name}.old*"):
            for p in directory.glob(pattern):
                if p.is_dir():
                    remove_tree(p)
                else:
                    p.unlink(missing_ok=True)
                gone.append(p)
    return gone


# --------------------------------------------------------------------------- checksums
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def update_with_model_files(h, root: Path) -> None:
    """Feed a model directory's identity into hasher ``h``: ``config.json`` whole, and per weight file
    (``*.safetensors`` / ``*.bin``, sorted) its name, size and first and last MiB. Weights trained
    further differ in those bytes even when every size is the same; reading 2 MiB per file keeps this
    cheap for multi-GB checkpoints."""
    for f in sorted(Path(root).iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin") and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: str | Path) -> dict:
    """Write ``root/MANIFEST.json``: ``{"files": {relative path: {"size", "sha256"}}}`` of every file."""
    root = Path(root)
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(root)}
    data = {"version": 1, "files": files}
    with open(root / MANIFEST, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    return data


def verify_manifest(root: str | Path) -> str | None:
    """``None`` when every file listed in ``root/MANIFEST.json`` has its size and checksum; else the problem.

    A directory without a manifest returns ``"no MANIFEST.json"`` (callers decide whether that is
    acceptable, e.g. for directories written by an older version).
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST}"
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        assert isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{MANIFEST} is unreadable"
    for rel, info in sorted(files.items()):
        p = root / rel
        try:
            if not p.is_file():
                return f"{rel} is missing"
            size = p.stat().st_size
            if size != info.get("size"):
                return f"{rel} has {size} bytes, {info.get('size')} were written (truncated or replaced)"
            if sha256_file(p) != info.get("sha256"):
                return f"{rel} does not match its checksum (corrupted)"
        except OSError as e:  # removed or unreadable while being checked
            return f"{rel} is unreadable ({e.strerror or e})"
    return None


# --------------------------------------------------------------------------- errors of the machine
_STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EFBIG: "file too large (file-size limit)",
                   getattr(errno, "EDQUOT", -1): "disk quota exceeded", errno.EIO: "I/O error",
                   errno.EROFS: "read-only file system"}


def _walk_causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def storage_reason(exc: BaseException, where: str | Path | None = None) -> str | None:
    """What a write failure means for the user ("disk full", ...), or ``None`` when it is not a storage fault."""
    for e in _walk_causes(exc):
        if isinstance(e, StorageError):
            return str(e)
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[e.errno]
        text = str(e)
        # torch.save (PyTorchStreamWriter) and safetensors report a failed write without an errno
        if isinstance(e, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text
                                             or "No space left" in text or "File too large" in text):
            return _guess_storage(where)
        if type(e).__name__ == "SafetensorError" and ("No space left" in text or "File too large" in text):
            return _guess_storage(where)
    return None


def _guess_storage(where: str | Path | None) -> str:
    """A write failed without an errno: say whether the disk is full or a file-size limit applies."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"file too large (file-size limit of {soft} bytes, ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    if where is not None:
        try:
            free = shutil.disk_usage(Path(where)).free
            return f"disk full ({free} bytes free)" if free < (64 << 20) else "write failed (disk full or I/O error)"
        except OSError:
            pass
    return "write failed (disk full or file-size limit)"

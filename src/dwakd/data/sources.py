"""Raw record sources: JSONL/JSON files (read here, for ``file:line`` errors), everything else through ``datasets``.

:func:`open_source` returns ``(iterator of (location, raw object, error or None), source name,
location word)``:

- ``.jsonl`` (and ``.json`` holding JSON lines): read here. Lines are split on ``\\n`` only (JSON
  strings cannot hold a raw newline; a raw U+2028, U+0085 or form feed inside a string is valid
  JSON and stays inside its line). Each line is decoded as UTF-8 on its own, so a bad byte is
  reported as ``file:line`` with its column, and a lone surrogate (``"\\ud800"``) as a bad record.
- ``.json`` holding an array (or an object with one list of records): read here, with the line each
  item starts on.
- ``.csv`` / ``.tsv`` / ``.parquet`` / ``.arrow`` files: ``datasets.load_dataset(<builder>,
  data_files=...)``; rows are numbered from 1 (``row N``; a CSV row N is on line N + 1).
- a folder written by ``save_to_disk``: ``datasets.load_from_disk`` (``split`` picks one split of a
  ``DatasetDict``); a ``datasets`` object or a list of dicts given directly.
- anything else is a hub dataset name: ``datasets.load_dataset(name, split=split)``. Offline
  (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) and not cached, it fails with one line that says what
  to do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dwakd.config.inputs import DATASETS_SUFFIXES, looks_like_local
from dwakd.errors import DataError

Raw = Iterator[tuple[int, Any, str | None]]


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# --------------------------------------------------------------------------- JSON / JSONL
def _surrogate_field(obj: Any, path: str = "") -> str | None:
    """The first field holding a string that is not valid Unicode (a lone surrogate), or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "value"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = _surrogate_field(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad = _surrogate_field(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


def _decode_line(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                      "re-save the file as UTF-8")


def iter_jsonl_bytes(data: bytes) -> Raw:
    """(line number, object or None, error or None) per non-blank line of JSONL bytes."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        text, err = _decode_line(raw)
        if err is not None:
            yield lineno, None, err
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
            continue
        bad = _surrogate_field(obj)
        if bad:
            yield lineno, None, f"field '{bad}' holds a lone surrogate (an invalid \\ud800-\\udfff escape), not text"
            continue
        yield lineno, obj, None


def _iter_json_array(path: Path, text: str) -> Raw:
    """Items of a top-level JSON array, each with the line it starts on."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            raise DataError(f"{path}: the JSON array is not closed")
        if text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
        bad = _surrogate_field(obj)
        yield line, (None if bad else obj), (f"field '{bad}' holds a lone surrogate, not text" if bad else None)
        pos = end


def _utf8_text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); "
                        "re-save the file as UTF-8") from None


def iter_json_file(path: Path) -> tuple[Raw, str]:
    """Iterator of (location number, raw object, error) and the location word (line/item)."""
    data = path.read_bytes()
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"[":
        return _iter_json_array(path, _utf8_text(path, data)), "line"
    if head == b"{" and path.suffix.lower() == ".json":
        text = _utf8_text(path, data)
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            return iter_jsonl_bytes(data), "line"  # a .json file holding JSON lines
        lists = [v for v in whole.values() if isinstance(v, list)] if isinstance(whole, dict) else []
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON file must hold a list of records (or an object with one list of records)")
        return ((k, obj, None) for k, obj in enumerate(lists[0], 1)), "item"
    return iter_jsonl_bytes(data), "line"


# --------------------------------------------------------------------------- datasets
def _iter_dataset(ds) -> Raw:
    for k, row in enumerate(ds, 1):
        yield k, row, None


def _datasets_types():
    mod = sys.modules.get("datasets")  # a Dataset object means the module is loaded already
    if mod is None:
        return (), ()
    return (mod.Dataset, mod.IterableDataset), (mod.DatasetDict, mod.IterableDatasetDict)


def _pick_split(dd, split: str, what: str):
    if split not in dd:
        raise DataError(f"{what} has no split '{split}' (splits: {', '.join(dd)}); set data.split / data.dev_split")
    return dd[split]


def _load_file_with_datasets(path: Path, builder: str):
    import datasets

    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types; report one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: could not read it as {builder.upper()} ({type(e).__name__}: {msg})") from None


def _load_hub(spec: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(spec, split=split)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if hub_offline():
            raise DataError(
                f"'{spec}' is not a local file or folder, and the Hugging Face hub is offline (HF_HUB_OFFLINE / "
                f"HF_DATASETS_OFFLINE is set) with no cached copy: run once online (unset HF_HUB_OFFLINE), or "
                f"give a local file (.jsonl/.json/.csv/.parquet/.arrow) or a save_to_disk folder") from None
        if "split" in msg.lower() and split in msg:
            raise DataError(f"hub dataset '{spec}' has no split '{split}' ({msg}); set data.split") from None
        raise DataError(f"'{spec}' is not a local file or folder, and datasets.load_dataset('{spec}', "
                        f"split='{split}') failed: {type(e).__name__}: {msg}") from None


def open_source(source, split: str = "train") -> tuple[Raw, str, str]:
    """(raw iterator, source name, location word) for a path, a ``datasets`` object, a list or a hub name."""
    ds_types, dd_types = _datasets_types()
    if dd_types and isinstance(source, dd_types):
        source = _pick_split(source, split, "the dataset")
    if ds_types and isinstance(source, ds_types):
        info = getattr(source, "info", None)
        name = (info.dataset_name if info is not None else None) or "dataset"
        return _iter_dataset(source), f"{name}[{split}]", "row"
    if isinstance(source, (list, tuple)):
        return ((k, obj, None) for k, obj in enumerate(source)), "records", "item"
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in DATASETS_SUFFIXES:
            return _iter_dataset(_load_file_with_datasets(path, DATASETS_SUFFIXES[suffix])), str(path), "row"
        it, word = iter_json_file(path)
        return it, str(path), word
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path} is a folder but not a dataset written by save_to_disk ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        if isinstance(loaded, datasets.DatasetDict):
            return _iter_dataset(_pick_split(loaded, split, str(path))), f"{path}[{split}]", "row"
        return _iter_dataset(loaded), str(path), "row"
    spec = str(source)
    if looks_like_local(spec):
        raise FileNotFoundError(f"data file {spec} does not exist")
    return _iter_dataset(_load_hub(spec, split)), f"{spec}[{split}]", "row"

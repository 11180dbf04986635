"""Instruction records: load Dolly / Alpaca / MiniLLM-DSKD / chat data from files or ``datasets``.

Formats (fields; ``?`` = optional):

- ``dolly``: ``instruction``, ``context?``, ``response``.
- ``alpaca``: ``instruction``, ``input?``, ``output``.
- ``minillm`` (MiniLLM/DSKD processed): ``prompt`` (already formatted with the plain template),
  ``output`` (a string or a list of reference strings; the first one is the training response),
  ``instruction?``, ``input?`` (kept for chat-template formatting).
- ``chat``: ``messages`` = list of ``{"role", "content"}``; the last message is the assistant's
  response, the messages before it form the prompt.

``format="auto"`` detects the format from the fields of the first record: ``messages`` -> chat,
``prompt`` + ``output`` -> minillm, ``instruction`` + ``response`` -> dolly, ``instruction`` +
``output`` -> alpaca. Every record is then validated against that format.

Errors: a malformed record raises :class:`~dwakd.errors.DataError` naming the file, the line
(``row N`` for a ``datasets`` source, ``item N`` for a JSON object holding a list) and the missing or
bad field. With ``on_bad_record="skip"`` it is skipped instead and counted in
:attr:`LoadResult.skip_reasons`; nothing is dropped silently (blank JSONL lines are not records).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dwakd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("dolly", "alpaca", "minillm", "chat")
BAD_RECORD_POLICIES = ("error", "skip")

#: format -> (required fields, optional string fields)
_FIELDS = {
    "dolly": (("instruction", "response"), ("context",)),
    "alpaca": (("instruction", "output"), ("input",)),
    "minillm": (("prompt", "output"), ("instruction", "input")),
    "chat": (("messages",), ()),
}


@dataclass
class Record:
    """One instruction example, whatever its source format.

    - ``instruction`` / ``context``: the task and its optional input (Dolly ``context``, Alpaca and
      MiniLLM ``input``); ``None`` for chat records.
    - ``prompt``: a MiniLLM prompt that is already formatted with the plain template (else ``None``).
    - ``response``: the training response (MiniLLM: the first reference; chat: the last assistant
      message). ``references``: every reference answer (``[response]`` unless the file had a list).
    - ``messages``: the chat turns *before* the response (chat records only).
    - ``source`` / ``line``: where the record came from (for messages).
    """

    format: str
    response: str
    instruction: str | None = None
    context: str | None = None
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    references: list[str] = field(default_factory=list)
    source: str = ""
    line: int = 0

    def __post_init__(self) -> None:
        if not self.references:
            self.references = [self.response]


@dataclass
class LoadResult:
    """Records read from one source, with what was skipped and why.

    ``skip_reasons``: ``"<reason>" -> count`` (e.g. ``"missing field 'response'"``). Iterating a
    ``LoadResult`` iterates its records.
    """

    records: list[Record]
    format: str
    source: str
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def summary(self) -> str:
        text = f"{self.source}: {len(self.records)} {self.format} records"
        if self.skipped:
            reasons = ", ".join(f"{n} x {r}" for r, n in sorted(self.skip_reasons.items()))
            text += f", {self.skipped} skipped ({reasons})"
        return text


class _BadRecord(Exception):
    """A record problem: ``reason`` (short, what skips are counted by) and ``detail`` (more context)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason + detail)
        self.reason = reason
        self.detail = detail

    @property
    def message(self) -> str:
        return self.reason + self.detail


def _missing(name: str, fmt: str, obj: Mapping) -> _BadRecord:
    present = ", ".join(sorted(map(str, obj))) or "none"
    return _BadRecord(f"missing field '{name}'", f" ({fmt} record; fields present: {present})")


def detect_format(fields: Iterable[str]) -> str | None:
    """The record format implied by a record's field names, or ``None`` (see the module doc)."""
    f = set(fields)
    if "messages" in f:
        return "chat"
    if "prompt" in f and "output" in f:
        return "minillm"
    if "instruction" in f and "response" in f:
        return "dolly"
    if "instruction" in f and "output" in f:
        return "alpaca"
    return None


def _need_str(obj: Mapping, name: str, fmt: str, *, optional: bool = False, nonempty: bool = False) -> str | None:
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise _missing(name, fmt, obj)
    value = obj[name]
    if not isinstance(value, str):
        raise _BadRecord(f"field '{name}' must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise _BadRecord(f"field '{name}' is empty")
    return value


def _references(obj: Mapping, name: str, fmt: str) -> list[str]:
    if name not in obj or obj[name] is None:
        raise _missing(name, fmt, obj)
    value = obj[name]
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise _BadRecord(f"field '{name}' must be a string or a non-empty list of strings")
    if not refs[0].strip():
        raise _BadRecord(f"field '{name}' is empty")
    return list(refs)


def _messages(obj: Mapping) -> tuple[list[dict[str, str]], str]:
    msgs = obj.get("messages")
    if msgs is None:
        raise _missing("messages", "chat", obj)
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise _BadRecord("field 'messages' must be a list of at least two {role, content} messages")
    clean = []
    for k, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise _BadRecord(f"field 'messages[{k}]' must be an object with 'role' and 'content'")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise _BadRecord(f"missing field 'messages[{k}].{key}' (a string)")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "assistant":
        raise _BadRecord(f"field 'messages': the last message must be the assistant's response, got role '{clean[-1]['role']}'")
    if not clean[-1]["content"].strip():
        raise _BadRecord("field 'messages': the assistant's response is empty")
    return clean[:-1], clean[-1]["content"]


def parse_record(obj: Any, fmt: str, *, source: str = "", line: int = 0) -> Record:
    """Validate one raw record (a mapping) as format ``fmt``; raises :class:`_BadRecord`."""
    if not isinstance(obj, Mapping):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    if fmt == "dolly":
        ins = _need_str(obj, "instruction", fmt, nonempty=True)
        ctx = _need_str(obj, "context", fmt, optional=True)
        resp = _need_str(obj, "response", fmt, nonempty=True)
        return Record(fmt, resp, instruction=ins, context=ctx or None, source=source, line=line)
    if fmt == "alpaca":
        ins = _need_str(obj, "instruction", fmt, nonempty=True)
        inp = _need_str(obj, "input", fmt, optional=True)
        resp = _need_str(obj, "output", fmt, nonempty=True)
        return Record(fmt, resp, instruction=ins, context=inp or None, source=source, line=line)
    if fmt == "minillm":
        prompt = _need_str(obj, "prompt", fmt, nonempty=True)
        refs = _references(obj, "output", fmt)
        ins = _need_str(obj, "instruction", fmt, optional=True)
        inp = _need_str(obj, "input", fmt, optional=True)
        return Record(fmt, refs[0], instruction=ins or None, context=inp or None, prompt=prompt,
                      references=refs, source=source, line=line)
    if fmt == "chat":
        before, resp = _messages(obj)
        return Record(fmt, resp, messages=before, source=source, line=line)
    raise ConfigError(f"unknown record format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- raw sources
def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, object or None, JSON error or None) per non-blank line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as e:
            yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any, str | None]]:
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
        yield line, obj, None
        pos = end


def _iter_file(path: Path) -> tuple[Iterator[tuple[int, Any, str | None]], str]:
    """Iterator of (location number, raw object, JSON error) and the location word (line/item)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    head = text.lstrip()[:1]
    if head == "[":
        return _iter_json_array(path, text), "line"
    if head == "{" and path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            return _iter_jsonl(path, text), "line"  # a .json file holding JSON lines
        lists = [v for v in whole.values() if isinstance(v, list)] if isinstance(whole, dict) else []
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON file must hold a list of records (or an object with one list of records)")
        return ((k, obj, None) for k, obj in enumerate(lists[0], 1)), "item"
    return _iter_jsonl(path, text), "line"


def _iter_dataset(ds) -> Iterator[tuple[int, Any, str | None]]:
    for k, row in enumerate(ds):
        yield k, row, None


def _open_source(source, split: str) -> tuple[Iterator, str, str]:
    """(raw iterator, source name, location word) for a path, a ``datasets`` object or a hub name."""
    datasets_mod = sys.modules.get("datasets")  # a Dataset object means the module is loaded already
    if datasets_mod is not None:
        ds_types = (datasets_mod.Dataset, datasets_mod.IterableDataset)
        dd_types = (datasets_mod.DatasetDict, datasets_mod.IterableDatasetDict)
    else:
        ds_types, dd_types = (), ()
    if dd_types and isinstance(source, dd_types):
        if split not in source:
            raise DataError(f"the dataset has no split '{split}' (splits: {', '.join(source)})")
        source = source[split]
    if ds_types and isinstance(source, ds_types):
        name = getattr(source, "info", None) and source.info.dataset_name or "dataset"
        return _iter_dataset(source), f"{name}[{split}]", "row"
    if isinstance(source, (list, tuple)):
        return ((k, obj, None) for k, obj in enumerate(source)), "records", "item"
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        it, word = _iter_file(path)
        return it, str(path), word
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path} is a directory but not a dataset saved with save_to_disk: {e}") from e
        return _open_source(loaded, split)
    spec = str(source)
    if spec.startswith((".", "/", "~")) or spec.endswith((".json", ".jsonl")):
        raise FileNotFoundError(f"data file {spec} does not exist")
    import datasets

    try:
        loaded = datasets.load_dataset(spec, split=split)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"could not load the dataset '{spec}' (split '{split}') with datasets.load_dataset: {e}") from e
    return _iter_dataset(loaded), f"{spec}[{split}]", "row"


def load_records(
    source,
    *,
    format: str = "auto",
    on_bad_record: str = "error",
    split: str = "train",
    limit: int | None = None,
) -> LoadResult:
    """Load instruction records.

    ``source``: a ``.jsonl`` / ``.json`` file path, a directory written by
    ``datasets.Dataset.save_to_disk``, a ``datasets.Dataset`` / ``DatasetDict`` (``split`` picks
    one), a list of dicts, or a name for ``datasets.load_dataset(source, split=split)``.
    ``format``: ``auto`` or one of :data:`FORMATS`. ``on_bad_record``: ``error`` raises
    :class:`~dwakd.errors.DataError` (file, line, field); ``skip`` skips and counts.
    ``limit``: stop after that many good records. A missing file raises ``FileNotFoundError``.
    """
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}; got '{on_bad_record}'")
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"unknown record format '{format}'; choose one of: auto, {', '.join(FORMATS)}")
    raw, name, word = _open_source(source, split)
    fmt = None if format == "auto" else format
    records: list[Record] = []
    reasons: Counter = Counter()
    for loc, obj, json_error in raw:
        where = f"{name}:{loc}" if word == "line" else f"{name} {word} {loc}"
        try:
            if json_error is not None:
                raise _BadRecord(json_error)
            if fmt is None:
                if not isinstance(obj, Mapping):
                    raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
                fmt = detect_format(obj)
                if fmt is None:
                    raise DataError(
                        f"{where}: cannot tell the record format from the fields ({', '.join(sorted(map(str, obj)))}); "
                        "expected dolly (instruction, response), alpaca (instruction, output), minillm "
                        "(prompt, output) or chat (messages); set the format explicitly"
                    )
                log.debug("%s: detected %s records", name, fmt)
            records.append(parse_record(obj, fmt, source=name, line=loc))
        except _BadRecord as e:
            if on_bad_record == "error":
                raise DataError(f"{where}: {e.message}") from None
            reasons[e.reason] += 1
        if limit is not None and len(records) >= limit:
            break
    result = LoadResult(records, fmt or (format if format != "auto" else "unknown"), name,
                        sum(reasons.values()), dict(reasons))
    if result.skipped:
        log.warning("%s", result.summary())
    return result

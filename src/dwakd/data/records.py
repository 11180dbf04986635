"""Instruction records: load Dolly / Alpaca / MiniLLM / chat / ShareGPT / prompt-completion data.

Sources (:mod:`dwakd.data.sources`): JSONL/JSON, CSV/TSV, Parquet and Arrow files, ``save_to_disk``
folders, ``datasets`` objects, lists of dicts and hub dataset names.

Formats (fields; ``?`` = optional):

- ``dolly``: ``instruction``, ``context?``, ``response``.
- ``alpaca``: ``instruction``, ``input?``, ``output``.
- ``minillm`` (MiniLLM/DSKD processed): ``prompt`` (already formatted with the plain template),
  ``output`` (a string or a list of reference strings; the first one is the training response),
  ``instruction?``, ``input?`` (kept for chat-template formatting).
- ``chat``: ``messages`` = list of ``{"role", "content"}``; the last message is the assistant's
  response, the messages before it form the prompt.
- ``sharegpt``: ``conversations`` = list of ``{"from", "value"}`` (``human``/``user`` -> user,
  ``gpt``/``assistant``/``chatgpt``/``bard``/``bing`` -> assistant, ``system``); then as ``chat``.
- ``prompt-completion`` (TRL): ``prompt`` and ``completion``, both strings (the prompt is used
  verbatim, like a MiniLLM prompt) or both message lists (conversational: as ``chat``).

``format="auto"`` detects the format from the fields of the first record: ``messages`` -> chat,
``conversations`` -> sharegpt, ``prompt`` + ``completion`` -> prompt-completion, ``prompt`` +
``output`` -> minillm, ``instruction`` + ``response`` -> dolly, ``instruction`` + ``output`` ->
alpaca. Every record is then validated against that format. ``fields`` renames source fields
first (``{"instruction": "question", "response": "answer"}``: dwakd name -> the source's name).

Errors: a malformed record raises :class:`~dwakd.errors.DataError` naming the file, the line
(``row N`` for a ``datasets`` source, ``item N`` for a JSON object holding a list) and the missing or
bad field. With ``on_bad_record="skip"`` it is skipped instead and counted in
:attr:`LoadResult.skip_reasons`; nothing is dropped silently (blank JSONL lines are not records).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dwakd.config.inputs import KNOWN_FIELDS
from dwakd.data.sources import open_source
from dwakd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("dolly", "alpaca", "minillm", "chat", "sharegpt", "prompt-completion")
BAD_RECORD_POLICIES = ("error", "skip")

#: format -> (required fields, optional string fields)
_FIELDS = {
    "dolly": (("instruction", "response"), ("context",)),
    "alpaca": (("instruction", "output"), ("input",)),
    "minillm": (("prompt", "output"), ("instruction", "input")),
    "chat": (("messages",), ()),
    "sharegpt": (("conversations",), ()),
    "prompt-completion": (("prompt", "completion"), ()),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                   "system": "system"}


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
    if "conversations" in f:
        return "sharegpt"
    if "prompt" in f and "completion" in f:
        return "prompt-completion"
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


def _message_list(obj: Mapping, name: str, fmt: str, keys=("role", "content"), *, min_len: int = 2) -> list[dict[str, str]]:
    msgs = obj.get(name)
    if msgs is None:
        raise _missing(name, fmt, obj)
    if not isinstance(msgs, list) or len(msgs) < min_len:
        count = "two" if min_len == 2 else "one"
        raise _BadRecord(f"field '{name}' must be a list of at least {count} {{{', '.join(keys)}}} message{'s' if min_len > 1 else ''}")
    clean = []
    for k, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise _BadRecord(f"field '{name}[{k}]' must be an object with '{keys[0]}' and '{keys[1]}'")
        for key in keys:
            if not isinstance(m.get(key), str):
                raise _BadRecord(f"missing field '{name}[{k}].{key}' (a string)")
        role = m[keys[0]]
        if fmt == "sharegpt":
            if role.lower() not in _SHAREGPT_ROLES:
                raise _BadRecord(f"field '{name}[{k}].from': unknown speaker '{role}' "
                                 f"(expected one of {', '.join(sorted(_SHAREGPT_ROLES))})")
            role = _SHAREGPT_ROLES[role.lower()]
        clean.append({"role": role, "content": m[keys[1]]})
    return clean


def _split_response(clean: list[dict[str, str]], name: str) -> tuple[list[dict[str, str]], str]:
    if clean[-1]["role"] != "assistant":
        raise _BadRecord(f"field '{name}': the last message must be the assistant's response, got role '{clean[-1]['role']}'")
    if not clean[-1]["content"].strip():
        raise _BadRecord(f"field '{name}': the assistant's response is empty")
    return clean[:-1], clean[-1]["content"]


def _messages(obj: Mapping) -> tuple[list[dict[str, str]], str]:
    return _split_response(_message_list(obj, "messages", "chat"), "messages")


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
    if fmt == "sharegpt":
        before, resp = _split_response(_message_list(obj, "conversations", fmt, ("from", "value")), "conversations")
        return Record(fmt, resp, messages=before, source=source, line=line)
    if fmt == "prompt-completion":
        if isinstance(obj.get("prompt"), list) or isinstance(obj.get("completion"), list):
            before = _message_list(obj, "prompt", fmt, min_len=1)
            after = _message_list(obj, "completion", fmt, min_len=1)
            _, resp = _split_response(after[-1:], "completion")
            return Record(fmt, resp, messages=before + after[:-1], source=source, line=line)
        prompt = _need_str(obj, "prompt", fmt, nonempty=True)
        resp = _need_str(obj, "completion", fmt, nonempty=True)
        return Record(fmt, resp, prompt=prompt, source=source, line=line)
    raise ConfigError(f"unknown record format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")


def check_field_map(fields: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a field mapping ``{dwakd name: source name}`` (raises ConfigError)."""
    fields = dict(fields or {})
    for ours, theirs in fields.items():
        if ours not in KNOWN_FIELDS:
            raise ConfigError(f"field mapping: unknown dwakd field '{ours}' (known: {', '.join(KNOWN_FIELDS)}); "
                              "write {dwakd name: your field name}, e.g. {instruction: question, response: answer}")
        if not isinstance(theirs, str) or not theirs:
            raise ConfigError(f"field mapping: '{ours}' must map to a field name (a string), got {theirs!r}")
    return fields


def _rename(obj: Any, fields: dict[str, str]) -> Any:
    if not fields or not isinstance(obj, Mapping):
        return obj
    taken = set(fields.values())
    out = {k: v for k, v in obj.items() if k not in taken and k not in fields}
    for ours, theirs in fields.items():
        if theirs in obj:
            out[ours] = obj[theirs]
    return out


def _bad_from_error(text: str) -> _BadRecord:
    reason, sep, detail = text.partition(" (")
    return _BadRecord(reason, sep + detail if sep else "")


def load_records(
    source,
    *,
    format: str = "auto",
    on_bad_record: str = "error",
    split: str = "train",
    limit: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> LoadResult:
    """Load instruction records.

    ``source``: a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` / ``.arrow`` file, a
    folder written by ``save_to_disk``, a ``datasets.Dataset`` / ``DatasetDict`` (``split`` picks
    one), a list of dicts, or a hub name for ``datasets.load_dataset(source, split=split)``
    (:mod:`dwakd.data.sources`). ``format``: ``auto`` or one of :data:`FORMATS`. ``fields``:
    ``{dwakd field: source field}`` renames applied before detection. ``on_bad_record``: ``error``
    raises :class:`~dwakd.errors.DataError` (file, line, field); ``skip`` skips and counts.
    ``limit``: stop after that many good records. A missing file raises ``FileNotFoundError``.
    """
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}; got '{on_bad_record}'")
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"unknown record format '{format}'; choose one of: auto, {', '.join(FORMATS)}")
    mapping = check_field_map(fields)
    raw, name, word = open_source(source, split)
    fmt = None if format == "auto" else format
    records: list[Record] = []
    reasons: Counter = Counter()
    for loc, obj, error in raw:
        where = f"{name}:{loc}" if word == "line" else f"{name} {word} {loc}"
        try:
            if error is not None:
                raise _bad_from_error(error)
            obj = _rename(obj, mapping)
            if fmt is None:
                if not isinstance(obj, Mapping):
                    raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
                fmt = detect_format(obj)
                if fmt is None:
                    raise DataError(
                        f"{where}: cannot tell the record format from the fields ({', '.join(sorted(map(str, obj)))}); "
                        "expected dolly (instruction, response), alpaca (instruction, output), minillm "
                        "(prompt, output), chat (messages), sharegpt (conversations) or prompt-completion "
                        "(prompt, completion); set data.format, or map your fields with data.fields, e.g. "
                        "{instruction: question, response: answer}"
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

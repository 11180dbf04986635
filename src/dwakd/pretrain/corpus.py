"""Text corpora for pretraining a student: plain text, JSONL, ``datasets`` and WikiText.

A corpus is a list of *documents* (strings). Sources:

- ``text``: a UTF-8 file; documents are separated by blank lines;
- ``jsonl``: one JSON object per line, the document is ``field`` (default ``text``);
- ``wikitext``: the *tokenized* WikiText release (``wiki.valid.tokens`` / ``valid.txt``), detokenized
  (:func:`detokenize_wikitext`) and split into articles at its top-level ``= Title =`` headings;
- ``datasets``: ``datasets.load_dataset(name, config, split=split)[field]`` (offline cache or hub);
- ``teacher``: ``limit`` documents the teacher ``name`` writes from varied seed prompts, cached and
  resumable (:mod:`dwakd.pretrain.teacher_corpus`).

The held-out part is chosen by a hash of each document (:func:`is_heldout`), so it does not depend on
the order or the number of sources.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from dwakd.errors import DataError

_HEADING = re.compile(r"^((?:= )+)(.*?)((?: =)+)$")


def detokenize_wikitext(text: str, *, unk: str = "") -> str:
    """Undo WikiText's tokenization: ``@-@ @,@ @.@``, spaces around punctuation, ``<unk>``.

    ``unk``: what replaces ``<unk>`` (default: dropped, with the doubled space it leaves).
    """
    t = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    t = t.replace("<unk>", unk)
    t = re.sub(r"[ \t]{2,}", " ", t)
    t = re.sub(r" ([,.;:!?)\]}%])", r"\1", t)
    t = re.sub(r"([(\[{$]) ", r"\1", t)
    t = re.sub(r" '(t|s|re|ve|m|ll|d)\b", r"'\1", t)
    t = re.sub(r" ' ", "' ", t)
    t = re.sub(r'" (.*?) "', r'"\1"', t)
    t = re.sub(r"[ \t]{2,}", " ", t)
    return "\n".join(line.strip() for line in t.split("\n"))


def wikitext_articles(raw: str, *, unk: str = "") -> list[str]:
    """Split tokenized WikiText into detokenized articles (a level-1 heading starts an article).

    Headings become plain lines (``== History ==`` -> ``History``); empty lines are dropped.
    """
    articles: list[list[str]] = []
    for line in raw.split("\n"):
        if not line.strip():
            continue
        m = _HEADING.match(line.strip())
        level = m.group(1).count("=") if m and m.group(1).count("=") == m.group(3).count("=") else 0
        m = m if level else None
        if level == 1:
            articles.append([])
        if not articles:
            articles.append([])
        articles[-1].append(m.group(2).strip() if m else line.strip())
    out = []
    for lines in articles:
        doc = detokenize_wikitext("\n".join(lines), unk=unk).strip()
        if doc:
            out.append(doc)
    return out


def read_source(src) -> list[str]:
    """Documents of one :class:`~dwakd.pretrain.config.CorpusSource`."""
    if src.kind == "teacher":
        from dwakd.pretrain.teacher_corpus import teacher_corpus

        return teacher_corpus(src.name, src.limit, max_new_tokens=src.max_new_tokens, seed=src.seed,
                              batch_size=src.batch_size)
    if src.kind == "datasets":
        try:
            import datasets
        except ImportError as e:  # pragma: no cover - datasets is a dependency
            raise DataError("corpus kind 'datasets' needs the datasets package") from e
        try:
            ds = datasets.load_dataset(src.name, src.config, split=src.split)
        except Exception as e:  # noqa: BLE001 - any loader failure is a data error for the user
            raise DataError(f"corpus: datasets.load_dataset({src.name!r}, {src.config!r}, split={src.split!r}) "
                            f"failed: {e}") from None
        if src.field not in ds.column_names:
            raise DataError(f"corpus: dataset {src.name} has no field '{src.field}' (fields: {ds.column_names})")
        docs = [str(t) for t in ds[src.field]]
    else:
        path = Path(src.path)
        if not path.is_file():
            raise DataError(f"corpus: {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if src.kind == "wikitext":
            docs = wikitext_articles(text)
        elif src.kind == "text":
            docs = [d.strip() for d in re.split(r"\n\s*\n", text)]
        else:
            docs = []
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: invalid JSON: {e.msg}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(src.field), str):
                    raise DataError(f"{path}:{i}: no string field '{src.field}'")
                docs.append(obj[src.field])
    docs = [d for d in docs if d.strip()]
    return docs[: src.limit] if src.limit else docs


def is_heldout(doc: str, fraction: float) -> bool:
    """Deterministic held-out membership from the document's SHA-256 (fraction in [0, 1))."""
    h = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(train, held-out)`` documents, each in order (membership: :func:`is_heldout`)."""
    held = [is_heldout(d, fraction) for d in docs]
    return [d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h]


def load_corpus(sources, heldout_fraction: float, *, read=read_source) -> tuple[list[str], list[str]]:
    """``(train documents, held-out documents)`` of all sources, in source order (``read``: the
    documents of one source; a caller that already read some sources passes them back this way)."""
    docs = [d for src in sources for d in read(src)]
    if not docs:
        raise DataError("corpus: the sources hold no text")
    train, held = split_heldout(docs, heldout_fraction)
    if not train:
        raise DataError("corpus: every document fell into the held-out part; lower heldout_fraction")
    return train, held

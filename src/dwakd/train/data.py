"""The one place the trainer calls into :mod:`dwakd.data`: records, tokenizers, encoding, collation.

:func:`prepare_data` runs before any model loads and before the run directory is created, so
every data problem (missing file, malformed record, empty dataset, a tokenizer with neither pad
nor EOS token, incompatible vocabularies) stops the run with nothing written.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from dwakd import data as D
from dwakd.config import DwakdConfig, where
from dwakd.data.batch import PairBatch
from dwakd.errors import DataError
from dwakd.models import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Tokenizers, the student to load, and the encoded train/dev examples (:class:`dwakd.data.EncodedPair`)."""

    student_spec: str
    student_tokenizer: object
    teacher_tokenizer: object
    train: list
    dev: list
    report: dict = field(default_factory=dict)
    collator: object = None

    def __post_init__(self):
        if self.collator is None:
            self.collator = D.PairCollator(self.student_tokenizer, self.teacher_tokenizer)

    def collate(self, indices: list[int], split: str = "train") -> PairBatch:
        """Right-padded :class:`PairBatch` of examples ``indices`` of ``split``."""
        examples = self.train if split == "train" else self.dev
        return self.collator([examples[i] for i in indices])


# --------------------------------------------------------------------------- dwakd.data adapters
def read_records(path: str, cfg: DwakdConfig, key: str) -> tuple[list, dict]:
    """Load instruction records from ``path`` -> ``(records, counts)``; format detection and the
    bad-record policy are the data layer's (its errors name file and line)."""
    try:
        split = cfg.data.split if key == "data.train" else cfg.data.dev_split
        result = D.load_records(path, format=cfg.data.format, on_bad_record=cfg.data.on_bad_record, split=split,
                                fields=cfg.data.fields)
    except FileNotFoundError as e:
        raise DataError(f"{where(cfg, key)}: data file {path} does not exist") from e
    counts = {"file": str(path), "format": result.format, "records": len(result.records), "skipped": result.skipped}
    if result.skip_reasons:
        counts["skip_reasons"] = dict(result.skip_reasons)
    return list(result.records), counts


def record_texts(records: list) -> list[str]:
    """Prompt and response texts of ``records`` (what a built student's tokenizer is trained on)."""
    texts = []
    for r in records:
        for value in (r.instruction, r.context, r.prompt, r.response):
            if isinstance(value, str) and value:
                texts.append(value)
        for m in r.messages or []:
            if isinstance(m.get("content"), str) and m["content"]:
                texts.append(m["content"])
    return texts


def encode_records(records: list, student_tok, teacher_tok, cfg: DwakdConfig) -> tuple[list, dict]:
    """Encode every record for both sides; returns ``(examples, counts)`` (drops and truncations counted)."""
    d = cfg.data
    encoded = D.encode_dataset(
        records, student_tok, teacher_tok,
        max_length=d.max_length, max_prompt_length=d.max_prompt_length,
        student_chat_template=d.student_chat_template, teacher_chat_template=d.teacher_chat_template,
    )
    return list(encoded.examples), encoded.stats.as_dict()


# --------------------------------------------------------------------------- orchestration
def split_dev(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``records`` (at least one when fraction > 0 and there are >= 2)."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    n_dev = max(1, round(len(records) * fraction))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    dev_idx = set(order[:n_dev])
    train = [r for i, r in enumerate(records) if i not in dev_idx]
    dev = [r for i, r in enumerate(records) if i in dev_idx]
    return train, dev


def check_tokenizer_compatibility(cfg: DwakdConfig, method_cls, student_tok, teacher_tok) -> None:
    """Let the method refuse a tokenizer pair it cannot use (e.g. ``kd`` with different vocabularies)."""
    try:
        method_cls.check_tokenizers(student_tok, teacher_tok)  # DistillMethod's default accepts every pair
    except ValueError as e:  # ConfigError is a ValueError too
        raise type(e)(f"{where(cfg, 'method.name')}: {e}") from None


def prepare_data(cfg: DwakdConfig, method_cls, *, build_student_dir=None) -> TrainData:
    """Records -> tokenizers -> (built student) -> encoded train/dev examples. Raises before anything is written.

    ``build_student_dir(texts) -> Path``: how a ``model.build`` student is obtained (the trainer
    passes :func:`dwakd.train.student.ensure_built_student` under ``main_process_first``).
    """
    d = cfg.data
    train_records, train_read = read_records(d.train, cfg, "data.train")
    if d.max_train_records:
        train_records = train_records[: d.max_train_records]
    if not train_records:
        raise DataError(f"{where(cfg, 'data.train')}: the training data {d.train} holds no usable records")
    dev_read: dict = {}
    if d.dev:
        dev_records, dev_read = read_records(d.dev, cfg, "data.dev")
    else:
        train_records, dev_records = split_dev(train_records, d.dev_fraction, cfg.train.seed)
    if d.max_dev_records:
        dev_records = dev_records[: d.max_dev_records]

    teacher_spec = cfg.model.teacher
    teacher_tok = load_tokenizer(teacher_spec) if teacher_spec else None  # fails before a student is built
    if cfg.model.build is not None:
        if build_student_dir is None:
            raise ValueError("prepare_data needs build_student_dir for a model.build student")
        student_spec = str(build_student_dir(record_texts(train_records)))
    else:
        student_spec = cfg.model.student
    student_tok = load_tokenizer(student_spec)
    teacher_tok = teacher_tok if teacher_tok is not None else student_tok
    check_tokenizer_compatibility(cfg, method_cls, student_tok, teacher_tok)

    train, train_counts = encode_records(train_records, student_tok, teacher_tok, cfg)
    dev, dev_counts = encode_records(dev_records, student_tok, teacher_tok, cfg) if dev_records else ([], {})
    if not train:
        raise DataError(
            f"{where(cfg, 'data.train')}: no training example survived encoding ({train_counts['records']} records, "
            f"{train_counts['dropped']} dropped because the response did not fit data.max_length={d.max_length})"
        )
    report = {"train": train_counts, "dev": dev_counts, "read": {"train": train_read, "dev": dev_read}}
    for split, counts in (("train", train_counts), ("dev", dev_counts)):
        if counts.get("dropped") or counts.get("response_truncated"):
            log.warning("%s: %d of %d records dropped (response would not fit max_length), %d responses truncated",
                        split, counts["dropped"], counts["records"], counts.get("response_truncated", 0))
    return TrainData(student_spec, student_tok, teacher_tok, train, dev, report)

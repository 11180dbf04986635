"""Dual tokenization: one example, two tokenizers, character spans of every response token.

Layout of one side (:class:`EncodedSide`): ``input_ids = [BOS?] + prompt + response (+ EOS)``,
``labels`` = ``IGNORE_INDEX`` on ``[BOS?] + prompt`` and equal to ``input_ids`` on the response
tokens and the appended EOS (Hugging Face convention; the collator shifts them).

Tokenization of one side is done and documented in :mod:`dwakd.data.tokenization` (its public names
:class:`SideTokenizer`, :func:`side_tokenizer`, :func:`canonical_spans`, :func:`response_tokens`
and :func:`prompt_ids` are re-exported here): prompt and response are tokenized **separately**, so
no token crosses the prompt/response boundary; special-token text inside the response stays plain
text; BOS is prepended only when the tokenizer itself prepends one, never doubled. EOS (the
tokenizer's ``eos_token``, else its ``sep_token``) is appended here after a complete response and
is a response token.

Spans (``response_spans``, one ``(start, end)`` per response token, character offsets into the
response string): canonical as :mod:`dwakd.data.tokenization` defines them (rules 1-4 and guarantees
there); the appended EOS gets ``(len(response), len(response))``. Spans of two tokens overlap only
where both hold a piece of one character.

Truncation (per example, :func:`encode_pair`):

1. The prompt is cut from the left to ``max_prompt_length`` tokens; a leading BOS is kept (the
   tokens after it are cut).
2. Each side may then hold ``max_length - len(prompt) - 1`` response tokens (one slot is reserved
   for EOS). When the whole response fits on both sides, it is kept with its EOS.
3. Otherwise both sides are cut at the **same character position** ``c``: the largest ``c`` such
   that each side has a token boundary at ``c`` (its first ``k`` tokens end at or before ``c``, the
   rest start at or after it, no character split) with ``k`` within its budget. Both sides then
   cover exactly ``response[:c]`` (recorded as :attr:`EncodedPair.covered_chars`) and get **no EOS**
   (the response did not end there). ``EncodedPair.response`` stays the full text.
4. If no such ``c > 0`` exists, the example is dropped (``encode_pair`` returns ``None``; counted).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from dwakd.data.batch import IGNORE_INDEX
from dwakd.data.prompts import format_prompt
from dwakd.data.records import Record
from dwakd.data.tokenization import (
    SideTokenizer,
    Span,
    _tokenize_prompts,
    _tokenize_responses,
    canonical_spans,
    prompt_ids,
    response_tokens,
    side_tokenizer,
)
from dwakd.errors import ConfigError

__all__ = [
    "EncodeStats",
    "EncodedDataset",
    "EncodedPair",
    "EncodedSide",
    "SideTokenizer",
    "Span",
    "canonical_spans",
    "common_cut",
    "encode_dataset",
    "encode_pair",
    "encode_record",
    "prompt_ids",
    "response_tokens",
    "side_tokenizer",
]


# --------------------------------------------------------------------------- results
@dataclass
class EncodedSide:
    """One model's tokens for one example (lists of Python ints).

    ``prompt_length``: tokens before the first response token (BOS and prompt).
    ``response_spans``: one ``(start, end)`` per response token (EOS included when present).
    """

    input_ids: list[int]
    labels: list[int]
    response_spans: list[Span]
    prompt_length: int

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.prompt_length :]

    @property
    def prompt_ids(self) -> list[int]:
        return self.input_ids[: self.prompt_length]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedPair:
    """Both tokenizations of one example.

    ``response``: the full response text (spans index into it). ``covered_chars``: the length of
    the response prefix both sides cover (``len(response)`` unless truncated). ``has_eos``: both
    sides end with the appended EOS (False exactly when the response was truncated).
    ``prompt_truncated``: ``(student, teacher)``. ``index``: position of the source record.
    """

    student: EncodedSide
    teacher: EncodedSide
    response: str
    covered_chars: int
    response_truncated: bool = False
    prompt_truncated: tuple[bool, bool] = (False, False)
    index: int | None = None

    @property
    def has_eos(self) -> bool:
        return not self.response_truncated


@dataclass
class EncodeStats:
    """Counters of a dataset encoding. ``dropped``: no response token survived truncation."""

    records: int = 0
    encoded: int = 0
    dropped: int = 0
    response_truncated: int = 0
    student_prompt_truncated: int = 0
    teacher_prompt_truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.encoded}/{self.records} records encoded, {self.dropped} dropped (response would not fit), "
            f"{self.response_truncated} responses truncated, prompts truncated: "
            f"{self.student_prompt_truncated} student / {self.teacher_prompt_truncated} teacher"
        )


@dataclass
class EncodedDataset:
    """``examples`` (each with ``index`` = its record's position) and the :class:`EncodeStats`."""

    examples: list[EncodedPair]
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


# --------------------------------------------------------------------------- assembly
def _cut_points(spans: list[Span], budget: int) -> dict[int, int]:
    """``c -> k``: the side can keep its first ``k`` tokens (``1 <= k <= budget``) covering exactly
    ``[0, c)`` with no character split (smallest such ``k`` per ``c``)."""
    cuts: dict[int, int] = {}
    n = len(spans)
    for k in range(1, min(budget, n) + 1):
        c = spans[k - 1][1]
        if c > 0 and c not in cuts and (k == n or spans[k][0] >= c):
            cuts[c] = k
    return cuts


def common_cut(student_spans: list[Span], student_budget: int, teacher_spans: list[Span], teacher_budget: int):
    """``(c, k_student, k_teacher)`` for the largest shared cut position ``c > 0``, or ``None``."""
    s_cuts = _cut_points(student_spans, student_budget)
    t_cuts = _cut_points(teacher_spans, teacher_budget)
    if len(t_cuts) < len(s_cuts):
        s_cuts, t_cuts, swapped = t_cuts, s_cuts, True
    else:
        swapped = False
    best = None
    for c, k in s_cuts.items():
        if c in t_cuts and (best is None or c > best[0]):
            best = (c, k, t_cuts[c])
    if best is None:
        return None
    c, k_a, k_b = best
    return (c, k_b, k_a) if swapped else (c, k_a, k_b)


def _side(prompt: list[int], ids: list[int], spans: list[Span], eos: int | None, length: int) -> EncodedSide:
    r_ids = list(ids)
    r_spans = list(spans)
    if eos is not None:
        r_ids.append(eos)
        r_spans.append((length, length))
    return EncodedSide(prompt + r_ids, [IGNORE_INDEX] * len(prompt) + r_ids, r_spans, len(prompt))


def _assemble(
    response: str,
    student: tuple[list[int], bool, list[int], list[Span]],
    teacher: tuple[list[int], bool, list[int], list[Span]],
    infos: tuple[SideTokenizer, SideTokenizer],
    max_length: int,
    stats: EncodeStats | None,
    index: int | None,
) -> EncodedPair | None:
    (sp, s_ptrunc, s_ids, s_spans), (tp, t_ptrunc, t_ids, t_spans) = student, teacher
    if stats is not None:
        stats.records += 1
        stats.student_prompt_truncated += s_ptrunc
        stats.teacher_prompt_truncated += t_ptrunc
    s_budget = max_length - len(sp) - 1
    t_budget = max_length - len(tp) - 1
    n = len(response)
    if len(s_ids) <= s_budget and len(t_ids) <= t_budget:
        pair = EncodedPair(
            _side(sp, s_ids, s_spans, infos[0].eos_id, n),
            _side(tp, t_ids, t_spans, infos[1].eos_id, n),
            response, n, False, (s_ptrunc, t_ptrunc), index,
        )
    else:
        cut = common_cut(s_spans, s_budget, t_spans, t_budget)
        if cut is None:
            if stats is not None:
                stats.dropped += 1
            return None
        c, ks, kt = cut
        pair = EncodedPair(
            _side(sp, s_ids[:ks], s_spans[:ks], None, n),
            _side(tp, t_ids[:kt], t_spans[:kt], None, n),
            response, c, True, (s_ptrunc, t_ptrunc), index,
        )
        if stats is not None:
            stats.response_truncated += 1
    if stats is not None:
        stats.encoded += 1
    return pair


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 (one prompt or BOS token and EOS); got {max_length}")
    if max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be at least 1; got {max_prompt_length}")


def encode_pair(
    prompt: str,
    response: str,
    student_tokenizer,
    teacher_tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    teacher_prompt: str | None = None,
    stats: EncodeStats | None = None,
    index: int | None = None,
) -> EncodedPair | None:
    """Tokenize one example for both models (rules in the module doc).

    ``prompt`` is the student's **already formatted** prompt text (see
    :func:`dwakd.data.prompts.format_prompt`, or use :func:`encode_record`, which formats per side);
    ``teacher_prompt`` is the teacher's (default: the same text). ``response`` is the raw response
    text, identical on both sides. ``max_length``: tokens per side (BOS + prompt + response + EOS);
    ``max_prompt_length``: tokens of BOS + prompt. Returns ``None`` when no response token survives
    truncation (counted in ``stats`` when given).
    """
    _check_lengths(max_length, max_prompt_length)
    teacher_prompt = prompt if teacher_prompt is None else teacher_prompt
    s_info, t_info = side_tokenizer(student_tokenizer), side_tokenizer(teacher_tokenizer)
    sp, s_tr = _tokenize_prompts([prompt], student_tokenizer, max_prompt_length)[0]
    tp, t_tr = _tokenize_prompts([teacher_prompt], teacher_tokenizer, max_prompt_length)[0]
    s_ids, s_spans = response_tokens(response, student_tokenizer)
    t_ids, t_spans = response_tokens(response, teacher_tokenizer)
    return _assemble(response, (sp, s_tr, s_ids, s_spans), (tp, t_tr, t_ids, t_spans), (s_info, t_info),
                     max_length, stats, index)


def encode_record(
    record: Record,
    student_tokenizer,
    teacher_tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    student_chat_template: bool = False,
    teacher_chat_template: bool = False,
    stats: EncodeStats | None = None,
    index: int | None = None,
) -> EncodedPair | None:
    """:func:`encode_pair` of a :class:`~dwakd.data.records.Record`, each side's prompt formatted
    with :func:`~dwakd.data.prompts.format_prompt` (its chat template when asked and available)."""
    return encode_pair(
        format_prompt(record, student_tokenizer, chat_template=student_chat_template, max_tokens=max_prompt_length),
        record.response,
        student_tokenizer,
        teacher_tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        teacher_prompt=format_prompt(record, teacher_tokenizer, chat_template=teacher_chat_template,
                                     max_tokens=max_prompt_length),
        stats=stats,
        index=index,
    )


def encode_dataset(
    records: Iterable[Record],
    student_tokenizer,
    teacher_tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    student_chat_template: bool = False,
    teacher_chat_template: bool = False,
    batch_size: int = 256,
) -> EncodedDataset:
    """Encode many records (same result as :func:`encode_record` on each, in order).

    Texts are tokenized ``batch_size`` records at a time through the fast tokenizers' batch
    path; a tokenizer used on both sides is run once. Dropped records are counted, never silent.
    """
    _check_lengths(max_length, max_prompt_length)
    records = list(records)
    infos = (side_tokenizer(student_tokenizer), side_tokenizer(teacher_tokenizer))
    same = student_tokenizer is teacher_tokenizer
    stats = EncodeStats()
    out: list[EncodedPair] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        responses = [r.response for r in chunk]
        s_prompts = [format_prompt(r, student_tokenizer, chat_template=student_chat_template,
                                   max_tokens=max_prompt_length) for r in chunk]
        t_prompts = [format_prompt(r, teacher_tokenizer, chat_template=teacher_chat_template,
                                   max_tokens=max_prompt_length) for r in chunk]
        s_p = _tokenize_prompts(s_prompts, student_tokenizer, max_prompt_length)
        t_p = s_p if same and s_prompts == t_prompts else _tokenize_prompts(t_prompts, teacher_tokenizer, max_prompt_length)
        s_r = _tokenize_responses(responses, student_tokenizer)
        t_r = s_r if same else _tokenize_responses(responses, teacher_tokenizer)
        for k, resp in enumerate(responses):
            pair = _assemble(resp, (*s_p[k], *s_r[k]), (*t_p[k], *t_r[k]), infos, max_length, stats, start + k)
            if pair is not None:
                out.append(pair)
    return EncodedDataset(out, stats)

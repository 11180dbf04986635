"""Dual tokenization: one example, two tokenizers, character spans of every response token.

Layout of one side (:class:`EncodedSide`): ``input_ids = [BOS?] + prompt + response (+ EOS)``,
``labels`` = ``IGNORE_INDEX`` on ``[BOS?] + prompt`` and equal to ``input_ids`` on the response
tokens and the appended EOS (Hugging Face convention; the collator shifts them).

Tokenization. The prompt and the response are tokenized **separately** on each side, both with
``add_special_tokens=False``, so no token crosses the prompt/response boundary (with byte-level
BPE a leading space of the response stays inside the response). Special-token text inside the
*response* is tokenized as plain text (``split_special_tokens=True``): a response that contains
``"</s>"`` does not yield a real EOS (unless the tokenizer's *model* vocabulary itself holds the
special piece, as a Unigram trained with its special tokens does). The prompt is tokenized with
special tokens recognised (chat templates write them as text). BOS: prepended only when the tokenizer itself prepends one
(:func:`dwakd.models.vocab_facts` ``adds_bos``) and the prompt does not already start with it (a chat
template may write BOS text), so it is never doubled. EOS (the tokenizer's ``eos_token``, else its
``sep_token``) is appended after a complete response and is a response token.

Spans (``response_spans``, one ``(start, end)`` per response token, character offsets into the
response string). Raw spans come from the tokens' own bytes for byte-level BPE (exact, also where a
vocabulary lacks a byte and the tokenizer silently drops it, which shifts fast tokenizers' offsets;
used when the tokenizer's normaliser leaves the text unchanged), else from the fast tokenizer's
offset mapping; then they are made canonical:

1. Offsets are clamped to ``[0, len(response)]``; starts and ends are made non-decreasing (a safety
   net: real tokenizers already give monotone offsets).
2. Leading whitespace is removed from a token's span when the token also covers non-whitespace
   text, so ``"Ġhello"`` (byte-level), ``"▁hello"`` (Metaspace) and ``"hello"`` (WordPiece,
   which never covers spaces) all get the span of ``hello``. A whitespace-only token keeps its span.
   The whitespace is not removed when the token's first character is shared with the previous
   token (case 3). A token made only of Metaspace markers (``"▁"``) whose offsets overlap the next
   token's is a marker the pre-tokenizer *prepended* (fast tokenizers give it the next token's first
   character): it gets the empty span at its start.
   Combining marks that no token covers (a normaliser composed them into the previous character,
   e.g. NFC ``e`` + U+0301 -> ``é``, or dropped them, e.g. BERT accent stripping) join the span
   of the token before them.
3. **Pieces of one character** (a multi-byte UTF-8 character split by byte-level BPE, e.g. an emoji
   over three tokens; or a character a normaliser expands, e.g. NFKC ``"ﬁ"`` -> ``"f"``, ``"i"``):
   every token gets the *full* span of each character it has any part of. Such tokens overlap
   their neighbours by that character (identical spans for the inner pieces) and are never exact
   pairs (:func:`dwakd.align.exact_token_alignment` pairs only spans that overlap no other span).
4. The appended EOS gets ``(len(response), len(response))``.

Guarantees: ``0 <= start <= end <= len(response)``; starts and ends are non-decreasing; two spans
overlap only in case 3; the characters no span covers are whitespace or characters the tokenizer
drops (BERT's normaliser drops control characters; a byte-level vocabulary may lack a control byte).
So the covered substrings plus the gaps, in order, give back the response exactly.
Tokens may have empty spans (a Metaspace ``"▁"`` prepended before the first word covers no
character) besides the EOS.

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

import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from dwakd.data.batch import IGNORE_INDEX
from dwakd.data.prompts import format_prompt
from dwakd.data.records import Record
from dwakd.errors import ConfigError

Span = tuple[int, int]


# --------------------------------------------------------------------------- tokenizer facts
@dataclass(frozen=True)
class SideTokenizer:
    """What encoding needs to know about one tokenizer (computed once per tokenizer object)."""

    bos_id: int | None
    adds_bos: bool
    eos_id: int
    pad_id: int
    marker_ids: frozenset = frozenset()  # ids whose token text is only Metaspace markers "▁"
    token_bytes: tuple | None = None  # byte-level BPE only: the bytes of each id (None = not a text token)
    missing_bytes: frozenset = frozenset()  # byte-level BPE only: byte values with no token (dropped)


_INFO_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def side_tokenizer(tokenizer) -> SideTokenizer:
    """BOS/EOS/pad facts of ``tokenizer``, computed on first use and cached per tokenizer object
    (set a tokenizer's special tokens before encoding with it)."""
    try:
        cached = _INFO_CACHE.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    from dwakd.models import vocab_facts

    facts = vocab_facts(tokenizer)
    eos = facts.eos_id if facts.eos_id is not None else getattr(tokenizer, "sep_token_id", None)
    if eos is None:
        raise ConfigError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS (or SEP) token; "
            "set tokenizer.eos_token before encoding"
        )
    vocab = tokenizer.get_vocab()
    markers = frozenset(i for t, i in vocab.items() if t and not t.strip("\u2581"))
    table = _byte_level_table(tokenizer, vocab)
    missing = frozenset(range(256)) - {p[0] for p in table if p and len(p) == 1} if table else frozenset()
    info = SideTokenizer(facts.bos_id, facts.adds_bos, int(eos), facts.pad_id, markers, table, missing)
    try:
        _INFO_CACHE[tokenizer] = info
    except TypeError:
        pass
    return info


def _byte_level_table(tokenizer, vocab: dict[str, int]) -> tuple | None:
    """For a byte-level BPE tokenizer: the UTF-8 bytes each id stands for; else ``None``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in str(backend.pre_tokenizer) or "ByteLevel" not in str(backend.decoder):
        return None
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    dec = {ch: b for b, ch in bytes_to_unicode().items()}
    added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    table: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for tok, i in vocab.items():
        if i in added:
            table[i] = added[i].encode("utf-8")
        elif all(c in dec for c in tok):
            table[i] = bytes(dec[c] for c in tok)
    return tuple(table)


def _byte_offsets(text: str, ids: Sequence[int], info: SideTokenizer, tokenizer) -> list[Span] | None:
    """Raw character spans of byte-level tokens computed from their bytes (every character a token
    has a byte of), or ``None`` when the tokens cannot be matched to ``text``'s bytes (then the
    offset mapping is used). Bytes missing from the vocabulary (dropped by the tokenizer) are
    skipped. Exact where fast tokenizers' offsets go wrong (a dropped byte inside a pre-token)."""
    norm = tokenizer.backend_tokenizer.normalizer
    if norm is not None and norm.normalize_str(text) != text:
        return None
    table = info.token_bytes
    try:
        pieces = [table[i] for i in ids]
    except IndexError:
        return None
    if any(not p for p in pieces):  # not a text token (None) or no bytes
        return None
    data = text.encode("utf-8")
    bounds: list[tuple[int, int]] = []
    if b"".join(pieces) == data:
        pos = 0
        for p in pieces:
            bounds.append((pos, pos + len(p)))
            pos += len(p)
    else:  # some bytes were dropped: match the token bytes as a subsequence of the text bytes
        pos = 0
        for p in pieces:
            first = last = -1
            for byte in p:
                while pos < len(data) and data[pos] != byte:
                    if data[pos] not in info.missing_bytes:
                        return None  # not explained by dropped bytes: use the offset mapping
                    pos += 1
                if pos >= len(data):
                    return None
                first = pos if first < 0 else first
                last = pos
                pos += 1
            bounds.append((first, last + 1))
    if len(data) == len(text):  # ASCII: byte index == character index
        return bounds
    char_of = []
    for ci, ch in enumerate(text):
        char_of.extend([ci] * len(ch.encode("utf-8")))
    return [(char_of[a], char_of[b - 1] + 1) for a, b in bounds]


# --------------------------------------------------------------------------- one side
def canonical_spans(offsets: Sequence[Span], text: str, ids: Sequence[int] | None = None,
                    marker_ids: frozenset = frozenset()) -> list[Span]:
    """Canonical response spans from a fast tokenizer's offset mapping (rules 1-3 of the module doc).

    ``ids`` / ``marker_ids``: the token ids and the ids of marker-only tokens (rule 2's prepended
    ``"▁"``); without them no token is treated as a prepended marker.
    """
    n = len(text)
    out: list[Span] = []
    append = out.append
    prev_raw_end = prev_s = prev_e = 0
    check_markers = bool(marker_ids) and ids is not None
    for k, (s, e) in enumerate(offsets):
        if s < 0:
            s = 0
        elif s > n:
            s = n
        if e < s:
            e = s
        elif e > n:
            e = n
        if check_markers and ids[k] in marker_ids and k + 1 < len(offsets) and offsets[k + 1][0] < e:
            e = s  # a prepended marker: the offset mapping gave it the next token's character
        raw_e = e
        raw_nonempty = e > s
        if raw_nonempty and s >= prev_raw_end and text[s].isspace():
            t = s + 1
            while t < e and text[t].isspace():
                t += 1
            if t < e:
                s = t
        if s < prev_s:
            s = prev_s
        if e < s:
            e = s
        if e < prev_e:
            e = prev_e
        append((s, e))
        prev_s, prev_e = s, e
        if raw_nonempty and raw_e > prev_raw_end:
            prev_raw_end = raw_e
    # Combining marks no token covers (a normaliser composed or dropped them) join the token before.
    for k, (s, e) in enumerate(out):
        if s < e < n and text[e] >= "\u0300" and unicodedata.category(text[e])[0] == "M":
            limit = out[k + 1][0] if k + 1 < len(out) else n
            t = e
            while t < limit and text[t] >= "\u0300" and unicodedata.category(text[t])[0] == "M":
                t += 1
            if t > e:
                out[k] = (s, t)
    return out


def _tokenize_responses(responses: list[str], tokenizer) -> list[tuple[list[int], list[Span]]]:
    enc = tokenizer(
        responses,
        add_special_tokens=False,
        split_special_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
    info = side_tokenizer(tokenizer)
    out = []
    for ids, offs, text in zip(enc["input_ids"], enc["offset_mapping"], responses):
        if info.token_bytes is not None:
            offs = _byte_offsets(text, ids, info, tokenizer) or offs
        out.append((list(ids), canonical_spans(offs, text, ids, info.marker_ids)))
    return out


def response_tokens(response: str, tokenizer) -> tuple[list[int], list[Span]]:
    """Token ids of ``response`` (no special tokens, no EOS) and their canonical spans."""
    return _tokenize_responses([response], tokenizer)[0]


def _cut_prompt(ids: list[int], info: SideTokenizer, max_prompt_length: int | None) -> tuple[list[int], bool]:
    if info.adds_bos and info.bos_id is not None and (not ids or ids[0] != info.bos_id):
        ids = [info.bos_id, *ids]
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids, False
    if info.bos_id is not None and ids and ids[0] == info.bos_id:
        keep = max_prompt_length - 1
        return [ids[0], *(ids[len(ids) - keep :] if keep > 0 else [])], True
    return ids[len(ids) - max_prompt_length :], True


def _tokenize_prompts(prompts: list[str], tokenizer, max_prompt_length: int | None) -> list[tuple[list[int], bool]]:
    info = side_tokenizer(tokenizer)
    enc = tokenizer(prompts, add_special_tokens=False, split_special_tokens=False, return_attention_mask=False)
    return [_cut_prompt(list(ids), info, max_prompt_length) for ids in enc["input_ids"]]


def prompt_ids(prompt: str, tokenizer, max_prompt_length: int | None = None) -> list[int]:
    """Token ids of a formatted prompt as the model sees it: BOS rule, then cut from the left."""
    return _tokenize_prompts([prompt], tokenizer, max_prompt_length)[0][0]


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

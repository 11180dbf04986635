"""One side of the dual tokenization: tokenizer facts, and the tokens of one text with the
character span of every response token.

:mod:`dwakd.data.encode` assembles both sides of an example from these (sequence layout, the
appended EOS, truncation at a common cut).

Tokenization. The prompt and the response are tokenized **separately** on each side, both with
``add_special_tokens=False``, so no token crosses the prompt/response boundary (with byte-level
BPE a leading space of the response stays inside the response). Special-token text inside the
*response* is tokenized as plain text (``split_special_tokens=True``): a response that contains
``"</s>"`` does not yield a real EOS (unless the tokenizer's *model* vocabulary itself holds the
special piece, as a Unigram trained with its special tokens does). The prompt is tokenized with
special tokens recognised (chat templates write them as text). BOS: prepended only when the tokenizer itself prepends one
(:func:`dwakd.models.vocab_facts` ``adds_bos``) and the prompt does not already start with it (a chat
template may write BOS text), so it is never doubled. EOS (the tokenizer's ``eos_token``, else its
``sep_token``; :attr:`SideTokenizer.eos_id`) is appended after a complete response by
:mod:`dwakd.data.encode` and is a response token.

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
4. The appended EOS gets ``(len(response), len(response))`` (added by :mod:`dwakd.data.encode`).

Guarantees: ``0 <= start <= end <= len(response)``; starts and ends are non-decreasing; two spans
overlap only in case 3; the characters no span covers are whitespace or characters the tokenizer
drops (BERT's normaliser drops control characters; a byte-level vocabulary may lack a control byte).
So the covered substrings plus the gaps, in order, give back the response exactly.
Tokens may have empty spans (a Metaspace ``"▁"`` prepended before the first word covers no
character) besides the EOS.

Prompts (:func:`prompt_ids`): the BOS rule above, then a cut from the left to ``max_prompt_length``
tokens keeping a leading BOS (truncation rule 1 of :mod:`dwakd.data.encode`).
"""

from __future__ import annotations

import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

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

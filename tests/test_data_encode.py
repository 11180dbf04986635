"""Dual tokenization on real tokenizer pairs: spans, masks, BOS/EOS, truncation, dataset encoding.

References are independent of the code under test: byte-level spans are recomputed from each
token's bytes, WordPiece/Unigram token texts from the tokenizer's own normalisation rules, and the
truncation cut by brute force.
"""

from __future__ import annotations

import unicodedata
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_tokenizers import TOKENIZERS, bpe_student, minilm, qwen2, smollm2, unigram
from dwakd.data import IGNORE_INDEX, encode_dataset, encode_pair, encode_record, load_records, response_tokens
from dwakd.data.encode import EncodeStats
from dwakd.data.prompts import format_prompt

BYTE_LEVEL = {"smollm2", "qwen2", "bpe_student"}
PAIRS = [("bpe_student", "smollm2"), ("smollm2", "qwen2"), ("unigram", "minilm"), ("minilm", "qwen2")]

TRICKY = [
    "The capital of France is Paris.",
    " Leading space, then  two spaces and a tab\there.",
    "Line one\nLine two\n\n\nLine five\r\n",
    "Emoji 🤗🤗 and ZWJ family 👨‍👩‍👧 and flags 🇫🇷!",
    "CJK: 日本語のテキスト、中文句子。한국어",
    "Accents: café, naïve, Ångström, résumé; decomposed: cafe\u0301.",
    "Ligature ﬁne ﬂow, full-width ＡＢＣ１２３, NBSP\u00a0here, ideographic\u3000space",
    "Special-token text: </s> <|im_end|> <|endoftext|> [SEP] <s>",
    "Numbers 1234567 3.14159 and code: `x = f(y) ** 2`",
    "ends with spaces   ",
    "🤗",
    "a",
]

INTERESTING = list(" \n\t\r\u00a0\u3000éü世界🤗👍ﬁ\u0301\u200dAaZz09.,'\"-<>/|")
TEXTS = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(INTERESTING)),
    min_size=1,
    max_size=40,
)


def tok(name):
    return TOKENIZERS[name]()


def for_tokenizer(name: str, text: str) -> str:
    """Qwen2 normalises to NFC; byte-level references need the text it actually encodes."""
    return unicodedata.normalize("NFC", text) if name == "qwen2" else text


# --------------------------------------------------------------------------- references
def byte_level_reference(text: str, tokenizer, ids) -> list[tuple[int, int]]:
    """Spans from token bytes: every character a token has a byte of; leading whitespace removed
    unless the token starts inside a character (then its first character is shared)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    dec = {v: k for k, v in bytes_to_unicode().items()}
    pieces = [bytes(dec[c] for c in t) for t in tokenizer.convert_ids_to_tokens(ids)]
    data = text.encode("utf-8")
    # Bytes missing from a vocabulary are dropped by the tokenizer: find each token byte in order.
    kept, pos = [], 0
    for byte in b"".join(pieces):
        while data[pos] != byte:
            assert bytes([data[pos]]) not in pieces, "only bytes the vocabulary lacks may be dropped"
            pos += 1
        kept.append(pos)
        pos += 1
    char_of = []
    for ci, ch in enumerate(text):
        char_of += [ci] * len(ch.encode("utf-8"))
    spans, k = [], 0
    for piece in pieces:
        a, b = kept[k], kept[k + len(piece) - 1] + 1
        k += len(piece)
        s, e = char_of[a], char_of[b - 1] + 1
        mid_char = a > 0 and char_of[a - 1] == char_of[a]
        if not mid_char:
            first_non_space = next((k for k in range(s, e) if not text[k].isspace()), None)
            if first_non_space is not None:
                s = first_non_space
        spans.append((s, e))
    return spans


def bert_normal(text: str) -> str:
    """BERT uncased normalisation: drop "other" characters (C*) and U+FFFD, lowercase, NFD,
    drop combining marks."""
    kept = "".join(c for c in text if unicodedata.category(c)[0] != "C" and c != "\ufffd")
    return "".join(c for c in unicodedata.normalize("NFD", kept.lower()) if unicodedata.category(c) != "Mn")


def deletable(name: str, ch: str) -> bool:
    """Characters a tokenizer's normaliser may drop without a token (besides whitespace)."""
    if ch.isspace():
        return True
    cat = unicodedata.category(ch)
    if name == "minilm":  # BertNormalizer: clean_text drops controls/format chars; strip_accents drops marks
        return cat in ("Cc", "Cf", "Mn", "Co", "Cn", "Zs", "Zl", "Zp") or ch == "\ufffd" or ch == "\x00"
    if name in ("unigram", "qwen2") and cat in ("Mn", "Mc", "Me"):  # NFKC / NFC fold marks
        return True
    if name in BYTE_LEVEL:  # a character whose bytes the vocabulary lacks is dropped
        return all(b in missing_bytes(name) for b in ch.encode("utf-8"))
    return False


@cache
def missing_bytes(name: str) -> frozenset:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = tok(name).get_vocab()
    return frozenset(b for b, c in bytes_to_unicode().items() if c not in vocab)


def check_spans(name: str, text: str, ids, spans) -> None:
    """Invariants every tokenizer's spans must satisfy (module doc of dwakd.data.encode)."""
    n = len(text)
    assert len(spans) == len(ids)
    prev = (0, 0)
    for s, e in spans:
        assert 0 <= s <= e <= n
        assert s >= prev[0] and e >= prev[1], "spans must be monotone"
        prev = (s, e)
    covered = [0] * n
    for s, e in spans:
        for c in range(s, e):
            covered[c] += 1
    for k in range(len(spans) - 1):
        e0, s1 = spans[k][1], spans[k + 1][0]
        if e0 > s1:  # overlap only as pieces of one non-ASCII character
            assert e0 - s1 <= 1 and all(ord(ch) > 127 for ch in text[s1:e0]), (text, spans)
    for c, ch in enumerate(text):
        if not covered[c]:
            assert deletable(name, ch), f"{name}: char {ch!r} at {c} is in no span of {text!r}"
    # covered substrings plus gaps, in order, give back the text
    rebuilt, pos = [], 0
    for s, e in spans:
        if e > pos:
            rebuilt.append(text[pos:max(pos, s)])
            rebuilt.append(text[max(pos, s):e])
            pos = e
    rebuilt.append(text[pos:])
    assert "".join(rebuilt) == text


def clean_indices(spans):
    """Indices whose non-empty span overlaps no other span (naive double loop)."""
    out = []
    for i, (s, e) in enumerate(spans):
        if e > s and all(min(e, e2) - max(s, s2) <= 0 for k, (s2, e2) in enumerate(spans) if k != i and e2 > s2):
            out.append(i)
    return out


def check_token_texts(name: str, text: str, tokenizer, ids, spans) -> None:
    """A clean span's text is the token's own text (space markers and leading whitespace aside)."""
    toks = tokenizer.convert_ids_to_tokens(ids)
    for i in clean_indices(spans):
        s, e = spans[i]
        piece = text[s:e]
        if name in BYTE_LEVEL:
            decoded = tokenizer.convert_tokens_to_string([toks[i]])
            piece = "".join(c for c in piece if not all(b in missing_bytes(name) for b in c.encode("utf-8")))
            assert decoded.lstrip() == piece.lstrip() or decoded == piece, (toks[i], piece)
        elif name == "minilm":
            if toks[i] != "[UNK]":
                assert toks[i].removeprefix("##") == bert_normal(piece), (toks[i], piece)
        elif name == "unigram":
            if toks[i] != "<unk>":
                # Metaspace cannot tell a literal "▁" in the text from a space
                want = unicodedata.normalize("NFKC", piece).replace("▁", " ").strip()
                assert toks[i].replace("▁", " ").strip() == want, (toks[i], piece)


# --------------------------------------------------------------------------- response spans
@pytest.mark.parametrize("name", sorted(BYTE_LEVEL))
@pytest.mark.parametrize("text", TRICKY)
def test_byte_level_spans_match_the_bytes(name, text):
    text = for_tokenizer(name, text)
    ids, spans = response_tokens(text, tok(name))
    assert spans == byte_level_reference(text, tok(name), ids)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("text", TRICKY)
def test_spans_cover_the_response_on_every_tokenizer(name, text):
    text = for_tokenizer(name, text)
    ids, spans = response_tokens(text, tok(name))
    check_spans(name, text, ids, spans)
    check_token_texts(name, text, tok(name), ids, spans)


def test_known_spans_by_hand():
    text = " Hi 🤗"
    ids, spans = response_tokens(text, smollm2())
    assert smollm2().convert_ids_to_tokens(ids) == ["ĠHi", "ĠðŁ", "¤", "Ĺ"]
    # "ĠHi" loses its space; the three emoji pieces all get the emoji's span (4, 5).
    assert spans == [(1, 3), (4, 5), (4, 5), (4, 5)]
    ids, spans = response_tokens("Café au lait", minilm())
    assert minilm().convert_ids_to_tokens(ids) == ["cafe", "au", "lai", "##t"]
    assert spans == [(0, 4), (5, 7), (8, 11), (11, 12)]
    # A decomposed accent: BERT drops the mark; it joins the span of "cafe".
    ids, spans = response_tokens("Cafe\u0301 x", minilm())
    assert minilm().convert_ids_to_tokens(ids) == ["cafe", "x"]
    assert spans == [(0, 5), (6, 7)]
    # A Metaspace "▁" prepended before the first word covers no character.
    ids, spans = response_tokens("Line one", unigram())
    assert unigram().convert_ids_to_tokens(ids)[:2] == ["▁", "L"]
    assert spans[:2] == [(0, 0), (0, 1)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_property_spans_on_random_unicode(text):
    for name in sorted(TOKENIZERS):
        t = for_tokenizer(name, text)
        ids, spans = response_tokens(t, tok(name))
        check_spans(name, t, ids, spans)
        check_token_texts(name, t, tok(name), ids, spans)
        if name in BYTE_LEVEL:
            assert spans == byte_level_reference(t, tok(name), ids)


# --------------------------------------------------------------------------- masks, BOS, EOS
def expected_side(tokenizer, prompt, response):
    from dwakd.models import vocab_facts

    facts = vocab_facts(tokenizer)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if facts.adds_bos and (not p or p[0] != facts.bos_id):
        p = [facts.bos_id, *p]
    r = tokenizer(response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    eos = facts.eos_id if facts.eos_id is not None else tokenizer.sep_token_id
    return p, r + [eos]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("text", TRICKY)
def test_labels_cover_exactly_the_response_and_eos(pair, text):
    s_name, t_name = pair
    prompt = "### Instruction:\nSay something.\n\n### Response:\n"
    enc = encode_pair(prompt, text, tok(s_name), tok(t_name), max_length=4096, max_prompt_length=1024)
    assert enc is not None and enc.has_eos and enc.covered_chars == len(text) and enc.response == text
    for side, name in ((enc.student, s_name), (enc.teacher, t_name)):
        p, r = expected_side(tok(name), prompt, text)
        assert side.input_ids == p + r
        assert side.labels == [IGNORE_INDEX] * len(p) + r
        assert side.prompt_length == len(p)
        assert side.response_spans[-1] == (len(text), len(text))
        assert side.attention_mask == [1] * len(p + r)


def test_special_token_text_in_the_response_is_plain_text():
    text = "stop </s> here <|im_end|> [SEP]"
    for name in TOKENIZERS:
        t = tok(name)
        enc = encode_pair("Q: ", text, t, t, max_length=512, max_prompt_length=64)
        eos = enc.student.input_ids[-1]
        assert eos not in enc.student.response_ids[:-1], name


def test_bos_added_once_also_when_the_chat_template_writes_it():
    from conftest import fixture_texts
    from dwakd.data.records import Record
    from dwakd.models import train_tokenizer

    t = train_tokenizer(fixture_texts(), kind="bpe", vocab_size=400, add_bos=True)
    t.chat_template = "<s>{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    rec = Record("dolly", "Blue.", instruction="Name a colour.")
    bos = t.bos_token_id
    for chat in (False, True):
        enc = encode_record(rec, t, smollm2(), max_length=256, max_prompt_length=128, student_chat_template=chat)
        assert enc.student.input_ids[0] == bos and enc.student.input_ids.count(bos) == 1
        assert smollm2().bos_token_id not in enc.teacher.input_ids  # SmolLM2 adds no BOS
    chat_ids = encode_record(rec, t, t, max_length=256, max_prompt_length=128, student_chat_template=True).student
    assert chat_ids.prompt_ids == t(t.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                                            tokenize=False, add_generation_prompt=True),
                                      add_special_tokens=False)["input_ids"]


def test_per_side_prompts_and_identical_response():
    from dwakd.data.records import Record

    rec = Record("dolly", "Paris.", instruction="Capital of France?")
    enc = encode_record(rec, bpe_student(), qwen2(), max_length=256, max_prompt_length=128, teacher_chat_template=True)
    t_prompt = qwen2().decode(enc.teacher.prompt_ids)
    assert t_prompt == "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    s_prompt = bpe_student().decode(enc.student.prompt_ids[1:])
    assert s_prompt == format_prompt(rec)
    assert qwen2().decode(enc.teacher.response_ids[:-1]) == "Paris."
    assert bpe_student().decode(enc.student.response_ids[:-1]) == "Paris."


# --------------------------------------------------------------------------- truncation
def full_spans(name, text):
    return response_tokens(text, tok(name))[1]


def brute_force_cut(s_spans, s_budget, t_spans, t_budget):
    """Largest c > 0 such that both sides have a clean token boundary at c within budget."""

    def cuts(spans, budget):
        found = {}
        for k in range(1, min(budget, len(spans)) + 1):
            c = spans[k - 1][1]
            if c <= 0:
                continue
            if all(e <= c for _, e in spans[:k]) and all(s >= c for s, _ in spans[k:]) and c not in found:
                found[c] = k
        return found

    a, b = cuts(s_spans, s_budget), cuts(t_spans, t_budget)
    common = sorted(set(a) & set(b))
    return (common[-1], a[common[-1]], b[common[-1]]) if common else None


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("max_length", [8, 12, 20, 40, 200])
def test_response_truncation_cuts_both_sides_at_the_same_character(pair, max_length):
    s_name, t_name = pair
    text = "Sunlight scatters off air molecules; blue light (短波长) scatters most 🤗, so the sky looks blue."
    prompt = "Q:"
    enc = encode_pair(prompt, text, tok(s_name), tok(t_name), max_length=max_length, max_prompt_length=4)
    sides = ((s_name, enc.student if enc else None), (t_name, enc.teacher if enc else None))
    budgets = []
    for name, _ in sides:
        p, _r = expected_side(tok(name), prompt, text)
        budgets.append(max_length - len(p) - 1)
    s_spans, t_spans = full_spans(s_name, text), full_spans(t_name, text)
    if len(s_spans) <= budgets[0] and len(t_spans) <= budgets[1]:
        assert enc.has_eos and enc.covered_chars == len(text)
        return
    ref = brute_force_cut(s_spans, budgets[0], t_spans, budgets[1])
    if ref is None:
        assert enc is None
        return
    c, ks, kt = ref
    assert enc.response_truncated and not enc.has_eos and enc.covered_chars == c
    for (name, side), k in zip(sides, (ks, kt)):
        full_ids, spans = response_tokens(text, tok(name))
        assert side.response_ids == full_ids[:k]
        assert side.response_spans == spans[:k]
        assert len(side.input_ids) <= max_length
        assert all(lab == IGNORE_INDEX for lab in side.labels[: side.prompt_length])
        assert side.labels[side.prompt_length :] == side.response_ids


def test_prompt_is_cut_from_the_left_keeping_bos():
    prompt = " ".join(f"word{i}" for i in range(60))
    for name in ("bpe_student", "smollm2"):
        t = tok(name)
        stats = EncodeStats()
        enc = encode_pair(prompt, "Yes.", t, t, max_length=64, max_prompt_length=10, stats=stats)
        full = t(prompt, add_special_tokens=False)["input_ids"]
        if name == "bpe_student":  # adds BOS: BOS + the last 9 prompt tokens
            assert enc.student.prompt_ids == [t.bos_token_id, *full[-9:]]
        else:
            assert enc.student.prompt_ids == full[-10:]
        assert enc.has_eos and stats.student_prompt_truncated == 1 and stats.teacher_prompt_truncated == 1


def test_exact_fit_keeps_eos_and_one_less_truncates():
    s, t = bpe_student(), smollm2()
    text = "Red, yellow and blue."
    p_s, r_s = expected_side(s, "Q:", text)
    p_t, r_t = expected_side(t, "Q:", text)
    need = max(len(p_s) + len(r_s), len(p_t) + len(r_t))
    enc = encode_pair("Q:", text, s, t, max_length=need, max_prompt_length=8)
    assert enc.has_eos and max(len(enc.student), len(enc.teacher)) == need
    enc = encode_pair("Q:", text, s, t, max_length=need - 1, max_prompt_length=8)
    assert enc is not None and enc.response_truncated and enc.covered_chars < len(text)


def test_response_that_cannot_fit_is_dropped_and_counted():
    stats = EncodeStats()
    prompt = " ".join(["many words here"] * 20)
    out = encode_pair(prompt, "An answer.", bpe_student(), smollm2(), max_length=9, max_prompt_length=8, stats=stats)
    assert out is None
    assert stats.as_dict() == {"records": 1, "encoded": 0, "dropped": 1, "response_truncated": 0,
                               "student_prompt_truncated": 1, "teacher_prompt_truncated": 1}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, max_length=st.integers(min_value=3, max_value=24))
def test_property_truncation_on_random_unicode(text, max_length):
    s_name, t_name = "smollm2", "unigram"
    enc = encode_pair("P", text, tok(s_name), tok(t_name), max_length=max_length, max_prompt_length=2)
    s_full, t_full = response_tokens(text, tok(s_name)), response_tokens(text, tok(t_name))
    budgets = [max_length - len(expected_side(tok(n), "P", text)[0]) - 1 for n in (s_name, t_name)]
    if len(s_full[0]) <= budgets[0] and len(t_full[0]) <= budgets[1]:
        assert enc is not None and enc.has_eos
        return
    ref = brute_force_cut(s_full[1], budgets[0], t_full[1], budgets[1])
    if ref is None:
        assert enc is None
    else:
        assert (enc.covered_chars, len(enc.student.response_ids), len(enc.teacher.response_ids)) == ref


# --------------------------------------------------------------------------- datasets of records
def test_encode_dataset_matches_encode_record_and_counts(tiny_dolly_path):
    records = load_records(tiny_dolly_path).records
    records.append(records[0].__class__("dolly", "word " * 200, instruction="Long one"))
    s, t = unigram(), qwen2()
    kw = dict(max_length=48, max_prompt_length=32, teacher_chat_template=True)
    ds = encode_dataset(records, s, t, batch_size=5, **kw)
    one_by_one = [encode_record(r, s, t, index=k, **kw) for k, r in enumerate(records)]
    assert ds.examples == [e for e in one_by_one if e is not None]
    st_ = ds.stats
    assert st_.records == len(records) and st_.encoded == len(ds.examples)
    assert st_.dropped == sum(e is None for e in one_by_one)
    assert st_.response_truncated == sum(1 for e in one_by_one if e is not None and e.response_truncated) >= 1
    assert [e.index for e in ds.examples] == [k for k, e in enumerate(one_by_one) if e is not None]


def test_same_tokenizer_both_sides_in_dataset(tiny_dolly_path):
    records = load_records(tiny_dolly_path).records
    s = smollm2()
    ds = encode_dataset(records, s, s, max_length=128, max_prompt_length=64)
    for e in ds:
        assert e.student == e.teacher


def test_qwen2_test_tokenizer_matches_tiktoken():
    """The Qwen2 tokenizer the tests build from qwen.tiktoken encodes like tiktoken itself."""
    tiktoken = pytest.importorskip("tiktoken")
    from _data_tokenizers import QWEN2_PATTERN, qwen2_ranks

    enc = tiktoken.Encoding("qwen2", pat_str=QWEN2_PATTERN, mergeable_ranks=qwen2_ranks(), special_tokens={})
    for text in TRICKY[:-3]:
        text = unicodedata.normalize("NFC", text)
        assert qwen2()(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == enc.encode(text)

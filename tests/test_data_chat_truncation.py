"""Prompt truncation with a chat template cuts the user's content at a word boundary, never the template."""

from __future__ import annotations

from dwakd.data import Record, encode_record, format_prompt


def test_long_user_content_is_cut_not_the_template(tiny_teacher):
    _, tok = tiny_teacher  # has a chat template
    words = [f"w{i}" for i in range(400)]
    rec = Record("dolly", "answer", instruction="Summarise: " + " ".join(words), context=None)
    full = tok.apply_chat_template([{"role": "user", "content": rec.instruction}], tokenize=False, add_generation_prompt=True)
    head, tail = full.split(rec.instruction)  # the template's own text around the content
    text = format_prompt(rec, tok, chat_template=True, max_tokens=64)
    assert text.startswith(head) and text.endswith(tail)  # template intact, generation prompt kept
    kept = text[len(head): len(text) - len(tail)]
    assert kept and rec.instruction.endswith(kept) and kept.split()[0] in words  # the end kept, whole words
    n = len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + a BOS the encoder may add
    assert n <= 64
    # one more word would not fit: the cut is as small as possible
    i = rec.instruction.rindex(kept)
    longer = rec.instruction[rec.instruction.rstrip()[:i - 1].rfind(" ") + 1:]
    more = tok.apply_chat_template([{"role": "user", "content": longer}], tokenize=False, add_generation_prompt=True)
    assert len(tok(more, add_special_tokens=False)["input_ids"]) + 1 > 64
    # the encoder then has nothing left to cut: the prompt ids are exactly the fitted text's
    ex = encode_record(rec, tok, tok, max_length=96, max_prompt_length=64, student_chat_template=True,
                       teacher_chat_template=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ex.student.prompt_ids[-len(ids):] == ids and not any(ex.prompt_truncated)


def test_short_prompts_are_unchanged(tiny_teacher):
    _, tok = tiny_teacher
    rec = Record("dolly", "a", instruction="Hi there", context="ctx")
    assert format_prompt(rec, tok, chat_template=True, max_tokens=256) == format_prompt(rec, tok, chat_template=True)

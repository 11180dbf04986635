"""Per-side prompt text. The response text is never touched here: it is identical on both sides.

Rules (each model gets its own prompt; :func:`format_prompt`):

- ``chat_template=True`` and the tokenizer has a chat template: the template applied to the
  record's user turn (or, for chat records, to every turn before the response) with
  ``add_generation_prompt=True``. The user turn is ``instruction`` plus ``"\\n\\n" + context``
  when there is a context; a MiniLLM record without ``instruction`` uses its ``prompt`` text.
- otherwise the plain Dolly/MiniLLM template (:data:`PLAIN_TEMPLATE`, :data:`PLAIN_TEMPLATE_NO_INPUT`),
  except that a MiniLLM record's ``prompt`` is already formatted and is used verbatim. A chat
  record in the plain template: a single user turn is the instruction; several turns are written
  as ``"<role>: <content>"`` paragraphs and that text is the instruction. System messages are
  part of the instruction text in the plain template.

Truncation with a chat template (``max_tokens``) shortens the last user message from the left at a
word boundary until the rendered prompt fits: the template's markers and the generation prompt are
never cut (a plain prompt is cut from the left by the encoder, keeping ``### Response:``).

Asking for a chat template on a tokenizer that has none falls back to the plain template (logged
once per tokenizer).
"""

from __future__ import annotations

import logging

from dwakd.data.records import Record

log = logging.getLogger(__name__)

#: The plain template with an input (Dolly ``context`` / Alpaca and MiniLLM ``input``).
PLAIN_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
#: The plain template without an input.
PLAIN_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

_FALLBACK_REPORTED: set[int] = set()


def plain_prompt(instruction: str, context: str | None = None) -> str:
    """The Dolly/MiniLLM plain prompt (with the input section only when ``context`` is non-empty)."""
    if context:
        return PLAIN_TEMPLATE.format(instruction=instruction, context=context)
    return PLAIN_TEMPLATE_NO_INPUT.format(instruction=instruction)


def user_message(record: Record) -> str:
    """The text of the user turn for a non-chat record (see the module doc)."""
    if record.instruction is not None:
        return record.instruction + (f"\n\n{record.context}" if record.context else "")
    return record.prompt or ""


def chat_messages(record: Record) -> list[dict[str, str]]:
    """The turns before the response, as chat-template messages."""
    if record.messages is not None:
        return [dict(m) for m in record.messages]
    return [{"role": "user", "content": user_message(record)}]


def _plain_chat_instruction(messages: list[dict[str, str]]) -> str:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _n_tokens(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return len(ids) + (1 if bos is not None and (not ids or ids[0] != bos) else 0)  # room for a BOS the encoder may add


def _fit_chat(messages: list[dict[str, str]], tokenizer, max_tokens: int) -> str:
    """The chat-template prompt within ``max_tokens``: the last user message's content is cut from the
    left at a word boundary (its end is kept, like the left truncation of plain prompts); the template's
    own tokens are never cut."""
    def render(msgs):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    text = render(messages)
    if _n_tokens(tokenizer, text) <= max_tokens:
        return text
    idx = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    content = messages[idx]["content"]
    starts = [0] + [i + 1 for i, ch in enumerate(content) if ch.isspace() and i + 1 < len(content)
                    and not content[i + 1].isspace()]

    def with_start(k: int) -> str:
        msgs = [dict(m) for m in messages]
        msgs[idx]["content"] = content[starts[k]:] if k < len(starts) else ""
        return render(msgs)

    lo, hi = 0, len(starts)  # find the smallest k whose render fits (k = len(starts): empty content)
    while lo < hi:
        mid = (lo + hi) // 2
        if _n_tokens(tokenizer, with_start(mid)) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    return with_start(lo)  # may still be too long when the template alone is; the encoder then cuts it


def format_prompt(record: Record, tokenizer=None, *, chat_template: bool = False, max_tokens: int | None = None) -> str:
    """The prompt text one model sees for ``record`` (rules in the module doc). ``max_tokens``: with a
    chat template, a prompt over this many tokens is shortened by cutting the user's content (never
    the rendered template); plain prompts are cut later, from the left, by the encoder."""
    if chat_template and tokenizer is not None and has_chat_template(tokenizer):
        if max_tokens is not None:
            return _fit_chat(chat_messages(record), tokenizer, max_tokens)
        return tokenizer.apply_chat_template(chat_messages(record), tokenize=False, add_generation_prompt=True)
    if chat_template and id(tokenizer) not in _FALLBACK_REPORTED:
        _FALLBACK_REPORTED.add(id(tokenizer))
        log.info("a chat template was asked for but the tokenizer has none; using the plain template")
    if record.messages is not None:
        return plain_prompt(_plain_chat_instruction(record.messages))
    if record.prompt is not None:
        return record.prompt
    return plain_prompt(record.instruction or "", record.context)

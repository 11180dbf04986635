"""``dwakd prepare-teacher [ALIAS]``: convert a built-in teacher once and show what it is."""

from __future__ import annotations

import time

NAME = "prepare-teacher"
HELP = "convert a built-in teacher alias into a cached safetensors model and check it answers"
QUESTION = "What is the capital of France?"


def add_arguments(p) -> None:
    p.add_argument("alias", nargs="?", default="smollm2-135m-instruct", help="built-in alias (default: %(default)s)")


def run(args) -> int:
    import torch

    from dwakd.models import load_model, load_tokenizer, resolve_alias, vocab_facts

    t0 = time.time()
    path = resolve_alias(args.alias)
    t_resolve = time.time() - t0
    tok = load_tokenizer(path)
    model = load_model(path).eval()
    t_load = time.time() - t0
    facts = vocab_facts(tok, model)
    n_params = sum(p.numel() for p in model.parameters())
    if facts.has_chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    else:
        ids = tok(QUESTION, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=facts.pad_id)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().splitlines()
    print(f"model:       {args.alias}")
    print(f"path:        {path}")
    print(f"parameters:  {n_params:,}")
    print(f"vocabulary:  {facts.tokenizer_size:,} tokens (logits width {facts.logits_width:,}); "
          f"pad={facts.pad_id} eos={facts.eos_id} bos={facts.bos_id}; chat template: {facts.has_chat_template}")
    print(f"loaded in:   {t_load:.1f}s (conversion/cache check {t_resolve:.1f}s)")
    print(f"Q: {QUESTION}")
    print(f"A: {answer[0] if answer else ''}")
    return 0

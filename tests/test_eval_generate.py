"""Generation: seeds, reproducibility, batching, lengths, EOS, truncation, greedy vs transformers."""

from __future__ import annotations

import pytest
import torch

from _eval_fakes import BigramLM
from dwakd.errors import ConfigError
from dwakd.eval.generate import GenerationSettings, _filter_logits, encode_prompt, generate

PROMPTS = [
    "What is the capital of France?",
    "List three primary colours.",
    "Explain why the sky is blue.",
    "How many legs does a spider have?",
    "Name a fruit.",
]


def _ids(gens):
    return [g.token_ids for g in gens]


def test_same_seed_reproduces_and_seeds_differ(tiny_student):
    model, tok = tiny_student
    s = GenerationSettings(max_new_tokens=12, batch_size=2)
    a = generate(model, tok, PROMPTS, s, seed=10)
    b = generate(model, tok, PROMPTS, s, seed=10)
    c = generate(model, tok, PROMPTS, s, seed=20)
    assert _ids(a) == _ids(b)
    assert [g.text for g in a] == [g.text for g in b]
    # a random-init 300-token model samples almost uniformly: 5 x 12 tokens cannot all coincide
    assert _ids(a) != _ids(c)
    assert sum(x != y for x, y in zip(_ids(a), _ids(c))) >= 3


def test_samples_do_not_depend_on_batch_size_or_order(tiny_student):
    model, tok = tiny_student
    one = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=10, batch_size=1), seed=30)
    many = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=10, batch_size=5), seed=30)
    assert _ids(one) == _ids(many)
    # the same example key gives the same sample whatever its position in the list
    rev = generate(model, tok, PROMPTS[::-1], GenerationSettings(max_new_tokens=10, batch_size=3), seed=30,
                   keys=list(range(len(PROMPTS)))[::-1])
    assert _ids(rev)[::-1] == _ids(one)


def test_greedy_matches_transformers_generate(tiny_teacher):
    model, tok = tiny_teacher
    ours = generate(model, tok, PROMPTS[:3], GenerationSettings(greedy=True, max_new_tokens=8, batch_size=3))
    for prompt, g in zip(PROMPTS[:3], ours):
        ids = tok(prompt, return_tensors="pt")["input_ids"]  # the tiny teacher prepends <s>
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = ref[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert g.token_ids == new


def test_length_limits(tiny_student):
    model, tok = tiny_student
    long_prompt = " ".join(["the fox jumps over the lazy dog"] * 20)
    s = GenerationSettings(max_prompt_tokens=8, max_length=13, batch_size=2)
    gens = generate(model, tok, [long_prompt, "Name a fruit."], s, seed=1)
    short_len = len(encode_prompt(tok, "Name a fruit.", 8))
    for g, prompt_len in zip(gens, [8, short_len]):
        assert len(g.token_ids) + int(g.stopped_at_eos) <= 13 - prompt_len
    assert len(gens[0].token_ids) == 5 or gens[0].stopped_at_eos
    capped = generate(model, tok, ["Name a fruit."], GenerationSettings(max_new_tokens=3), seed=1)
    assert len(capped[0].token_ids) <= 3


def test_prompt_left_truncation_keeps_the_end_and_bos(tiny_teacher, tiny_student):
    ttok = tiny_teacher[1]
    text = "one two three four five six seven eight nine ten eleven twelve"
    full = ttok(text)["input_ids"]
    assert full[0] == ttok.bos_token_id  # the tiny teacher prepends <s>
    cut = encode_prompt(ttok, text, 6)
    assert cut == [ttok.bos_token_id] + full[-5:]
    stok = tiny_student[1]  # no BOS: plain tail
    sfull = stok(text)["input_ids"]
    assert encode_prompt(stok, text, 6) == sfull[-6:]
    # a prompt that already starts with the BOS string does not get a second one
    assert encode_prompt(ttok, "<s>" + text, 100) == full


def test_stops_at_eos(tiny_student):
    tok = tiny_student[1]
    V, eos = len(tok), tok.eos_token_id
    a, b = tok.convert_tokens_to_ids(["▁the", "▁blue"])
    assert tok.unk_token_id not in (a, b)
    table = torch.full((V, V), -30.0)
    table[:, a] = 10.0  # after anything: "▁the"
    table[a, :] = -30.0
    table[a, b] = 10.0  # after "▁the": "▁blue"
    table[b, :] = -30.0
    table[b, eos] = 10.0  # after "▁blue": EOS
    model = BigramLM(table)
    for greedy in (True, False):
        [g] = generate(model, tok, ["Name a fruit."], GenerationSettings(greedy=greedy, max_new_tokens=20), seed=3)
        assert g.token_ids == [a, b]
        assert g.stopped_at_eos
        assert g.text == "the blue"


def test_padded_logit_rows_are_never_sampled(tiny_student):
    tok = tiny_student[1]
    V = len(tok)
    table = torch.zeros(V + 20, V + 20)
    table[:, V:] = 50.0  # overwhelming mass on ids the tokenizer does not have
    gens = generate(BigramLM(table), tok, PROMPTS, GenerationSettings(max_new_tokens=6), seed=5)
    assert all(t < V for g in gens for t in g.token_ids)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.4, 0.35, 0.25], [0.2, 0.3, 0.5]]))
    kept = torch.isfinite(_filter_logits(logits, 0, 0.5))
    # nucleus 0.5: the smallest set of most likely tokens whose mass reaches 0.5
    assert kept.tolist() == [[True, True, False], [False, False, True]]
    kept = torch.isfinite(_filter_logits(logits, 1, 1.0))
    assert kept.tolist() == [[True, False, False], [False, False, True]]
    assert torch.isfinite(_filter_logits(logits, 0, 1.0)).all()


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError):
        GenerationSettings(temperature=0)
    with pytest.raises(ConfigError):
        GenerationSettings(max_prompt_tokens=512, max_length=512)
    with pytest.raises(ConfigError):
        GenerationSettings(top_p=0)

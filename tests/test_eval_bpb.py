"""Bits per byte against hand computations: a bigram model with known logits, and a real model
scored one example at a time in float64."""

from __future__ import annotations

import math

import pytest
import torch

from _eval_fakes import BigramLM
from dwakd.eval.bpb import bits_per_byte, response_bits

PROMPTS = ["What is the capital of France?", "Name a fruit.", "Say something."]
RESPONSES = ["The capital of France is Paris.", "A ripe apple.", "Café au lait — naïve."]


def hand_bits(table: torch.Tensor, seq: list[int], first: int) -> float:
    """sum over k >= first of -log2 softmax(table[seq[k-1]])[seq[k]], with math in float64."""
    total = 0.0
    for k in range(first, len(seq)):
        row = [float(v) for v in table[seq[k - 1]]]
        m = max(row)
        log_z = m + math.log(sum(math.exp(v - m) for v in row))
        total += -(row[seq[k]] - log_z) / math.log(2)
    return total


@pytest.fixture
def bigram(tiny_student):
    tok = tiny_student[1]
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(len(tok), len(tok), generator=gen) * 3
    return BigramLM(table), tok, table


@pytest.mark.parametrize("include_eos", [True, False])
def test_bigram_bits_per_byte_by_hand(bigram, include_eos):
    model, tok, table = bigram
    total_bits, total_bytes = 0.0, 0
    for prompt, resp in zip(PROMPTS, RESPONSES):
        p = tok(prompt)["input_ids"]  # the tiny student adds no special tokens
        r = tok(resp, add_special_tokens=False)["input_ids"]
        targets = r + ([tok.eos_token_id] if include_eos else [])
        total_bits += hand_bits(table, p + targets, len(p))
        total_bytes += len(resp.encode("utf-8"))
    assert total_bytes == 31 + 13 + 25  # "é", "—", "ï" take 2, 3, 2 bytes
    got = bits_per_byte(model, tok, PROMPTS, RESPONSES, include_eos=include_eos, tokens_per_batch=64)
    assert got.n_bytes == total_bytes
    assert got.bits == pytest.approx(total_bits, rel=1e-5)
    assert got.value == pytest.approx(total_bits / total_bytes, rel=1e-5)
    assert got.truncated == 0 and got.skipped == 0


def test_uniform_model_costs_log2_vocab_per_token(tiny_student):
    tok = tiny_student[1]
    V = len(tok)
    model = BigramLM(torch.zeros(V, V))
    per = response_bits(model, tok, PROMPTS, RESPONSES)
    for resp, ex in zip(RESPONSES, per):
        n_tokens = len(tok(resp, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert ex.n_tokens == n_tokens
        assert ex.bits == pytest.approx(n_tokens * math.log2(V), rel=1e-6)
        assert ex.n_bytes == len(resp.encode("utf-8"))


def test_truncated_response_counts_only_the_kept_bytes(bigram):
    model, tok, table = bigram
    prompt, resp = PROMPTS[0], RESPONSES[0]
    p = tok(prompt)["input_ids"]
    enc = tok(resp, add_special_tokens=False, return_offsets_mapping=True)
    keep = 3
    [ex] = response_bits(model, tok, [prompt], [resp], max_length=len(p) + keep)
    assert ex.truncated and ex.n_tokens == keep
    assert ex.n_bytes == len(resp[: enc["offset_mapping"][keep - 1][1]].encode("utf-8"))
    assert ex.bits == pytest.approx(hand_bits(table, p + enc["input_ids"][:keep], len(p)), rel=1e-5)


def test_empty_response_is_skipped(bigram):
    model, tok, _ = bigram
    got = bits_per_byte(model, tok, PROMPTS[:2], ["", RESPONSES[1]])
    assert got.skipped == 1 and got.n_examples == 1
    assert got.n_bytes == len(RESPONSES[1].encode("utf-8"))


def test_real_model_batched_equals_one_by_one_float64(tiny_teacher):
    """Right-padded batches give the same bits as each example run alone (log-softmax in float64)."""
    model, tok = tiny_teacher
    got = response_bits(model, tok, PROMPTS, RESPONSES, tokens_per_batch=4096)
    for prompt, resp, ex in zip(PROMPTS, RESPONSES, got):
        p = tok(prompt)["input_ids"]  # <s> prepended
        targets = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seq = torch.tensor([p + targets])
        with torch.no_grad():
            logp = model(input_ids=seq).logits[0].double().log_softmax(-1)
        expect = -sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(targets)) / math.log(2)
        assert ex.bits == pytest.approx(expect, rel=1e-4)

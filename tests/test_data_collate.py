"""Collation into PairBatch: padding, the position convention, target spans, padding side; prompts."""

from __future__ import annotations

import pytest
import torch

from _data_tokenizers import bpe_student, minilm, qwen2, smollm2, unigram
from dwakd.align.spans import exact_token_alignment
from dwakd.data import IGNORE_INDEX, PairCollator, collate_pairs, collate_prompts, encode_pair, load_records
from dwakd.data.encode import encode_dataset, prompt_ids

RESPONSES = [
    "Paris.",
    " Red, yellow and blue 🤗 — 日本語.",
    "A spider has eight legs.\nEight!",
    "Sunlight scatters off air molecules, and blue light scatters the most, so the sky looks blue.",
]


def examples(s_tok, t_tok, max_length=64):
    out = []
    for k, r in enumerate(RESPONSES):
        prompt = "Q" * (k + 1) + ":\n"
        enc = encode_pair(prompt, r, s_tok, t_tok, max_length=max_length, max_prompt_length=16)
        assert enc is not None
        out.append(enc)
    return out


PAIRS = [(bpe_student, smollm2), (unigram, qwen2), (minilm, smollm2)]


def check_side(side_batch, encoded_sides, pad_id, padding_side):
    """Row-by-row comparison with the encoded lists (plain loops)."""
    width = side_batch.input_ids.shape[1]
    for b, ex in enumerate(encoded_sides):
        n = len(ex.input_ids)
        off = 0 if padding_side == "right" else width - n
        ids = side_batch.input_ids[b].tolist()
        mask = side_batch.attention_mask[b].tolist()
        labels = side_batch.labels[b].tolist()
        for p in range(width):
            inside = off <= p < off + n
            assert ids[p] == (ex.input_ids[p - off] if inside else pad_id)
            assert mask[p] == (1 if inside else 0)
            assert labels[p] == (ex.labels[p - off] if inside else IGNORE_INDEX)
            expected_target = labels[p + 1] if p + 1 < width else IGNORE_INDEX
            assert side_batch.target_ids[b, p].item() == expected_target
            assert side_batch.target_mask[b, p].item() == (expected_target != IGNORE_INDEX)
        # the span of response token k sits at the position that predicts it
        expected_spans = {off + ex.prompt_length + k - 1: sp for k, sp in enumerate(ex.response_spans)}
        for p in range(width):
            got = tuple(side_batch.target_spans[b, p].tolist())
            assert got == expected_spans.get(p, (-1, -1)), (b, p)
            if p in expected_spans:
                # the target at p is the response token the span belongs to
                k = p - off - ex.prompt_length + 1
                assert side_batch.target_ids[b, p].item() == ex.input_ids[ex.prompt_length + k]


@pytest.mark.parametrize("make", PAIRS, ids=lambda m: f"{m[0].__name__}-{m[1].__name__}")
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collate_matches_the_examples(make, padding_side):
    s_tok, t_tok = make[0](), make[1]()
    exs = examples(s_tok, t_tok)
    batch = collate_pairs(exs, s_tok, t_tok, padding_side=padding_side)
    assert batch.student.side == "student" and batch.teacher.side == "teacher"
    assert batch.responses == RESPONSES
    assert batch.student.input_ids.shape[1] == max(len(e.student) for e in exs)
    assert batch.teacher.input_ids.shape[1] == max(len(e.teacher) for e in exs)
    check_side(batch.student, [e.student for e in exs], s_tok.pad_token_id, padding_side)
    check_side(batch.teacher, [e.teacher for e in exs], t_tok.pad_token_id, padding_side)
    # every response token incl. EOS is a target exactly once, never a prompt token
    for side, key in ((batch.student, "student"), (batch.teacher, "teacher")):
        counts = side.target_mask.sum(1).tolist()
        assert counts == [len(getattr(e, key).response_ids) for e in exs]
        assert side.num_response_tokens == sum(counts)
    # the eos span is (len, len) at the last target position of each row
    for b, r in enumerate(RESPONSES):
        last = batch.student.target_mask[b].nonzero().max().item()
        assert batch.student.target_spans[b, last].tolist() == [len(r), len(r)]


@pytest.mark.parametrize("make", PAIRS, ids=lambda m: f"{m[0].__name__}-{m[1].__name__}")
def test_padding_side_and_multiple_never_change_the_alignment(make):
    s_tok, t_tok = make[0](), make[1]()
    exs = examples(s_tok, t_tok)

    def per_example_pairs(batch):
        pairs = exact_token_alignment(batch.student.target_spans, batch.teacher.target_spans)
        out = {}
        for b, i, j in zip(pairs.batch.tolist(), pairs.student.tolist(), pairs.teacher.tolist()):
            # positions relative to the first real token of the row
            s0 = batch.student.attention_mask[b].nonzero().min().item()
            t0 = batch.teacher.attention_mask[b].nonzero().min().item()
            out.setdefault(b, []).append((i - s0, j - t0, tuple(batch.student.target_spans[b, i].tolist())))
        return out

    def unpadded_spans(side):
        rows = []
        for b in range(side.input_ids.shape[0]):
            keep = side.attention_mask[b].bool()
            rows.append(side.target_spans[b][keep].tolist())
        return rows

    right = collate_pairs(exs, s_tok, t_tok)
    left = collate_pairs(exs, s_tok, t_tok, padding_side="left")
    multiple = collate_pairs(exs, s_tok, t_tok, pad_to_multiple_of=16)
    assert multiple.student.input_ids.shape[1] % 16 == 0 and multiple.teacher.input_ids.shape[1] % 16 == 0
    ref = per_example_pairs(right)
    assert len(ref) == len(exs) and all(len(v) >= 2 for v in ref.values())
    assert per_example_pairs(left) == ref
    assert per_example_pairs(multiple) == ref
    for other in (left, multiple):
        assert unpadded_spans(other.student) == unpadded_spans(right.student)
        assert unpadded_spans(other.teacher) == unpadded_spans(right.teacher)


def test_sides_keep_their_own_ids():
    s_tok, t_tok = bpe_student(), qwen2()
    batch = collate_pairs(examples(s_tok, t_tok), s_tok, t_tok)
    assert int(batch.student.input_ids.max()) < len(s_tok)
    assert int(batch.teacher.input_ids.max()) >= len(s_tok)  # Qwen ids the student could not take
    assert torch.equal(batch.student.input_ids[batch.student.attention_mask == 0],
                       torch.full_like(batch.student.input_ids[batch.student.attention_mask == 0], s_tok.pad_token_id))


def test_collator_object_and_truncated_examples(tiny_dolly_path):
    s_tok, t_tok = unigram(), smollm2()
    ds = encode_dataset(load_records(tiny_dolly_path).records, s_tok, t_tok, max_length=40, max_prompt_length=24)
    assert ds.stats.response_truncated > 0
    batch = PairCollator(s_tok, t_tok)(ds.examples)
    check_side(batch.student, [e.student for e in ds.examples], s_tok.pad_token_id, "right")
    check_side(batch.teacher, [e.teacher for e in ds.examples], t_tok.pad_token_id, "right")
    for b, e in enumerate(ds.examples):
        spans = batch.student.target_spans[b][batch.student.target_mask[b]]
        assert int(spans[:, 1].max()) <= e.covered_chars
        assert e.has_eos == (spans[-1].tolist() == [len(e.response), len(e.response)])


def test_empty_prompt_without_bos_drops_only_the_unpredictable_first_span():
    t = smollm2()  # adds no BOS
    enc = encode_pair("", "Hello there", t, t, max_length=32, max_prompt_length=8)
    assert enc.student.prompt_length == 0
    batch = collate_pairs([enc], t, t)
    spans = batch.student.target_spans[0][batch.student.target_mask[0]].tolist()
    assert [tuple(s) for s in spans] == enc.student.response_spans[1:]


def test_collate_prompts_left_pads():
    t = bpe_student()
    prompts = ["Short.", "A somewhat longer prompt with more words in it."]
    pb = collate_prompts(prompts, t, max_prompt_length=8)
    width = pb.input_ids.shape[1]
    for b, p in enumerate(prompts):
        ids = prompt_ids(p, t, 8)
        assert pb.lengths[b].item() == len(ids) <= 8
        assert pb.input_ids[b, width - len(ids):].tolist() == ids
        assert pb.input_ids[b, : width - len(ids)].tolist() == [t.pad_token_id] * (width - len(ids))
        assert pb.attention_mask[b].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
    assert pb.input_ids[0, -1].item() == t("Short.", add_special_tokens=False)["input_ids"][-1]
    # from token ids and from encoded sides
    enc = encode_pair("Q: why?", "Because.", t, smollm2(), max_length=32, max_prompt_length=16)
    pb2 = collate_prompts([enc.student, [5, 6]], t)
    assert pb2.input_ids[0].tolist()[-len(enc.student.prompt_ids):] == enc.student.prompt_ids
    assert pb2.input_ids[1].tolist()[-2:] == [5, 6]
    with pytest.raises(ValueError, match="empty prompt"):
        collate_prompts([[]], t)

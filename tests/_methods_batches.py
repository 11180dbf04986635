"""Helpers for the method tests (sft, kd, dskd, dwakd): hand-built batches and stub models.

- :func:`side_batch` builds a :class:`SideBatch` from ``(prompt_ids, response_ids)`` per example, with
  a chosen padding side and extra padding; :func:`place` puts per-*sequence-position* features
  (one row per real token of the example) into that layout with junk in the padding, so a test can
  change the layout and check that no term changes.
- :class:`StubLM`: embedding + a small body + an untied LM head, with the Hugging Face accessors a
  method uses (``get_input_embeddings`` / ``get_output_embeddings``). :func:`stub_outputs` runs
  it on a side into :class:`ModelOutputs`, so gradient routing can be checked parameter by parameter.
- :func:`side_from_ids`, :func:`place_rows` (per-response-position logits rows with junk elsewhere),
  :func:`outputs` (ModelOutputs around logits only) and :func:`collated_batch` serve the
  logits-only baselines (ULD, MinED, MultiLevelOT).
- :func:`real_batch` tokenizes Dolly records with the data layer (encode + collate) for the
  end-to-end checks; :func:`train_losses` runs AdamW steps of a method on one fixed batch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwakd.data.batch import IGNORE_INDEX, PairBatch, SideBatch
from dwakd.models.outputs import ModelOutputs


def side_batch(side, examples, *, pad_id=0, padding_side="right", extra_pad=0, spans=None) -> SideBatch:
    """``examples``: list of ``(prompt_ids, response_ids)`` (prompt non-empty). ``spans``: optional
    per-example list of ``(start, end)`` per response token (default ``(k, k + 1)``)."""
    seqs = [list(p) + list(r) for p, r in examples]
    width = max(len(s) for s in seqs) + extra_pad
    bsz = len(examples)
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
    span_t = torch.full((bsz, width, 2), -1, dtype=torch.long)
    for b, (prompt, response) in enumerate(examples):
        n = len(prompt) + len(response)
        off = 0 if padding_side == "right" else width - n
        input_ids[b, off : off + n] = torch.tensor(seqs[b], dtype=torch.long)
        attention[b, off : off + n] = 1
        if response:
            labels[b, off + len(prompt) : off + n] = torch.tensor(list(response), dtype=torch.long)
        ex = spans[b] if spans is not None else [(k, k + 1) for k in range(len(response))]
        for k, sp in enumerate(ex):
            span_t[b, off + len(prompt) + k - 1] = torch.tensor(sp)
    target_ids = torch.full_like(labels, IGNORE_INDEX)
    target_ids[:, :-1] = labels[:, 1:]
    target_mask = target_ids != IGNORE_INDEX
    span_t[~target_mask] = -1
    return SideBatch(side, input_ids, attention, labels, target_ids, target_mask, span_t)


def place(side: SideBatch, rows, *, junk_seed=0, junk_scale=3.0) -> torch.Tensor:
    """``[B, L, F]``: ``rows[b]`` (``[n_real_b, F]``, one row per real token of example ``b``, in
    order) at that example's real positions; seeded random junk in the padding."""
    bsz, width = side.attention_mask.shape
    feat = rows[0].shape[-1]
    gen = torch.Generator().manual_seed(junk_seed)
    out = (torch.randn((bsz, width, feat), generator=gen, dtype=torch.float64) * junk_scale).to(rows[0].dtype)
    for b in range(bsz):
        pos = side.attention_mask[b].nonzero().squeeze(1)
        assert pos.numel() == rows[b].shape[0]
        out[b, pos] = rows[b]
    return out


def random_rows(examples, feat, *, seed, scale=1.0, dtype=torch.float32):
    """One ``[n_real, feat]`` tensor per example (n_real = prompt + response tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((len(p) + len(r), feat), generator=gen) * scale).to(dtype) for p, r in examples]


def pair(student: SideBatch, teacher: SideBatch, responses=None, extras=None) -> PairBatch:
    return PairBatch(student, teacher, list(responses or []), dict(extras or {}))


class StubLM(nn.Module):
    """Embedding ``[V, d]`` -> ``tanh(Linear)`` body -> untied ``Linear(d, V)`` head (no bias)."""

    def __init__(self, vocab: int, dim: int, *, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


def stub_outputs(model: StubLM, side: SideBatch) -> ModelOutputs:
    """What :func:`dwakd.models.outputs.run_model` would give for a :class:`StubLM` (position-wise)."""
    emb = model.embed(side.input_ids)
    hidden = torch.tanh(model.body(emb))
    return ModelOutputs(
        logits=model.head(hidden),
        hidden=hidden,
        input_embeds=emb,
        target_embeds=model.embed(side.target_ids.clamp(min=0)),
    )


# ----------------------------------------------------------------------------- real tokenizers
def real_batch(student_tok, teacher_tok, records, *, padding_side="right", max_length=96, max_prompt_length=48):
    """A :class:`PairBatch` of Dolly ``records`` through the data layer (encode + collate)."""
    from dwakd.data import collate_pairs, encode_record

    encoded = [
        encode_record(r, student_tok, teacher_tok, max_length=max_length, max_prompt_length=max_prompt_length)
        for r in records
    ]
    encoded = [e for e in encoded if e is not None]
    return collate_pairs(encoded, student_tok, teacher_tok, padding_side=padding_side)


def load_dolly(path, n):
    from dwakd.data import load_records

    return list(load_records(path, limit=n))


def train_losses(method, student, teacher, batch, *, steps=30, lr=3e-3):
    """Per-token total loss before each of ``steps`` AdamW steps and after the last (``steps + 1``)."""
    from dwakd.models.outputs import run_model

    params = [p for p in student.parameters() if p.requires_grad] + list(method.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    t_out = None
    if teacher is not None:
        with torch.no_grad():
            t_out = run_model(teacher, batch.teacher)
    losses = []
    for step in range(steps + 1):
        method.set_progress(step, steps)
        s_out = run_model(student, batch.student)
        terms = method(s_out, t_out, batch)
        loss = terms.total() / terms.n_tokens
        losses.append(float(loss.detach()))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


# ----------------------------------------------------------------------------- logits-only batches (baselines)
def side_from_ids(side, examples, *, pad_id=0, padding_side="right", extra_pad=0, spans=None) -> SideBatch:
    """:func:`side_batch` for examples whose prompt is non-empty (the first response token is predicted
    from the prompt)."""
    assert all(len(p) >= 1 for p, _ in examples), "give every example a prompt"
    return side_batch(side, examples, pad_id=pad_id, padding_side=padding_side, extra_pad=extra_pad, spans=spans)


def span_sides(spans, vs: int, vt: int, *, seed: int = 0, padding_side: str = "right", extra_pad: int = 0):
    """Student and teacher sides with random prompt / response ids for ``spans`` (a list of
    ``(student spans, teacher spans)`` per example); the teacher side gets one more padding column."""
    def examples(seed_, side_spans, vocab, prompt_len):
        g = torch.Generator().manual_seed(seed_)
        return [(torch.randint(0, vocab, (prompt_len + b,), generator=g).tolist(),
                 torch.randint(0, vocab, (len(sp),), generator=g).tolist()) for b, sp in enumerate(side_spans)]

    s_spans, t_spans = [s for s, _ in spans], [t for _, t in spans]
    s_side = side_from_ids("student", examples(seed, s_spans, vs, 2), padding_side=padding_side,
                           extra_pad=extra_pad, spans=s_spans)
    t_side = side_from_ids("teacher", examples(seed + 1, t_spans, vt, 1), padding_side=padding_side,
                           extra_pad=extra_pad + 1, spans=t_spans)
    return s_side, t_side, s_spans, t_spans


def place_rows(side: SideBatch, rows, *, junk_seed=0, junk_scale=5.0):
    """``[B, L, V]`` logits holding ``rows[b][k]`` at example ``b``'s k-th response position.

    ``rows``: list (one per example) of ``[n_b, V]`` tensors, ``n_b`` = that example's number of
    response positions. Every other position holds random junk (seeded by ``junk_seed``), so a
    method that reads a non-response position gives a layout-dependent result.
    """
    bsz, width = side.target_mask.shape
    vocab = rows[0].shape[-1]
    gen = torch.Generator().manual_seed(junk_seed)
    out = torch.randn((bsz, width, vocab), generator=gen, dtype=torch.float64) * junk_scale
    out = out.to(rows[0].dtype)
    for b in range(bsz):
        pos = side.target_mask[b].nonzero().squeeze(1)
        assert pos.numel() == rows[b].shape[0], f"example {b}: {pos.numel()} positions, {rows[b].shape[0]} rows"
        out[b, pos] = rows[b]
    return out


def outputs(logits: torch.Tensor, hidden_size: int = 4) -> ModelOutputs:
    """ModelOutputs around ``logits`` (hidden/embeddings are zeros: the baselines never read them)."""
    bsz, width = logits.shape[:2]
    z = torch.zeros((bsz, width, hidden_size), dtype=logits.dtype)
    return ModelOutputs(logits=logits, hidden=z, input_embeds=z, target_embeds=z)


def collated_batch(student_tok, teacher_tok, path, n, *, padding_side="right", max_length=256):
    """A :class:`PairBatch` of the first ``n`` records of ``path`` through the real data layer
    (:func:`dwakd.data.encode_record` + :func:`dwakd.data.collate_pairs`)."""
    from dwakd.data import collate_pairs, encode_record
    from dwakd.data import load_records as load_data

    recs = load_data(str(path), limit=n)
    encoded = [encode_record(r, student_tok, teacher_tok, max_length=max_length, max_prompt_length=max_length // 2)
               for r in recs]
    return collate_pairs([e for e in encoded if e is not None], student_tok, teacher_tok, padding_side=padding_side)


# ----------------------------------------------------------------------------- a synthetic pair
V_S, D_S, V_T, D_T = 11, 6, 13, 8

# (prompt ids, response ids, response spans) per example, student and teacher tokenizing the same
# response text differently; the last response token is the EOS with an empty span.
STUDENT_EXAMPLES = [
    ([1, 2], [3, 4, 5, 6], [(0, 2), (2, 3), (3, 5), (5, 5)]),
    ([2], [7, 8], [(0, 3), (3, 3)]),
    ([3, 4, 5], [1, 2, 3, 4, 5], [(0, 1), (1, 2), (2, 3), (3, 4), (4, 4)]),
]
TEACHER_EXAMPLES = [
    ([1, 2, 3], [4, 5, 6, 7, 8], [(0, 2), (2, 3), (3, 4), (4, 5), (5, 5)]),
    ([5, 6], [9, 10, 11], [(0, 1), (1, 3), (3, 3)]),
    ([1], [2, 3, 4, 5], [(0, 1), (1, 3), (3, 4), (4, 4)]),
]


def synthetic_batch(*, padding_side="right", extra_pad=0, student=None, teacher=None) -> PairBatch:
    """The synthetic pair above (or other ``(prompt, response, spans)`` lists) as a PairBatch."""
    student = STUDENT_EXAMPLES if student is None else student
    teacher = TEACHER_EXAMPLES if teacher is None else teacher
    sides = []
    for name, exs in (("student", student), ("teacher", teacher)):
        sides.append(side_batch(name, [(p, r) for p, r, _ in exs], padding_side=padding_side,
                                extra_pad=extra_pad, spans=[sp for _, _, sp in exs]))
    return pair(*sides)


def stub_pair(seed=0):
    """(student StubLM, teacher StubLM) of the synthetic sizes."""
    return StubLM(V_S, D_S, seed=seed), StubLM(V_T, D_T, seed=seed + 1)


def placed_outputs(side: SideBatch, examples, vocab, dim, *, seed, junk_seed, logit_scale=2.0, dtype=torch.float32):
    """ModelOutputs whose rows at real positions depend only on (example, sequence position)."""
    ex = [(p, r) for p, r, _ in examples]
    fields = []
    for k, (feat, scale) in enumerate(((vocab, logit_scale), (dim, 1.0), (dim, 1.0), (dim, 1.0))):
        rows = random_rows(ex, feat, seed=seed * 10 + k, scale=scale, dtype=dtype)
        fields.append(place(side, rows, junk_seed=junk_seed + k))
    return ModelOutputs(*fields)


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread (restored after): these tensors are tiny, and on a shared
    2-core machine two threads per op make a tiny training step ~20x slower, not faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

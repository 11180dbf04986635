"""Hand-built PairBatches for the baseline-method tests (ULD, MinED, MultiLevelOT).

Two ways in:
- from token ids (:func:`side_from_ids`), with a chosen padding side and extra padding, plus
  :func:`place_rows` to put per-response-position logits into that layout (junk elsewhere), so a
  test can change the layout and check that nothing but the response rows matters;
- through the real data layer (:func:`collated_batch`), for the end-to-end checks on the tiny
  fixture pair.
"""

from __future__ import annotations

import torch

from dwakd.data.batch import IGNORE_INDEX, PairBatch, SideBatch
from dwakd.models.outputs import ModelOutputs


def side_from_ids(side, examples, *, pad_id=0, padding_side="right", extra_pad=0, spans=None):
    """A :class:`SideBatch` from ``examples`` = list of ``(prompt_ids, response_ids)``.

    ``input_ids = prompt + response``; ``labels`` equal it on the response, ``-100`` elsewhere;
    ``target_ids`` = labels shifted left. ``extra_pad`` adds that many padding columns beyond the
    longest example. ``spans``: optional per-example list of ``(start, end)`` per response token
    (default: ``(k, k + 1)`` for the k-th response token).
    """
    seqs = [list(p) + list(r) for p, r in examples]
    width = max(len(s) for s in seqs) + extra_pad
    bsz = len(examples)
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
    span_t = torch.full((bsz, width, 2), -1, dtype=torch.long)
    for b, (prompt, response) in enumerate(examples):
        assert len(prompt) >= 1, "the first response token is predicted from the prompt: give one"
        n = len(prompt) + len(response)
        off = 0 if padding_side == "right" else width - n
        input_ids[b, off : off + n] = torch.tensor(seqs[b], dtype=torch.long)
        attention[b, off : off + n] = 1
        labels[b, off + len(prompt) : off + n] = torch.tensor(list(response), dtype=torch.long)
        ex_spans = spans[b] if spans is not None else [(k, k + 1) for k in range(len(response))]
        for k, sp in enumerate(ex_spans):
            # the target of position p is the token at p + 1
            span_t[b, off + len(prompt) + k - 1] = torch.tensor(sp)
    target_ids = torch.full_like(labels, IGNORE_INDEX)
    target_ids[:, :-1] = labels[:, 1:]
    target_mask = target_ids != IGNORE_INDEX
    span_t[~target_mask] = -1
    return SideBatch(side, input_ids, attention, labels, target_ids, target_mask, span_t)


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


def pair(student: SideBatch, teacher: SideBatch, responses=None, extras=None) -> PairBatch:
    return PairBatch(student, teacher, list(responses or []), dict(extras or {}))


# ----------------------------------------------------------------------------- real tokenizers
def collated_batch(student_tok, teacher_tok, path, n, *, padding_side="right", max_length=256):
    """A :class:`PairBatch` of the first ``n`` records of ``path`` through the real data layer
    (:func:`dwakd.data.encode_record` + :func:`dwakd.data.collate_pairs`)."""
    from dwakd.data import collate_pairs, encode_record
    from dwakd.data import load_records as load_data

    recs = load_data(str(path), limit=n)
    encoded = [encode_record(r, student_tok, teacher_tok, max_length=max_length, max_prompt_length=max_length // 2)
               for r in recs]
    return collate_pairs([e for e in encoded if e is not None], student_tok, teacher_tok, padding_side=padding_side)


def train_losses(method, student, teacher, batch, *, steps=30, lr=3e-3):
    """Run ``steps`` AdamW steps of ``method`` on one fixed batch; return the per-token total loss
    before each step (``steps + 1`` values, the last one after the final step)."""
    from dwakd.models.outputs import run_model

    params = list(student.parameters()) + list(method.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.no_grad():
        t_out = run_model(teacher, batch.teacher)
    losses = []
    for step in range(steps + 1):
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

"""ALM debiasing (tokenkit's ``alm_mode``: ``append_space``, ``merge_by_space_prob``); see :mod:`dwakd.methods.alm`.

Three pieces, used only by :class:`dwakd.methods.alm.ALM`:

- :func:`space_initial_mask`: from a tokenizer, the ids whose text begins with a space, newline or
  tab, plus the special ids (tokenkit's ``space_mask_mode = "space+tab+newline+special"``);
- :func:`space_log_probs`: ``log`` of the softmax mass on those ids for selected logits rows only,
  chunk by chunk (the ``[B, L, V]`` logits are never needed);
- :func:`debias_chunks`: the per-chunk space log-probabilities, the merging of chunks, the appended term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dwakd.methods.rows import chunk_size_for, chunked_rows, row_source, rows_to_logits, upcast

# first characters that make a token "whitespace-initial" (tokenkit: space, tab, newline bytes)
WHITESPACE = frozenset(" \n\t")
# byte-level BPE spells the bytes 0x20, 0x0A, 0x09 as these characters (GPT-2's bytes_to_unicode)
_BYTE_LEVEL = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t"}
# SentencePiece byte-fallback pieces of the same bytes
_BYTE_FALLBACK = {"<0x20>": " ", "<0x0A>": "\n", "<0x09>": "\t"}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.decoder)


def space_initial_mask(tokenizer) -> torch.Tensor:
    """``[len(tokenizer)]`` bool: the token's text begins with a space, newline or tab, or the id is
    special. Read per tokenizer family: byte-level BPE (``Ġ`` ``Ċ`` ``ĉ``), Metaspace (``▁``),
    byte-fallback pieces (``<0x20>`` ...), literal whitespace; added tokens by their content."""
    n = len(tokenizer)
    byte_level = _is_byte_level(tokenizer)
    added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    special = {int(i) for i in tokenizer.all_special_ids}
    out = torch.zeros(n, dtype=torch.bool)
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
        if i in special:
            out[i] = True
            continue
        if i in added:
            first = added[i][:1]
        elif not tok:
            continue
        elif byte_level:
            first = _BYTE_LEVEL.get(tok[0], "")
        else:
            first = _BYTE_FALLBACK.get(tok, tok[0].replace("\u2581", " "))
        out[i] = first in WHITESPACE
    return out


def space_log_probs(out, flat: torch.Tensor, mask: torch.Tensor, *, detach: bool = False) -> torch.Tensor:
    """``[n]`` float32 ``log sum_{v in mask} softmax(logits[flat])_v``, clipped at 0 (tokenkit), for the
    flattened rows ``flat`` (``b * L + pos``) of a model's outputs; only those rows' logits are
    computed, a chunk at a time (under activation checkpointing when gradients flow)."""
    x, weight = row_source(out, detach=detach)
    rows = x.reshape(-1, x.shape[-1]).index_select(0, flat)
    width = out.vocab_size
    m = torch.zeros(width, dtype=torch.bool, device=rows.device)
    n = min(width, mask.numel())
    m[:n] = mask[:n].to(rows.device)

    def fn(r):
        z = upcast(rows_to_logits(r, weight))
        return (z.masked_fill(~m, float("-inf")).logsumexp(-1) - z.logsumexp(-1)).clamp(max=0.0)

    return chunked_rows(fn, rows, chunk=chunk_size_for(width, None))


@dataclass
class ChunkSums:
    """Per chunk key (``b * K + chunk``, ``[B * K]``): the two sides' log-likelihoods, token counts and
    whether the chunk counts (both sides have a token in it)."""

    log_ps: torch.Tensor
    log_pt: torch.Tensor
    n_s: torch.Tensor
    n_t: torch.Tensor
    counted: torch.Tensor


def _last_position(key, pos, n_keys):
    return torch.full((n_keys,), -1, dtype=torch.long, device=key.device).scatter_reduce(0, key, pos, reduce="amax")


def _next_is_response(last, ex, target_mask):
    nxt = last + 1
    inside = (last >= 0) & (nxt < target_mask.shape[1])
    return inside & target_mask.bool()[ex, nxt.clamp(max=target_mask.shape[1] - 1)]


def debias_chunks(sums: ChunkSums, k: int, keys, student_out, teacher_out, batch, masks, *,
                  append_space: bool, merge: bool, threshold: float) -> tuple[ChunkSums, torch.Tensor]:
    """tokenkit's debiasing on the chunk sums (see the ALM module docstring, "Debiasing").

    ``keys`` = ``(s_key, spos, t_key, tpos)``: every response position's chunk key and position on each
    side; ``masks`` = ``(student, teacher)`` :func:`space_initial_mask` tensors. Returns the new sums
    (with merging, key ``b * K + j`` holds example ``b``'s ``j``-th merged chunk) and the ``[B * K]``
    bool of the chunks that have a space term (a following response row on both sides)."""
    s_key, spos, t_key, tpos = keys
    s_side, t_side = batch.student, batch.teacher
    counted = sums.counted
    nk = counted.numel()
    ex = torch.arange(nk, device=counted.device) // k
    s_last, t_last = _last_position(s_key, spos, nk), _last_position(t_key, tpos, nk)
    avail = counted & _next_is_response(s_last, ex, s_side.target_mask) & _next_is_response(t_last, ex, t_side.target_mask)
    sel = avail.nonzero().squeeze(1)
    # the row after each chunk's last target: the distribution over the token that follows the chunk
    s_sp_sel = space_log_probs(student_out, ex[sel] * s_side.target_mask.shape[1] + s_last[sel] + 1, masks[0])
    with torch.no_grad():
        t_sp_sel = space_log_probs(teacher_out, ex[sel] * t_side.target_mask.shape[1] + t_last[sel] + 1, masks[1],
                                   detach=True)
    s_sp = sums.log_ps.new_zeros(nk).index_copy(0, sel, s_sp_sel.to(sums.log_ps.dtype))
    t_sp = sums.log_pt.new_zeros(nk).index_copy(0, sel, t_sp_sel.to(sums.log_pt.dtype))
    log_ps, log_pt, n_s, n_t = sums.log_ps, sums.log_pt, sums.n_s, sums.n_t

    if merge:
        # a merged chunk closes at a counted chunk whose teacher space probability exceeds the
        # threshold (or that has no following row); its id = number of closes before it in its example
        close = (counted & (~avail | (t_sp.exp() > threshold))).long()
        before = close.cumsum(0) - close
        group = ex * k + before - before.view(-1, k)[:, 0][ex]
        src = counted.nonzero().squeeze(1)
        idx = group[src]

        def pool(x):
            return x.new_zeros(nk).scatter_add(0, idx, x[src])

        log_ps, log_pt, n_s, n_t = pool(log_ps), pool(log_pt), pool(n_s), pool(n_t)
        last = _last_position(idx, src, nk)  # the merged chunk's last member
        counted = last >= 0
        take = last.clamp(min=0)
        s_sp, t_sp = torch.where(counted, s_sp[take], 0.0), torch.where(counted, t_sp[take], 0.0)
        avail = counted & avail[take]
    if append_space:
        log_ps, log_pt = log_ps + s_sp, log_pt + t_sp
    return ChunkSums(log_ps, log_pt, n_s, n_t, counted), avail

"""A causal LM whose next-token logits the test controls: a bigram table ``[V, V]``.

``logits[b, t] = table[input_ids[b, t]]`` whatever came before, so every probability the code
under test uses can be recomputed by hand from the table. No KV cache (returns none), which
is all a bigram model needs.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class BigramLM(torch.nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone().float(), requires_grad=False)
        self.config = SimpleNamespace()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)

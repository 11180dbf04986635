"""Projectors between the two models' spaces, and their logit-preserving initialisation.

Every projector is an ``nn.Linear`` with bias (METHOD.md section 1), float32, created on the
student head's device. Methods own them as submodules, so ``method.parameters()`` are exactly the
projectors (the trainer gives them their own learning rate).

Logit-preserving init (DSKDv2, arXiv 2504.11426; METHOD.md section 2) [I]: for a projector ``P``
from space A (hidden size d_a, head ``W_a``) to space B (``W_b``), choose ``P`` so that, on the
vocabulary the two tokenizers share, ``W_b P h ~= W_a h`` for every ``h``: the least-squares
solution ``P = pinv(W_b[shared_b]) W_a[shared_a]`` (bias 0). It is exact when ``W_b[shared_b]`` has
full column rank and ``W_a[shared_a]``'s rows lie in its row space, e.g. identical heads; on a
different tokenizer pair it is the best linear fit on the shared tokens. The shared vocabulary is
found by :func:`shared_vocabulary`: tokens whose surface strings are equal after mapping the
space markers ``Ġ`` / ``▁`` to a space and ``Ċ`` to a newline.
"""

from __future__ import annotations

import torch
from torch import nn

_MARKERS = {"\u0120": " ", "\u2581": " ", "\u010a": "\n"}


def make_projector(d_in: int, d_out: int, *, device=None) -> nn.Linear:
    """``nn.Linear(d_in, d_out)`` with bias, float32 (default PyTorch init)."""
    return nn.Linear(int(d_in), int(d_out), bias=True, device=device, dtype=torch.float32)


def _canonical(token: str) -> str:
    for marker, repl in _MARKERS.items():
        token = token.replace(marker, repl)
    return token


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(student_ids, teacher_ids)``: ``[n]`` long each, the token pairs with equal surface strings.

    Each canonical string is taken once (the lowest id on each side).
    """
    def table(tok) -> dict[str, int]:
        out: dict[str, int] = {}
        for token, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            out.setdefault(_canonical(token), idx)
        return out

    s_tab, t_tab = table(student_tokenizer), table(teacher_tokenizer)
    common = sorted(set(s_tab) & set(t_tab), key=lambda k: s_tab[k])
    return (torch.tensor([s_tab[k] for k in common], dtype=torch.long),
            torch.tensor([t_tab[k] for k in common], dtype=torch.long))


@torch.no_grad()
def init_logit_preserving_(proj: nn.Linear, source_head_rows: torch.Tensor, target_head_rows: torch.Tensor) -> float:
    """Set ``proj`` (source -> target space) so that ``target_rows @ proj(h) ~= source_rows @ h``.

    ``source_head_rows``: ``[n, d_in]`` rows of the source model's head on the shared vocabulary;
    ``target_head_rows``: ``[n, d_out]`` the matching rows of the target model's head. Solved in
    float64 by pseudo-inverse; the bias is zeroed. Returns the relative residual
    ``||W_b P - W_a|| / ||W_a||`` on those rows (0 = logits exactly preserved).
    """
    src = source_head_rows.detach().to(torch.float64).cpu()
    tgt = target_head_rows.detach().to(torch.float64).cpu()
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"head rows differ in count: {src.shape[0]} vs {tgt.shape[0]}")
    if tuple(proj.weight.shape) != (tgt.shape[1], src.shape[1]):
        raise ValueError(f"projector weight {tuple(proj.weight.shape)} does not map {src.shape[1]} -> {tgt.shape[1]}")
    weight = torch.linalg.pinv(tgt) @ src  # [d_out, d_in]
    proj.weight.copy_(weight.to(proj.weight.dtype))
    if proj.bias is not None:
        proj.bias.zero_()
    denom = src.norm().clamp_min(1e-12)
    return float((tgt @ weight - src).norm() / denom)

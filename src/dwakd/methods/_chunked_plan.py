"""Inputs, outputs and run plan of :func:`dwakd.methods._chunked.fused_rows`.

:class:`RowSide` (one side's rows) and :class:`RowTerms` (the per-row outputs) are the public
types; ``_Div``, ``_Side`` and ``_Plan`` describe what the fused op computes on each side, and the
chunk helpers below read one chunk's logits and form cross-entropy terms and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Fewest rows per chunk when a side is projected: every chunk streams the whole head weight (V x d)
# through the matmul, so few rows per chunk make the projection memory-bound (measured on CPU:
# 32 rows x 2048 x 152k costs as much as 128 rows). At V = 152k, 256 rows is a 156 MB buffer.
MIN_PROJECTED_ROWS = 256


@dataclass
class RowSide:
    """One side of :func:`dwakd.methods._chunked.fused_rows`.

    - ``x``: ``[R, V]`` logits rows, or ``[R, d]`` hidden rows when ``weight`` is given.
    - ``weight``: ``[V, d]`` LM-head weight; logits = ``x @ weight^T`` (no bias).
    - ``index``: ``[N]`` long, the rows of ``x`` to use, in output order (``None`` = all rows).
    - ``targets``: ``[N]`` long gold ids for this side's cross-entropy (``None`` = no CE).
    """

    x: torch.Tensor
    weight: torch.Tensor | None = None
    index: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.weight.shape[0] if self.weight is not None else self.x.shape[-1])

    @property
    def n_rows(self) -> int:
        return int(self.index.numel() if self.index is not None else self.x.shape[0])


@dataclass
class RowTerms:
    """Outputs of :func:`dwakd.methods._chunked.fused_rows`.

    Each ``[N]`` (float32) or ``None`` when not requested.
    """

    div: torch.Tensor | None = None
    ce_p: torch.Tensor | None = None
    ce_q: torch.Tensor | None = None
    entropy_p: torch.Tensor | None = None
    entropy_q: torch.Tensor | None = None
    q_peak: torch.Tensor | None = None
    q_argmax: torch.Tensor | None = None


@dataclass
class _Div:
    """The divergence ``D(q || p)`` to compute."""

    kind: str
    temperature: float
    skew: float
    alpha: float


@dataclass
class _Side:
    """One side as the op runs it: its rows, what to compute on it, how its input gradient is formed."""

    rows: RowSide
    name: str  # "p" or "q": the suffix of its outputs (ce_p, entropy_q, gx_ce_p, ...)
    entropy: bool  # entropy at temperature 1
    peak: bool  # max probability and argmax at temperature 1 (the q side)
    precompute: bool  # projected side, head without grad: input gradients computed in the forward
    unique: bool  # every index appears once: gradients are copied, not accumulated

    @property
    def wants_stats(self) -> bool:
        return self.rows.targets is not None or self.entropy or self.peak


@dataclass
class _Plan:
    p: _Side
    q: _Side | None
    div: _Div | None
    chunk: int

    @property
    def temperature(self) -> float:
        return self.div.temperature if self.div is not None else 1.0


# ----------------------------------------------------------------------------- chunk helpers
def _rows(side: RowSide, start: int, stop: int) -> torch.Tensor:
    if side.index is None:
        return side.x[start:stop]
    return side.x[side.index[start:stop]]  # (much faster than index_select on CPU for wide rows)


def _logits(side: RowSide, start: int, stop: int) -> torch.Tensor:
    """A chunk's logits as a fresh float32 buffer (callers may overwrite it)."""
    xc = _rows(side, start, stop)
    if side.weight is not None:
        return (xc.to(side.weight.dtype) @ side.weight.t()).float()
    out = xc.float()
    shares = out.untyped_storage().data_ptr() == side.x.untyped_storage().data_ptr()
    return out.clone() if shares else out


def _project_back(side: RowSide, grad_logits: torch.Tensor) -> torch.Tensor:
    """``grad_logits @ W``: a projected side's logits gradient as a hidden-row gradient (float32)."""
    return (grad_logits.to(side.weight.dtype) @ side.weight).float()


def _ce(logp1: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logp1.gather(1, targets[:, None]).squeeze(1)


def _ce_grad_(prob: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(prob - onehot(targets)) * scale[:, None]``, in place on ``prob``: the CE gradient."""
    prob.scatter_add_(1, targets[:, None], torch.full_like(prob[:, :1], -1.0))
    return prob.mul_(scale[:, None])


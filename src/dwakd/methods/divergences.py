"""Token-level divergences between a student distribution ``p`` and a target (teacher) ``q``.

METHOD.md section 3, with ``q`` the target and ``p`` the distribution being trained (``lambda`` =
``skew``):

- ``fkl``  = KL(q || p) = sum q (log q - log p)
- ``rkl``  = KL(p || q) = sum p (log p - log q)
- ``skl``  = KL(q || lambda q + (1 - lambda) p)            (skew 0 -> fkl)
- ``srkl`` = KL(p || (1 - lambda) q + lambda p)            (skew 0 -> rkl)
- ``js``   = 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2
- ``tvd``  = 0.5 sum |q - p|
- ``akl``  = (g_head fkl + g_tail rkl) / (g_head + g_tail), with the OFFICIAL meaning of ``alpha``
  (DSKD code base's ``adaptive_kl``): sort q ASCENDING; the tail is the prefix whose cumulative
  mass is <= ``alpha`` (the least likely entries), the head the rest; g_head / g_tail = sum |q - p|
  over each part. The two coefficients are constants in the gradient (``.detach()`` in the
  official code), so the gradient is the same mix of the fkl and rkl gradients. Where p == q
  exactly (g_head + g_tail = 0) the official code gives 0/0 = NaN; dwakd uses 1/2, 1/2 (value 0).
  Before 2026-12 dwakd's ``akl(alpha)`` was the official ``akl(1 - alpha)`` (see CHANGELOG.md).

Both distributions are ``softmax(logits / temperature)`` computed in float32 log space whatever
the input dtype; no ``temperature ** 2`` factor (METHOD.md section 3).

Numerics (no NaN / inf on any input without NaN):
- log-probabilities are floored at :data:`LOG_PROB_FLOOR` = log(smallest normal float32) ~ -87.3,
  so a ``-inf`` logit (a masked vocabulary entry) or an underflowed probability contributes a
  finite amount. Values differ from exact arithmetic only where a probability underflows float32.
- a row whose logits are all ``-inf`` (fully masked) gets the value 0 and no gradient.

The functions here work on 2-D ``[n, V]`` float32 blocks and return values and the analytic
gradient with respect to the scaled student logits ``u = logits / temperature``; the chunked,
memory-bounded autograd op that uses them lives in :mod:`dwakd.methods._chunked`.
:func:`token_divergence` is the public, differentiable entry point.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from dwakd.config.typed import did_you_mean, option
from dwakd.errors import ConfigError
from dwakd.methods.base import MethodOptions

Divergence = Literal["fkl", "rkl", "skl", "srkl", "js", "tvd", "akl"]
KINDS: tuple[str, ...] = typing.get_args(Divergence)
# Rows x vocabulary entries per chunk of the vocabulary-sized work (32 MiB of float32 per [chunk, V]).
DEFAULT_CHUNK_ELEMENTS = 1 << 23

AKL_ALPHA_HELP = (
    "akl only: tail mass, with the OFFICIAL meaning (DSKD code base adaptive_kl): sort the teacher probabilities "
    "ascending, the tail is the prefix with cumulative mass <= akl_alpha. CHANGED in 2026-12: the old dwakd akl_alpha "
    "a equals the new 1 - a (identical only at 0.5); configs written before must flip it (CHANGELOG.md).")


@dataclass
class DivergenceOptions(MethodOptions):
    """Options of every method that compares two distributions with a :data:`Divergence`."""

    divergence: Divergence = option("fkl", "Token divergence D(teacher || student): fkl, rkl, skl, srkl, js, tvd or akl.")
    temperature: float = option(2.0, "Softmax temperature tau of both sides inside D (no tau^2 factor).", gt=0)
    skew: float = option(0.1, "skl / srkl only: the skew lambda of the mixture.", ge=0, le=1)
    akl_alpha: float = option(0.5, AKL_ALPHA_HELP, ge=0, le=1)
    chunk_elements: int = option(DEFAULT_CHUNK_ELEMENTS, "Rows x vocabulary entries per chunk of the "
                                 "vocabulary-sized work (memory bound; results do not depend on it).", ge=1)
LOG_PROB_FLOOR = math.log(torch.finfo(torch.float32).tiny)  # ~ -87.34
_LOG_HALF = math.log(0.5)


def check_kind(kind: str, *, field: str = "divergence") -> str:
    """Return ``kind`` or raise :class:`ConfigError` naming ``field`` and the valid kinds."""
    if kind not in KINDS:
        raise ConfigError(f"{field}: unknown divergence '{kind}'{did_you_mean(kind, KINDS)} Choose one of {', '.join(KINDS)}")
    return kind


def log_probs(
    logits: torch.Tensor, temperature: float = 1.0, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp, p, valid)`` for ``[n, V]`` logits at ``temperature``, in float32.

    ``logp``: log-softmax floored at :data:`LOG_PROB_FLOOR`; ``p``: the exact softmax (zeros where
    it underflows); ``valid``: ``[n]`` bool, False for a row whose logits are all ``-inf``
    (such rows are computed as uniform and must be zeroed by the caller). ``inplace``: reuse a
    float32 ``logits`` buffer for ``logp`` (the caller gives up ``logits``).
    """
    own = inplace and logits.dtype == torch.float32
    x = logits if own else logits.float()
    if temperature != 1.0:
        x = x.div_(temperature) if own or x is not logits else x / temperature
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    valid = torch.isfinite(lse).squeeze(-1)
    if not bool(valid.all()):
        x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
    raw = x.sub_(lse) if (own or x is not logits) else x - lse
    p = raw.exp()
    logp = raw.clamp_min_(LOG_PROB_FLOOR)
    return logp, p, valid


def _log_mix(la: torch.Tensor, lb: torch.Tensor, wa: float) -> torch.Tensor:
    """``log(wa * exp(la) + (1 - wa) * exp(lb))`` elementwise (a new tensor), floored, ``wa`` in [0, 1]."""
    if wa <= 0.0:
        return lb.clamp_min(LOG_PROB_FLOOR)
    if wa >= 1.0:
        return la.clamp_min(LOG_PROB_FLOOR)
    out = la + math.log(wa)
    other = lb + math.log1p(-wa)
    torch.logaddexp(out, other, out=out)
    del other
    return out.clamp_min_(LOG_PROB_FLOOR)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` tensors without an ``[n, V]`` temporary."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def _rowdot_precise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` accumulated in float64 (one ``[n, V]`` float32 temporary), returned as float32.

    Precision trade-off (issue 11): the centring sum of a softmax gradient, ``sum(p * f_p)``, is
    subtracted from every ``f_p``; at sharp logits (scale 4) a float32 accumulation of it errs by
    up to ~3e-5 on 32k vocabularies, which lands in every gradient entry with ``p ~ 1``. Accumulating
    in float64 keeps the rkl / srkl gradients within 1e-5 of float64 (measured 9e-6 / 1e-6 at
    V = 32k), for one extra ``[chunk, V]`` buffer.
    """
    return torch.sum(a * b, dim=-1, dtype=torch.float64).to(a.dtype)


def _softmax_grad_(f_p: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``p * (f_p - sum(p * f_p))`` in place on ``f_p``: d f / d u from d f / d p (the sum in float64)."""
    return f_p.sub_(_rowdot_precise(p, f_p)[:, None]).mul_(p)


def _akl_coefficients(p: torch.Tensor, q: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_head, c_tail)``, each ``[n]``: g_head / (g_head + g_tail) and g_tail / (...).

    Official meaning: q sorted ascending (stable), tail = entries whose ascending cumulative mass
    (themselves included) is <= ``alpha``.
    """
    q_sorted, order = torch.sort(q, dim=-1, stable=True)
    tail_sorted = torch.cumsum(q_sorted, dim=-1) <= alpha
    del q_sorted
    tail = torch.zeros_like(tail_sorted).scatter_(-1, order, tail_sorted)
    del order, tail_sorted
    gap = (q - p).abs_()
    g_all = gap.sum(-1)
    g_tail = gap.masked_fill_(~tail, 0.0).sum(-1)
    g_head = g_all - g_tail
    total = g_head + g_tail
    safe = total.clamp_min(torch.finfo(torch.float32).tiny)
    c_head = torch.where(total > 0, g_head / safe, 0.5)
    c_tail = torch.where(total > 0, g_tail / safe, 0.5)
    return c_head, c_tail


def divergence_and_grad(
    kind: str,
    logp: torch.Tensor,
    p: torch.Tensor,
    logq: torch.Tensor,
    q: torch.Tensor,
    *,
    skew: float = 0.1,
    alpha: float = 0.5,
    need_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row divergence ``[n]`` and, if ``need_grad``, its gradient ``[n, V]`` w.r.t. ``u``.

    ``u`` are the scaled student logits (``p = softmax(u)``); divide by the temperature to get the
    gradient w.r.t. the raw logits. The target ``q`` is a constant. Inputs come from
    :func:`log_probs` and are not modified; at most two ``[n, V]`` temporaries are alive at once
    (besides the returned gradient). Every derivative uses ``d f / d u = p * (f_p - sum(p * f_p))``
    with ``f_p = d f / d p`` except where a shorter exact form exists.
    """
    grad = None
    if kind == "fkl":
        value = _rowdot(q, logq - logp)
        if need_grad:
            grad = p - q
    elif kind == "rkl":
        d = logp - logq
        value = _rowdot_precise(p, d)
        if need_grad:
            grad = d.sub_(value[:, None]).mul_(p)
    elif kind == "skl":
        d = _log_mix(logq, logp, skew).neg_().add_(logq)  # log(q / m)
        value = _rowdot(q, d)
        if need_grad:  # f_p = -(1 - skew) q / m, 0 where q = 0
            f_p = d.exp_().mul_(-(1.0 - skew)).masked_fill_(q == 0, 0.0)
            grad = _softmax_grad_(f_p, p)
    elif kind == "srkl":
        d = _log_mix(logq, logp, 1.0 - skew).neg_().add_(logp)  # log(p / m)
        value = _rowdot_precise(p, d)
        if need_grad:  # f_p = log(p / m) + 1 - skew p / m
            ratio = d.exp().mul_(-skew).masked_fill_(p == 0, 0.0)
            f_p = d.add_(1.0).add_(ratio)
            del ratio
            grad = _softmax_grad_(f_p, p)
    elif kind == "js":
        logm = torch.logaddexp(logp, logq).add_(_LOG_HALF).clamp_min_(LOG_PROB_FLOOR)
        d = logp - logm
        value = 0.5 * _rowdot(p, d) + 0.5 * _rowdot(q, logm.neg_().add_(logq))
        del logm
        if need_grad:
            grad = _softmax_grad_(d.mul_(0.5), p)
    elif kind == "tvd":
        d = q - p
        value = 0.5 * torch.linalg.vector_norm(d, ord=1, dim=-1)
        if need_grad:
            grad = _softmax_grad_(d.sign_().mul_(-0.5), p)
    elif kind == "akl":
        c_head, c_tail = _akl_coefficients(p, q, alpha)
        d = logp - logq
        fkl = -_rowdot(q, d)
        rkl = _rowdot_precise(p, d)
        value = c_head * fkl + c_tail * rkl
        if need_grad:
            grad = d.sub_(rkl[:, None]).mul_(p).mul_(c_tail[:, None])
            grad.add_((p - q).mul_(c_head[:, None]))
    else:
        check_kind(kind)
        raise AssertionError("unreachable")
    return value, grad


def token_divergence(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    skew: float = 0.1,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence ``D(q_teacher || p_student)`` of kind ``kind``; shape ``[...]``.

    ``student_logits`` and ``teacher_logits``: ``[..., V]`` raw logits of the same width (any
    float dtype; computed in float32). Returns float32 ``[...]``. Differentiable w.r.t.
    ``student_logits`` only: the teacher is the target and is treated as a constant. Memory:
    the work runs in chunks of positions with a recomputing backward
    (:func:`dwakd.methods._chunked.fused_rows`), so no ``[n, V]`` intermediate is kept.
    """
    from dwakd.methods._chunked import RowSide, fused_rows

    check_kind(kind, field="kind")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; slice or project them to one vocabulary first"
        )
    lead = student_logits.shape[:-1]
    width = student_logits.shape[-1]
    out = fused_rows(
        RowSide(student_logits.reshape(-1, width)),
        RowSide(teacher_logits.detach().reshape(-1, width)),
        kind=kind,
        temperature=temperature,
        skew=skew,
        alpha=alpha,
    )
    return out.div.reshape(lead)

"""AdamW with separate parameter groups for the student and the method's projectors, and the schedule.

Groups (each with a ``name`` used in the logs as ``lr/<name>``):

- ``student``          student weights with ndim >= 2, at ``train.lr`` with weight decay;
- ``student_no_decay`` student biases and norm weights (ndim < 2), at ``train.lr``, no decay;
- ``projectors``       / ``projectors_no_decay``: the method's parameters, at ``train.projector_lr``.

Only parameters with ``requires_grad`` are included (a LoRA student contributes its adapters only).
Empty groups are left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dwakd.config import TrainConfig


def param_groups(student: nn.Module, method: nn.Module, cfg: TrainConfig) -> list[dict]:
    groups = []
    for prefix, module, lr in (("student", student, cfg.lr), ("projectors", method, cfg.projector_lr)):
        decay, no_decay = [], []
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 else no_decay).append(p)
        if decay:
            groups.append({"name": prefix, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{prefix}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def build_optimizer(student: nn.Module, method: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (no fused/foreach variants: results stay bitwise reproducible)."""
    groups = param_groups(student, method, cfg)
    if not groups:
        raise ValueError("nothing to train: the student and the method have no trainable parameters")
    return torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, foreach=False)


class CosineWithWarmup:
    """``lr(step) / peak``: linear warm-up from 0, then cosine from 1 down to ``min_ratio``.

    A callable object (not a lambda) so the scheduler's ``state_dict`` stays picklable.
    ``step`` counts optimizer steps taken so far (0 for the first step).
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, progress)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """``transformers.get_scheduler("cosine_with_min_lr")``: linear warm-up from 0, then cosine from every
    group's peak lr down to ``peak x train.min_lr_ratio`` (the same curve as :class:`CosineWithWarmup`)."""
    from transformers import get_scheduler

    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps_for(cfg, total_steps),
                         num_training_steps=max(1, int(total_steps)),
                         scheduler_specific_kwargs={"min_lr_rate": float(cfg.min_lr_ratio)})


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr/<group name>": lr}`` for logging."""
    out = {}
    for i, g in enumerate(optimizer.param_groups):
        out[f"lr/{g.get('name', i)}"] = float(g["lr"])
    return out

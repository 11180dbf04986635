"""The schedule (transformers.get_scheduler) against the hand formula: linear warm-up, cosine to min_lr_ratio."""

from __future__ import annotations

import math

import pytest
import torch

from dwakd.config import TrainConfig
from dwakd.train.optim import build_scheduler


def hand(step, total, warmup, peak, min_ratio):
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("total, warmup, min_ratio", [(20, 0, 0.0), (37, 5, 0.0), (50, 10, 0.1), (8, 3, 0.5)])
def test_cosine_with_warmup_matches_the_hand_formula(total, warmup, min_ratio):
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 5e-4}, {"params": [p2], "lr": 1e-3}])
    cfg = TrainConfig(warmup_steps=warmup, min_lr_ratio=min_ratio)
    sched = build_scheduler(opt, cfg, total)
    for step in range(total + 1):
        got = [g["lr"] for g in opt.param_groups]
        want = [hand(step, total, warmup, peak, min_ratio) for peak in (5e-4, 1e-3)]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()


def test_warmup_ratio_gives_int_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, TrainConfig(warmup_ratio=0.25), 10)  # int(2.5) = 2 warm-up steps
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, hand(2, 10, 2, 1.0, 0.0)])

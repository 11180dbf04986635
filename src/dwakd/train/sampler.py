"""Which examples each process uses at each optimizer step: a pure function of (seed, step).

The trainer does not hand a DataLoader to Accelerate; this plan shards the data itself, so the
data position on resume is just the global step, and a run on W processes with ``grad_accum`` g
uses exactly the same examples per optimizer step as one process with ``W * g``.

Per epoch the training set is shuffled with ``torch.randperm`` seeded by ``seed + epoch``; step s
of the epoch takes the next ``G = batch_size * grad_accum * world_size`` examples. Those are cut
into W contiguous shares (one per process, sizes differing by at most one), each cut into
micro-batches of ``batch_size``. The last, smaller step of an epoch is kept when it has at least
one example per process (fewer micro-batches then), otherwise its examples are skipped for that
epoch and counted in :attr:`StepPlan.dropped_per_epoch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _split(items: list[int], parts: int) -> list[list[int]]:
    """``items`` into ``parts`` contiguous pieces whose sizes differ by at most one (like numpy.array_split)."""
    n = len(items)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(items[start:start + size])
        start += size
    return out


@dataclass
class StepPlan:
    """Deterministic sharding of ``n_examples`` into optimizer steps and micro-batches."""

    n_examples: int
    batch_size: int
    grad_accum: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        full, tail = divmod(self.n_examples, self.global_batch)
        return full + (1 if tail >= self.world_size else 0)

    @property
    def dropped_per_epoch(self) -> int:
        full, tail = divmod(self.n_examples, self.global_batch)
        return tail if tail < self.world_size else 0

    def locate(self, step: int) -> tuple[int, int]:
        """Global step -> ``(epoch, step_in_epoch)``."""
        if self.steps_per_epoch == 0:
            raise ValueError("the training set is smaller than the number of processes")
        return divmod(step, self.steps_per_epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        return torch.randperm(self.n_examples, generator=g).tolist()

    def step_examples(self, step: int) -> list[int]:
        """All example indices of global step ``step`` (every process's share, in rank order)."""
        epoch, k = self.locate(step)
        order = self.epoch_order(epoch)
        return order[k * self.global_batch:(k + 1) * self.global_batch]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This process's micro-batches (lists of example indices) for global step ``step``; never empty."""
        share = _split(self.step_examples(step), self.world_size)[self.rank]
        return [share[i:i + self.batch_size] for i in range(0, len(share), self.batch_size)]


def eval_shards(n_examples: int, batch_size: int, world_size: int, rank: int) -> tuple[list[list[int]], int]:
    """Dev micro-batches of this process and how many every process must run (the maximum).

    Processes with fewer batches repeat their first one without counting it, so each runs the same
    number of forwards (required by DDP/FSDP); :func:`eval_plan` marks which ones count.
    """
    share = _split(list(range(n_examples)), world_size)[rank]
    batches = [share[i:i + batch_size] for i in range(0, len(share), batch_size)]
    most = max(-(-len(s) // batch_size) for s in _split(list(range(n_examples)), world_size))
    return batches, most


def eval_plan(n_examples: int, batch_size: int, world_size: int, rank: int) -> list[tuple[list[int], bool]]:
    """``[(indices, counts)]`` of length equal on every process; padding entries have ``counts=False``."""
    batches, most = eval_shards(n_examples, batch_size, world_size, rank)
    if not batches:
        batches_full: list[tuple[list[int], bool]] = []
        filler = [0] if n_examples else []
    else:
        batches_full = [(b, True) for b in batches]
        filler = batches[0]
    while len(batches_full) < most and filler:
        batches_full.append((filler, False))
    return batches_full

"""Statistics of a comparison: mean ± sample std over training seeds, paired differences with t-intervals.

A training seed's score is the mean over sampling seeds (and, for the "avg" column, over test sets).
Differences are paired by training seed: ``d_i = score(A, seed_i) - score(B, seed_i)`` over the seeds
both methods finished; the 95% interval is ``mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n)`` with the
sample standard deviation (n - 1 in the denominator). With one common seed there is no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (standard table values).
T975 = [12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
        2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
        2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
        2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
        2.045229642, 2.042272456]


def t975(df: int) -> float:
    """t_{0.975, df}; beyond the table, the normal approximation with a 1/df correction."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(T975):
        return T975[df - 1]
    return 1.959963985 + 2.4 / df


def mean_std(xs: Sequence[float]) -> dict:
    """``{"mean", "std" (sample, n-1; None for n < 2), "n"}``."""
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": m, "std": sd, "n": n}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Mean of ``a[s] - b[s]`` over common seeds ``s`` with its 95% t-interval (None when n < 2)."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    st = mean_std(d)
    out = {"mean": st["mean"], "std": st["std"], "n": st["n"], "seeds": seeds, "ci95": None, "half_width": None}
    if st["n"] >= 2:
        hw = t975(st["n"] - 1) * st["std"] / math.sqrt(st["n"])
        out["half_width"] = hw
        out["ci95"] = [st["mean"] - hw, st["mean"] + hw]
    return out

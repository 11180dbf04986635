"""Soft-DTW forward + backward: time and peak memory, dwakd vs its peers, side by side in one run.

Problem: B = 8 pairs of sequences, D = 256 features, N = M in {128, 256, 512, 1024, 2048},
gamma = 1, cosine cost (the same ``dwakd.align.pairwise_cost`` for every method, so only the DP
differs). Two modes, each timed as forward + ``.sum().backward()``:

- ``pipeline``: x, y -> cost -> soft-DTW -> gradient to x (what a training step pays; at large N
  the cost's matmuls, identical for every method, are a large share of it);
- ``dp``: a given cost tensor -> soft-DTW -> gradient to the cost (the operator alone; every method
  gets a fresh copy of the cost, since tslearn writes into it).

Methods:
- ``dwakd``: :func:`dwakd.align.soft_dtw` (float32 accumulation, the default for float32 input).
- ``dwakd-f64``: the same on a float64 cost (float64 accumulation): the price of float64.
- ``pysdtw``: ``pysdtw.SoftDTW(use_cuda=False)`` 0.0.5 (numba, parallel over the batch).
- ``tslearn``: ``tslearn.metrics.SoftDTWLossPyTorch`` (numba, parallel over the batch).
- ``autograd-diag``: plain autograd through a loop over anti-diagonals (no custom backward).

Each (mode, method, N) runs in its own subprocess (capped at ``--timeout`` s: "too slow"; a crash
or MemoryError is reported as such; the pipeline mode skips the dwakd variants). Inside it: a small warm-up (numba compiles), then one full-size
run whose peak memory is measured, then timed runs (the best reported). Peak memory: just before
that run, freed heap goes back to the OS (``malloc_trim``) and the kernel's high-water mark of the
resident set is reset to the current RSS (``/proc/self/clear_refs``); after it, ``VmHWM`` minus
that RSS is the working memory of one forward + backward (inputs excluded), whoever allocated it
(torch, numpy, numba). A sampling thread could miss transient peaks; tracemalloc would not see
torch's allocations; the lifetime ``ru_maxrss`` would include the imports' own peak.

    .venv/bin/python benchmarks/bench_soft_dtw.py [--quick] [--sizes 128,256] [--methods dwakd,tslearn] [--modes dp]
    .venv/bin/python benchmarks/bench_soft_dtw.py --gpu-check   # on a CUDA machine (Triton kernel)

Peers install with ``make bench-deps``. Writes ``benchmarks/results/bench_soft_dtw.md``
(``bench_soft_dtw_gpu.md`` for ``--gpu-check``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_soft_dtw.md"
RESULTS_GPU = HERE / "results" / "bench_soft_dtw_gpu.md"
METHODS = ["dwakd", "dwakd-f64", "pysdtw", "tslearn", "autograd-diag"]
PEERS = ["pysdtw", "tslearn", "autograd-diag"]
INTERLEAVED = ["dwakd", "pysdtw", "tslearn"]
SIZES = [128, 256, 512, 1024, 2048]
B, D, GAMMA = 8, 256, 1.0


# ----------------------------------------------------------------------------- the methods


def autograd_diag_sdtw(C, gamma):
    """Baseline: soft-DTW with autograd through a loop over anti-diagonals (scaled domain)."""
    import torch

    Bn, N, M = C.shape
    ninf = float("-inf")
    c = -C / gamma
    # sheared cost: cs[b, i, k'] = c[b, i, k' - i] (k' = i + j, 0-based), -inf outside
    cpad = torch.full((Bn, N, N + M + 1), ninf, dtype=C.dtype)
    cpad[:, :, :M] = c
    cs = cpad.as_strided((Bn, N, N + M - 1), (N * (N + M + 1), N + M, 1))
    col = torch.full((Bn, 1), ninf, dtype=C.dtype)
    prev2 = torch.cat([torch.zeros(Bn, 1, dtype=C.dtype), torch.full((Bn, N), ninf, dtype=C.dtype)], 1)
    prev1 = torch.full((Bn, N + 1), ninf, dtype=C.dtype)
    for k in range(2, N + M + 1):  # diagonal k holds S[i, k - i], i = 0..N
        lse = torch.logsumexp(torch.stack([prev2[:, :-1], prev1[:, :-1], prev1[:, 1:]]), 0)
        cur = torch.cat([col, lse + cs[:, :, k - 2]], 1)
        prev2, prev1 = prev1, cur
    return -gamma * prev1[:, N]


def make_method(name: str):
    """``fn(cost_fn, x, y) -> values [B]``: the method's soft-DTW on ``cost_fn(x, y)``."""
    from dwakd.align import soft_dtw

    if name == "dwakd":
        return lambda cost_fn, x, y: soft_dtw(cost_fn(x, y), GAMMA)
    if name == "dwakd-f64":
        return lambda cost_fn, x, y: soft_dtw(cost_fn(x, y).double(), GAMMA)
    if name == "autograd-diag":
        return lambda cost_fn, x, y: autograd_diag_sdtw(cost_fn(x, y), GAMMA)
    if name == "pysdtw":
        import pysdtw

        return lambda cost_fn, x, y: pysdtw.SoftDTW(gamma=GAMMA, dist_func=cost_fn, use_cuda=False)(x, y)
    if name == "tslearn":
        from tslearn.metrics import SoftDTWLossPyTorch

        return lambda cost_fn, x, y: SoftDTWLossPyTorch(gamma=GAMMA, dist_func=cost_fn)(x, y)
    raise ValueError(f"unknown method {name!r}")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Return freed heap to the OS, reset the kernel's high-water mark of the resident set to the
    current RSS, and return that RSS in bytes."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset VmHWM (Linux >= 4.0)
        fh.write("5")
    return _status_kb("VmRSS") * 1024


def child(name: str, mode: str, n: int, repeats: int) -> dict:
    """Runs in the subprocess: warm-up, one measured-memory run, timed runs.

    mode "pipeline": x [B, N, D] (requires grad), y -> cosine cost -> soft-DTW -> backward to x.
    mode "dp": a precomputed cost leaf [B, N, N] (requires grad), handed to each method as a fresh
    copy (tslearn writes into its cost in place) -> soft-DTW -> backward to the cost.
    """
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from dwakd.align import pairwise_cost

    fn = make_method(name)
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(B, 16, D, generator=gen), torch.randn(B, 16, D, generator=gen)
    xs.requires_grad_(True)
    fn(pairwise_cost, xs, ys).sum().backward()  # warm-up: numba compiles, thread pools start
    x = torch.randn(B, n, D, generator=gen)
    y = torch.randn(B, n, D, generator=gen)
    if mode == "pipeline":
        x.requires_grad_(True)
        leaf, cost_fn = x, pairwise_cost
    else:
        leaf = pairwise_cost(x, y).requires_grad_(True)

        def cost_fn(a, b):
            return leaf.clone()

    def step():
        leaf.grad = None
        t0 = time.perf_counter()
        v = fn(cost_fn, x, y)
        v.sum().backward()
        return time.perf_counter() - t0, v.detach()

    rss0 = _reset_peak()
    t_first, v = step()
    peak = _status_kb("VmHWM") * 1024
    times = [step()[0] for _ in range(repeats)]
    return {
        "time_s": min(times) if times else t_first,
        "times": times,
        "first_s": t_first,
        "peak_mb": max(0, peak - rss0) / 2**20,
        "value0": float(v[0]),
        "finite": bool(torch.isfinite(v).all()),
    }


def child_interleaved(n: int, repeats: int) -> dict:
    """Runs in a subprocess: dwakd, pysdtw and tslearn called in turn, round after round, in both
    modes (the same load drift hits all three); best time of each."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from dwakd.align import pairwise_cost

    names = [m for m in INTERLEAVED]
    fns = {m: make_method(m) for m in names}
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(B, 16, D, generator=gen), torch.randn(B, 16, D, generator=gen)
    xs.requires_grad_(True)
    for f in fns.values():
        f(pairwise_cost, xs, ys).sum().backward()
    x = torch.randn(B, n, D, generator=gen).requires_grad_(True)
    y = torch.randn(B, n, D, generator=gen)
    leaf = pairwise_cost(x, y).detach().requires_grad_(True)

    def dp_cost(a, b):
        return leaf.clone()

    out = {}
    for mode, (lf, cost_fn) in {"pipeline": (x, pairwise_cost), "dp": (leaf, dp_cost)}.items():
        best = {m: math.inf for m in names}
        for _ in range(repeats):
            for m, f in fns.items():
                lf.grad = None
                t0 = time.perf_counter()
                f(cost_fn, x, y).sum().backward()
                best[m] = min(best[m], time.perf_counter() - t0)
        out[mode] = best
    return out


def run_one(name: str, mode: str, n: int, repeats: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", name, mode, str(n), str(repeats)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"too slow (> {timeout:.0f} s)"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        last = tail[-1] if tail else f"exit {proc.returncode}"
        if proc.returncode < 0:
            last = f"killed by signal {-proc.returncode} (OOM?)"
        return {"error": last[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def machine() -> str:
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import numba

        nb = f", numba {numba.__version__}"
    except ImportError:
        nb = ""
    return (
        f"{os.cpu_count()} cores ({model}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){nb}, Python {platform.python_version()}"
    )


def fmt_time(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['time_s'] * 1000:.1f}"


def fmt_mem(r: dict) -> str:
    return "-" if "error" in r else f"{r['peak_mb']:.0f}"


MODES = {
    "pipeline": "x, y [B, N, D] -> cosine cost -> soft-DTW -> backward to x (what a training step pays)",
    "dp": "a given cost [B, N, N] -> soft-DTW -> backward to the cost (the DP alone)",
}
# The pipeline mode runs these (the variants of dwakd only matter for the DP itself).
PIPELINE_METHODS = ["dwakd", "pysdtw", "tslearn", "autograd-diag"]


def _tables(results: dict, mode: str, sizes: list[int], methods: list[str]) -> list[str]:
    lines = [f"### {mode}: {MODES[mode]}", "", "Time (ms):", "", "| N = M | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for n in sizes:
        lines.append(f"| {n} | " + " | ".join(fmt_time(results[(mode, m, n)]) for m in methods) + " |")
    lines += ["", "Peak memory (MB):", "", "| N = M | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for n in sizes:
        lines.append(f"| {n} | " + " | ".join(fmt_mem(results[(mode, m, n)]) for m in methods) + " |")
    peers = [p for p in PEERS if p in methods]
    if "dwakd" not in methods or not peers:
        return lines
    lines += [
        "",
        "Ratios: peer time / dwakd time (> 1: dwakd faster); memory: dwakd / lowest peer (<= 1: target met):",
        "",
        "| N = M | " + " | ".join(f"{p} / dwakd" for p in peers) + " | fastest peer / dwakd | dwakd / lowest peer memory |",
        "|---|" + "---|" * (len(peers) + 2),
    ]
    for n in sizes:
        ours = results[(mode, "dwakd", n)]
        cells, best_t, best_m = [], math.inf, math.inf
        for p in peers:
            r = results[(mode, p, n)]
            if "error" in r or "error" in ours:
                cells.append("-")
                continue
            cells.append(f"{r['time_s'] / ours['time_s']:.2f}")
            best_t = min(best_t, r["time_s"])
            best_m = min(best_m, r["peak_mb"])
        fast = "-" if math.isinf(best_t) else f"{best_t / ours['time_s']:.2f}"
        mem = "-" if math.isinf(best_m) or best_m <= 0 else f"{ours['peak_mb'] / best_m:.2f}"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {fast} | {mem} |")
    return lines


def _interleaved_table(inter: dict, sizes: list[int]) -> list[str]:
    lines = [
        "### Interleaved: dwakd, pysdtw and tslearn called in turn in one process (ms, best of the rounds)",
        "",
        "The shared machine's load drifts between the separate processes above; here every round runs "
        "the three methods back to back, so the ratios are the steadier ones.",
        "",
        "| N = M | mode | dwakd | pysdtw | tslearn | fastest peer / dwakd |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        r = inter.get(n)
        if not r:
            lines.append(f"| {n} | - | failed | | | |")
            continue
        for mode, best in r.items():
            ratio = min(best["pysdtw"], best["tslearn"]) / best["dwakd"]
            cells = " | ".join(f"{best[m] * 1000:.1f}" for m in INTERLEAVED)
            lines.append(f"| {n} | {mode} | {cells} | {ratio:.2f} |")
    return lines


def write_report(results: dict, sizes: list[int], plan: dict, args, inter: dict | None = None) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "## Soft-DTW operator (`benchmarks/bench_soft_dtw.py`)",
        "",
        f"Machine: {machine()}. Date: {now}. Command: `.venv/bin/python benchmarks/bench_soft_dtw.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        f"Forward + backward, B = {B}, D = {D}, gamma = {GAMMA}, cosine cost, N = M; best of the timed "
        f"runs (7 up to N = 512, then 3, then 2: the machine is shared, the minimum is the least "
        f"disturbed); each (mode, method, size) in its own process, capped at {args.timeout:.0f} s. Peak memory: "
        "working set of one forward + backward (high-water mark of the resident set, reset just before "
        "the run, minus the resident set then; inputs excluded). Methods: `dwakd` (float32 "
        "accumulation), `dwakd-f64` (float64 cost and accumulation), `pysdtw` 0.0.5 (numba), `tslearn` SoftDTWLossPyTorch (numba), `autograd-diag` "
        "(plain autograd through a loop over anti-diagonals).",
        "",
    ]
    if inter:
        lines += _interleaved_table(inter, sizes) + [""]
    for mode, methods in plan.items():
        lines += _tables(results, mode, sizes, methods) + [""]
    lines += [NOTES]
    return "\n".join(lines) + "\n"


NOTES = """How the CPU path was chosen (development measurements on this 2-core VM, shared with other
jobs at the time, so only ratios between variants measured together mean much; single-thread CPU
time, B = 8):

- R stored densely with each anti-diagonal read through strided views: strided reads/writes cost
  10-20x a contiguous op at N >= 1024 (cache misses). Kept: a *wrapped skew* layout (cell (i, j) at
  [(i + j) mod (M + 2), i]) where every diagonal is a contiguous slice and the buffer is exactly the
  grid's size (a plain skewed layout doubles it); batch innermost on CPU, so a diagonal of the whole
  batch is one contiguous 1-D slice (~25% less per-diagonal overhead than [B, L] slices).
- Soft-min by `torch.logsumexp` over a stacked [3, B, L] tensor: ~15 us per diagonal more than two
  `torch.logaddexp` calls (it launches ~8 kernels and allocates). Kept: two `logaddexp` + one add
  (~10 us per diagonal at small N).
- Row-wise formulation with a scan (S_i = P_i + logcumsumexp(u - P), exact): `torch.logcumsumexp`
  is scalar (~27 ns/element): 3.4 s vs 0.6 s forward at N = 2048, and it loses float32 precision.
- TorchScript for the forward loop: 3.0 vs 4.7 ms at N = 128, no gain at 512; deprecated. Dropped.
- Backward: the weights exp(S_ij - L_succ) in blocks of diagonals (a few large vectorised ops).
  torch's `exp` is ~20x slower on arguments below -87 (float32 subnormal results; numpy's float64
  `exp` likewise below -708, so those arguments are clamped). The sequential part (3 multiply-adds
  per diagonal) runs as numpy calls on the same memory: 5.5 vs 18 us per diagonal with torch ops. E lives in a ring of 3 diagonals and each finished
  diagonal is written straight into the gradient (no grid-sized E buffer, no conversion pass):
  peak memory went from 174 MB to 125 MB at N = 1024 (tslearn: 144 MB).
- float32 accumulation loses gradient precision when |S| = |R| / gamma is large (rounding at the
  scale of the whole accumulated cost): max |grad error| 3.5e-2 at gamma = 0.1, N = M ~ 1000
  (pysdtw 3.4e-4, it runs its DP in float64). Re-centring the two live diagonals on their maximum
  every 16 diagonals (exact bookkeeping of the offsets, float64) brings it to 5e-5 (2e-4 at
  gamma = 0.01) for ~10% of the time.
- float64 accumulation (`dwakd-f64`): slower (logaddexp has half the SIMD lanes) and twice the
  memory; float32 stays the default for float32/bf16/float16 costs (the issue's rule).
- Threads: the per-diagonal ops are below ATen's parallel grain (32768 values), so the DP loops run
  on one core. Splitting the batch over Python threads (torch and numpy release the GIL in their
  kernels) was measured slower at every size on this idle 2-core machine (N = 2048: forward 392 vs
  290 ms, backward 538 vs 347 ms; N = 256: 19 vs 10 and 14 vs 7): the GIL hand-offs between the
  threads' per-diagonal Python work cost more than the overlapped compute. Dropped; the peers use
  both cores (numba `prange` over the batch).
- The backward's weight blocks use numpy too: ATen's `exp` goes parallel from 2048 elements, and
  each OpenMP barrier stalls for a scheduler slice when another process holds a core (seen here:
  36 small `exp_` calls took 380 ms instead of 1 ms); numpy's float32 `exp` is single-threaded,
  AVX-512 and has no slow path for subnormal results.
- The gradient is written straight into a contiguous [B, N, M] tensor. Returning a batch-inner
  (permuted) view instead sent the cost's `bmm` backward down a non-BLAS path (128 vs 7 ms at
  N = 128 in the pipeline mode); writing batch-inner then copying was 15% slower than the scattered
  direct writes at N = 2048 and needs one more grid-sized buffer.
- Not used: torch.compile (would unroll the (N + M)-step loop per shape and needs a compiler at run
  time), numba and C++ extensions (not dependencies we want).
"""


# ----------------------------------------------------------------------------- GPU check


def gpu_check(sizes: list[int]) -> int:
    """On a CUDA machine: Triton kernel vs the torch path (values, gradients), then timings."""
    import torch

    from dwakd.align import pairwise_cost, soft_dtw

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    import importlib

    mod = importlib.import_module("dwakd.align.soft_dtw")
    lines = ["## Soft-DTW on GPU (`benchmarks/bench_soft_dtw.py --gpu-check`)", ""]
    lines.append(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
                 f"date {datetime.datetime.now():%Y-%m-%d %H:%M}.")
    gen = torch.Generator().manual_seed(0)
    # correctness: ragged masks with holes, a band, float32 and float64, against the CPU torch path
    worst = 0.0
    for dt, band, (n, m) in [(torch.float64, None, (37, 301)), (torch.float32, None, (300, 290)),
                             (torch.float64, 3, (64, 50)), (torch.float32, None, (1500, 1300))]:
        C = torch.rand(4, n, m, generator=gen, dtype=dt)
        xm = torch.rand(4, n, generator=gen) > 0.2
        ym = torch.rand(4, m, generator=gen) > 0.2
        w = torch.randn(4, generator=gen, dtype=dt)
        out = {}
        for dev, backend in (("cpu", "torch"), ("cuda", None)):
            mod._BACKEND_OVERRIDE = backend
            Cd = C.to(dev).requires_grad_(True)
            v = soft_dtw(Cd, 0.5, x_mask=xm.to(dev), y_mask=ym.to(dev), bandwidth=band)
            (g,) = torch.autograd.grad((v * w.to(dev)).sum(), Cd)
            out[dev] = (v.detach().cpu().double(), g.cpu().double())
        mod._BACKEND_OVERRIDE = None
        dv = (out["cpu"][0] - out["cuda"][0]).abs().max().item() / (1 + out["cpu"][0].abs().max().item())
        dg = (out["cpu"][1] - out["cuda"][1]).abs().max().item() / (1e-12 + out["cpu"][1].abs().max().item())
        worst = max(worst, dv, dg)
        lines.append(f"- {dt}, band {band}, N={n}, M={m}: rel. value diff {dv:.2e}, rel. grad diff {dg:.2e}")
    lines += ["", "| N = M | Triton fwd+bwd (ms) | torch path on GPU (ms) |", "|---|---|---|"]
    for n in sizes:
        x = torch.randn(B, n, D, device="cuda", requires_grad=True)
        y = torch.randn(B, n, D, device="cuda")
        row = []
        for backend in (None, "torch"):
            mod._BACKEND_OVERRIDE = backend
            if backend == "torch" and n > 1024:
                row.append("skipped")
                continue
            soft_dtw(pairwise_cost(x, y), GAMMA).sum().backward()
            torch.cuda.synchronize()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                soft_dtw(pairwise_cost(x, y), GAMMA).sum().backward()
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            row.append(f"{statistics.median(ts) * 1000:.1f}")
        mod._BACKEND_OVERRIDE = None
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    RESULTS_GPU.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_GPU.write_text(text, encoding="utf-8")
    print(text)
    return 0 if worst < 1e-3 else 2


# ----------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child-interleaved":
        print(json.dumps(child_interleaved(int(sys.argv[2]), int(sys.argv[3]))))
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        name, mode, n, repeats = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(name, mode, n, repeats)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 128, 256, 512 and 2 timed runs each")
    ap.add_argument("--sizes", default=None, help="comma-separated N = M values")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--modes", default=None, help="comma-separated subset of: pipeline, dp")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per (mode, method, size)")
    ap.add_argument("--gpu-check", action="store_true", help="CUDA: check and time the Triton kernel")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--no-interleaved", action="store_true", help="skip the interleaved timing section")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([128, 256, 512] if args.quick else SIZES)
    if args.gpu_check:
        return gpu_check(sizes)
    methods = [m for m in args.methods.split(",") if m]
    plan = {"pipeline": [m for m in methods if m in PIPELINE_METHODS], "dp": methods}
    if args.modes:
        plan = {k: v for k, v in plan.items() if k in args.modes.split(",")}
    results = {}
    for n in sizes:
        repeats = 2 if args.quick else (7 if n <= 512 else 3 if n <= 1024 else 2)
        for mode, ms in plan.items():
            for m in ms:
                r = run_one(m, mode, n, repeats, args.timeout)
                results[(mode, m, n)] = r
                print(f"N={n:5d} {mode:8s} {m:14s} time {fmt_time(r):>10s} ms  mem {fmt_mem(r):>6s} MB", flush=True)
    inter = {}
    if not args.no_interleaved and all(m in methods for m in INTERLEAVED):
        for n in sizes:
            reps = 3 if args.quick else (11 if n <= 512 else 3 if n <= 1024 else 2)
            cmd = [sys.executable, __file__, "--child-interleaved", str(n), str(reps)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * args.timeout)
                inter[n] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
            except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
                inter[n] = None
            print(f"N={n:5d} interleaved {inter[n]}", flush=True)
    text = write_report(results, sizes, plan, args, inter)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

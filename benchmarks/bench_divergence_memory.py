"""Peak memory of the dual-space vocabulary terms: fused/chunked (dwakd) vs a straightforward version.

What runs (forward + backward, float32, CPU): the student-space terms (student CE, ``kd_stu`` =
srkl(p_t->s || p_s) at tau 2 with ``z_t->s = h_t->s W_s^T``, and ``ce_t2s``) and the teacher-space
term (``kd_tea`` = KL(p_t || p_s->t) with ``z_s->t = h_s->t W_t^T``), as in DSKD / DWA-KD:

- ``fused``: :func:`dwakd.methods._chunked.fused_rows`, called exactly as
  :func:`dwakd.methods.dskd.dual_space_rows` calls it: chunks of positions, projection fused into
  the chunk loop, softmaxes recomputed in the backward (also yields entropies and the gate).
- ``naive``: the plain autograd formulation (full ``[B, T, V]`` projected logits, log-softmaxes,
  masked sums), as a straightforward implementation would write it.

Inputs, identical for both and allocated before the baseline is read: student logits
``[B, T, V_s]`` (requires grad), teacher logits ``[B, T, V_t]``, ``h_t->s`` ``[B, T, d_s]`` and
``h_s->t`` ``[B, T, d_t]`` (require grad), the two heads, gold ids. Every position is a response
position (the conservative case: compaction to response rows gives the fused version nothing extra).

Memory: each (variant, shape, allocator setting) runs in its own subprocess; reported is the peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end minus its value right
after the inputs were allocated, i.e. the extra memory the terms need (the gradient of the student
logits, 4 B x B T V_s, is part of it in both variants). Two allocator settings: glibc's default,
whose dynamic mmap threshold keeps freed buffers of up to 32 MB in the heap (so RSS also counts
retained free memory), and ``MALLOC_MMAP_THRESHOLD_=1048576`` (every buffer >= 1 MB is mapped and
returned on free, so RSS follows the live tensors, as a GPU allocator's peak would). Time: wall
clock of forward + backward, one run (noisy, shared machine).

    .venv/bin/python benchmarks/bench_divergence_memory.py [--quick]

Writes ``benchmarks/results/bench_divergence_memory.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_divergence_memory.md"
SHAPES = {
    "full": dict(B=4, T=512, V_s=50_000, V_t=152_000, d_s=768, d_t=2048),
    "small": dict(B=1, T=256, V_s=50_000, V_t=152_000, d_s=768, d_t=2048),
}
TAU, SKEW = 2.0, 0.1
NOTE = (
    'Target: fused <= 40% of naive. The fused op processes projected sides in chunks of at least 256 rows'
    ' (`MIN_PROJECTED_ROWS`, so the head matmul stays compute-bound), so the small shape (256 rows) is on'
    'e chunk and saves less; its peak is a fixed handful of `[chunk, V]` buffers plus the student-logits '
    'gradient, while the straightforward version grows with B x T.'
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _inputs(shape):
    """The inputs, each filled in place (no temporaries that would raise the RSS high-water mark)."""
    import torch

    g = torch.Generator().manual_seed(0)

    def randn(*size, scale):
        return torch.empty(*size).normal_(generator=g).mul_(scale)

    b, t = shape["B"], shape["T"]
    s_logits = randn(b, t, shape["V_s"], scale=2.0).requires_grad_()
    t_logits = randn(b, t, shape["V_t"], scale=2.0)
    h_t2s = randn(b, t, shape["d_s"], scale=1.0).requires_grad_()
    h_s2t = randn(b, t, shape["d_t"], scale=1.0).requires_grad_()
    w_s = randn(shape["V_s"], shape["d_s"], scale=0.05)
    w_t = randn(shape["V_t"], shape["d_t"], scale=0.03)
    gold = torch.randint(0, shape["V_s"], (b, t), generator=g)
    return s_logits, t_logits, h_t2s, h_s2t, w_s, w_t, gold


def run_naive(s_logits, t_logits, h_t2s, h_s2t, w_s, w_t, gold):
    import torch
    import torch.nn.functional as F

    v_s = s_logits.shape[-1]
    mask = torch.ones(gold.shape, dtype=torch.float32)
    z_t2s = h_t2s @ w_s.t()
    lp = torch.log_softmax(s_logits / TAU, -1)
    lq = torch.log_softmax(z_t2s.detach() / TAU, -1)
    p, q = lp.exp(), lq.exp()
    kd_stu = (p * (lp - ((1 - SKEW) * q + SKEW * p).log())).sum(-1)
    ce_t2s = F.cross_entropy(z_t2s.reshape(-1, v_s), gold.reshape(-1), reduction="none").view_as(mask)
    ce = F.cross_entropy(s_logits.reshape(-1, v_s), gold.reshape(-1), reduction="none").view_as(mask)
    z_s2t = h_s2t @ w_t.t()
    lps = torch.log_softmax(z_s2t / TAU, -1)
    lt = torch.log_softmax(t_logits / TAU, -1)
    kd_tea = (lt.exp() * (lt - lps)).sum(-1)
    loss = ((ce + kd_stu + ce_t2s) * mask).sum() + (kd_tea * mask).sum()
    loss.backward()
    return float(loss.detach())


def run_fused(s_logits, t_logits, h_t2s, h_s2t, w_s, w_t, gold):
    import torch

    from dwakd.methods._chunked import RowSide, fused_rows

    n = gold.numel()
    rows = torch.arange(n)
    flat_gold = gold.reshape(-1)
    stu = fused_rows(
        RowSide(s_logits.reshape(-1, s_logits.shape[-1]), index=rows, targets=flat_gold),
        RowSide(h_t2s.reshape(-1, h_t2s.shape[-1]), weight=w_s, targets=flat_gold),
        kind="srkl", temperature=TAU, skew=SKEW, entropy_p=True, q_peak=True,
    )
    tea = fused_rows(
        RowSide(h_s2t.reshape(-1, h_s2t.shape[-1]), weight=w_t),
        RowSide(t_logits.reshape(-1, t_logits.shape[-1]), index=rows),
        kind="fkl", temperature=TAU, entropy_q=True,
    )
    loss = (stu.ce_p + stu.div + stu.ce_q).sum() + tea.div.sum()
    loss.backward()
    return float(loss.detach())


def child(variant: str, shape_name: str) -> None:
    import torch

    torch.set_num_threads(2)
    shape = SHAPES[shape_name]
    inputs = _inputs(shape)
    base = _rss_mb()
    t0 = time.perf_counter()
    loss = (run_fused if variant == "fused" else run_naive)(*inputs)
    seconds = time.perf_counter() - t0
    peak = _rss_mb()
    print(json.dumps({"variant": variant, "shape": shape_name, "base_mb": base, "peak_mb": peak,
                      "extra_mb": peak - base, "seconds": seconds, "loss": loss}))


def machine() -> str:
    cpu = cpu_model()
    import torch

    return f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small shape")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    shapes = ["small"] if args.quick else ["small", "full"]
    allocators = {"glibc default": {}, "mmap threshold 1 MB": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}
    rows = []
    for shape_name in shapes:
        for alloc, extra_env in allocators.items():
            res = {}
            for variant in ("naive", "fused"):
                proc = subprocess.run([sys.executable, __file__, "--child", variant, shape_name],
                                      capture_output=True, text=True, env={**os.environ, **extra_env})
                if proc.returncode != 0:
                    res[variant] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                else:
                    res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(shape_name, alloc, variant, res[variant], flush=True)
            rows.append((shape_name, alloc, res))
    lines = [
        "## Dual-space vocabulary terms: peak memory, fused vs straightforward",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. "
        "Command: `.venv/bin/python benchmarks/bench_divergence_memory.py`.",
        "",
        "Forward + backward of CE + kd_stu (srkl, tau 2) + ce_t2s in the student space and kd_tea (KL) in "
        "the teacher space; every position a response position. Extra memory = peak RSS "
        "(`getrusage(RUSAGE_SELF).ru_maxrss`) minus RSS after allocating the inputs, each variant in its own "
        "process (includes the gradient of the student logits in both). Allocator: glibc default, or a fixed "
        "1 MB mmap threshold so that freed buffers leave the RSS (see the script's docstring).",
        "",
        "| shape (B, T, V_s, V_t, d_s, d_t) | allocator | inputs MB | naive extra MB | fused extra MB | "
        "fused / naive | naive s | fused s | loss rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape_name, alloc, res in rows:
        s = SHAPES[shape_name]
        dims = f"{s['B']}, {s['T']}, {s['V_s']}, {s['V_t']}, {s['d_s']}, {s['d_t']}"
        n, f = res["naive"], res["fused"]
        if "error" in n or "error" in f:
            lines.append(f"| {dims} | {alloc} | | {n.get('error', round(n.get('extra_mb', 0)))} | "
                         f"{f.get('error', round(f.get('extra_mb', 0)))} | | | | |")
            continue
        ratio = f["extra_mb"] / n["extra_mb"]
        rel = abs(f["loss"] - n["loss"]) / max(abs(n["loss"]), 1e-12)
        lines.append(
            f"| {dims} | {alloc} | {f['base_mb']:.0f} | {n['extra_mb']:.0f} | {f['extra_mb']:.0f} | {ratio:.1%} | "
            f"{n['seconds']:.1f} | {f['seconds']:.1f} | {rel:.1e} |"
        )
    lines += ["", NOTE]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

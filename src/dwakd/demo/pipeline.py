"""The embedded default job: SmolLM2-135M-Instruct distilled into a small student with its own tokenizer.

Stages (each shows progress; each result is cached so a second run reuses it):

1. teacher: the built-in alias ``smollm2-135m-instruct`` (converted once into ``$DWAKD_HOME``);
2. data: a self-written instruction set (:mod:`dwakd.demo.instructions`) answered greedily by the
   teacher; the answers are the training targets and the references of the held-out prompts;
3. student: a random-init Llama with a BPE tokenizer trained by dwakd on the training texts;
4. teacher cache: the teacher's hidden states on the training data (``dwakd cache-teacher``);
5. training: SFT, DSKD and DWA-KD at the same budget (same data order, steps, learning rates);
6. evaluation: every student and the teacher, sampled ROUGE-L over seeds and bits per byte;
7. report: ``<out>/report.md`` with the table, loss curves, bars and a Soft-DTW alignment plot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

TEACHER = "smollm2-135m-instruct"
METHODS = ("sft", "dskd", "dwakd")


@dataclass
class DemoSettings:
    """Sizes of the demo. ``quick`` shrinks everything to run in about two minutes."""

    n_train: int = 240
    n_test: int = 40
    answer_tokens: int = 48
    epochs: int = 2
    batch_size: int = 8
    lr: float = 2e-3
    seeds: tuple[int, ...] = (10, 20, 30)
    eval_new_tokens: int = 64
    methods: tuple[str, ...] = METHODS
    student: dict = field(default_factory=lambda: {
        "family": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688,
        "max_positions": 256, "tokenizer_kind": "bpe", "vocab_size": 4096, "seed": 0,
    })

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(n_train=64, n_test=12, answer_tokens=40, epochs=2, batch_size=8, seeds=(10,), eval_new_tokens=40,
                   student={"family": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                            "intermediate_size": 344, "max_positions": 256, "tokenizer_kind": "bpe",
                            "vocab_size": 1024, "seed": 0})


def _stage(name: str) -> None:
    print(f"\n== {name}", flush=True)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _trim_answer(text: str, finished: bool) -> str:
    """An answer cut by the token limit ends at its last full sentence (when it has one)."""
    text = text.strip()
    if finished:
        return text
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"))
    if text.endswith((".", "!", "?")):
        return text
    return text[: cut + 1].strip() if cut > 20 else text


def teacher_answers(instructions: list[dict], settings: DemoSettings) -> list[dict]:
    """Dolly records whose responses are the teacher's greedy answers (cached in ``$DWAKD_HOME/demo``)."""
    import torch

    from dwakd.eval.generate import GenerationSettings, generate
    from dwakd.eval.runner import format_prompts
    from dwakd.models import load_model, load_tokenizer, resolve_alias
    from dwakd.models.home import dwakd_home

    teacher_dir = resolve_alias(TEACHER)
    marker = json.loads((teacher_dir / "dwakd_alias.json").read_text())
    key = _hash({"teacher": marker["sha256"], "instructions": instructions, "tokens": settings.answer_tokens,
                 "dtype": "bfloat16"})
    cache = dwakd_home() / "demo" / f"answers-{key}.jsonl"
    if cache.is_file():
        print(f"teacher answers: reusing {cache}")
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    tok = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir, dtype=torch.bfloat16).eval()
    from dwakd.data import Record

    records = [Record(format="dolly", response="", instruction=r["instruction"], context=r.get("context", ""))
               for r in instructions]
    prompts = format_prompts(records, tok, chat=True)
    gen = generate(model, tok, prompts, GenerationSettings(greedy=True, max_new_tokens=settings.answer_tokens,
                                                           batch_size=16),
                   progress="teacher answers")
    out = [dict(r, response=_trim_answer(g.text, g.stopped_at_eos)) for r, g in zip(instructions, gen)]
    out = [r for r in out if r["response"]]
    _write_jsonl(cache, out)
    return out


def method_config(method: str, data_dir: Path, out_dir: Path, settings: DemoSettings) -> dict:
    """The training config of one demo run (written to ``<out>/configs/<method>.yaml``)."""
    options: dict = {}
    return {
        "output_dir": str(out_dir / method),
        "model": {"teacher": TEACHER, "build": dict(settings.student), "teacher_dtype": "float32"},
        "data": {"train": str(data_dir / "train.jsonl"), "dev": None, "dev_fraction": 0.0, "max_length": 192,
                 "max_prompt_length": 64, "teacher_chat_template": True},
        "method": {"name": method, **options},
        "train": {"lr": settings.lr, "projector_lr": 1e-3, "epochs": settings.epochs, "batch_size": settings.batch_size,
                  "warmup_ratio": 0.05, "log_every": 2, "seed": 42, "bf16": True, "save_every": 0,
                  "keep_best_n": 1, "final_model": "last"},
    }


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, settings: DemoSettings | None = None) -> dict:
    """Run every stage; returns ``{"report": path, "results": [...], "table": markdown, "timings": {...}}``.

    ``settings`` overrides the sizes (default: :class:`DemoSettings`, or its ``quick()`` variant).
    """
    import torch

    from dwakd.config import load_config
    from dwakd.demo.instructions import generate_instructions
    from dwakd.eval.generate import GenerationSettings
    from dwakd.eval.runner import EvalOptions, evaluate, results_markdown, write_results
    from dwakd.models import resolve_alias
    from dwakd.train import train
    from dwakd.train.teacher_cache import build_cache_for_config

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()

    _stage("1/7 teacher (SmolLM2-135M-Instruct, converted once)")
    print(f"teacher: {resolve_alias(TEACHER)}")
    timings["teacher"] = time.time() - t0

    _stage("2/7 instruction data (self-written prompts, answered by the teacher)")
    t = time.time()
    train_instr, test_instr = generate_instructions(settings.n_train, settings.n_test, seed=0)
    answered = teacher_answers(train_instr + test_instr, settings)
    by_instr = {r["instruction"]: r for r in answered}
    train_recs = [by_instr[r["instruction"]] for r in train_instr if r["instruction"] in by_instr]
    test_recs = [by_instr[r["instruction"]] for r in test_instr if r["instruction"] in by_instr]
    data_dir = out / "data"
    _write_jsonl(data_dir / "train.jsonl", train_recs)
    _write_jsonl(data_dir / "test.jsonl", test_recs)
    print(f"{len(train_recs)} training and {len(test_recs)} held-out records in {data_dir}")
    timings["data"] = time.time() - t

    configs = {}
    for method in settings.methods:
        cfg_path = out / "configs" / f"{method}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(method_config(method, data_dir, out, settings), sort_keys=False))
        configs[method] = cfg_path

    _stage("3-4/7 student tokenizer + teacher cache")
    t = time.time()
    kd_method = next((m for m in settings.methods if m != "sft"), None)
    if kd_method is not None:
        summary = build_cache_for_config(load_config(configs[kd_method], []))
        print(f"teacher cache: {summary['path']} ({summary['tokens']} tokens, "
              f"{summary['bytes_per_token']:.0f} bytes/token{', reused' if summary.get('reused') else ''})")
    timings["cache"] = time.time() - t

    _stage("5/7 training " + ", ".join(settings.methods) + " at the same budget")
    finals = {}
    for method in settings.methods:
        t = time.time()
        print(f"-- {method}", flush=True)
        cfg = load_config(configs[method], [])
        run_dir = Path(cfg.output_dir)
        if (run_dir / "final" / "config.json").is_file() and _same_config(run_dir, configs[method]):
            print(f"reusing {run_dir / 'final'}")
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            train(cfg)
            (run_dir / "demo_config.yaml").write_text(_run_identity(configs[method]))
        finals[method] = run_dir / "final"
        timings[f"train/{method}"] = time.time() - t

    _stage("6/7 evaluation (sampled ROUGE-L over seeds, bits per byte)")
    t = time.time()
    # bf16 weights: on CPU a decoding step is several times faster than float32 (BENCHMARKS.md).
    opts = EvalOptions(seeds=settings.seeds, dtype="bfloat16",
                       generation=GenerationSettings(max_new_tokens=settings.eval_new_tokens, batch_size=16,
                                                     max_prompt_tokens=128, max_length=256))
    test_sets = {"demo-heldout": str(data_dir / "test.jsonl")}
    results = [evaluate(TEACHER, test_sets, opts, name="teacher (SmolLM2-135M)")]
    for method in settings.methods:
        results.append(evaluate(str(finals[method]), test_sets, opts, name=f"student · {method}"))
    for r in results:
        write_results(r, out / "eval" / r["name"].split(" ")[-1].strip("()"))
    timings["eval"] = time.time() - t

    _stage("7/7 report")
    from dwakd.demo.report import write_demo_report

    table = results_markdown(results)
    report = write_demo_report(out, results, {m: Path(configs[m]) for m in settings.methods}, finals, settings,
                               timings, quick=quick)
    print("\n" + table)
    print(f"report: {report}")
    timings["total"] = time.time() - t0
    print(f"total {timings['total']:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if k != "total") + ")")
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    del torch
    return {"report": report, "results": results, "table": table, "timings": timings}


def _run_identity(cfg_path: Path) -> str:
    """The config text plus a hash of its training data: a trained run is reused only if both match."""
    cfg = yaml.safe_load(cfg_path.read_text())
    data = Path(cfg["data"]["train"]).read_bytes()
    return cfg_path.read_text() + f"# training data sha256: {hashlib.sha256(data).hexdigest()}\n"


def _same_config(run_dir: Path, cfg_path: Path) -> bool:
    prev = run_dir / "demo_config.yaml"
    return prev.is_file() and prev.read_text() == _run_identity(cfg_path)

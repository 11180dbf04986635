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


def default_pretrain_corpus() -> list[dict]:
    """WikiText-2 for the demo student's pretraining: ``$DWAKD_WIKITEXT2`` or ``../shared/data/wikitext-2``
    (the tokenized release, detokenized by dwakd) when present, else ``datasets``' raw WikiText-2 (train split;
    needs the hub once, or a datasets cache)."""
    import os

    here = Path(__file__).resolve()
    for cand in (os.environ.get("DWAKD_WIKITEXT2"), Path.cwd().parent / "shared" / "data" / "wikitext-2",
                 here.parents[4] / "shared" / "data" / "wikitext-2" if len(here.parents) > 4 else None):
        if cand and (Path(cand) / "valid.txt").is_file():
            return [{"kind": "wikitext", "path": str(Path(cand) / name)} for name in ("valid.txt", "test.txt")
                    if (Path(cand) / name).is_file()]
    return [{"kind": "datasets", "name": "wikitext", "config": "wikitext-2-raw-v1", "split": "train", "field": "text",
             "limit": 12000}]


@dataclass
class DemoSettings:
    """Sizes of the demo. ``quick`` shrinks everything to run in about two minutes.

    ``pretrain``: the ``dwakd pretrain`` block of the student (its ``student`` is filled from ``student``;
    ``corpus`` defaults to :func:`default_pretrain_corpus`). ``train_seeds``: training seeds per method.
    """

    n_train: int = 176
    n_test: int = 40
    answer_tokens: int = 48
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    seeds: tuple[int, ...] = (10, 20, 30)
    train_seeds: tuple[int, ...] = (1, 2)
    eval_new_tokens: int = 64
    methods: tuple[str, ...] = METHODS
    student: dict = field(default_factory=lambda: {
        "family": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688,
        "max_positions": 256, "tokenizer_kind": "bpe", "vocab_size": 4096, "seed": 0,
    })
    pretrain: dict = field(default_factory=lambda: {
        "heldout_fraction": 0.05, "max_heldout_bytes": 40000,
        "train": {"block_size": 128, "batch_size": 16, "lr": 3e-3, "epochs": 1, "max_steps": 120,
                  "warmup_ratio": 0.05, "min_lr_ratio": 0.1, "bf16": True, "seed": 0, "log_every": 25},
    })

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(n_train=64, n_test=12, answer_tokens=40, epochs=2, batch_size=8, seeds=(10,), train_seeds=(1,),
                   eval_new_tokens=40,
                   student={"family": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                            "intermediate_size": 344, "max_positions": 256, "tokenizer_kind": "bpe",
                            "vocab_size": 1024, "seed": 0},
                   pretrain={"heldout_fraction": 0.05, "max_heldout_bytes": 20000,
                             "train": {"block_size": 128, "batch_size": 16, "lr": 3e-3, "epochs": 1, "max_steps": 40,
                                       "bf16": True, "seed": 0, "log_every": 10}})


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


def base_config(data_dir: Path, settings: DemoSettings) -> dict:
    """The base training config of every demo cell (``dwakd compare`` sets student, method, seed, output_dir)."""
    return {
        "model": {"teacher": TEACHER, "teacher_dtype": "float32"},
        "data": {"train": str(data_dir / "train.jsonl"), "dev": None, "dev_fraction": 0.0, "max_length": 192,
                 "max_prompt_length": 64, "teacher_chat_template": True},
        "method": {"name": "sft"},
        "train": {"lr": settings.lr, "projector_lr": 1e-3, "epochs": settings.epochs, "batch_size": settings.batch_size,
                  "warmup_ratio": 0.05, "log_every": 2, "seed": 1, "bf16": True, "save_every": 0,
                  "keep_best_n": 1, "final_model": "last"},
    }


def write_configs(out: Path, data_dir: Path, settings: DemoSettings) -> Path:
    """Write ``configs/{base,pretrain,compare}.yaml`` under ``out``; returns the compare config."""
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "base.yaml").write_text(yaml.safe_dump(base_config(data_dir, settings), sort_keys=False))
    pre = dict(settings.pretrain)
    pre["student"] = dict(settings.student)
    pre.setdefault("corpus", default_pretrain_corpus())
    (cfg_dir / "pretrain.yaml").write_text(yaml.safe_dump(pre, sort_keys=False))
    compare = {
        "base": "base.yaml", "pretrain": "pretrain.yaml", "output_dir": str(out / "grid"),
        "methods": {m: {} for m in settings.methods},
        "references": {"teacher": "teacher", "student-pretrained": "pretrained"},
        "grid": [{"methods": list(settings.methods), "seeds": list(settings.train_seeds)},
                 {"references": ["teacher", "student-pretrained"]}],
        "compare_to": [m for m in ("sft", "dskd") if m in settings.methods],
        "teacher_cache": True,
        "eval": {"sets": {"demo-heldout": {"path": str(data_dir / "test.jsonl")}}, "seeds": list(settings.seeds),
                 "max_new_tokens": settings.eval_new_tokens, "max_prompt_tokens": 128, "max_length": 256,
                 "batch_size": 16, "dtype": "bfloat16"},
    }
    (cfg_dir / "compare.yaml").write_text(yaml.safe_dump(compare, sort_keys=False))
    return cfg_dir / "compare.yaml"


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, settings: DemoSettings | None = None) -> dict:
    """Run every stage; returns ``{"report": path, "results": results.json dict, "timings": {...}}``.

    Stages: teacher -> self-written data answered by the teacher -> ``dwakd compare`` (pretrained student,
    teacher cache, methods x training seeds, evaluation of every cell and of the teacher) -> report.
    Everything is cached or resumable, so a second run only rewrites the report.
    """
    from dwakd.compare import load_compare_config, run_grid
    from dwakd.demo.instructions import generate_instructions
    from dwakd.models import resolve_alias

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()

    _stage("1/4 teacher (SmolLM2-135M-Instruct, converted once)")
    print(f"teacher: {resolve_alias(TEACHER)}")
    timings["teacher"] = time.time() - t0

    _stage("2/4 instruction data (self-written prompts, answered by the teacher)")
    t = time.time()
    train_instr, test_instr = generate_instructions(settings.n_train, settings.n_test, seed=0)
    answered = teacher_answers(train_instr + test_instr, settings)
    by_instr = {r["instruction"]: r for r in answered}
    train_recs = [by_instr[r["instruction"]] for r in train_instr if r["instruction"] in by_instr]
    test_recs = [by_instr[r["instruction"]] for r in test_instr if r["instruction"] in by_instr]
    data_dir = out / "data"
    for name, recs in (("train", train_recs), ("test", test_recs)):
        path = data_dir / f"{name}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged data keeps cells valid
            _write_jsonl(path, recs)
    print(f"{len(train_recs)} training and {len(test_recs)} held-out records in {data_dir}")
    timings["data"] = time.time() - t

    _stage("3/4 pretrained student, teacher cache, " + ", ".join(settings.methods)
           + f" x training seeds {list(settings.train_seeds)}, evaluation (dwakd compare)")
    t = time.time()
    cc = load_compare_config(write_configs(out, data_dir, settings))
    run_grid(cc)
    timings["grid"] = time.time() - t

    _stage("4/4 report")
    from dwakd.demo.report import write_demo_report

    res = json.loads((cc.output_dir / "results.json").read_text())
    pre = json.loads((cc.output_dir / "pretrain.json").read_text())
    timings["total"] = time.time() - t0
    report = write_demo_report(out, cc, res, pre, settings, timings, quick=quick)
    print(f"report: {report}")
    print(f"total {timings['total']:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if k != "total") + ")")
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return {"report": report, "results": res, "timings": timings, "grid": cc.output_dir}

"""``evaluate(model_spec, test_sets, ...)``: the whole evaluation of one model, as a results dict.

Per test set: ROUGE-L (percent) of sampled answers for every seed, summarised as mean and std
over seeds; bits per byte of the reference responses (:mod:`dwakd.eval.bpb`; every reference of
an example is scored, pooled as a ratio of sums); with a teacher,
agreement with its greedy answers (:mod:`dwakd.eval.agreement`); generation throughput.
``average``: the unweighted mean over test sets (each set counts once, as in the papers'
"avg." column); its ROUGE-L spread is the std over seeds of the per-seed set averages.
Spreads are ``numpy.std`` (population, ddof 0) over seeds; 0 for a single seed.

Test sets: any file :func:`dwakd.data.load_records` reads (Dolly, Alpaca, MiniLLM/DSKD with
``output`` a string or a list of references, chat ``messages``). Prompts (``chat_template``):
``auto`` uses the tokenizer's chat template when it has one, else the plain Dolly/MiniLLM
template; ``on`` requires a chat template; ``off`` always uses the plain template. The text
itself comes from :func:`dwakd.data.format_prompt`: a pre-templated MiniLLM ``prompt`` is used
verbatim in the plain template; in a chat template the ``instruction`` (+ ``input``) fields form
the user turn (the ``prompt`` text when those fields are absent).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dwakd.data.prompts import format_prompt, has_chat_template
from dwakd.data.records import Record, load_records
from dwakd.errors import ConfigError, DataError, ModelLoadError
from dwakd.eval.agreement import agreement_rouge, teacher_answers
from dwakd.eval.bpb import bits_per_byte
from dwakd.eval.generate import DEFAULT_SEEDS, GenerationSettings, generate
from dwakd.eval.rouge import rouge_l_scores

CHAT_MODES = ("auto", "on", "off")

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What to run. ``dtype``: weights dtype for models loaded here; ``autocast``: None or
    ``"bfloat16"`` (autocast around forwards); ``limit``: first N examples of each set."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    limit: int | None = None
    chat_template: str = "auto"
    bpb: bool = True
    include_eos: bool = True
    dtype: str = "float32"
    autocast: str | None = None
    progress: bool = True
    split: str = "test"

    def __post_init__(self) -> None:
        if self.chat_template not in CHAT_MODES:
            raise ConfigError(f"chat_template must be one of {CHAT_MODES}; got '{self.chat_template}'")
        if not self.generation.greedy and not self.seeds:
            raise ConfigError("sampled evaluation needs at least one seed")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1; got {self.limit}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


# --- test sets -------------------------------------------------------------------------------

def load_test_set(path: str | Path, limit: int | None = None, split: str = "test") -> list[Record]:
    """The records of a test set in any source and format :func:`dwakd.data.load_records` reads
    (``split``: for a DatasetDict folder or a hub dataset)."""
    try:
        records = load_records(path, limit=limit, split=split).records
    except FileNotFoundError as e:
        raise DataError(f"test set {path} does not exist") from e
    if not records:
        raise DataError(f"test set {path} holds no records (an empty file?); nothing to evaluate")
    return records


def drop_long_prompts(examples: list[Record], tokenizer, chat: bool, settings, model, set_name: str):
    """Leave out examples whose (truncated) prompt fills the model's context window: no token could
    be generated (a GPT-2 model would index past its positions). Returns (kept, number left out)."""
    from dwakd.eval.generate import encode_prompt, model_max_positions

    positions = model_max_positions(model)
    if positions is None:
        return examples, 0
    prompts = format_prompts(examples, tokenizer, chat, settings.max_prompt_tokens)
    keep = [ex for ex, p in zip(examples, prompts)
            if len(encode_prompt(tokenizer, p, settings.max_prompt_tokens)) < positions]
    n = len(examples) - len(keep)
    if n:
        log.warning("%s: %d of %d examples left out: their prompts (cut to --max-prompt-tokens %d) fill the model's "
                    "%d positions, leaving no room to generate; lower --max-prompt-tokens below %d to keep them",
                    set_name, n, len(examples), settings.max_prompt_tokens, positions, positions)
    if not keep:
        raise DataError(f"{set_name}: every prompt fills the model's {positions} positions; lower --max-prompt-tokens")
    return keep, n


def use_chat_template(tokenizer, mode: str) -> bool:
    has = has_chat_template(tokenizer)
    if mode == "on" and not has:
        raise ConfigError("--chat-template on, but this tokenizer has no chat template")
    return has and mode != "off"


def format_prompts(records: Sequence[Record], tokenizer, chat: bool, max_tokens: int | None = None) -> list[str]:
    """The prompt text of each record (:func:`dwakd.data.format_prompt`; rules in the module doc). With a
    chat template, ``max_tokens`` shortens the user's content, never the template."""
    return [format_prompt(r, tokenizer, chat_template=chat, max_tokens=max_tokens) for r in records]


# --- models ----------------------------------------------------------------------------------

def load_pair(spec, *, dtype: str = "float32"):
    """(model in eval mode, tokenizer); a LoRA adapter directory without tokenizer files uses its base's."""
    from dwakd.models import load_model, load_tokenizer

    model = load_model(spec, dtype=dtype).eval()
    try:
        tokenizer = load_tokenizer(spec)
    except ModelLoadError:
        cfg = Path(str(spec)) / "adapter_config.json"
        if not cfg.is_file():
            raise
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
        if not base:
            raise
        tokenizer = load_tokenizer(base)
    return model, tokenizer


def _autocast_dtype(name: str | None):
    if name in (None, "", "none", "off"):
        return None
    try:
        return getattr(torch, name)
    except AttributeError as e:
        raise ConfigError(f"unknown autocast dtype '{name}' (use bfloat16 or none)") from e


def spread(values: Mapping[int, float]) -> dict:
    """``{"mean", "std", "per_seed"}`` over the seeds' values (std: population, ddof 0)."""
    vals = [float(v) for v in values.values()]
    return {
        "mean": float(np.mean(vals)) if vals else float("nan"),
        "std": float(np.std(vals)) if vals else float("nan"),
        "per_seed": {str(k): float(v) for k, v in values.items()},
    }


def _set_name(path: Path, taken: set[str]) -> str:
    stem = path.stem or str(path)
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    return name


# --- the evaluation --------------------------------------------------------------------------

def evaluate(model_spec, test_sets: Sequence[str | Path] | Mapping[str, str | Path], options: EvalOptions | None = None,
             *, name: str | None = None, model=None, tokenizer=None, teacher=None,
             teacher_refs: Mapping[str, Sequence[str]] | None = None, store=None) -> dict:
    """Evaluate one model on ``test_sets`` (paths, or ``{name: path}``); returns the results dict.

    ``model``/``tokenizer``: an already loaded pair (``model_spec`` is then only a label).
    ``teacher``: a spec or a loaded ``(model, tokenizer)``; its greedy answers become the
    agreement references. ``teacher_refs``: ``{set name: answers}`` computed earlier (skips the
    teacher run; answers must follow the test set order after ``limit``). The dict holds
    ``samples`` (``{set: {seed: [text, ...]}}``), ``examples`` (prompts, references, per-example
    ROUGE-L) and ``teacher_answers`` for the writers. ``store``: an :class:`~dwakd.eval.store.EvalStore`
    that receives each finished (set, seed) as it ends and supplies the pieces finished before a
    ``--resume``. Examples whose prompt leaves no room to generate in the model's context are
    skipped, counted (``skipped_long_prompts``) and reported.
    """
    opts = options or EvalOptions()
    t_start = time.perf_counter()
    if model is None:
        model, tokenizer = load_pair(model_spec, dtype=opts.dtype)
    elif tokenizer is None:
        raise ConfigError("evaluate(model=...) needs its tokenizer too")
    t_loaded = time.perf_counter()
    autocast = _autocast_dtype(opts.autocast)
    chat = use_chat_template(tokenizer, opts.chat_template)
    sets = dict(test_sets) if isinstance(test_sets, Mapping) else {}
    if not isinstance(test_sets, Mapping):
        for p in test_sets:
            sets[_set_name(Path(p), set(sets))] = p
    if not sets:
        raise ConfigError("no test set given")
    seeds = (0,) if opts.generation.greedy else tuple(opts.seeds)

    teacher_pair = None  # loaded when first needed (not at all when every answer is known)

    results: dict = {
        "model": str(model_spec),
        "name": name or Path(str(model_spec)).name,
        "prompt_format": "chat" if chat else "plain",
        "options": opts.to_dict(),
        "sets": {},
        "samples": {},
        "examples": {},
        "teacher_answers": {},
    }
    if teacher is not None:
        results["teacher"] = teacher if isinstance(teacher, str | Path) else "(given)"
    for set_name, path in sets.items():
        examples = load_test_set(path, opts.limit, opts.split)
        examples, n_long = drop_long_prompts(examples, tokenizer, chat, opts.generation, model, set_name)
        prompts = format_prompts(examples, tokenizer, chat, opts.generation.max_prompt_tokens)
        refs = [list(ex.references) for ex in examples]
        entry: dict = {"file": str(path), "n": len(examples)}
        if n_long:
            entry["skipped_long_prompts"] = n_long
        per_seed, samples, n_tokens, n_eos, gen_seconds = {}, {}, 0, 0, 0.0
        scores_by_seed: dict = {}
        for seed in seeds:
            got = store.done("seed", set_name, seed) if store is not None else None
            if got is not None:  # finished before an interruption (--resume)
                texts = store.samples(set_name, seed, len(examples))
                scores = rouge_l_scores(texts, refs)
                per_seed[seed], samples[seed], scores_by_seed[seed] = got["rougeL"], texts, scores
                n_tokens += got["tokens"]
                n_eos += got["eos"]
                gen_seconds += got["seconds"]
                continue
            label = f"{results['name']} {set_name} " + ("greedy" if opts.generation.greedy else f"seed {seed}")
            t0 = time.perf_counter()
            gens = generate(model, tokenizer, prompts, opts.generation, seed=seed,
                            keys=list(range(len(examples))), progress=label if opts.progress else False,
                            autocast_dtype=autocast)
            seconds = time.perf_counter() - t0
            texts = [g.text for g in gens]
            scores = rouge_l_scores(texts, refs)
            per_seed[seed], samples[seed], scores_by_seed[seed] = float(np.mean(scores)), texts, scores
            toks = sum(len(g.token_ids) + int(g.stopped_at_eos) for g in gens)
            eos = sum(g.stopped_at_eos for g in gens)
            n_tokens, n_eos, gen_seconds = n_tokens + toks, n_eos + eos, gen_seconds + seconds
            if store is not None:
                store.add_seed(set_name, seed, sample_rows(set_name, seed, prompts, refs, texts, scores),
                               {"rougeL": per_seed[seed], "tokens": toks, "eos": eos, "seconds": seconds})
        entry["rougeL"] = spread(per_seed)
        entry["generation"] = {
            "seconds": gen_seconds,
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / gen_seconds if gen_seconds > 0 else float("nan"),
            "mean_tokens": n_tokens / (len(examples) * len(seeds)),
            "stopped_at_eos": n_eos / (len(examples) * len(seeds)),
        }
        bpb_kw = dict(include_eos=opts.include_eos, max_prompt_tokens=opts.generation.max_prompt_tokens,
                      max_length=opts.generation.max_length, autocast_dtype=autocast)
        if opts.bpb:
            got = store.done("bpb", set_name) if store is not None else None
            if got is not None:
                entry["bpb"] = got["bpb"]
            else:
                t0 = time.perf_counter()
                flat = [(p, ref) for p, rs in zip(prompts, refs) for ref in rs]  # every reference counts
                entry["bpb"] = bits_per_byte(model, tokenizer, [f[0] for f in flat], [f[1] for f in flat],
                                             **bpb_kw).to_dict()
                entry["bpb"]["seconds"] = time.perf_counter() - t0
                if store is not None:
                    store.add("bpb", set_name, {"bpb": entry["bpb"]})
        if teacher is not None:
            if teacher_refs and set_name in teacher_refs:
                answers = list(teacher_refs[set_name])
                if len(answers) != len(examples):
                    raise ConfigError(f"teacher_refs['{set_name}'] has {len(answers)} answers for {len(examples)} examples")
            elif store is not None and store.done("teacher", set_name) is not None:
                answers = store.teacher_answers(set_name, len(examples))
            else:
                if teacher_pair is None:
                    teacher_pair = teacher if isinstance(teacher, tuple) else load_pair(teacher, dtype=opts.dtype)
                t_model, t_tok = teacher_pair
                t_prompts = format_prompts(examples, t_tok, use_chat_template(t_tok, opts.chat_template),
                                           opts.generation.max_prompt_tokens)
                answers = teacher_answers(t_model, t_tok, t_prompts, opts.generation,
                                          progress=f"teacher answers {set_name}" if opts.progress else False,
                                          autocast_dtype=autocast)
                if store is not None:
                    store.add_teacher(set_name, answers)
            results["teacher_answers"][set_name] = answers
            agree = {"rougeL": spread(agreement_rouge(samples, answers))}
            agree["teacher_bpb"] = bits_per_byte(model, tokenizer, prompts, answers, **bpb_kw).to_dict()
            entry["agreement"] = agree
        results["sets"][set_name] = entry
        results["samples"][set_name] = {str(s): t for s, t in samples.items()}
        results["examples"][set_name] = {"prompts": prompts, "references": refs,
                                         "rougeL": {str(s): v for s, v in scores_by_seed.items()}}
    results["average"] = _average(results["sets"], seeds)
    results["timing"] = {"load_s": t_loaded - t_start, "total_s": time.perf_counter() - t_start}
    return results


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _average(sets: dict, seeds: Sequence[int]) -> dict:
    """Unweighted mean over test sets; ROUGE-L spread from the per-seed set averages."""
    entries = list(sets.values())
    per_seed = {s: float(np.mean([e["rougeL"]["per_seed"][str(s)] for e in entries])) for s in seeds}
    avg: dict = {"rougeL": spread(per_seed)}
    if all("bpb" in e for e in entries):
        avg["bpb"] = _mean([e["bpb"]["value"] for e in entries])
    if all("agreement" in e for e in entries):
        agree_seed = {s: float(np.mean([e["agreement"]["rougeL"]["per_seed"][str(s)] for e in entries]))
                      for s in seeds}
        avg["agreement"] = {"rougeL": spread(agree_seed),
                            "teacher_bpb": _mean([e["agreement"]["teacher_bpb"]["value"] for e in entries])}
    tokens = sum(e["generation"]["tokens"] for e in entries)
    seconds = sum(e["generation"]["seconds"] for e in entries)
    avg["tokens_per_s"] = tokens / seconds if seconds > 0 else float("nan")
    return avg


# --- writers (kept importable from here) ------------------------------------------------------

from dwakd.eval.writers import protocol_note, results_markdown, sample_rows, write_results  # noqa: E402,F401

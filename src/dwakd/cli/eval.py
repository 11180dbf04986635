"""``dwakd eval MODEL --data SOURCE [SOURCE ...]``: ROUGE-L over seeds, bits per byte, teacher agreement.

Writes into ``--out`` as it goes (:mod:`dwakd.eval.store`: each finished set and seed is kept, and
``--resume`` continues an interrupted evaluation; an existing evaluation is never overwritten without
``--overwrite``), then prints the Markdown results table and the path of every file written. When
MODEL is a dwakd ``final/`` folder, its model card gains the ROUGE-L results.
"""

from __future__ import annotations

import re
from pathlib import Path

from dwakd.errors import ConfigError

NAME = "eval"
HELP = "evaluate a model: sampled ROUGE-L over seeds, bits per byte of references, agreement with a teacher"
EXAMPLES = [
    "dwakd eval runs/quickstart/final --data data/demo/test.jsonl",
    "dwakd eval smollm2-135m-instruct --data data/paper/vicuna.jsonl data/paper/dolly-test.jsonl --seeds 10,20,30",
    "dwakd eval runs/quickstart/final --data OWNER/DATASET --split test --limit 50   (a hub dataset)",
    "dwakd eval runs/quickstart/final --data data/demo/test.jsonl --out runs/eval/x --resume   (continue after a kill)",
]


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise ConfigError(f"--seeds must be comma-separated integers, e.g. 10,20,30; got '{text}'") from e
    if not seeds:
        raise ConfigError("--seeds is empty")
    return seeds


def add_arguments(p) -> None:
    p.add_argument("model", help="model: hub name, local directory (LoRA adapters included) or alias")
    p.add_argument("--data", nargs="+", required=True, metavar="SOURCE",
                   help="test set(s): .jsonl/.json/.csv/.parquet/.arrow files, save_to_disk folders or hub dataset "
                        "names, in any record format dwakd reads (Dolly, Alpaca, MiniLLM, chat, ShareGPT, "
                        "prompt/completion)")
    p.add_argument("--split", default="test", help="split of a DatasetDict folder or hub dataset (default: %(default)s)")
    p.add_argument("--seeds", default="10,20,30,40,50", help="sampling seeds, comma-separated (default: %(default)s)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (one pass, seeds ignored)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 disables (default: %(default)s)")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="prompt tokens kept (left-truncated; default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="prompt + generation tokens (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="further cap on generated tokens")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of each set")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default: %(default)s)")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                   help="prompt format: auto = the model's chat template when it has one, else the plain "
                        "Dolly/MiniLLM template (default: %(default)s)")
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="also measure agreement with this teacher's greedy answers")
    p.add_argument("--no-bpb", action="store_true", help="skip bits per byte of the references")
    p.add_argument("--no-eos-in-bpb", action="store_true", help="do not score the end token in bits per byte")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights dtype (default: %(default)s)")
    p.add_argument("--autocast", choices=("none", "bfloat16"), default="none",
                   help="autocast forwards to this dtype (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 can be much faster on a busy machine)")
    p.add_argument("--name", default=None, help="row label in the table (default: the model's name)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: runs/eval/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted evaluation in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from dwakd.config.inputs import looks_like_local
    from dwakd.eval.generate import GenerationSettings
    from dwakd.eval.runner import EvalOptions, evaluate, results_markdown, write_results
    from dwakd.eval.store import EvalStore

    for f in args.data:
        if looks_like_local(f) and not Path(f).expanduser().exists():
            raise ConfigError(f"--data {f} does not exist")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1; got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    settings = GenerationSettings(
        greedy=args.greedy, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_prompt_tokens=args.max_prompt_tokens, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )
    options = EvalOptions(
        seeds=_seeds(args.seeds), generation=settings, limit=args.limit, chat_template=args.chat_template,
        bpb=not args.no_bpb, include_eos=not args.no_eos_in_bpb, dtype=args.dtype,
        autocast=None if args.autocast == "none" else args.autocast, progress=not args.no_progress,
        split=args.split,
    )
    name = args.name or Path(str(args.model).rstrip("/")).name
    out = Path(args.out) if args.out else Path("runs") / "eval" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    identity = {"model": str(args.model), "data": list(args.data), "split": args.split, "teacher": args.teacher,
                "options": options.to_dict()}
    store = EvalStore(out, identity, resume=args.resume, overwrite=args.overwrite)
    if store.resumed_pieces:
        print(f"resuming {out}: {store.resumed_pieces} finished pieces kept")
    sets = _sets(args.data)
    results = evaluate(args.model, sets, options, name=name, teacher=args.teacher, store=store)
    paths = write_results(results, out, store=store)
    print(results_markdown(results))
    for set_name, entry in results["sets"].items():
        if entry.get("skipped_long_prompts"):
            print(f"{set_name}: {entry['skipped_long_prompts']} of {entry['n'] + entry['skipped_long_prompts']} "
                  f"examples skipped (prompt fills the model's context window; not in the averages)")
    t = results["timing"]
    print(f"took {t['total_s']:.1f}s (model load {t['load_s']:.1f}s); "
          f"generation {results['average']['tokens_per_s']:.1f} tokens/s")
    from dwakd.train.card import add_eval_results

    if Path(str(args.model)).is_dir() and add_eval_results(args.model, results):
        paths["card"] = Path(args.model) / "README.md"
    print("wrote:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return 0


def _sets(data: list[str]) -> dict:
    """``{set name: source}`` (file stem, or the hub name's last part; repeated names get -2, -3)."""
    out: dict = {}
    for spec in data:
        stem = Path(spec.rstrip("/")).stem or spec
        name, k = stem, 2
        while name in out:
            name, k = f"{stem}-{k}", k + 1
        out[name] = spec
    return out

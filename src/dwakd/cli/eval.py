"""``dwakd eval MODEL --data FILE [FILE ...]``: ROUGE-L over seeds, bits per byte, teacher agreement.

Prints the Markdown results table and writes ``results.json``, ``results.md`` and
``samples.jsonl`` (plus ``teacher_answers.jsonl`` with ``--teacher``) to ``--out``.
"""

from __future__ import annotations

import re
from pathlib import Path

from dwakd.errors import ConfigError

NAME = "eval"
HELP = "evaluate a model: sampled ROUGE-L over seeds, bits per byte of references, agreement with a teacher"


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
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="test set(s): JSONL in Dolly, Alpaca or MiniLLM/DSKD format")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from dwakd.eval.generate import GenerationSettings
    from dwakd.eval.runner import EvalOptions, evaluate, results_markdown, write_results

    for f in args.data:
        if not Path(f).is_file():
            raise ConfigError(f"--data file {f} does not exist")
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
    )
    name = args.name or Path(str(args.model).rstrip("/")).name
    out = Path(args.out) if args.out else Path("runs") / "eval" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    results = evaluate(args.model, args.data, options, name=name, teacher=args.teacher)
    paths = write_results(results, out)
    print(results_markdown(results))
    t = results["timing"]
    print(f"took {t['total_s']:.1f}s (model load {t['load_s']:.1f}s); "
          f"generation {results['average']['tokens_per_s']:.1f} tokens/s")
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0

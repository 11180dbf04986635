"""``dwakd judge A/samples.jsonl B/samples.jsonl --base-url URL --model NAME``: pairwise LLM judging.

Each pair is judged in both orders through any OpenAI-compatible chat endpoint; prints the
win / tie / loss table (95% intervals) and writes ``judgements.jsonl`` (every raw answer),
``judge_results.json`` and ``judge_results.md`` to ``--out``. Rerunning the same command resumes.
Exit status 3 when the request budget ran out before every pair was judged.
"""

from __future__ import annotations

import os
from pathlib import Path

from dwakd.errors import ConfigError

NAME = "judge"
HELP = "compare two models' eval samples pairwise with an LLM judge (OpenAI-compatible endpoint)"


def add_arguments(p) -> None:
    p.add_argument("samples_a", help="samples.jsonl of model A (written by dwakd eval)")
    p.add_argument("samples_b", help="samples.jsonl of model B (same sets, seeds and keys)")
    p.add_argument("--base-url", required=True, help="endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="judge model name as the endpoint knows it")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; unset = no key)")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE",
                   help="test set files, for samples without a 'prompt' (set name = file stem)")
    p.add_argument("--name-a", default=None, help="label of A (default: its directory name)")
    p.add_argument("--name-b", default=None, help="label of B (default: its directory name)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (progress is resumed from it)")
    p.add_argument("--max-requests", type=int, default=None, help="HTTP request budget of this run, retries included")
    p.add_argument("--max-retries", type=int, default=4, help="retries per request on 429/5xx/connection errors")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each retry")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=16, help="judge answer length cap (default: %(default)s)")
    p.add_argument("--guided-choice", action="store_true",
                   help="send vLLM's guided_choice so the server can only answer a verdict marker")
    p.add_argument("--limit", type=int, default=None, help="judge the first N pairs only")


def run(args) -> int:
    import logging

    from dwakd.eval.judge import (
        JudgeSettings,
        load_prompts,
        load_samples,
        pair_items,
        results_markdown,
        run_judge,
    )

    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per request otherwise
        if not getattr(args, "verbose", False):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("max_requests", "max_retries", "limit"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    a, b = load_samples(args.samples_a), load_samples(args.samples_b)
    items, unmatched = pair_items(a, b, load_prompts(args.data))
    if not items:
        raise ConfigError(f"{args.samples_a} and {args.samples_b} share no (set, seed, key): nothing to judge")
    if unmatched:
        print(f"note: {unmatched} samples appear in one file only and are skipped")
    if args.limit is not None:
        items = items[: args.limit]
    settings = JudgeSettings(
        base_url=args.base_url, model=args.model, api_key=os.environ.get(args.api_key_env) or "none",
        max_requests=args.max_requests, max_retries=args.max_retries, backoff_s=args.backoff,
        timeout_s=args.timeout, max_tokens=args.max_tokens, guided_choice=args.guided_choice)
    names = (args.name_a or Path(args.samples_a).resolve().parent.name,
             args.name_b or Path(args.samples_b).resolve().parent.name)
    summary = run_judge(items, args.out, settings, names=names)
    print(results_markdown(summary))
    return 0 if summary["complete"] else 3

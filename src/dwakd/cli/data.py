"""``dwakd data prepare NAME``: build the paper's data sets (or the demo's) with their provenance."""

from __future__ import annotations

from pathlib import Path

NAME = "data"
HELP = "prepare data sets: the paper's Dolly split and test sets (from the hub or a local copy), or the demo's"
EXAMPLES = [
    "dwakd data prepare demo --out data/demo            (self-written prompts answered by the SmolLM2 teacher)",
    "dwakd data prepare dolly --out data/dolly          (hub: databricks/databricks-dolly-15k)",
    "dwakd data prepare dolly --from ~/dl/databricks-dolly-15k.jsonl --tokenizer gpt2 --out data/dolly",
    "dwakd data prepare sni --from ~/dl/sinst_test.jsonl --out data/sni",
    "dwakd data prepare vicuna --from ../shared/data/vicuna.jsonl --out data/vicuna",
]


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    q = sub.add_parser("prepare", help="build one set into --out (JSONL + PROVENANCE.json)")
    q.add_argument("name", choices=("demo", "dolly", "selfinst", "vicuna", "sni", "unni"))
    q.add_argument("--from", dest="source", default=None, metavar="SOURCE",
                   help="local file/folder or hub dataset name (default for dolly: databricks/databricks-dolly-15k)")
    q.add_argument("--split", default="train", help="split of a hub dataset / DatasetDict (default: %(default)s)")
    q.add_argument("--out", default=None, help="output folder (default: data/<name>)")
    q.add_argument("--tokenizer", default=None, help="tokenizer for length rules (dolly prompt filter, --min-ref-tokens)")
    q.add_argument("--max-prompt-tokens", type=int, default=256, help="dolly: drop longer prompts (default: %(default)s)")
    q.add_argument("--dev-num", type=int, default=1000, help="dolly: held-out rows (default: %(default)s)")
    q.add_argument("--test-num", type=int, default=500, help="dolly: test rows among them (default: %(default)s)")
    q.add_argument("--min-ref-words", type=int, default=11, help="sni/unni: longest reference >= N words (default: %(default)s)")
    q.add_argument("--min-ref-tokens", type=int, default=None, help="sni/unni: count tokens of --tokenizer instead")
    q.add_argument("--overwrite", action="store_true", help="replace files already in --out")


def _demo(out: Path) -> dict:
    import json

    from dwakd.demo.instructions import generate_instructions
    from dwakd.demo.pipeline import DemoSettings, teacher_answers

    s = DemoSettings()
    train_instr, test_instr = generate_instructions(s.n_train, s.n_test, seed=0)
    by = {r["instruction"]: r for r in teacher_answers(train_instr + test_instr, s)}
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for fname, instr in (("train.jsonl", train_instr), ("test.jsonl", test_instr)):
        rows = [by[r["instruction"]] for r in instr if r["instruction"] in by]
        (out / fname).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        counts[fname] = len(rows)
    prov = {"set": "demo", "source": "dwakd.demo.instructions (self-written templates and topics), answered greedily "
            "by smollm2-135m-instruct", "files": counts}
    (out / "PROVENANCE.json").write_text(json.dumps(prov, indent=2) + "\n", encoding="utf-8")
    return prov


def run(args) -> int:
    from dwakd.errors import ConfigError

    if getattr(args, "data_command", None) != "prepare":
        raise ConfigError("usage: dwakd data prepare NAME [--from SOURCE] [--out DIR] (see dwakd data prepare --help)")
    out = Path(args.out or f"data/{args.name}")
    existing = [f.name for f in out.glob("*.jsonl")] if out.is_dir() else []
    if existing and not args.overwrite:
        raise ConfigError(f"{out} already holds {', '.join(sorted(existing))}; add --overwrite to rebuild it")
    if args.name == "demo":
        prov = _demo(out)
    else:
        from dwakd.data.prepare import prepare_set

        tok = None
        if args.tokenizer:
            from dwakd.models import load_tokenizer

            tok = load_tokenizer(args.tokenizer)
        prov = prepare_set(args.name, args.source, out, split=args.split, tokenizer=tok,
                           max_prompt_tokens=args.max_prompt_tokens, dev_num=args.dev_num, test_num=args.test_num,
                           min_ref_words=args.min_ref_words, min_ref_tokens=args.min_ref_tokens)
    for fname, info in prov["files"].items():
        rows = info["rows"] if isinstance(info, dict) else info
        print(f"wrote {out / fname} ({rows} rows)")
    print(f"wrote {out / 'PROVENANCE.json'}")
    return 0

"""``dwakd pretrain CONFIG [key.sub=value ...] [--force]``: pretrain a built student, print its directory."""

from __future__ import annotations

NAME = "pretrain"
HELP = "pretrain a built student (its own tokenizer) as a causal LM on a text corpus; cached under $DWAKD_HOME"


def add_arguments(p) -> None:
    p.add_argument("config", help="pretraining YAML, e.g. configs/study/pretrain.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides (values are YAML)")
    p.add_argument("--force", action="store_true", help="pretrain again even when a cached result exists")


def run(args) -> int:
    from dwakd.pretrain import describe, ensure_pretrained, load_pretrain_config

    cfg = load_pretrain_config(args.config, args.overrides)
    out, report = ensure_pretrained(cfg, force=args.force)
    print(("reused " if report.get("reused") else "") + f"pretrained student: {out}")
    print(describe(report))
    return 0

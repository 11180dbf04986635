"""Options may follow or interleave with ``key=value`` overrides (argparse REMAINDER), for train and compare."""

from __future__ import annotations

import pytest

from dwakd.cli.main import build_parser
from dwakd.errors import ConfigError


def parsed(argv):
    from dwakd.cli import compare, train

    args = build_parser().parse_args(argv)
    (train if argv[0] == "train" else compare)._split_remainder(args)
    return args


def test_train_options_interleave_with_overrides():
    args = parsed(["train", "c.yaml", "train.lr=1e-3", "--dry-run", "method.gamma=0.5", "--resume=auto",
                   "--processes", "4", "data.train=a=b.jsonl"])
    assert args.overrides == ["train.lr=1e-3", "method.gamma=0.5", "data.train=a=b.jsonl"]
    assert args.dry_run is True and args.resume == "auto" and args.processes == 4


def test_compare_options_interleave_with_overrides():
    args = parsed(["compare", "g.yaml", "train.lr=1e-3", "--output-dir", "out", "--report-only", "train.epochs=2"])
    assert args.overrides == ["train.lr=1e-3", "train.epochs=2"]
    assert args.output_dir == "out" and args.report_only is True


@pytest.mark.parametrize("argv, words", [
    (["train", "c.yaml", "--resume"], ["--resume needs a value"]),
    (["train", "c.yaml", "a=1", "--bogus"], ["unknown option '--bogus'", "--dry-run"]),
    (["train", "c.yaml", "--processes=0"], ["--processes must be >= 1"]),
    (["compare", "g.yaml", "--output-dir"], ["--output-dir needs a value"]),
    (["compare", "g.yaml", "--dry-run"], ["unknown option '--dry-run'", "--report-only"]),
    (["train", "c.yaml", "a=1", "--resume", "--dry-run"], ["--resume needs a value"]),
    (["compare", "g.yaml", "a=1", "--output-dir="], ["--output-dir needs a non-empty value"]),
    (["train", "c.yaml", "a=1", "--resume", ""], ["--resume needs a non-empty value"]),
    (["compare", "g.yaml", "--output-dir=", "a=1"], ["--output-dir needs a non-empty value"]),
])
def test_bad_options_are_named(argv, words):
    with pytest.raises(ConfigError) as e:
        parsed(argv)
    for w in words:
        assert w in str(e.value)

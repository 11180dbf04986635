"""Tiny compare grids for the tests: the tiny teacher, a tiny pretrained student, two methods."""

from __future__ import annotations

from pathlib import Path

import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def write_pretrain(tmp: Path, home: Path) -> Path:
    cfg = {
        "student": {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                    "max_positions": 128, "tokenizer_kind": "bpe", "vocab_size": 300, "seed": 0},
        "corpus": [{"kind": "text", "path": str(FIXTURES / "corpus.txt")},
                   {"kind": "jsonl", "path": str(FIXTURES / "tiny_dolly.jsonl"), "field": "response"}],
        "heldout_fraction": 0.2,
        "output_dir": str(home / "pretrained"),
        "train": {"block_size": 32, "batch_size": 4, "lr": 3e-3, "epochs": 1, "bf16": False, "log_every": 5},
    }
    p = tmp / "pretrain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def write_grid(tmp: Path, teacher_dir: Path, *, methods=("sft", "dskd"), seeds=(1, 2), out: Path | None = None,
               with_refs: bool = True, pretrain: Path | None = None) -> Path:
    base = {
        "model": {"teacher": str(teacher_dir), "teacher_dtype": "float32"},
        "data": {"train": str(FIXTURES / "tiny_dolly.jsonl"), "dev_fraction": 0.25, "max_length": 64,
                 "max_prompt_length": 32},
        "method": {"name": "sft"},
        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "bf16": False, "log_every": 1, "save_every": 1,
                  "keep_best_n": 1},
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {
        "base": "base.yaml",
        "pretrain": str(pretrain) if pretrain else None,
        "output_dir": str(out or tmp / "grid"),
        "methods": {m: {} for m in methods},
        "references": {"student-pretrained": "pretrained"} if with_refs else {},
        "grid": [{"methods": list(methods), "seeds": list(seeds)}]
        + ([{"references": ["student-pretrained"]}] if with_refs else []),
        "compare_to": [methods[0]],
        "teacher_cache": False,
        "eval": {"sets": {"tiny": {"path": str(FIXTURES / "tiny_dolly.jsonl"), "limit": 3}}, "seeds": [1, 2],
                 "max_new_tokens": 6, "max_prompt_tokens": 32, "max_length": 64, "batch_size": 4, "dtype": "float32"},
    }
    p = tmp / "compare.yaml"
    p.write_text(yaml.safe_dump(grid, sort_keys=False))
    return p

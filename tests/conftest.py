"""Shared fixtures: a tiny teacher and a tiny student with genuinely different tokenizers.

Both are trained/built in a couple of seconds from text the project ships
(``tests/fixtures/corpus.txt`` and ``tiny_dolly.jsonl``), saved with ``save_pretrained`` into a
session temporary directory, and reloaded through :mod:`dwakd.models` like any user model.

- teacher: Llama family, byte-level BPE (512 tokens, prepends ``<s>``), hidden 64, with a chat template.
- student: GPT-2 family, Unigram/Metaspace (300 tokens, no BOS), hidden 48.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process: the tests run many tiny ops (and some tests start two
# processes), where a second OpenMP thread only adds contention on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def fixture_texts() -> list[str]:
    """Every text the tiny tokenizers are trained on (corpus lines plus the tiny instruction set)."""
    texts = (FIXTURES / "corpus.txt").read_text(encoding="utf-8").splitlines()
    for line in (FIXTURES / "tiny_dolly.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        texts += [rec["instruction"], rec["context"], rec["response"]]
    return [t for t in texts if t]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_dolly_path() -> Path:
    return FIXTURES / "tiny_dolly.jsonl"


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): saved HF directories of the tiny pair."""
    from dwakd.models import StudentSpec, build_student

    root = tmp_path_factory.mktemp("tiny_pair")
    texts = fixture_texts()
    teacher_dir, student_dir = root / "teacher", root / "student"
    _, ttok = build_student(
        StudentSpec(family="llama", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                    tokenizer_kind="bpe", vocab_size=512, add_bos=True, seed=1),
        texts,
        teacher_dir,
    )
    ttok.chat_template = TINY_CHAT_TEMPLATE
    ttok.save_pretrained(teacher_dir)
    build_student(
        StudentSpec(family="gpt2", hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96,
                    tokenizer_kind="unigram", vocab_size=300, seed=2),
        texts,
        student_dir,
    )
    return teacher_dir, student_dir


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_pair_dirs) -> Path:
    return tiny_pair_dirs[0]


@pytest.fixture(scope="session")
def tiny_student_dir(tiny_pair_dirs) -> Path:
    return tiny_pair_dirs[1]


@pytest.fixture(scope="session")
def tiny_teacher(tiny_teacher_dir):
    """(model, tokenizer) of the tiny teacher, reloaded from disk, eval mode."""
    from dwakd.models import load_model, load_tokenizer

    return load_model(tiny_teacher_dir).eval(), load_tokenizer(tiny_teacher_dir)


@pytest.fixture(scope="session")
def tiny_student(tiny_student_dir):
    """(model, tokenizer) of the tiny student, reloaded from disk."""
    from dwakd.models import load_model, load_tokenizer

    return load_model(tiny_student_dir), load_tokenizer(tiny_student_dir)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The public evaluation sets beside the checkout (skip when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# ----------------------------------------------------------------------------- fault tests (tests/test_faults_*.py)
@pytest.fixture
def pair(tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    """(teacher dir, student dir, data path) of the tiny pair the fault tests train."""
    return tiny_teacher_dir, tiny_student_dir, tiny_dolly_path


@pytest.fixture
def reference(tmp_path_factory, pair):
    """The final weights of an uninterrupted tiny run (what every fault must still reach)."""
    from _faults import reference_final

    return reference_final(tmp_path_factory, *pair)

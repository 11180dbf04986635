"""Corpus kind ``teacher``: the teacher writes a pretraining corpus, cached, and a resumed run writes
exactly the documents an uninterrupted one does (per-example seeded sampling)."""

from __future__ import annotations

import json

import pytest
import yaml

from dwakd.errors import ConfigError
from dwakd.pretrain import load_pretrain_config
from dwakd.pretrain.teacher_corpus import seed_prompts, teacher_corpus


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_seed_prompts_are_deterministic_and_varied():
    a, b = seed_prompts(60, 0), seed_prompts(60, 0)
    assert a == b and a != seed_prompts(60, 1)
    assert len(set(a)) >= 55 and all(p.strip() and "{" not in p for p in a)


def test_teacher_corpus_is_cached_and_resumes_to_the_same_documents(home, tiny_teacher_dir, monkeypatch):
    kw = dict(max_new_tokens=6, seed=3, batch_size=3, progress=False)
    first = teacher_corpus(str(tiny_teacher_dir), 10, **kw)
    assert 0 < len(first) <= 10
    (root,) = list((home / "corpora").iterdir())
    rows = [json.loads(line) for line in (root / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["i"] for r in rows) == list(range(10))
    assert [r["prompt"] for r in sorted(rows, key=lambda r: r["i"])] == seed_prompts(10, 3)

    # a finished corpus is reused without loading the teacher
    import dwakd.models

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded for a cached corpus")

    with monkeypatch.context() as m:
        m.setattr(dwakd.models, "load_model", no_load)
        assert teacher_corpus(str(tiny_teacher_dir), 10, **kw) == first

    # killed after 4 documents, mid-line: the resumed run (other batch boundaries) writes the same corpus
    lines = (root / "docs.jsonl").read_bytes().split(b"\n")
    (root / "COMPLETE.json").unlink()
    (root / "docs.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][: len(lines[4]) // 2])
    assert teacher_corpus(str(tiny_teacher_dir), 10, **kw) == first
    assert (root / "COMPLETE.json").is_file()

    # other settings are another corpus
    teacher_corpus(str(tiny_teacher_dir), 10, **dict(kw, seed=4))
    assert len(list((home / "corpora").iterdir())) == 2


@pytest.mark.parametrize("src, words", [
    ({"kind": "teacher", "limit": 10}, ["corpus[0]", "needs name"]),
    ({"kind": "teacher", "name": "smollm2-135m-instruct"}, ["corpus[0]", "limit"]),
])
def test_teacher_source_needs_a_name_and_a_size(tmp_path, src, words):
    cfg = {"student": {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 300},
           "corpus": [src], "train": {"block_size": 32}}
    p = tmp_path / "pretrain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_pretrain_config(p)
    for w in words:
        assert w in str(e.value)


def test_a_corpus_another_process_writes_is_refused_not_corrupted(home, tiny_teacher_dir):
    import subprocess
    import sys

    from dwakd.errors import RunLockedError
    from dwakd.pretrain.teacher_corpus import corpus_key

    root = home / "corpora" / corpus_key(str(tiny_teacher_dir), seed_prompts(4, 0), 6, 0)
    root.mkdir(parents=True)
    holder = subprocess.Popen(  # a live writer of this corpus
        [sys.executable, "-c", "import sys, time; from dwakd.train.rundir import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError):
            teacher_corpus(str(tiny_teacher_dir), 4, max_new_tokens=6, seed=0, batch_size=2, progress=False)
        assert not (root / "docs.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert len(teacher_corpus(str(tiny_teacher_dir), 4, max_new_tokens=6, seed=0, batch_size=2, progress=False)) > 0

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


@pytest.mark.parametrize("src, words", [
    ({"kind": "teacher", "limit": 10}, ["corpus[0]", "needs name"]),
    ({"kind": "teacher", "name": "smollm2-135m-instruct"}, ["corpus[0]", "limit"]),
    ({"kind": "text", "path": "corpus.txt", "seed": 3}, ["corpus[0].seed", "does not apply to kind 'text'"]),
    ({"kind": "teacher", "name": "t", "limit": 4, "path": "x.txt"}, ["corpus[0].path", "kind 'teacher'"]),
    ({"kind": "wikitext", "path": "w.txt", "batch_size": 4}, ["corpus[0].batch_size", "kind 'wikitext'"]),
])
def test_corpus_source_errors_name_the_source_and_key(tmp_path, src, words):
    """A teacher source needs a name and a size; an option of another corpus kind is an error."""
    cfg = {"student": {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 300},
           "corpus": [src], "train": {"block_size": 32}}
    p = tmp_path / "pretrain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_pretrain_config(p)
    for w in words:
        assert w in str(e.value)
    assert str(p) + ":" in str(e.value)  # the file and line


def test_a_relative_teacher_directory_resolves_next_to_the_yaml(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "teachers" / "mine").mkdir(parents=True)
    p = conf / "pretrain.yaml"
    p.write_text(yaml.safe_dump({"corpus": [{"kind": "teacher", "name": "teachers/mine", "limit": 4},
                                            {"kind": "teacher", "name": "smollm2-135m-instruct", "limit": 4}]}))
    monkeypatch.chdir(tmp_path)  # not the YAML's directory
    cfg = load_pretrain_config(p)
    assert cfg.corpus[0].name == str((conf / "teachers" / "mine").resolve())
    assert cfg.corpus[1].name == "smollm2-135m-instruct"  # an alias stays an alias


def test_a_local_teacher_is_identified_by_its_weights_not_their_sizes(tmp_path, tiny_teacher_dir):
    """Two fine-tunes of one model have files of the same names and sizes: their corpora must differ."""
    import shutil

    from dwakd.pretrain.teacher_corpus import corpus_key

    other = tmp_path / "other"
    shutil.copytree(tiny_teacher_dir, other)
    (w,) = [f for f in other.iterdir() if f.suffix == ".safetensors"]
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    w.write_bytes(bytes(data))
    prompts = seed_prompts(4, 0)
    assert corpus_key(str(other), prompts, 6, 0) != corpus_key(str(tiny_teacher_dir), prompts, 6, 0)
    shutil.copy2(tiny_teacher_dir / w.name, w)
    assert corpus_key(str(other), prompts, 6, 0) == corpus_key(str(tiny_teacher_dir), prompts, 6, 0)


def test_a_cached_student_is_reused_before_any_teacher_generates(home, tmp_path, tiny_teacher_dir, monkeypatch):
    """The pretrain key counts a teacher corpus by its own key: with the corpus cache gone, and another
    generation batch size, the cached student is found without loading the teacher."""
    import shutil
    from pathlib import Path

    import dwakd.models
    from dwakd.pretrain import ensure_pretrained

    fixtures = Path(__file__).parent / "fixtures"
    cfg = {"student": {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                       "max_positions": 128, "tokenizer_kind": "bpe", "vocab_size": 300, "seed": 0},
           "corpus": [{"kind": "text", "path": str(fixtures / "corpus.txt")},
                      {"kind": "teacher", "name": str(tiny_teacher_dir), "limit": 6, "max_new_tokens": 8,
                       "batch_size": 3}],
           "heldout_fraction": 0.2,
           "train": {"block_size": 32, "batch_size": 4, "lr": 3e-3, "epochs": 1, "bf16": False}}
    p = tmp_path / "pretrain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out, rep = ensure_pretrained(load_pretrain_config(p), progress=False)
    assert not rep.get("reused") and (home / "corpora").is_dir()
    shutil.rmtree(home / "corpora")

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded although the student is cached")

    monkeypatch.setattr(dwakd.models, "load_model", no_load)
    again, rep2 = ensure_pretrained(load_pretrain_config(p), progress=False)
    assert again == out and rep2["reused"]
    cfg["corpus"][1]["batch_size"] = 2
    p.write_text(yaml.safe_dump(cfg))
    third, rep3 = ensure_pretrained(load_pretrain_config(p), progress=False)
    assert third == out and rep3["reused"]
    assert not (home / "corpora").exists()
    # another corpus setting is another student: the teacher is needed again
    cfg["corpus"][1]["max_new_tokens"] = 9
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(AssertionError, match="teacher was loaded"):
        ensure_pretrained(load_pretrain_config(p), progress=False)


def test_an_alias_teacher_is_identified_without_converting_it(home, monkeypatch):
    """The alias's identity is its GGUF checksum, known up front: computing a corpus key (as a cached
    student's lookup does) converts nothing, and the converted directory gives the same identity."""
    import dwakd.models.aliases as aliases
    from dwakd.pretrain.teacher_corpus import _teacher_identity, corpus_key

    def no_convert(*a, **k):
        raise AssertionError("the alias was converted")

    monkeypatch.setattr(aliases, "_convert", no_convert)
    ident = _teacher_identity("SmolLM2-135M-Instruct")
    assert ident == {"alias_sha256": aliases.ALIASES["smollm2-135m-instruct"].sha256}
    converted = home / "fake-converted"
    converted.mkdir(parents=True)
    (converted / "dwakd_alias.json").write_text(json.dumps({"sha256": ident["alias_sha256"]}))
    assert _teacher_identity(str(converted)) == ident
    assert len(corpus_key("smollm2-135m-instruct", seed_prompts(3, 0), 8, 0)) == 16

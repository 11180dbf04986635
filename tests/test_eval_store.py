"""Eval writes as it goes, --resume continues, --out is never overwritten silently; empty sets and prompts
that fill the context window are reported, never crash (issue 12 item 10, issue 13)."""

from __future__ import annotations

import json

from dwakd.cli.main import main

ARGS = ["--limit", "3", "--seeds", "1,2", "--max-new-tokens", "6", "--no-progress", "--no-bpb"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_out_reuse_is_refused_unless_resume_or_overwrite(tmp_path, capsys, tiny_student_dir, tiny_dolly_path):
    out = tmp_path / "ev"
    base = ["eval", str(tiny_student_dir), "--data", str(tiny_dolly_path), "--out", str(out), *ARGS]
    assert main(base) == 0
    first = (out / "results.json").read_text()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "already holds an evaluation" in err and "--resume" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == first  # untouched
    assert main([*base, "--overwrite"]) == 0
    assert len(_rows(out / "samples.jsonl")) == 6  # replaced, not appended
    # --resume on a finished evaluation reruns nothing and gives the same numbers
    assert main([*base, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert (json.loads((out / "results.json").read_text())["sets"]["tiny_dolly"]["rougeL"]
            == json.loads(first)["sets"]["tiny_dolly"]["rougeL"])
    # --resume with different options is refused, naming what differs
    assert main([*base[:-len(ARGS)], *ARGS[:3], "1,3", *ARGS[4:], "--resume"]) == 2
    assert "different options" in capsys.readouterr().err


def test_interrupted_eval_keeps_finished_seeds_and_resumes(tmp_path, capsys, monkeypatch, tiny_student_dir, tiny_dolly_path):
    import dwakd.eval.runner as runner

    out = tmp_path / "ev"
    base = ["eval", str(tiny_student_dir), "--data", str(tiny_dolly_path), "--out", str(out), *ARGS]
    assert main(["eval", str(tiny_student_dir), "--data", str(tiny_dolly_path), "--out", str(tmp_path / "ref"),
                 *ARGS]) == 0  # an uninterrupted reference run
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())
    ref_rows = sorted((r["seed"], r["key"], r["output"]) for r in _rows(tmp_path / "ref" / "samples.jsonl"))

    real = runner.generate
    calls = []

    def dying(*a, seed, **kw):
        calls.append(seed)
        if seed == 2:
            raise KeyboardInterrupt
        return real(*a, seed=seed, **kw)

    monkeypatch.setattr(runner, "generate", dying)
    assert main(base) == 130
    rows = _rows(out / "samples.jsonl")
    assert {r["seed"] for r in rows} == {1} and len(rows) == 3  # seed 1 survived the kill
    assert [p["seed"] for p in _rows(out / "progress.jsonl")] == [1]
    # a half-written seed (rows without a progress line) is dropped on resume
    with open(out / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"set": "tiny_dolly", "seed": 2, "key": 0, "output": "junk"}) + "\n")
    calls.clear()
    monkeypatch.setattr(runner, "generate", lambda *a, seed, **kw: (calls.append(seed), real(*a, seed=seed, **kw))[1])
    assert main([*base, "--resume"]) == 0
    assert calls == [2]  # only the missing seed ran
    res = json.loads((out / "results.json").read_text())
    assert res["sets"]["tiny_dolly"]["rougeL"] == ref["sets"]["tiny_dolly"]["rougeL"]
    rows = _rows(out / "samples.jsonl")
    assert sorted((r["seed"], r["key"], r["output"]) for r in rows) == ref_rows  # same samples as uninterrupted
    assert "junk" not in [r["output"] for r in rows]


def test_empty_test_set_is_a_clear_error(tmp_path, capsys, tiny_student_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert main(["eval", str(tiny_student_dir), "--data", str(empty), "--out", str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "empty.jsonl holds no records" in err and "Traceback" not in err


def test_prompts_that_fill_the_context_are_skipped_and_counted(tmp_path, capsys):
    from dwakd.models import StudentSpec, build_student

    model_dir = tmp_path / "short"
    texts = ["hello world, this is a tiny text"] * 20
    build_student(StudentSpec(family="gpt2", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                              max_positions=32, tokenizer_kind="bpe", vocab_size=300), texts, model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "hello", "output": "world"}) + "\n"
                    + json.dumps({"prompt": "hello world " * 60, "output": "world"}) + "\n", encoding="utf-8")
    rc = main(["eval", str(model_dir), "--data", str(data), "--seeds", "1", "--max-prompt-tokens", "40",
               "--max-length", "64", "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 of 2 examples skipped" in printed
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["sets"]["d"]["n"] == 1 and res["sets"]["d"]["skipped_long_prompts"] == 1
    assert res["sets"]["d"]["bpb"]["n_examples"] == 1


def test_eval_reads_a_parquet_test_set_and_a_datasetdict_split(tmp_path, tiny_student_dir, tiny_dolly_path):
    import datasets

    rows = _rows(tiny_dolly_path)[:3]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "o"
    assert main(["eval", str(tiny_student_dir), "--data", str(tmp_path / "t.parquet"), str(tmp_path / "dd"),
                 "--out", str(out), *ARGS]) == 0
    res = json.loads((out / "results.json").read_text())
    a, b = res["sets"]["t"], res["sets"]["dd"]
    assert a["n"] == b["n"] == 3 and a["rougeL"] == b["rougeL"]  # same records, same seeds: same samples


def test_a_failed_start_leaves_no_folder(tmp_path, capsys, tiny_student_dir, tiny_dolly_path):
    out = tmp_path / "never"
    # the tiny student has no chat template: refused before anything is generated
    assert main(["eval", str(tiny_student_dir), "--data", str(tiny_dolly_path), "--chat-template", "on",
                 "--out", str(out), *ARGS]) == 2
    assert "no chat template" in capsys.readouterr().err and not out.exists()

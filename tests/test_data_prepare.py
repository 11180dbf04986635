"""``dwakd data prepare``: the paper's sets from small local copies (tests/fixtures/paper), with provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dwakd.cli.main import main
from dwakd.data import load_records

FIX = Path(__file__).parent / "fixtures" / "paper"


def _rows(p):
    return [json.loads(line) for line in Path(p).read_text().splitlines()]


def test_dolly_split_follows_the_minillm_rule(tmp_path, capsys, tiny_teacher_dir):
    from dwakd.data.prompts import plain_prompt
    from dwakd.models import load_tokenizer

    src = FIX / "dolly-15k-mini.jsonl"
    raw = _rows(src)
    tok = load_tokenizer(tiny_teacher_dir)
    n = [len(tok(plain_prompt(r["instruction"], r["context"] or None), add_special_tokens=False)["input_ids"]) for r in raw]
    limit = max(n[:3] + n[4:])
    assert n[3] > limit  # only the long-context row is over the limit
    out = tmp_path / "dolly"
    assert main(["data", "prepare", "dolly", "--from", str(src), "--out", str(out), "--dev-num", "5",
                 "--test-num", "3", "--tokenizer", str(tiny_teacher_dir), "--max-prompt-tokens", str(limit)]) == 0
    # hand-applied rule: drop the long-prompt row 3, keep order, first 5 held out (3 test + 2 valid), rest train
    kept = [r for i, r in enumerate(raw) if i != 3]
    test, valid, train = _rows(out / "test.jsonl"), _rows(out / "valid.jsonl"), _rows(out / "train.jsonl")
    assert [r["instruction"] for r in test] == [r["instruction"] for r in kept[:3]]
    assert [r["instruction"] for r in valid] == [r["instruction"] for r in kept[3:5]]
    assert [r["instruction"] for r in train] == [r["instruction"] for r in kept[5:]]
    assert test[0]["response"] == raw[0]["response"] and test[0]["output"] == raw[0]["response"]
    assert test[0]["prompt"].startswith("Below is an instruction") and "### Input:\nContext number 0." in test[0]["prompt"]
    prov = json.loads((out / "PROVENANCE.json").read_text())
    assert prov["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and prov["rows_read"] == 12
    assert prov["files"]["train.jsonl"]["rows"] == 6 and f"{limit} tokens" in prov["rule"]
    printed = capsys.readouterr().out
    assert str(out / "train.jsonl") in printed and str(out / "PROVENANCE.json") in printed
    # the output reads back in dwakd as MiniLLM records; a rerun is refused without --overwrite
    assert load_records(out / "test.jsonl").format == "minillm"
    assert main(["data", "prepare", "dolly", "--from", str(src), "--out", str(out)]) == 2


def test_test_sets_raw_and_processed(tmp_path):
    out = tmp_path / "si"
    assert main(["data", "prepare", "selfinst", "--from", str(FIX / "self-inst-raw.jsonl"), "--out", str(out)]) == 0
    si = _rows(out / "test.jsonl")
    assert len(si) == 4 and si[1]["input"] == "Give me item 1 now." and si[1]["output"] == "Could you please give me item 1?"
    out = tmp_path / "vic"
    assert main(["data", "prepare", "vicuna", "--from", str(FIX / "vicuna-processed.jsonl"), "--out", str(out)]) == 0
    assert _rows(out / "test.jsonl") == [dict(r) for r in _rows(FIX / "vicuna-processed.jsonl")]


def test_sni_and_unni_keep_long_references(tmp_path):
    out = tmp_path / "sni"
    assert main(["data", "prepare", "sni", "--from", str(FIX / "sni-processed.jsonl"), "--out", str(out)]) == 0
    rows = _rows(out / "test.jsonl")
    assert [r["instruction"] for r in rows] == ["Task 0 definition.", "Task 2 definition.", "Task 4 definition."]
    assert rows[0]["output"] == _rows(FIX / "sni-processed.jsonl")[0]["output"]  # every reference kept
    out = tmp_path / "unni"
    assert main(["data", "prepare", "unni", "--from", str(FIX / "unni-raw.jsonl"), "--out", str(out)]) == 0
    rows = _rows(out / "test.jsonl")
    assert [r["input"] for r in rows] == ["word0", "word2"]
    assert "11 words" in json.loads((out / "PROVENANCE.json").read_text())["rule"]


def test_sets_without_a_vouched_hub_source_need_from(tmp_path, capsys):
    assert main(["data", "prepare", "sni", "--out", str(tmp_path / "x")]) == 2
    assert "give a local copy with --from" in capsys.readouterr().err


def test_dolly_from_the_hub_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "prepare", "dolly", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert "databricks/databricks-dolly-15k" in err and "offline" in err and len(err.splitlines()) == 1

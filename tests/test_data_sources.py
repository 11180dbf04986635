"""Every input kind (JSONL/JSON/CSV/TSV/Parquet/Arrow files, save_to_disk folders, hub names) and every
format (incl. ShareGPT, prompt/completion, field mappings); hostile JSONL (issue 12 item 8)."""

from __future__ import annotations

import json

import pytest

from dwakd.data import load_records
from dwakd.errors import ConfigError, DataError

ROWS = [
    {"instruction": "Name a colour.", "context": "", "response": "Blue."},
    {"instruction": "Add 2 and 3.", "context": "numbers", "response": "5"},
    {"instruction": "Say hi, then \"bye\", then a comma, here.", "context": "", "response": "hi, \"bye\""},
]


def _expect_dolly(res, n=3):
    assert res.format == "dolly" and res.skipped == 0
    assert [(r.instruction, r.context, r.response) for r in res] == [
        (row["instruction"], row["context"] or None, row["response"]) for row in ROWS[:n]]


# --------------------------------------------------------------------------- input kinds
def test_csv_and_tsv_files(tmp_path):
    import csv

    for name, delim in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["instruction", "context", "response"], delimiter=delim)
            w.writeheader()
            w.writerows(ROWS)
        _expect_dolly(load_records(tmp_path / name))


def test_parquet_and_arrow_files(tmp_path):
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "d.parquet")
    _expect_dolly(load_records(tmp_path / "d.parquet"))
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    _expect_dolly(load_records(tmp_path / "d.arrow"))
    feather.write_feather(table, tmp_path / "f.arrow", compression="uncompressed")
    _expect_dolly(load_records(tmp_path / "f.arrow"))


def test_a_file_that_is_not_what_its_suffix_says(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: could not read it as PARQUET"):
        load_records(tmp_path / "bad.parquet")


def test_save_to_disk_folders_dataset_and_datasetdict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    _expect_dolly(load_records(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dd"))
    _expect_dolly(load_records(tmp_path / "dd"))  # split defaults to train
    _expect_dolly(load_records(tmp_path / "dd", split="validation"), n=2)
    with pytest.raises(DataError, match=r"has no split 'test' \(splits: train, validation\)"):
        load_records(tmp_path / "dd", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset written by save_to_disk"):
        load_records(tmp_path / "empty")


def test_hub_name_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_records("someone-dwakd/some-dataset")
    msg = str(e.value)
    assert "\n" not in msg and "someone-dwakd/some-dataset" in msg and "offline" in msg and "unset HF_HUB_OFFLINE" in msg


def test_hub_name_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(name, split=None, **kw):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    res = load_records("org/dolly-like", split="test")
    _expect_dolly(res)
    assert calls == [("org/dolly-like", "test")] and res.source == "org/dolly-like[test]"


def test_paths_are_never_taken_for_hub_names(tmp_path):
    for spec in (str(tmp_path / "missing.csv"), "./data/x", "nope.parquet", "a/b/c"):
        with pytest.raises(FileNotFoundError):
            load_records(spec)


# --------------------------------------------------------------------------- formats
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                              {"from": "gpt", "value": "Hello."}]}


def test_sharegpt_conversations(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(SHAREGPT) + "\n", encoding="utf-8")
    res = load_records(p)
    assert res.format == "sharegpt"
    r = res.records[0]
    assert r.response == "Hello." and r.messages == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi?"}]
    bad = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "robot", "value": "x"}]}
    p.write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.jsonl:1: field 'conversations\[1\]\.from': unknown speaker 'robot'"):
        load_records(p)


def test_prompt_completion_standard_and_conversational(tmp_path):
    p = tmp_path / "pc.jsonl"
    rows = [{"prompt": "The sky is", "completion": " blue."},
            {"prompt": [{"role": "user", "content": "Colour of the sky?"}],
             "completion": [{"role": "assistant", "content": "Blue."}]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    res = load_records(p)
    assert res.format == "prompt-completion"
    a, b = res.records
    assert (a.prompt, a.response, a.messages) == ("The sky is", " blue.", None)
    assert b.messages == [{"role": "user", "content": "Colour of the sky?"}] and b.response == "Blue." and b.prompt is None


def test_field_mapping_and_explicit_format(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "Q?", "answer": "A.", "extra": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="data.fields"):
        load_records(p)
    res = load_records(p, fields={"instruction": "question", "response": "answer"})
    assert res.format == "dolly" and (res.records[0].instruction, res.records[0].response) == ("Q?", "A.")
    res = load_records(p, format="alpaca", fields={"instruction": "question", "output": "answer"})
    assert res.format == "alpaca" and res.records[0].response == "A."
    with pytest.raises(ConfigError, match="unknown dwakd field 'question'"):
        load_records(p, fields={"question": "instruction"})


# --------------------------------------------------------------------------- hostile JSONL (issue 12, item 8)
def _dolly_line(i, text="x"):
    return json.dumps({"instruction": f"q{i} {text}", "response": f"a{i}"}, ensure_ascii=False)


def test_raw_line_separators_inside_strings_are_valid_jsonl(tmp_path):
    # U+2028, U+2029, U+0085, form feed and vertical tab inside strings: str.splitlines would cut there.
    weird = "a\u2028b\u2029c\u0085d\x0ce\x0bf\x1cg"
    lines = [_dolly_line(i, weird if i % 2 else "plain") for i in range(16)]
    p = tmp_path / "w.jsonl"
    p.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    res = load_records(p)
    assert len(res) == 16 and res.skipped == 0
    assert res.records[1].instruction == f"q1 {weird}" and [r.line for r in res] == list(range(1, 17))


def test_skip_mode_counts_every_line_once(tmp_path):
    # 16 lines: 10 good (some with raw U+2028/U+0085), 2 bad JSON, 2 missing a field, 1 non-UTF-8, 1 lone surrogate.
    good = [_dolly_line(i, "\u2028\u0085" if i < 3 else "ok") for i in range(10)]
    lines = [ln.encode("utf-8") for ln in good]
    lines.insert(2, b"{not json")
    lines.insert(5, b'{"instruction": "q", "response": ')
    lines.insert(7, json.dumps({"instruction": "q"}).encode())
    lines.insert(9, json.dumps({"response": "r"}).encode())
    lines.insert(11, b'{"instruction": "caf\xe9", "response": "r"}')  # latin-1 byte
    lines.insert(13, b'{"instruction": "\\ud800", "response": "r"}')  # escaped lone surrogate
    assert len(lines) == 16
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    res = load_records(p, on_bad_record="skip")
    assert len(res) == 10 and res.skipped == 6 and len(res) + res.skipped == 16
    assert res.skip_reasons == {"not valid JSON": 2, "missing field 'response'": 1, "missing field 'instruction'": 1,
                                "not UTF-8 text": 1, "field 'instruction' holds a lone surrogate": 1}
    assert [r.line for r in res] == [1, 2, 4, 5, 7, 9, 11, 13, 15, 16]


def test_non_utf8_and_lone_surrogate_errors_name_file_and_line(tmp_path):
    p = tmp_path / "enc.jsonl"
    p.write_bytes(_dolly_line(0).encode() + b"\n" + b'{"instruction": "caf\xe9", "response": "r"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 21\)"):
        load_records(p)
    p.write_bytes(b"\n".join([_dolly_line(0).encode(), b"", b'{"instruction": "\\udc80 x", "response": "r"}']))
    with pytest.raises(DataError, match=r"enc\.jsonl:3: field 'instruction' holds a lone surrogate"):
        load_records(p)
    # a JSON array file with a bad byte: still the line
    a = tmp_path / "arr.json"
    a.write_bytes(b'[\n{"instruction": "a", "response": "b"},\n{"instruction": "\xff", "response": "b"}\n]')
    with pytest.raises(DataError, match=r"arr\.json:3: not UTF-8 text"):
        load_records(a)


def test_crlf_and_bom_jsonl(tmp_path):
    p = tmp_path / "crlf.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(_dolly_line(i).encode() for i in range(3)) + b"\r\n")
    res = load_records(p)
    assert [r.response for r in res] == ["a0", "a1", "a2"]


# --------------------------------------------------------------------------- config validation of data specs
def _cfg(train, **data):
    return {"model": {"teacher": "t", "student": "s"}, "data": {"train": train, **data}, "method": {"name": "sft"}}


def test_config_accepts_folders_and_hub_names_and_refuses_missing_files(tmp_path):
    import datasets

    from dwakd.config import config_from_dict

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert config_from_dict(_cfg(str(tmp_path / "saved"), split="train")).data.train == str(tmp_path / "saved")
    cfg = config_from_dict(_cfg("databricks/databricks-dolly-15k", dev="org/other", dev_split="test"))
    assert (cfg.data.dev, cfg.data.dev_split) == ("org/other", "test")  # hub names are checked when loaded
    for missing in (str(tmp_path / "nope.parquet"), "data/none/train.csv", "./x"):
        with pytest.raises(ConfigError, match=r"data.train .* does not exist"):
            config_from_dict(_cfg(missing))
    with pytest.raises(ConfigError, match="data.fields: unknown dwakd field 'question'"):
        config_from_dict(_cfg(str(tmp_path / "saved"), fields={"question": "q"}))
    cfg = config_from_dict(_cfg(str(tmp_path / "saved"), format="sharegpt", fields={"conversations": "turns"}))
    assert cfg.data.format == "sharegpt" and cfg.data.fields == {"conversations": "turns"}

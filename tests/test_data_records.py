"""Records: format detection, validation errors (file, line, field), skip counts, sources; prompts."""

from __future__ import annotations

import json

import pytest

from dwakd.data import load_records
from dwakd.data.prompts import format_prompt, plain_prompt
from dwakd.data.records import Record, detect_format
from dwakd.errors import DataError


def write_jsonl(path, rows):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


DOLLY = {"instruction": "Name a colour.", "context": "", "response": "Blue."}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
MINILLM = {"prompt": "Below is ...\n\n### Response:\n", "output": ["first", "second"], "instruction": "Say hi", "input": ""}
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                     {"role": "assistant", "content": "Hello."}]}


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize(
    "row, fmt",
    [(DOLLY, "dolly"), (ALPACA, "alpaca"), (MINILLM, "minillm"), (CHAT, "chat"),
     ({"topic": "x", "instruction": "i", "input": "", "output": "o", "prompt": "p"}, "minillm")],
)
def test_detects_each_format(tmp_path, row, fmt):
    res = load_records(write_jsonl(tmp_path / "d.jsonl", [row, row]))
    assert res.format == fmt
    assert len(res) == 2 and res.skipped == 0


def test_fields_land_in_the_record(tmp_path):
    dolly = load_records(write_jsonl(tmp_path / "a.jsonl", [DOLLY])).records[0]
    assert (dolly.instruction, dolly.context, dolly.response, dolly.prompt) == ("Name a colour.", None, "Blue.", None)
    alpaca = load_records(write_jsonl(tmp_path / "b.jsonl", [ALPACA])).records[0]
    assert (alpaca.instruction, alpaca.context, alpaca.response) == ("Add the numbers.", "2 and 3", "5")
    mini = load_records(write_jsonl(tmp_path / "c.jsonl", [MINILLM])).records[0]
    assert mini.prompt == MINILLM["prompt"] and mini.response == "first"
    assert mini.references == ["first", "second"] and mini.instruction == "Say hi" and mini.context is None
    chat = load_records(write_jsonl(tmp_path / "d.jsonl", [CHAT])).records[0]
    assert chat.response == "Hello." and chat.messages == CHAT["messages"][:2]
    assert chat.line == 1 and chat.source.endswith("d.jsonl")


def test_explicit_format_overrides_detection(tmp_path):
    row = {"instruction": "i", "input": "ctx", "output": "o", "prompt": "PRE"}
    assert load_records(write_jsonl(tmp_path / "a.jsonl", [row])).format == "minillm"
    res = load_records(tmp_path / "a.jsonl", format="alpaca")
    assert res.format == "alpaca" and res.records[0].prompt is None and res.records[0].context == "ctx"


def test_detect_format_names():
    assert detect_format(["instruction", "response", "context"]) == "dolly"
    assert detect_format(["instruction", "output"]) == "alpaca"
    assert detect_format(["prompt", "output"]) == "minillm"
    assert detect_format(["messages"]) == "chat"
    assert detect_format(["question", "answer"]) is None


def test_undetectable_format_names_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: cannot tell the record format.*answer, question"):
        load_records(path)


# --------------------------------------------------------------------------- errors and skips
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"instruction": "x", "context": ""}, r"missing field 'response' \(dolly record; fields present: context, instruction\)"),
        ({"instruction": "x", "response": 3}, r"field 'response' must be a string, got int"),
        ({"instruction": "x", "response": "   "}, r"field 'response' is empty"),
        ({"response": "x"}, r"missing field 'instruction'"),
        ('{"instruction": "x", "respo', r"not valid JSON"),
        ("[1, 2]", r"expected a JSON object, got list"),
    ],
)
def test_malformed_dolly_record_names_file_line_and_field(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [DOLLY, DOLLY, bad, DOLLY])
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: {message}"):
        load_records(path)


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(DOLLY) + "\n\n\n" + json.dumps({"instruction": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gaps\.jsonl:4: missing field 'response'"):
        load_records(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}, "field 'messages': the last message must be the assistant's response, got role 'user'"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "field 'messages' must be a list of at least two"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, r"missing field 'messages\[0\]\.content'"),
        ({"msgs": []}, "missing field 'messages'"),
    ],
)
def test_malformed_chat_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "chat.jsonl", [CHAT, bad])
    with pytest.raises(DataError, match=rf"chat\.jsonl:2: {message}"):
        load_records(path)


def test_minillm_output_list_must_hold_strings(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [MINILLM, {"prompt": "p", "output": []}, {"prompt": "p", "output": [1]}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: field 'output' must be a string or a non-empty list"):
        load_records(path)
    res = load_records(path, on_bad_record="skip")
    assert len(res) == 1 and res.skipped == 2
    assert res.skip_reasons == {"field 'output' must be a string or a non-empty list of strings": 2}


def test_skip_counts_every_bad_record_by_reason(tmp_path):
    rows = [DOLLY, {"instruction": "x"}, "not json", DOLLY, {"instruction": "y", "context": ""}, {"instruction": "z", "response": ""}]
    res = load_records(write_jsonl(tmp_path / "s.jsonl", rows), on_bad_record="skip")
    assert [r.line for r in res.records] == [1, 4]
    assert res.skipped == 4
    assert res.skip_reasons["missing field 'response'"] == 2
    assert res.skip_reasons["field 'response' is empty"] == 1
    assert sum(n for r, n in res.skip_reasons.items() if r.startswith("not valid JSON")) == 1
    assert "4 skipped" in res.summary()


def test_skip_detects_format_after_a_bad_first_line(tmp_path):
    res = load_records(write_jsonl(tmp_path / "s.jsonl", ["{oops", ALPACA]), on_bad_record="skip")
    assert res.format == "alpaca" and len(res) == 1 and res.skipped == 1


def test_bad_options_and_missing_file(tmp_path):
    from dwakd.errors import ConfigError

    with pytest.raises(ConfigError, match="on_bad_record"):
        load_records(tmp_path / "x.jsonl", on_bad_record="ignore")
    with pytest.raises(ConfigError, match="unknown record format"):
        load_records(tmp_path / "x.jsonl", format="yaml-chat")
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- JSON files and datasets
def test_json_array_reports_the_line_an_item_starts_on(tmp_path):
    text = "[\n" + json.dumps(DOLLY) + ",\n  " + json.dumps(DOLLY) + ",\n\n" + json.dumps({"instruction": "q"}) + "\n]\n"
    path = tmp_path / "arr.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"arr\.json:5: missing field 'response'"):
        load_records(path)
    res = load_records(path, on_bad_record="skip")
    assert [r.line for r in res.records] == [2, 3] and res.skipped == 1


def test_json_object_with_one_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"version": 1, "data": [ALPACA, {"instruction": "i"}]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"obj\.json item 2: missing field 'output'"):
        load_records(path)


def test_datasets_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([DOLLY, {"instruction": "x", "context": "c", "response": "y"}])
    res = load_records(ds)
    assert res.format == "dolly" and [r.response for r in res] == ["Blue.", "y"] and res.records[1].context == "c"
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    assert [r.response for r in load_records(dd, split="test")] == ["y"]
    with pytest.raises(DataError, match="no split 'dev'"):
        load_records(dd, split="dev")
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(load_records(tmp_path / "saved")) == 2
    bad = datasets.Dataset.from_list([ALPACA, {"instruction": "x", "input": "", "output": None}])
    with pytest.raises(DataError, match=r"row 2: missing field 'output'"):
        load_records(bad)
    # A hub name through datasets.load_dataset (offline here: it must fail with a DataError, not hang).
    with pytest.raises(DataError, match="hub is offline"):
        load_records("no-such-user-dwakd/no-such-dataset")


def test_list_of_dicts_and_limit():
    res = load_records([DOLLY, DOLLY, DOLLY], limit=2)
    assert len(res) == 2


# --------------------------------------------------------------------------- the real files
@pytest.mark.parametrize(
    "name, fmt, rows",
    [("vicuna.jsonl", "minillm", 80), ("self-inst.jsonl", "minillm", 242),
     ("dolly-test.jsonl", "dolly", 500), ("dolly-train-688.jsonl", "dolly", 688)],
)
def test_shared_files_load_with_the_right_format(shared_data_dir, name, fmt, rows):
    path = shared_data_dir / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    res = load_records(path)
    assert res.format == fmt and len(res) == rows and res.skipped == 0
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert res.records[0].response == first.get("response", first.get("output"))
    if fmt == "minillm":
        assert res.records[0].prompt == first["prompt"]


# --------------------------------------------------------------------------- prompts
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nSum it.\n\n"
    "### Input:\n1 2\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nSum it.\n\n### Response:\n"
)


def test_plain_templates_are_the_minillm_ones():
    assert plain_prompt("Sum it.", "1 2") == WITH_INPUT
    assert plain_prompt("Sum it.", "") == NO_INPUT
    assert plain_prompt("Sum it.") == NO_INPUT


def test_vicuna_prompts_match_the_plain_template(shared_data_dir):
    """The MiniLLM files' ``prompt`` field is the plain template applied to ``instruction``."""
    path = shared_data_dir / "self-inst.jsonl"
    if not path.is_file():
        pytest.skip("self-inst.jsonl absent")
    for line in path.read_text(encoding="utf-8").splitlines()[:20]:
        row = json.loads(line)
        assert plain_prompt(row["instruction"], row.get("input")) == row["prompt"]


class _ChatTok:
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_format_prompt_rules():
    dolly = Record("dolly", "r", instruction="Sum it.", context="1 2")
    mini = Record("minillm", "r", prompt="PRE-FORMATTED", instruction=None)
    mini_ins = Record("minillm", "r", prompt="PRE", instruction="Sum it.", context="1 2")
    chat1 = Record("chat", "r", messages=[{"role": "user", "content": "Sum it."}])
    chat2 = Record("chat", "r", messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    tok = _ChatTok()
    assert format_prompt(dolly) == WITH_INPUT
    assert format_prompt(dolly, tok, chat_template=False) == WITH_INPUT
    assert format_prompt(dolly, tok, chat_template=True) == "<user>Sum it.\n\n1 2<assistant>"
    assert format_prompt(mini) == "PRE-FORMATTED"
    assert format_prompt(mini, tok, chat_template=True) == "<user>PRE-FORMATTED<assistant>"
    assert format_prompt(mini_ins, tok, chat_template=True) == "<user>Sum it.\n\n1 2<assistant>"
    assert format_prompt(mini_ins) == "PRE"
    assert format_prompt(chat1) == NO_INPUT
    assert format_prompt(chat2) == plain_prompt("system: S\n\nuser: U")
    assert format_prompt(chat2, tok, chat_template=True) == "<system>S<user>U<assistant>"


def test_chat_template_asked_but_absent_falls_back_to_plain():
    class NoTemplate:
        chat_template = None

    assert format_prompt(Record("dolly", "r", instruction="Sum it."), NoTemplate(), chat_template=True) == NO_INPUT


def test_real_chat_template_smollm2():
    from _data_tokenizers import smollm2

    text = format_prompt(Record("dolly", "r", instruction="Sum it.", context="1 2"), smollm2(), chat_template=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nSum it.\n\n1 2<|im_end|>\n<|im_start|>assistant\n"
    )

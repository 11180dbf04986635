"""``dwakd judge`` end to end against a real OpenAI-compatible server on 127.0.0.1 (the tiny
fixture teacher behind :mod:`dwakd.eval.judge_server`), plus the verdict and interval arithmetic."""

from __future__ import annotations

import json
import math

import pytest

from dwakd.cli.main import main
from dwakd.errors import ConfigError, DataError
from dwakd.eval.judge import CHOICES, combine, load_samples, parse_verdict, summarise, wilson


@pytest.fixture(scope="module")
def server(tiny_teacher_dir):
    from dwakd.eval.judge_server import start_server

    srv = start_server(str(tiny_teacher_dir))
    yield srv
    srv.shutdown()


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def samples(tmp_path, tiny_dolly_path):
    """A: today's format (set/seed/key/text); B: with prompt/references/output. 3 keys x 1 seed,
    plus one key only B has."""
    recs = [json.loads(line) for line in tiny_dolly_path.read_text().splitlines()]
    a = [{"set": "tiny_dolly", "seed": 10, "key": k, "text": f"Answer {k}: {recs[k]['response']}"} for k in range(3)]
    b = [{"set": "tiny_dolly", "seed": 10, "key": k, "prompt": recs[k]["instruction"],
          "references": [recs[k]["response"]], "output": "I do not know."} for k in range(4)]
    return _write(tmp_path / "A" / "samples.jsonl", a), _write(tmp_path / "B" / "samples.jsonl", b)


def _run(samples, out, server, *extra, data=None):
    argv = ["judge", str(samples[0]), str(samples[1]), "--base-url", server.url, "--model", "tiny",
            "--out", str(out), "--backoff", "0.01", *extra]
    if data:
        argv += ["--data", str(data)]
    return main(argv)


def _rows(out):
    return [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- arithmetic
def test_verdict_parsing_and_position_swap_combination():
    assert parse_verdict("After thought: [[1]]") == "1"
    assert parse_verdict("[[ TIE ]]") == "tie"
    assert parse_verdict("2") == "2"
    for bad in ("", None, "Answer 1 is better", "[[1]] or [[2]]", "[[3]]"):
        assert parse_verdict(bad) == "invalid"
    # (verdict with A first, verdict with B first) -> A's outcome
    assert combine("1", "2") == "win" and combine("2", "1") == "loss"
    assert combine("1", "1") == "tie"  # position bias: the first answer always wins
    assert combine("tie", "2") == "tie" and combine("1", "invalid") == "invalid"


def test_wilson_interval_matches_hand_values_and_summary_counts():
    lo, hi = wilson(0, 10)  # z^2 / (n + z^2) for k = 0
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - 0.5 == pytest.approx(0.2634, abs=1e-3)
    s = summarise(["win", "win", "tie", "loss", "invalid"])
    assert (s["valid"], s["invalid"], s["win"]["count"], s["tie"]["count"]) == (4, 1, 2, 1)
    assert s["win_rate_tie_half"]["rate"] == pytest.approx((2 + 0.5) / 4)
    lo, hi = s["win_rate_tie_half"]["ci95"]
    assert 0 <= lo <= 0.625 <= hi <= 1
    assert math.isnan(summarise([])["win"]["rate"])


# ----------------------------------------------------------------------------- end to end
def test_judged_end_to_end_with_guided_choice(samples, tmp_path, server, tiny_dolly_path, capsys):
    out = tmp_path / "j"
    assert _run(samples, out, server, "--guided-choice", data=tiny_dolly_path) == 0
    rows = _rows(out)
    assert sorted((r["key"], r["order"]) for r in rows) == [(k, o) for k in range(3) for o in ("AB", "BA")]
    assert all(r["raw"] in CHOICES and r["verdict"] == parse_verdict(r["raw"]) for r in rows)
    res = json.loads((out / "judge_results.json").read_text())
    by = {(r["key"], r["order"]): r["verdict"] for r in rows}
    outcomes = [combine(by[(k, "AB")], by[(k, "BA")]) for k in range(3)]
    assert [res[n]["count"] for n in ("win", "tie", "loss")] == [outcomes.count(n) for n in ("win", "tie", "loss")]
    assert res["A"] == "A" and res["B"] == "B" and res["judge_model"] == "tiny" and res["complete"]
    printed = capsys.readouterr().out
    assert "1 samples appear in one file only" in printed and "| A | B | tiny |" in printed


def test_malformed_free_text_answers_are_kept_and_counted_invalid(samples, tmp_path, server, tiny_dolly_path):
    out = tmp_path / "free"
    assert _run(samples, out, server, "--max-tokens", "6", data=tiny_dolly_path) == 0
    rows = _rows(out)
    assert len(rows) == 6 and all(isinstance(r["raw"], str) for r in rows)
    assert any(r["verdict"] == "invalid" for r in rows)  # the tiny model does not write [[1]]
    for r in rows:
        assert r["verdict"] == parse_verdict(r["raw"])
    res = json.loads((out / "judge_results.json").read_text())
    n_invalid = sum(1 for k in range(3) if "invalid" in {r["verdict"] for r in rows if r["key"] == k})
    assert res["invalid"] == n_invalid and res["valid"] == 3 - n_invalid


def test_server_error_is_retried_and_a_client_error_is_not(samples, tmp_path, server, tiny_dolly_path, capsys):
    out = tmp_path / "retry"
    server.fail_next = [500, 503]
    assert _run(samples, out, server, "--guided-choice", "--limit", "1", data=tiny_dolly_path) == 0
    rows = _rows(out)
    assert rows[0]["attempts"] == 3 and rows[1]["attempts"] == 1
    server.fail_next = [400]
    before = server.requests
    assert _run(samples, tmp_path / "bad", server, "--guided-choice", data=tiny_dolly_path) == 2
    assert server.requests == before + 1  # no retry on a 4xx
    assert "HTTP 400" in capsys.readouterr().err
    server.fail_next = [500, 500]
    assert _run(samples, tmp_path / "giveup", server, "--guided-choice", "--max-retries", "1",
                data=tiny_dolly_path) == 2
    server.fail_next = []


def test_interrupted_run_resumes_without_redoing_work(samples, tmp_path, server, tiny_dolly_path):
    out = tmp_path / "resume"
    assert _run(samples, out, server, "--guided-choice", "--max-requests", "3", data=tiny_dolly_path) == 3
    first = _rows(out)
    assert len(first) == 3
    assert "INCOMPLETE" in (out / "judge_results.md").read_text()
    # a crash in the middle of writing the next line leaves a torn line behind
    with open(out / "judgements.jsonl", "a") as fh:
        fh.write('{"set": "tiny_dolly", "seed": 10, "key": 1, "ord')
    before = server.requests
    assert _run(samples, out, server, "--guided-choice", data=tiny_dolly_path) == 0
    assert server.requests - before == 3  # only the missing judgements were requested
    rows = _rows(out)
    assert rows[:3] == first and len(rows) == 6
    assert len({(r["key"], r["order"]) for r in rows}) == 6
    assert json.loads((out / "judge_results.json").read_text())["complete"]
    # resuming with another judge model is refused instead of mixing verdicts
    argv = ["judge", str(samples[0]), str(samples[1]), "--base-url", server.url, "--model", "other",
            "--out", str(out), "--data", str(tiny_dolly_path)]
    assert main(argv) == 2
    assert len(_rows(out)) == 6


def test_bad_inputs_are_named(tmp_path, samples):
    bad = _write(tmp_path / "bad.jsonl", [{"set": "x", "key": 0, "text": "t"}])
    with open(bad, "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2"):
        load_samples(bad)
    with pytest.raises(DataError, match="missing key 'key'"):
        load_samples(_write(tmp_path / "nokey.jsonl", [{"set": "x", "text": "t"}]))
    from dwakd.eval.judge import load_prompts, pair_items

    a = load_samples(samples[0])
    with pytest.raises(ConfigError, match="--data"):
        pair_items(a, a, load_prompts(None))

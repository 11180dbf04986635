"""The embedded default end to end at toy size: real SmolLM2 teacher, pretrained student, three methods x 2
training seeds through ``dwakd compare``, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.slow
def test_demo_toy_run_writes_the_report(tmp_path, monkeypatch):
    from dwakd.demo.pipeline import DemoSettings, run_demo
    from dwakd.models.home import dwakd_home

    resolve = __import__("dwakd.models", fromlist=["resolve_alias"]).resolve_alias
    resolve("smollm2-135m-instruct")  # converted once, in the user's home

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(dwakd_home() / "models")  # the converted teacher; every cache else is fresh
    monkeypatch.setenv("DWAKD_HOME", str(home))
    settings = DemoSettings(
        n_train=16, n_test=4, answer_tokens=24, epochs=1, batch_size=8, seeds=(10,), train_seeds=(1, 2),
        eval_new_tokens=16,
        student={"family": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                 "max_positions": 256, "tokenizer_kind": "bpe", "vocab_size": 600, "seed": 0},
        pretrain={"corpus": [{"kind": "text", "path": str(FIXTURES / "corpus.txt")},
                             {"kind": "jsonl", "path": str(FIXTURES / "tiny_dolly.jsonl"), "field": "response"}],
                  "heldout_fraction": 0.2,
                  "train": {"block_size": 32, "batch_size": 4, "lr": 3e-3, "epochs": 1, "bf16": False, "log_every": 5}},
    )
    out = run_demo(tmp_path / "demo", settings=settings)
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text(encoding="utf-8")
    res = out["results"]
    assert "Regime: **pretrained student**" in report
    assert set(res["methods"]) == {"sft", "dskd", "dwakd"}
    assert all(m["seeds"] == [1, 2] for m in res["methods"].values())
    assert set(res["references"]) == {"teacher", "student-pretrained"}
    for fig in ("loss_curves.png", "metrics.png", "alignment.png"):
        png = demo / "figures" / fig
        assert png.is_file() and png.stat().st_size > 5_000, fig
        assert f"figures/{fig}" in report
    for c in res["cells"]:
        assert 0.0 <= c["avg"] <= 100.0 and c["bpb"] > 0
    # Paired difference of two seeds: mean of the differences, half width t(1) * |d1 - d2| / 2.
    score = {(c["label"], c["seed"]): c["avg"] for c in res["cells"]}
    d = [score[("dwakd", s)] - score[("dskd", s)] for s in (1, 2)]
    got = res["differences"]["dwakd - dskd"]["avg"]
    assert got["mean"] == pytest.approx(sum(d) / 2)
    assert got["half_width"] == pytest.approx(12.706204736 * abs(d[0] - d[1]) / 2, abs=1e-9)
    assert "dwakd - dskd" in report and "dskd - sft" in report
    # Every cell trained for the same number of steps on the same data.
    steps = set()
    cells = out["grid"] / "cells"
    for m in ("sft", "dskd", "dwakd"):
        for s in (1, 2):
            rows = [json.loads(x) for x in (cells / f"{m}-s{s}" / "run" / "metrics.jsonl").read_text().splitlines()]
            steps.add(max(r.get("step", 0) for r in rows))
            terms = {k for r in rows if r.get("kind") == "train" for k in r if k.startswith("term/")}
            assert "term/ce" in terms, m
            if m != "sft":
                assert {"term/kd_stu", "term/kd_tea", "term/ce_t2s"} <= terms, (m, terms)
            if m == "dwakd":
                assert {"term/dtw_hidden", "term/dtw_embed"} <= terms, terms
    assert len(steps) == 1
    # A second run reuses the teacher answers, the pretrained student, the cache and every finished cell.
    stamp = (cells / "dwakd-s2" / "eval.json").stat().st_mtime_ns
    again = run_demo(demo, settings=settings)
    assert (cells / "dwakd-s2" / "eval.json").stat().st_mtime_ns == stamp
    assert again["results"]["methods"]["dwakd"]["avg"]["mean"] == pytest.approx(res["methods"]["dwakd"]["avg"]["mean"])
    assert math.isfinite(again["timings"]["total"])

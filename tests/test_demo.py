"""The embedded default end to end at toy size: real SmolLM2 teacher, built student, three methods, report."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_toy_run_writes_the_report(tmp_path, monkeypatch):
    from dwakd.demo.pipeline import DemoSettings, run_demo

    settings = DemoSettings(
        n_train=16, n_test=4, answer_tokens=24, epochs=1, batch_size=8, seeds=(10,), eval_new_tokens=16,
        student={"family": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                 "max_positions": 256, "tokenizer_kind": "bpe", "vocab_size": 600, "seed": 0},
    )
    out = run_demo(tmp_path / "demo", settings=settings)
    report = (tmp_path / "demo" / "report.md").read_text(encoding="utf-8")
    names = [r["name"] for r in out["results"]]
    assert names == ["teacher (SmolLM2-135M)", "student · sft", "student · dskd", "student · dwakd"]
    for name in names:
        assert name in report
    for fig in ("loss_curves.png", "metrics.png", "alignment.png"):
        png = tmp_path / "demo" / "figures" / fig
        assert png.is_file() and png.stat().st_size > 5_000, fig
        assert f"figures/{fig}" in report
    for r in out["results"]:
        rouge = r["average"]["rougeL"]["mean"]
        assert 0.0 <= rouge <= 100.0
        assert r["average"]["bpb"] > 0
    # Every method trained for the same number of steps on the same data.
    steps = set()
    for m in ("sft", "dskd", "dwakd"):
        rows = [json.loads(x) for x in (tmp_path / "demo" / m / "metrics.jsonl").read_text().splitlines()]
        steps.add(max(r.get("step", 0) for r in rows))
        terms = {k for r in rows if r.get("kind") == "train" for k in r if k.startswith("term/")}
        assert "term/ce" in terms, m
        if m != "sft":
            assert {"term/kd_stu", "term/kd_tea", "term/ce_t2s"} <= terms, (m, terms)
        if m == "dwakd":
            assert {"term/dtw_hidden", "term/dtw_embed"} <= terms, terms
    assert len(steps) == 1
    # A second run reuses the trained students: no training is started and their weights are untouched.
    import dwakd.train

    def digest(m):
        return {p.name: p.read_bytes() for p in sorted((tmp_path / "demo" / m / "final").glob("*.safetensors"))}

    before = {m: digest(m) for m in ("sft", "dskd", "dwakd")}
    assert all(before.values())

    def no_training(cfg):
        raise AssertionError(f"the second demo run trained {cfg.output_dir} again")

    monkeypatch.setattr(dwakd.train, "train", no_training)
    again = run_demo(tmp_path / "demo", settings=settings)
    assert {m: digest(m) for m in ("sft", "dskd", "dwakd")} == before
    assert [r["name"] for r in again["results"]] == names

"""Resume is exact: a run stopped after step k and resumed reaches the same weights as an uninterrupted run.

On CPU the comparison is bitwise: the data order is a function of the step, and the checkpoint
restores the trained weights, AdamW moments, the schedule and every RNG state (the GPT-2 student
trains with dropout 0.1, so a wrong RNG state would show).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from _train_helpers import base_config, register_toy, state_of
from dwakd.config import config_from_dict
from dwakd.errors import ConfigError
from dwakd.train import train
from dwakd.train.metrics import read_metrics

register_toy()


def _cfg(tmp_path, name, teacher, student, data, **train_kw):
    d = base_config(tmp_path / name, teacher, student, data, max_steps=6, eval_every=2, save_every=2, **train_kw)
    return config_from_dict(d)


def test_resume_is_bitwise_exact(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    args = (tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    full = train(_cfg(tmp_path, "full", *args))

    stopped = train(_cfg(tmp_path, "split", *args, stop_at_step=3))
    run = Path(stopped.run_dir)
    assert stopped.final_dir is None and stopped.last_checkpoint.name == "checkpoint-3"
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"
    # a crash after the checkpoint: metrics written past it are dropped on resume
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "kind": "train", "loss": -1.0}) + "\n")
    resumed = train(_cfg(tmp_path, "split", *args), resume="auto")
    assert resumed.state.global_step == 6 and resumed.final_dir is not None

    a, b = state_of(full.final_dir), state_of(resumed.final_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # projectors (method state) are identical too: compare the last checkpoints' trained weights
    pa = state_of(full.last_checkpoint / "state")
    pb = state_of(resumed.last_checkpoint / "state")
    proj = [k for k in pa if k.startswith("method.")]
    assert proj and all(torch.equal(pa[k], pb[k]) for k in proj)
    la = [(r["step"], r["loss"]) for r in read_metrics(full.run_dir / "metrics.jsonl", "train")]
    lb = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl", "train")]
    assert la == lb and [s for s, _ in lb] == [1, 2, 3, 4, 5, 6]
    assert resumed.state.examples_seen == full.state.examples_seen
    assert resumed.state.tokens_seen == full.state.tokens_seen


def test_resume_refuses_a_different_data_order(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    args = (tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    train(_cfg(tmp_path, "r", *args, stop_at_step=2))
    status = json.loads((tmp_path / "r" / "run" / "status.json").read_text())
    # the config-change rule refuses first, naming the key; applying it is refused where the order would change
    with pytest.raises(ConfigError, match=r"train.batch_size: 2 -> 4.*--allow-config-change"):
        train(_cfg(tmp_path, "r", *args, batch_size=4), resume="auto")
    with pytest.raises(ConfigError, match="global batch of 4 examples.*this run has 8"):
        train(_cfg(tmp_path, "r", *args, batch_size=4), resume="auto", allow_config_change=True)
    with pytest.raises(ConfigError, match="schedule of 6 steps; this config gives 8"):
        d = base_config(tmp_path / "r", *args, max_steps=8)
        train(config_from_dict(d), resume="auto", allow_config_change=True)
    # the refused attempts left the run as it was
    assert json.loads((tmp_path / "r" / "run" / "status.json").read_text()) == status


@pytest.mark.slow
def test_demo_config_trains_stops_resumes_and_saves_a_loadable_student(tmp_path, monkeypatch, capsys):
    """The embedded default (SmolLM2 teacher -> built student, DWA-KD) through the CLI, shortened."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dwakd.cli.main import main

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    run = tmp_path / "demo"
    common = [f"output_dir={run}", f"model.build.cache_dir={tmp_path / 'students'}", "train.max_steps=3",
              "train.batch_size=2", "data.max_length=128", "data.max_prompt_length=64", "train.log_every=1",
              "data.train=tests/fixtures/tiny_dolly.jsonl"]  # the real data comes from `dwakd data prepare demo`
    assert main(["train", "configs/demo.yaml", *common, "train.stop_at_step=2"]) == 0
    assert "continue with" in capsys.readouterr().out
    assert main(["train", "configs/demo.yaml", *common, "--resume", "auto"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    rows = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2, 3]
    expected = {"term/ce", "term/kd_stu", "term/kd_tea", "term/ce_t2s", "term/dtw_hidden", "term/dtw_embed"}
    assert expected <= set(rows[-1]) and all(math.isfinite(rows[-1][k]) for k in expected)
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    ids = tok("What is the capital of France?", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    # the built student was cached and reused by the resumed run
    assert len(list((tmp_path / "students").iterdir())) == 1

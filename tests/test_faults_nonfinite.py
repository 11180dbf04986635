"""Non-finite values: NaN logits (student or teacher) make the step bad in every method instead of
counting as a zero loss, and NaN weights stop the run before anything "good" is written."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import _faults  # noqa: F401  (registers the toy method)
from _faults import assert_verifies, status_of
from _train_helpers import base_config, state_of
from dwakd.config import config_from_dict
from dwakd.methods import available_methods
from dwakd.methods.registry import method_class
from dwakd.train import NonFiniteLossError, train
from dwakd.train.loop import Trainer
from dwakd.train.metrics import read_metrics

POISONED_STEP = 2  # 1-based optimizer step whose model outputs hold NaN


def _poison(monkeypatch, side: str) -> None:
    """NaN logits for the first example of every micro-batch of step POISONED_STEP, on one side."""
    import dwakd.train.module as module_mod
    import dwakd.train.teacher as teacher_mod

    current = {"step": -1}
    real_step = Trainer.train_step

    def train_step(self, s):
        current["step"] = s + 1
        return real_step(self, s)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    target = module_mod if side == "student" else teacher_mod
    real_run = target.run_model

    def run_model(model, batch_side, **kw):
        out = real_run(model, batch_side, **kw)
        if current["step"] != POISONED_STEP:
            return out
        if out.logits is not None:
            logits = out.logits.clone()
            logits[0] = float("nan")
            return dataclasses.replace(out, logits=logits)
        # logits not materialised (hidden rows + head): NaN final hidden states give NaN logits rows
        hidden = out.hidden.clone()
        hidden[0] = float("nan")
        return dataclasses.replace(out, hidden=hidden)

    monkeypatch.setattr(target, "run_model", run_model)


def _method_cfg(tmp_path, method, teacher, student, data, **train_kw):
    t = dict(max_steps=3, save_every=1, eval_every=0, keep_last_n=3)
    t.update(train_kw)
    d = base_config(tmp_path, teacher, student, data, **t)
    d["data"]["dev_fraction"] = 0.0
    d["method"] = {"name": method}
    if not method_class(method).needs_teacher:
        d["model"]["teacher"] = None
    if method == "kd":
        d["model"]["student"] = str(teacher)  # classic KD needs one tokenizer: the teacher copy is the student
    return config_from_dict(d)


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("method", sorted(available_methods()))
def test_nan_logits_make_the_step_bad_in_every_method(method, side, tmp_path, monkeypatch, tiny_teacher_dir,
                                                      tiny_student_dir, tiny_dolly_path):
    if side == "teacher" and not method_class(method).needs_teacher:
        pytest.skip(f"{method} runs no teacher")
    cfg = _method_cfg(tmp_path, method, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    _poison(monkeypatch, side)
    result = train(cfg)
    run = Path(cfg.output_dir)
    bad = [r for r in read_metrics(run / "metrics.jsonl", "event") if r.get("event") == "bad_step"]
    assert [r["step"] for r in bad] == [POISONED_STEP] and "logits" in bad[0]["terms"], bad
    assert result.state.bad_steps_total == 1
    # the bad step changed no weight (not a "zero loss" step: AdamW with weight decay would move them)
    w1, w2, w3 = (state_of(run / "checkpoints" / f"checkpoint-{k}" / "student") for k in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)
    assert all(torch.isfinite(v).all() for v in state_of(result.final_dir).values())
    assert math.isfinite(result.metrics["last_train_loss"])


def _poison_weights_after(monkeypatch, step: int) -> None:
    real_step = Trainer.train_step

    def train_step(self, s):
        out = real_step(self, s)
        if s + 1 == step:
            with torch.no_grad():
                next(self.engine.student.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_nan_weights_stop_at_once_and_no_checkpoint_holds_them(tmp_path, monkeypatch, tiny_teacher_dir,
                                                              tiny_student_dir, tiny_dolly_path):
    cfg = _method_cfg(tmp_path, "toy-kd", tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, max_steps=4)
    _poison_weights_after(monkeypatch, 3)
    with pytest.raises(NonFiniteLossError, match=r"weights are not finite at step 3 \(checkpoint not written\)"
                                                 r".*last good checkpoint is .*checkpoint-2"):
        train(cfg)
    run = Path(cfg.output_dir)
    status = status_of(run)
    assert status["status"] == "failed" and "weights are not finite" in status["error"]
    assert not (run / "checkpoints" / "checkpoint-3").exists() and not (run / "final").exists()
    assert_verifies(run / "checkpoints" / "checkpoint-2")


def test_nan_weights_found_by_the_next_bad_step(tmp_path, monkeypatch, tiny_teacher_dir, tiny_student_dir,
                                                tiny_dolly_path):
    """Between checkpoints: the NaN weights make the next step's logits NaN; the run stops there, it does not
    skip max_bad_steps steps and then write a NaN final/ (what issue 12 saw with lr=.nan)."""
    cfg = _method_cfg(tmp_path, "toy-kd", tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, max_steps=5,
                      save_every=5, max_bad_steps=10)
    _poison_weights_after(monkeypatch, 2)
    with pytest.raises(NonFiniteLossError, match="weights are not finite after step 3"):
        train(cfg)
    run = Path(cfg.output_dir)
    assert status_of(run)["status"] == "failed" and not (run / "final").exists()
    bad = [r["step"] for r in read_metrics(run / "metrics.jsonl", "event") if r.get("event") == "bad_step"]
    assert bad == [3]


def test_nan_dev_loss_is_not_a_best_checkpoint(tmp_path, monkeypatch, tiny_teacher_dir, tiny_student_dir,
                                               tiny_dolly_path):
    """A dev pass over NaN logits reports NaN, not 0.0, and never becomes the best checkpoint."""
    d = base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, max_steps=4, eval_every=2,
                    save_every=2)
    cfg = config_from_dict(d)
    real_eval = Trainer.evaluate
    calls = {"n": 0}

    def evaluate(self):
        calls["n"] += 1
        if calls["n"] != 2:
            return real_eval(self)
        import dwakd.train.module as module_mod

        real_run = module_mod.run_model

        def nan_run(model, side, **kw):
            out = real_run(model, side, **kw)
            if out.logits is not None:
                return dataclasses.replace(out, logits=out.logits * float("nan"))
            return dataclasses.replace(out, hidden=out.hidden * float("nan"))

        monkeypatch.setattr(module_mod, "run_model", nan_run)
        try:
            return real_eval(self)
        finally:
            monkeypatch.setattr(module_mod, "run_model", real_run)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = train(cfg)
    evals = read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "eval")
    assert evals[1]["dev/loss"] == "nan"  # JSON has no NaN: written as a string
    assert result.metrics["best_dev_step"] == 2

"""The config-change rule on resume: refused with the differing keys, applied only with
``--allow-config-change``, never for the model itself; a failed resume leaves config.yaml alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from _faults import (
    assert_verifies,
    fault_cfg,
    status_of,
)
from _train_helpers import state_of
from dwakd.errors import ConfigError
from dwakd.train import train
from dwakd.train.metrics import read_metrics


@pytest.fixture
def stopped(tmp_path, pair):
    """A run stopped at step 3 of 6; returns its directory and a snapshot of what must not change."""
    train(fault_cfg(tmp_path, *pair, stop_at_step=3, save_every=3))
    run = tmp_path / "run"
    return run, (run / "config.yaml").read_bytes(), status_of(run)


def test_changed_lr_is_refused_with_the_keys_and_changes_nothing(tmp_path, pair, stopped):
    run, config_before, status_before = stopped
    cfg = fault_cfg(tmp_path, *pair, save_every=3, lr=5e-2, seed=8)
    with pytest.raises(ConfigError, match=r"differs from the one recorded in .*checkpoint-3/config.yaml: "
                                          r"train.lr: 0.001 -> 0.05; train.seed: 7 -> 8\..*--allow-config-change"):
        train(cfg, resume="auto")
    assert (run / "config.yaml").read_bytes() == config_before and status_of(run) == status_before
    assert_verifies(run / "checkpoints" / "checkpoint-3")


def test_allowed_lr_change_is_applied_logged_and_recorded(tmp_path, pair, stopped):
    run, _, _ = stopped
    cfg = fault_cfg(tmp_path, *pair, save_every=3, lr=5e-2)
    result = train(cfg, resume="auto", allow_config_change=True)
    rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl", "train")}

    def cosine(step):  # the documented schedule, no warm-up: lr(step) / peak for the 0-based step
        return 0.5 * (1 + math.cos(math.pi * step / 6))

    for g in (1, 2, 3):
        assert rows[g]["lr/student"] == pytest.approx(1e-3 * cosine(g - 1), rel=1e-12)
    for g in (4, 5, 6):  # the new peak from the resume on, on the same schedule
        assert rows[g]["lr/student"] == pytest.approx(5e-2 * cosine(g - 1), rel=1e-12)
        assert rows[g]["lr/projectors"] == pytest.approx(1e-3 * cosine(g - 1), rel=1e-12)
    event = [r for r in read_metrics(run / "metrics.jsonl", "event") if r.get("event") == "config_change"]
    assert event and event[0]["changes"] == {"train.lr": [0.001, 0.05]} and event[0]["step"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.05
    # and it was not ignored (issue 12: the final weights equalled the lr 1e-3 run's)
    plain = train(fault_cfg(tmp_path / "plain", *pair, save_every=3))
    a, b = state_of(result.final_dir), state_of(plain.final_dir)
    assert any(not (a[k] == b[k]).all() for k in a)


def test_model_changes_are_refused_even_when_allowed(tmp_path, pair, stopped, tiny_teacher_dir):
    run, config_before, _ = stopped
    teacher, _, data = pair
    cfg = fault_cfg(tmp_path, teacher, tiny_teacher_dir, data, save_every=3)  # another student
    with pytest.raises(ConfigError, match=r"changes model.student, which the checkpoint's weights depend on"):
        train(cfg, resume="auto", allow_config_change=True)
    assert (run / "config.yaml").read_bytes() == config_before


def test_a_resume_that_fails_keeps_the_recorded_config(tmp_path, pair, stopped, monkeypatch):
    run, config_before, _ = stopped
    from dwakd.train.checkpoint import CheckpointManager

    def broken(self, path):
        raise ConfigError(f"checkpoint {path} does not fit this run (simulated)")

    monkeypatch.setattr(CheckpointManager, "load", broken)
    with pytest.raises(ConfigError, match="simulated"):
        train(fault_cfg(tmp_path, *pair, save_every=3, lr=5e-2), resume="auto", allow_config_change=True)
    assert (run / "config.yaml").read_bytes() == config_before
    assert status_of(run)["status"] == "failed"
    monkeypatch.undo()
    result = train(fault_cfg(tmp_path, *pair, save_every=3), resume="auto")  # still resumable as recorded
    assert result.final_dir is not None


def test_resume_of_a_checkpoint_without_its_own_config_reads_the_run_config(tmp_path, pair, stopped):
    """Checkpoints of older versions carry no config.yaml: the run's is the record."""
    import json

    run, _, _ = stopped
    ck = run / "checkpoints" / "checkpoint-3"
    (ck / "config.yaml").unlink()
    manifest = json.loads((ck / "MANIFEST.json").read_text())
    del manifest["files"]["config.yaml"]
    (ck / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=rf"recorded in {Path(run) / 'config.yaml'}: train.lr"):
        train(fault_cfg(tmp_path, *pair, save_every=3, lr=5e-2), resume="auto")

"""Faults around the run directory: two runs on one directory, stale locks, a folder that is not a
run, an output_dir that cannot be written, a launch whose processes Accelerate does not see,
and SIGTERM / SIGINT at a step boundary."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from _faults import (
    assert_same_weights,
    assert_verifies,
    fault_cfg,
    leftovers,
    status_of,
)
from dwakd.errors import ConfigError, RunLockedError, TrainingInterrupted
from dwakd.train import train
from dwakd.train.metrics import read_metrics
from dwakd.train.rundir import RunLock

HERE = Path(__file__).resolve().parent


def cli(*argv) -> int:
    from dwakd.cli.main import main

    return main(list(map(str, argv)))


# ----------------------------------------------------------------------------- the lock
def test_two_runs_started_together_one_wins_nothing_doubled(tmp_path, pair, reference):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)
    r, w = os.pipe()

    def racer():
        os.read(r, 1)  # both children start training at the same moment
        train(cfg)

    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                racer()
            except (RunLockedError, ConfigError):
                code = 7  # refused: locked, or (if the other one already finished) an existing run
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    os.write(w, b"go")
    codes = sorted(os.WEXITSTATUS(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [0, 7]
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl", "train")]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step once: one run wrote the directory
    assert status_of(run)["status"] == "completed" and not (run / ".dwakd.lock").exists()
    assert_same_weights(run / "final", reference)


def test_live_lock_is_refused_then_stale_lock_is_taken_over(tmp_path, pair, reference, caplog):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: holds the lock, then dies without releasing it
        RunLock(run).acquire()
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by another dwakd process \(pid {pid} on host "
                                                 rf"{socket.gethostname()}"):
            train(cfg)
        assert sorted(p.name for p in run.iterdir()) == [".dwakd.lock"]  # nothing else was written
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    result = train(cfg)  # the holder is gone: its lock is stale
    assert "stale lock" in caplog.text
    assert_same_weights(result.final_dir, reference)


def test_lock_of_another_host_is_refused_and_garbage_lock_waits(tmp_path, pair):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".dwakd.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "node-17", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(RunLockedError, match="pid 1 on host node-17.*delete"):
        RunLock(run).acquire()
    lock.write_text("{half a lock")  # a writer killed while creating it: stale only once it is old
    with pytest.raises(RunLockedError):
        RunLock(run).acquire()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with RunLock(run) as held:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and held.held
    assert not lock.exists()


def test_a_folder_that_holds_no_run_is_not_written(tmp_path, pair):
    folder = tmp_path / "my_configs"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own config\n")
    (folder / "metrics.jsonl").write_text("my own metrics\n")
    (folder / "notes.txt").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cfg = fault_cfg(tmp_path, *pair)
    cfg.output_dir = str(folder)
    with pytest.raises(ConfigError, match=r"holds files that are not a dwakd run \(notes.txt\)"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.output_dir = str(empty)
    cfg.train.max_steps = 1
    assert train(cfg).final_dir is not None  # an empty directory is fine


def test_unwritable_output_dir_is_a_clear_error(tmp_path, pair, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    from _train_helpers import base_config

    cfg_dict = base_config(tmp_path, *pair, max_steps=1)
    cfg_dict["output_dir"] = str(blocker / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    assert cli("train", path) == 2
    err = capsys.readouterr().err
    assert "a_file is a file, so the directory cannot be created" in err and "Traceback" not in err
    # a read-only parent (simulated: the tests run as root, who may write anywhere)
    import dwakd.train.rundir as rundir

    monkeypatch.setattr(rundir.os, "access", lambda p, mode: False)
    cfg_dict["output_dir"] = str(tmp_path / "ro" / "run")
    path.write_text(yaml.safe_dump(cfg_dict))
    assert cli("train", path) == 2
    err = capsys.readouterr().err
    assert "is not writable by this user" in err and "Traceback" not in err
    assert not (tmp_path / "ro").exists()


# ----------------------------------------------------------------------------- the launch check
def test_launch_that_accelerate_does_not_see_is_refused(tmp_path, pair, monkeypatch):
    """A launcher said 2 processes (WORLD_SIZE/RANK) but Accelerate runs this one alone."""
    cfg = fault_cfg(tmp_path, *pair)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but Accelerate sees 1; RANK=1 but Accelerate sees 0"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


@pytest.mark.multiprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine --multi_gpu is a valid launch")
def test_multi_gpu_launch_without_gpus_is_refused_by_every_process(tmp_path, pair):
    """What issue 12 saw: `accelerate launch --multi_gpu --num_processes 2` without GPUs = 2 lone runs."""
    from _train_helpers import base_config

    cfg_dict = base_config(tmp_path, *pair, max_steps=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(HERE / "_train_mp_entry.py"), "train", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("the launcher started processes that Accelerate does not see") == 2, proc.stderr[-3000:]
    assert not Path(cfg_dict["output_dir"]).exists()


# ----------------------------------------------------------------------------- signals
def _signal_at(monkeypatch, signum: int, step: int) -> None:
    """Deliver ``signum`` to this process in the middle of optimizer step ``step`` (1-based)."""
    from dwakd.train.loop import Trainer

    real = Trainer.train_step

    def train_step(self, s):
        out = real(self, s)
        if s + 1 == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_at_the_step_boundary(signum, tmp_path, pair, reference, monkeypatch):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)
    _signal_at(monkeypatch, signum, 3)
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name} received: stopped after step 3"):
        train(cfg)
    status = status_of(run)
    assert status["status"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    assert status["checkpoint"].endswith("checkpoint-3")
    assert_verifies(run / "checkpoints" / "checkpoint-3")  # the steps since the last checkpoint were kept
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler was removed
    monkeypatch.undo()
    result = train(cfg, resume="auto")
    assert_same_weights(result.final_dir, reference)


def test_sigterm_from_a_scheduler_process(tmp_path, pair, reference):
    """A real SIGTERM from another process while a forked run trains (a preempted job)."""
    cfg = fault_cfg(tmp_path, *pair, max_steps=6)
    run = Path(cfg.output_dir)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        from dwakd.train.loop import Trainer

        real = Trainer.train_step
        Trainer.train_step = lambda self, s: (time.sleep(0.3), real(self, s))[1]  # slow enough to be hit
        code = 0
        try:
            train(cfg)
        except TrainingInterrupted as e:
            code = 128 + e.signum
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = read_metrics(run / "metrics.jsonl", "train") if (run / "metrics.jsonl").is_file() else []
        if rows:
            break
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    _, st = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(st)
    if code == 0:
        pytest.skip("the run finished before the signal arrived (a very slow machine)")
    assert code == 128 + signal.SIGTERM
    status = status_of(run)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert_verifies(Path(status["checkpoint"]))
    assert leftovers(run) == []
    assert_same_weights(train(cfg, resume="auto").final_dir, reference)


def test_cli_exit_code_on_sigterm(tmp_path, pair, monkeypatch, capsys):
    from _train_helpers import base_config

    cfg_dict = base_config(tmp_path, *pair, max_steps=4, save_every=2, eval_every=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    _signal_at(monkeypatch, signal.SIGTERM, 1)
    assert cli("train", path) == 128 + signal.SIGTERM
    assert "SIGTERM received" in capsys.readouterr().err

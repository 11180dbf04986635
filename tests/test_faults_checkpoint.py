"""Faults while checkpointing: kill -9 at each write phase, ENOSPC / EFBIG at each write, a real
file-size limit, corrupted checkpoint files, and the orphan temporary directory of a killed final/.

Each test asserts the clear error (or status) AND that nothing was lost: the previous checkpoint
verifies, and a resume reaches weights bitwise equal to the run that saw no fault.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest

from _faults import (
    assert_same_weights,
    assert_verifies,
    fault_cfg,
    in_child,
    leftovers,
    status_of,
)
from dwakd.errors import ConfigError, StorageError
from dwakd.train import train
from dwakd.train.checkpoint import complete_checkpoints, resolve_resume

# The write phases of CheckpointManager.save, in order (each a function of dwakd.train.checkpoint).
PHASES = ["_write_state", "save_student_dir", "_write_config", "_write_trainer_state", "_write_manifest", "_publish"]


def _after_phase(monkeypatch, phase: str, action, step: int = 4) -> None:
    """Run ``action()`` right after the real ``phase`` wrote its part of checkpoint ``step``."""
    import dwakd.train.checkpoint as ck

    real = getattr(ck, phase)

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if any(f"checkpoint-{step}" in str(a) for a in args):
            action()
        return out

    monkeypatch.setattr(ck, phase, wrapped)


# ----------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("phase", PHASES)
def test_kill_at_each_write_phase_loses_nothing(phase, tmp_path, pair, reference, monkeypatch):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)

    def child():
        _after_phase(monkeypatch, phase, lambda: os.kill(os.getpid(), signal.SIGKILL))
        train(cfg)

    assert in_child(child) == -signal.SIGKILL
    assert status_of(run)["status"] == "running"  # SIGKILL cannot be caught: the status is stale, the lock too
    assert (run / ".dwakd.lock").is_file()
    ck2, ck4 = run / "checkpoints" / "checkpoint-2", run / "checkpoints" / "checkpoint-4"
    assert_verifies(ck2)
    if phase == "_publish":  # killed after the rename: checkpoint 4 is complete
        assert_verifies(ck4)
    else:
        assert not ck4.exists() and leftovers(run) == ["checkpoints/.tmp-checkpoint-4"]
    result = train(cfg, resume="auto")  # stale lock (dead pid) taken over, the half checkpoint cleared
    assert leftovers(run) == [] and not (run / ".dwakd.lock").exists()
    assert status_of(run)["status"] == "completed"
    assert_same_weights(result.final_dir, reference)


def test_kill_while_writing_final_leaves_no_orphan(tmp_path, pair, reference, monkeypatch):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)

    def child():
        import dwakd.train.loop as loop

        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)

        monkeypatch.setattr(loop, "write_final_extras", die)  # called inside the temporary final directory
        train(cfg)

    assert in_child(child) == -signal.SIGKILL
    assert not (run / "final").exists()
    assert [p for p in leftovers(run) if p.startswith(".final.tmp-")]  # what issue 12 item 11 saw
    assert_verifies(run / "checkpoints" / "checkpoint-6")
    with pytest.raises(ConfigError, match=r"status: running when it was killed: no process holds it now.*--resume auto"):
        train(cfg)  # a fresh start is refused and says what happened
    result = train(cfg, resume="auto")
    assert leftovers(run) == []
    assert_same_weights(result.final_dir, reference)


# ----------------------------------------------------------------------------- ENOSPC / EFBIG
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large")])
@pytest.mark.parametrize("phase", PHASES[:-1] + ["final", "metrics"])
def test_storage_error_at_each_write(phase, code, words, tmp_path, pair, reference, monkeypatch):
    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    if phase == "final":
        import dwakd.train.loop as loop

        monkeypatch.setattr(loop, "write_final_extras", fail)
    elif phase == "metrics":
        from dwakd.train.metrics import MetricsWriter

        real_log = MetricsWriter.log

        def log(self, step, kind, values):
            if step == 3:
                fail()
            return real_log(self, step, kind, values)

        monkeypatch.setattr(MetricsWriter, "log", log)
    else:
        _after_phase(monkeypatch, phase, fail)
    with pytest.raises(StorageError, match=words) as info:
        train(cfg)
    msg = str(info.value)
    if phase not in ("final", "metrics"):
        assert "while writing checkpoint 4" in msg and "checkpoint-2" in msg and "--resume auto" in msg
    status = status_of(run)
    assert status["status"] == "failed" and status["cause"] == "storage" and words in status["error"]
    assert leftovers(run) == []  # no partial checkpoint or final/ left behind
    assert not (run / "final").exists()
    last = complete_checkpoints(run / "checkpoints")[-1]
    assert_verifies(last)
    monkeypatch.undo()
    result = train(cfg, resume="auto")
    assert_same_weights(result.final_dir, reference)


def test_torch_unexpected_pos_is_reported_as_a_storage_error(tmp_path, pair, monkeypatch):
    """torch.save on a full disk / over a file-size limit says only 'unexpected pos': name the cause."""
    cfg = fault_cfg(tmp_path, *pair)

    def fail():
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 1472 vs 1344")

    _after_phase(monkeypatch, "_write_state", fail)
    with pytest.raises(StorageError, match="while writing checkpoint 4"):
        train(cfg)
    assert_verifies(Path(cfg.output_dir) / "checkpoints" / "checkpoint-2")


def test_real_file_size_limit(tmp_path, pair, reference):
    """ulimit -f in a child process: the checkpoint write fails with EFBIG for real."""
    import resource

    cfg = fault_cfg(tmp_path, *pair)
    run = Path(cfg.output_dir)
    train(fault_cfg(tmp_path, *pair, stop_at_step=2))

    def child():
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))  # the weights files are larger
        try:
            train(cfg, resume="auto")
        except StorageError:
            os._exit(3)

    assert in_child(child) == 3
    status = status_of(run)
    assert status["status"] == "failed" and "file too large" in status["error"], status
    assert leftovers(run) == [] and [p.name for p in complete_checkpoints(run / "checkpoints")] == ["checkpoint-2"]
    assert_verifies(run / "checkpoints" / "checkpoint-2")
    assert_same_weights(train(cfg, resume="auto").final_dir, reference)


# ----------------------------------------------------------------------------- corrupted checkpoints
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0xFF  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated trained weights": (lambda c: _truncate(c / "state" / "model.safetensors"), "truncated"),
    "truncated optimizer": (lambda c: _truncate(c / "state" / "optimizer.bin"), "truncated"),
    "garbage trainer_state.json": (lambda c: (c / "trainer_state.json").write_text("{garbage"), "trainer_state.json"),
    "flipped byte in the student": (lambda c: _flip(c / "student" / "model.safetensors"), "checksum"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_checkpoint_falls_back_to_the_previous_one(name, tmp_path, pair, reference, caplog):
    corrupt, words = CORRUPTIONS[name]
    cfg = fault_cfg(tmp_path, *pair, keep_last_n=2)
    run = Path(cfg.output_dir)
    train(fault_cfg(tmp_path, *pair, keep_last_n=2, stop_at_step=4))
    ck4 = run / "checkpoints" / "checkpoint-4"
    corrupt(ck4)
    with pytest.raises(ConfigError, match=f"not a usable checkpoint .*{words}.*checkpoint-2"):
        resolve_resume(run, str(ck4))
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(run, "auto").name == "checkpoint-2"
    assert "checkpoint-4" in caplog.text and words in caplog.text
    result = train(cfg, resume="auto")
    start = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"resume"' in x][-1]
    assert start["checkpoint"].endswith("checkpoint-2")
    assert_same_weights(result.final_dir, reference)


def test_no_checkpoint_verifies_is_a_clear_error(tmp_path, pair):
    cfg = fault_cfg(tmp_path, *pair, stop_at_step=2)
    train(cfg)
    run = Path(cfg.output_dir)
    _truncate(run / "checkpoints" / "checkpoint-2" / "state" / "optimizer.bin")
    with pytest.raises(ConfigError, match="no checkpoint of .* verifies"):
        train(fault_cfg(tmp_path, *pair), resume="auto")
    assert status_of(run)["status"] == "stopped"  # the refused resume changed nothing

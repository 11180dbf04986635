"""Helpers of the fault-injection suite (``tests/test_faults_*.py``).

- :func:`fault_cfg`: the standard 6-step run on the tiny pair (checkpoints and dev evaluation every
  2 steps, the toy method of ``_train_helpers``);
- :func:`reference_final`: the weights of that run done without any fault, once per session: every
  test that injects a fault and resumes compares the resumed run's ``final/`` to it bitwise;
- :func:`in_child`: run a function in a forked child (to kill it with SIGKILL, give it a file-size
  limit, or run two trainings at once) and return its exit status;
- :func:`assert_same_weights`, :func:`assert_verifies`: what "nothing was lost" means.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch

from _train_helpers import base_config, register_toy, state_of
from dwakd.config import config_from_dict

register_toy()

_REFERENCE: dict = {}


def fault_cfg(root: Path, teacher: Path, student: Path, data: Path, **train):
    """The standard faulted run: 6 steps, a checkpoint and a dev evaluation every 2 steps."""
    t = dict(max_steps=6, eval_every=2, save_every=2)
    t.update(train)
    return config_from_dict(base_config(Path(root), teacher, student, data, **t))


def reference_final(tmp_path_factory, teacher, student, data) -> dict[str, torch.Tensor]:
    """Final weights of the standard run without faults (computed once per session)."""
    if "final" not in _REFERENCE:
        from dwakd.train import train

        root = tmp_path_factory.mktemp("reference")
        result = train(fault_cfg(root, teacher, student, data))
        _REFERENCE["final"] = state_of(result.final_dir)
    return _REFERENCE["final"]


def assert_same_weights(final_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    got = state_of(final_dir)
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k], reference[k]), f"{k} differs from the uninterrupted run"


def assert_verifies(checkpoint: Path) -> None:
    from dwakd.train.checkpoint import verify_checkpoint

    assert checkpoint.is_dir(), f"{checkpoint} is gone"
    assert verify_checkpoint(checkpoint) is None, verify_checkpoint(checkpoint)
    for k, v in state_of(checkpoint / "student").items():
        assert torch.isfinite(v).all(), k


def status_of(run: Path) -> dict:
    return json.loads((Path(run) / "status.json").read_text(encoding="utf-8"))


def leftovers(run: Path) -> list[str]:
    """Temporary files or directories of unfinished writers anywhere in a run directory."""
    return sorted(str(p.relative_to(run)) for p in Path(run).rglob(".*") if ".tmp" in p.name or ".old" in p.name)


def in_child(fn, *args) -> int:
    """Run ``fn(*args)`` in a forked child; its exit code, or ``-signal`` when a signal ended it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            fn(*args)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

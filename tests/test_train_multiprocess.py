"""Two CPU processes (gloo) give the same loss curve as one process with twice the accumulation.

``accelerate launch --cpu --num_processes 2`` needs ``mpirun`` in accelerate 1.x (without it, it
silently starts one process), so the test uses accelerate's torchrun launcher (``--multi_gpu``)
with ``CUDA_VISIBLE_DEVICES=""`` and ``ACCELERATE_USE_CPU=true``: two CPU processes over gloo.
Tolerance: the gradient all-reduce sums in a different order than local accumulation, so values
agree to float32 rounding (relative 1e-5), not bitwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _train_helpers import base_config, no_dropout_copy, register_toy, state_of
from dwakd.config import config_from_dict
from dwakd.train import train
from dwakd.train.metrics import read_metrics

register_toy()
HERE = Path(__file__).resolve().parent


@pytest.mark.multiprocess
def test_two_processes_match_one_with_double_accumulation(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    student = no_dropout_copy(tiny_student_dir, tmp_path / "student_nd")  # dropout masks differ per process
    common = dict(batch_size=2, max_steps=3, eval_every=3, save_every=3)
    one = base_config(tmp_path / "one", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=2, **common)
    train(config_from_dict(one))

    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(two))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(HERE / "_train_mp_entry.py"), "train", str(cfg_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    start = read_metrics(run2 / "metrics.jsonl", "event")[0]
    assert start["processes"] == 2 and start["global_batch"] == 8
    t1, t2 = read_metrics(run1 / "metrics.jsonl", "train"), read_metrics(run2 / "metrics.jsonl", "train")
    assert [r["step"] for r in t1] == [r["step"] for r in t2] == [1, 2, 3]
    for a, b in zip(t1, t2):
        assert a["n_tokens"] == b["n_tokens"]
        for key in ("loss", "term/ce", "term/proj", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    e1, e2 = read_metrics(run1 / "metrics.jsonl", "eval"), read_metrics(run2 / "metrics.jsonl", "eval")
    assert e2[0]["dev/loss"] == pytest.approx(e1[0]["dev/loss"], rel=1e-5)
    assert e2[0]["dev/n_tokens"] == e1[0]["dev/n_tokens"]
    # every process wrote its RNG state into the checkpoint
    ck = run2 / "checkpoints" / "checkpoint-3" / "state"
    assert (ck / "random_states_0.pkl").is_file() and (ck / "random_states_1.pkl").is_file()
    w1, w2 = state_of(run1 / "final"), state_of(run2 / "final")
    import torch

    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)

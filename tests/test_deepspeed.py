"""DeepSpeed ZeRO-2 / ZeRO-3 through Accelerate, 2 processes, against 1 plain process.

On this CPU-only machine DeepSpeed runs with its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo);
Accelerate needs a test-only shim for that (``_fsdp_entry.py``). On a machine with GPUs the same
test launches on them without the shim. Skipped when deepspeed is not installed (``[deepspeed]``
extra). Checked against an independent 1-process, non-DeepSpeed run with twice the accumulation:

- the same losses, terms, gradient norms and final weights (to float32 rounding): the trainer's
  up-front token normalisation under DeepSpeed's own accumulation and stepping gives dwakd's update;
- a non-finite step (the toy method's ``nan_steps``) is skipped by DeepSpeed's own non-finite check
  exactly where the plain trainer skips it (same ``bad_step`` event, the schedule still advances);
- ``final/`` is one ordinary Hugging Face directory (ZeRO-3: weights gathered on save);
- the teacher stays a replicated plain module (never partitioned, also under ZeRO-3).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _train_helpers import base_config, no_dropout_copy, register_toy, state_of
from dwakd.config import config_from_dict
from dwakd.train import train
from dwakd.train.metrics import read_metrics

register_toy()
HERE = Path(__file__).resolve().parent
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
GPU = torch.cuda.is_available() and torch.cuda.device_count() >= 2


def launch_deepspeed(cfg: dict, tmp_path: Path, name: str, stage: int, *args: str, placement: Path | None = None,
                     zero_options: dict | None = None):
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if not GPU:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    if placement is not None:
        env["DWAKD_TEST_PLACEMENT"] = str(placement)
    if zero_options:
        env["DWAKD_TEST_ZERO_OPTIONS"] = json.dumps(zero_options)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--use_deepspeed", "--zero_stage", str(stage),
           "--zero3_init_flag", "false", str(HERE / "_fsdp_entry.py"), "train", str(cfg_path), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.multiprocess
@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_one_process_and_skips_the_same_non_finite_step(
        stage, tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    from transformers import AutoModelForCausalLM

    student = no_dropout_copy(tiny_student_dir, tmp_path / "student_nd")
    common = dict(batch_size=2, max_steps=4, eval_every=4, save_every=4, max_grad_norm=1.0)
    one = base_config(tmp_path / "one", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=2, **common)
    for cfg in (one, two):
        cfg["method"]["nan_steps"] = [1]  # the second optimizer step has a NaN term
    train(config_from_dict(one))
    launch_deepspeed(two, tmp_path, "two", stage, placement=tmp_path / "placement")

    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    start = read_metrics(run2 / "metrics.jsonl", "event")[0]
    assert start["processes"] == 2 and start["global_batch"] == 8
    bad1 = [(e["step"], e["terms"]) for e in read_metrics(run1 / "metrics.jsonl", "event") if e["event"] == "bad_step"]
    bad2 = [(e["step"], e["terms"]) for e in read_metrics(run2 / "metrics.jsonl", "event") if e["event"] == "bad_step"]
    assert bad1 == bad2 == [(2, ["ce", "total"])]
    t1, t2 = read_metrics(run1 / "metrics.jsonl", "train"), read_metrics(run2 / "metrics.jsonl", "train")
    assert [r["step"] for r in t1] == [r["step"] for r in t2] == [1, 2, 3, 4]
    diffs = []
    for a, b in zip(t1, t2):
        assert a["n_tokens"] == b["n_tokens"] and a["lr/student"] == b["lr/student"]
        if a["step"] == 2:
            continue  # the skipped step logs no loss of its own
        for key in ("loss", "term/ce", "term/proj", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
        diffs.append(abs(b["loss"] - a["loss"]) / abs(a["loss"]))
    print(f"DeepSpeed ZeRO-{stage} 2 processes vs 1 process: max relative loss difference {max(diffs):.3e}")

    final = run2 / "final"
    w1, w2 = state_of(run1 / "final"), state_of(final)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    AutoModelForCausalLM.from_pretrained(final)  # an ordinary HF directory

    recs = [json.loads((tmp_path / f"placement.{r}.json").read_text()) for r in (0, 1)]
    n_teacher = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).parameters())
    for rec in recs:
        assert "DEEPSPEED" in rec["distributed_type"]
        assert rec["teacher"]["local_numel"] == rec["teacher"]["full_numel"] == n_teacher
        assert rec["teacher"]["requires_grad"] == 0
        if stage == 3:  # the trained module is partitioned across the processes
            assert rec["module"]["local_numel"] < rec["module"]["full_numel"]


@pytest.mark.multiprocess
@needs_deepspeed
@pytest.mark.parametrize("method, persist", [("uld", True), ("dskd", False), ("dwakd", True), ("mined", False),
                                             ("multilevel-ot", False), ("alm", False), ("cdm", False)])
def test_zero3_trains_like_one_process(method, persist, tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    """Methods that declare supports_zero3 under ZeRO-3, 2 processes against 1: the same losses, terms,
    gradient norms and final weights. ULD, MinED, Multi-Level OT, ALM and CDM read only the logits of the
    student's forward (materialised when the head is a partition); DSKD and DWA-KD also read the student's head weight, gathered for
    the read (student_head_weight_detached), and train their projectors, partitioned with the student.
    ``persist=False`` sets DeepSpeed's persistence threshold to 0, so even the tiny student's head is a
    partition between module calls and the read has to gather it (with the default, tiny parameters
    stay whole and the read takes them as they are)."""
    from dwakd.methods.registry import method_class

    assert method_class(method).supports_zero3 and method_class("sft").supports_zero3
    student = no_dropout_copy(tiny_student_dir, tmp_path / "student_nd")
    common = dict(batch_size=2, max_steps=2, eval_every=2, save_every=2, max_grad_norm=1.0)
    one = base_config(tmp_path / "one", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=2, **common)
    for cfg in (one, two):
        cfg["method"] = {"name": method}
    train(config_from_dict(one))
    launch_deepspeed(two, tmp_path, "two", 3, placement=tmp_path / "placement",
                     zero_options=None if persist else {"stage3_param_persistence_threshold": 0})
    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    t1, t2 = read_metrics(run1 / "metrics.jsonl", "train"), read_metrics(run2 / "metrics.jsonl", "train")
    assert [r["step"] for r in t1] == [r["step"] for r in t2] == [1, 2]
    keys = ["loss", "grad_norm"] + sorted(k for k in t1[0] if k.startswith("term/"))
    assert len(keys) > 3, keys
    for a, b in zip(t1, t2):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), (a["step"], key)
    recs = [json.loads((tmp_path / f"placement.{r}.json").read_text()) for r in (0, 1)]
    assert all(rec["module"]["local_numel"] < rec["module"]["full_numel"] for rec in recs)  # partitioned
    assert all((rec["module"]["ds_persistent"] > 0) == persist for rec in recs)
    # Weights: AdamW's early updates are lr * g / (|g| + eps), about +-lr whatever |g|, so an entry whose
    # gradient is float noise can move the other way with another reduction order (seen in one of
    # three runs of these cases). At most 0.5% of the entries may differ by more than 1e-5, none by more than the
    # two steps' 2 x 2 lr; a wrong reduction would move most entries.
    w1, w2 = state_of(run1 / "final"), state_of(run2 / "final")
    lr = float(two["train"]["lr"])
    for k in w1:
        diff = (w2[k] - w1[k]).abs()
        assert (diff > 1e-5).float().mean() <= 5e-3 and float(diff.max()) <= 4 * lr + 1e-6, k


def _fake_deepspeed_accelerator(ds_config: dict, processes: int = 4):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(deepspeed_config=ds_config)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin), gradient_accumulation_steps=1)


def test_deepspeed_config_is_fitted_to_the_run(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    from dwakd.train.engine import check_backend

    cfg = config_from_dict(base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path,
                                       batch_size=3, grad_accum=5, max_grad_norm=0.5))
    ds = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}, "gradient_clipping": "auto"}
    acc = _fake_deepspeed_accelerator(ds)
    from _train_helpers import ToyKD

    check_backend(acc, cfg, type("Safe", (ToyKD,), {"supports_zero3": True}))
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["check_grad_overflow"] is True
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert acc.gradient_accumulation_steps == 5


@pytest.mark.parametrize("method", ["kd"])
def test_zero3_is_refused_for_methods_that_do_not_declare_it(method, tmp_path, tiny_teacher_dir, tiny_student_dir,
                                                                 tiny_dolly_path):
    from dwakd.errors import ConfigError
    from dwakd.methods.registry import method_class
    from dwakd.train.engine import check_backend

    d = base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    d["method"] = {"name": method}
    cfg = config_from_dict(d)
    with pytest.raises(ConfigError, match="ZeRO-3 is not supported for method"):
        check_backend(_fake_deepspeed_accelerator({"zero_optimization": {"stage": 3}}), cfg, method_class(method))
    check_backend(_fake_deepspeed_accelerator({"zero_optimization": {"stage": 2}}), cfg, method_class(method))  # ZeRO-2 is fine


@pytest.mark.multiprocess
@needs_deepspeed
def test_zero2_checkpoint_resumes_to_the_one_process_run(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    """Stopped after step 2 (DeepSpeed's own checkpoint: partitioned optimizer states) and resumed:
    steps 3-4 and the final weights are those of an uninterrupted plain 1-process run."""
    student = no_dropout_copy(tiny_student_dir, tmp_path / "student_nd")
    common = dict(batch_size=2, max_steps=4, eval_every=2, save_every=2, keep_last_n=2)
    one = base_config(tmp_path / "one", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, student, tiny_dolly_path, grad_accum=2, **common)
    train(config_from_dict(one))
    launch_deepspeed(dict(two, train=dict(two["train"], stop_at_step=2)), tmp_path, "two-a", 2)
    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    ck = run2 / "checkpoints" / "checkpoint-2" / "state"
    assert not (run2 / "final").exists() and ck.is_dir()
    assert len(list(ck.rglob("*optim_states.pt"))) == 2  # one optimizer partition per process
    launch_deepspeed(two, tmp_path, "two-b", 2, "--resume", "auto")
    assert "resume" in [e["event"] for e in read_metrics(run2 / "metrics.jsonl", "event")]
    t1, t2 = read_metrics(run1 / "metrics.jsonl", "train"), read_metrics(run2 / "metrics.jsonl", "train")
    assert [r["step"] for r in t2] == [1, 2, 3, 4]
    for a, b in zip(t1, t2):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    w1, w2 = state_of(run1 / "final"), state_of(run2 / "final")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)

"""FSDP (torch FSDP2 ``fully_shard``, through Accelerate) with two CPU processes over gloo.

Launched as the DDP test launches (``tests/test_train_multiprocess.py``: accelerate's torchrun
launcher with ``CUDA_VISIBLE_DEVICES=""`` and ``ACCELERATE_USE_CPU=true``), plus ``--use_fsdp
--fsdp_version 2``. Checked against independent runs, never against the FSDP run's own output:

- the losses, gradient norms and final weights of 2 FSDP processes x accumulation 2 equal those of
  1 plain process x accumulation 4 (same global batch, same examples per step), to float32
  rounding (the reduce-scatter sums in another order than local accumulation);
- a run stopped at step 2 (a sharded checkpoint: one ``.distcp`` shard per process) and resumed
  gives exactly the losses and final weights of the uninterrupted FSDP run;
- ``final/`` is one ordinary Hugging Face model directory (loads with ``from_pretrained``);
- LoRA under FSDP (adapter trained sharded, merged ``final/``) matches 1 process;
- the frozen teacher is replicated: every process holds all of its parameters as plain tensors,
  while the trained module's parameters are DTensor shards (half of the elements on each process).
"""

from __future__ import annotations

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
pytestmark = pytest.mark.multiprocess
GPU = torch.cuda.is_available() and torch.cuda.device_count() >= 2

FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "NO_WRAP",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_reshard_after_forward", "true"]


def launch(cfg: dict, tmp_path: Path, name: str, *args: str, placement: Path | None = None,
           flags: list[str] = FSDP_FLAGS) -> None:
    """``accelerate launch`` 2 CPU processes with FSDP2 on ``cfg`` (``dwakd train``)."""
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if not GPU:  # CPU processes over gloo (the test-only shim in _fsdp_entry.py); with 2+ GPUs, on them
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    if placement is not None:
        env["DWAKD_TEST_PLACEMENT"] = str(placement)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *flags,
           str(HERE / "_fsdp_entry.py"), "train", str(cfg_path), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]


def assert_same_training(run_a: Path, run_b: Path, rel: float, keys=("loss", "term/ce", "term/proj", "grad_norm")) -> None:
    """Same steps, token counts, losses, terms and gradient norms (``rel``: relative tolerance)."""
    t1, t2 = read_metrics(run_a / "metrics.jsonl", "train"), read_metrics(run_b / "metrics.jsonl", "train")
    assert [r["step"] for r in t1] == [r["step"] for r in t2] and t1
    for a, b in zip(t1, t2):
        assert a["n_tokens"] == b["n_tokens"]
        for key in keys:
            # abs: a term near zero (a KL of ~1e-5 is a difference of near-equal sums) carries float32
            # noise of ~1e-10 absolute; 1e-9 is still far below any per-token loss it is part of
            assert b[key] == pytest.approx(a[key], rel=rel, abs=0 if rel == 0 else 1e-9), (a["step"], key)


def max_loss_diff(run_a: Path, run_b: Path) -> float:
    t1, t2 = read_metrics(run_a / "metrics.jsonl", "train"), read_metrics(run_b / "metrics.jsonl", "train")
    return max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(t1, t2))


@pytest.fixture(scope="module")
def nd_student(tmp_path_factory, tiny_student_dir):
    return no_dropout_copy(tiny_student_dir, tmp_path_factory.mktemp("fsdp") / "student_nd")


def test_fsdp_matches_one_process_resumes_exactly_and_writes_a_plain_final(
        tmp_path, tiny_teacher_dir, nd_student, tiny_dolly_path, tiny_student_dir):
    from transformers import AutoModelForCausalLM

    common = dict(batch_size=2, max_steps=4, eval_every=2, save_every=2, keep_last_n=2)
    one = base_config(tmp_path / "one", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=2, **common)
    train(config_from_dict(one))
    launch(two, tmp_path, "two", placement=tmp_path / "placement")

    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    start = read_metrics(run2 / "metrics.jsonl", "event")[0]
    assert start["processes"] == 2 and start["global_batch"] == 8
    assert_same_training(run1, run2, rel=1e-5)
    (tmp_path / "loss_diff.txt").write_text(f"{max_loss_diff(run1, run2):.3e}\n")
    print(f"FSDP 2 processes vs 1 process: max relative loss difference {max_loss_diff(run1, run2):.3e}")
    e1, e2 = read_metrics(run1 / "metrics.jsonl", "eval"), read_metrics(run2 / "metrics.jsonl", "eval")
    assert [e["dev/loss"] for e in e2] == pytest.approx([e["dev/loss"] for e in e1], rel=1e-5)

    # final/: one ordinary HF directory, the weights of the 1-process run
    final = run2 / "final"
    names = sorted(p.name for p in final.iterdir())
    assert "config.json" in names and "model.safetensors" in names
    assert not [n for n in names if "fsdp" in n or n.endswith(".distcp")]
    w1, w2 = state_of(run1 / "final"), state_of(final)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())

    # the checkpoint is sharded: one distributed-checkpoint shard per process, model and optimizer
    state = run2 / "checkpoints" / "checkpoint-4" / "state"
    shards = sorted(p.relative_to(state).as_posix() for p in state.rglob("*.distcp"))
    assert len([s for s in shards if s.startswith("pytorch_model_fsdp_0/")]) == 2, shards
    assert len([s for s in shards if s.startswith("optimizer_0/")]) == 2, shards
    assert not (state / "model.safetensors").exists()

    # the teacher is replicated on every process; the trained module is sharded across them
    recs = [json.loads((tmp_path / f"placement.{r}.json").read_text()) for r in (0, 1)]
    n_teacher = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).parameters())
    for rec in recs:
        assert rec["world"] == 2 and "FSDP" in rec["distributed_type"]
        assert rec["teacher"]["dtensor"] == 0 and rec["teacher"]["requires_grad"] == 0
        assert rec["teacher"]["local_numel"] == rec["teacher"]["full_numel"] == n_teacher
        assert rec["module"]["dtensor"] == rec["module"]["n"] > 0
        assert rec["module"]["local_numel"] < rec["module"]["full_numel"]
    assert sum(r["module"]["local_numel"] for r in recs) >= recs[0]["module"]["full_numel"]  # shards may be padded

    # stopped at step 2 and resumed from the sharded checkpoint: exactly the uninterrupted run
    three = base_config(tmp_path / "three", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=2, **common)
    launch(dict(three, train=dict(three["train"], stop_at_step=2)), tmp_path, "three-a")
    run3 = tmp_path / "three" / "run"
    assert not (run3 / "final").exists() and (run3 / "checkpoints" / "checkpoint-2").is_dir()
    launch(three, tmp_path, "three-b", "--resume", "auto")
    events = [e["event"] for e in read_metrics(run3 / "metrics.jsonl", "event")]
    assert "resume" in events
    assert_same_training(run2, run3, rel=0)
    w3 = state_of(run3 / "final")
    for k in w2:
        assert torch.equal(w3[k], w2[k]), k


def test_fsdp_lora_matches_one_process(tmp_path, tiny_teacher_dir, nd_student, tiny_dolly_path):
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "c_fc"]}
    common = dict(batch_size=2, max_steps=2, eval_every=2, save_every=2, lr=5e-2)
    one = base_config(tmp_path / "one", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=2, **common)
    for cfg in (one, two):
        cfg["model"]["lora"] = lora
    train(config_from_dict(one))
    launch(two, tmp_path, "two")
    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert_same_training(run1, run2, rel=1e-5)
    final = run2 / "final"
    assert (final / "adapter" / "adapter_config.json").is_file()
    merged1, merged2 = state_of(run1 / "final"), state_of(final)
    base = AutoModelForCausalLM.from_pretrained(nd_student).state_dict()
    changed = [k for k in merged2 if k in base and not torch.equal(merged2[k], base[k])]
    assert changed and all(k.endswith(("c_attn.weight", "c_fc.weight")) for k in changed)
    # Adam's first steps move each LoRA entry by about +-lr whatever its gradient's size, so an entry
    # whose gradient is float noise may flip with the reduction order: compare the updates as wholes
    # (relative Frobenius norm), which is what the model's function depends on.
    for k in merged1:
        assert rel_norm_diff(merged2[k] - base.get(k, 0), merged1[k] - base.get(k, 0)) <= 1e-3, k
    a1, a2 = state_of(run1 / "final" / "adapter"), state_of(final / "adapter")
    assert a1.keys() == a2.keys() and a1
    for k in a1:
        assert rel_norm_diff(a2[k], a1[k]) <= 1e-3, k


def rel_norm_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12)) if b.norm() > 0 else float((a - b).abs().max())


def test_fsdp_dwakd_with_per_layer_wrapping_matches_one_process(tmp_path, tiny_teacher_dir, nd_student, tiny_dolly_path):
    """The real DWA-KD method (projectors, soft-DTW, the student's head weight read inside the
    method) with each transformer block its own FSDP unit, as GPU users launch it."""
    common = dict(batch_size=2, max_steps=2, eval_every=2, save_every=2)
    one = base_config(tmp_path / "one", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=4, **common)
    two = base_config(tmp_path / "two", tiny_teacher_dir, nd_student, tiny_dolly_path, grad_accum=2, **common)
    for cfg in (one, two):
        cfg["method"] = {"name": "dwakd"}
    train(config_from_dict(one))
    flags = [f if f != "NO_WRAP" else "TRANSFORMER_BASED_WRAP" for f in FSDP_FLAGS]
    flags += ["--fsdp_transformer_layer_cls_to_wrap", "GPT2Block"]
    launch(two, tmp_path, "two", flags=flags)
    run1, run2 = tmp_path / "one" / "run", tmp_path / "two" / "run"
    terms = [k for k in read_metrics(run1 / "metrics.jsonl", "train")[0] if k.startswith("term/")]
    assert {"term/dtw_hidden", "term/kd_stu"} <= set(terms)
    assert_same_training(run1, run2, rel=1e-5, keys=["loss", "grad_norm", *terms])
    w1, w2 = state_of(run1 / "final"), state_of(run2 / "final")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)

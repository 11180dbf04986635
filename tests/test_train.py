"""The trainer end to end on the tiny fixture pair, its building blocks, and its error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from _train_helpers import base_config, register_toy, state_of
from dwakd.config import config_from_dict, load_config
from dwakd.errors import ConfigError, DataError, ModelLoadError
from dwakd.train import NonFiniteLossError, dry_run, train
from dwakd.train.checkpoint import complete_checkpoints
from dwakd.train.metrics import read_metrics
from dwakd.train.optim import CosineWithWarmup, build_optimizer
from dwakd.train.sampler import StepPlan, eval_plan

register_toy()


@pytest.fixture
def cfg_dict(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    return base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)


def write_cfg(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def cli(*argv) -> int:
    from dwakd.cli.main import main

    return main(list(map(str, argv)))


# ----------------------------------------------------------------------------- building blocks
def test_step_plan_shards_like_one_process_with_more_accumulation():
    n, b = 23, 2
    one = StepPlan(n, b, grad_accum=4, world_size=1, rank=0, seed=3)
    two = [StepPlan(n, b, grad_accum=2, world_size=2, rank=r, seed=3) for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 3  # 8 + 8 + a tail of 7 (>= 2 processes)
    for step in range(2 * one.steps_per_epoch):
        flat_one = [i for mb in one.micro_batches(step) for i in mb]
        flat_two = [i for p in two for mb in p.micro_batches(step) for i in mb]
        assert flat_one == flat_two
        for p in two:
            assert 1 <= len(p.micro_batches(step)) <= 2 and all(1 <= len(mb) <= b for mb in p.micro_batches(step))
    # an epoch is a permutation of all examples, and epochs differ
    epoch0 = [i for s in range(3) for mb in one.micro_batches(s) for i in mb]
    epoch1 = [i for s in range(3, 6) for mb in one.micro_batches(s) for i in mb]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1


def test_step_plan_drops_a_tail_smaller_than_the_process_count():
    plans = [StepPlan(9, 2, 2, world_size=4, rank=r, seed=0) for r in range(4)]
    assert plans[0].global_batch == 16 and plans[0].steps_per_epoch == 1  # tail 9 >= 4 processes: kept
    plans = [StepPlan(19, 2, 1, world_size=4, rank=r, seed=0) for r in range(4)]
    assert plans[0].steps_per_epoch == 2 and plans[0].dropped_per_epoch == 3


def test_eval_plan_same_length_everywhere_and_counts_each_example_once():
    for n, eb, world in [(7, 2, 2), (3, 4, 4), (1, 1, 2), (10, 3, 3)]:
        plans = [eval_plan(n, eb, world, r) for r in range(world)]
        assert len({len(p) for p in plans}) == 1
        counted = sorted(i for p in plans for idx, counts in p if counts for i in idx)
        assert counted == list(range(n))


def test_cosine_schedule_matches_formula():
    fn = CosineWithWarmup(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert [fn(s) for s in (0, 1)] == [0.0, 0.5]
    for s in range(2, 12):
        p = min(1.0, (s - 2) / 8)
        assert fn(s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def test_optimizer_groups_and_projector_lr():
    from dwakd.config import TrainConfig

    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    student[1].weight.requires_grad_(False)
    method = torch.nn.Linear(4, 2)
    opt = build_optimizer(student, method, TrainConfig(lr=0.1, projector_lr=0.5, weight_decay=0.01))
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"student", "student_no_decay", "projectors", "projectors_no_decay"}
    assert groups["student"]["lr"] == 0.1 and groups["projectors"]["lr"] == 0.5
    assert groups["student_no_decay"]["weight_decay"] == 0.0 and groups["projectors"]["weight_decay"] == 0.01
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == 3 * 4 + 4 + 4 + 4 * 2 + 2  # the frozen norm weight is left out


def test_exact_pairs_are_identical_spans():
    from dwakd.train.dryrun import exact_pairs

    s = [((0, 3), "The"), ((3, 7), " cat"), ((7, 8), "s"), ((8, 8), "<eos>")]
    t = [((0, 3), "The"), ((3, 8), " cats"), ((8, 8), "<eos>")]
    assert exact_pairs(s, t) == [(0, 0), (3, 2)]


# ----------------------------------------------------------------------------- end to end
def test_train_end_to_end(tmp_path, cfg_dict):
    cfg = config_from_dict(cfg_dict)
    result = train(cfg)
    run = Path(cfg.output_dir)
    assert result.final_dir == run / "final" and result.state.global_step == 4
    # the final student is a normal HF directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    ids = tok("Paris is", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    card = (run / "final" / "README.md").read_text()
    assert "toy-kd" in card and str(cfg.model.teacher) in card and "optimizer steps: 4" in card
    # run directory bookkeeping
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert load_config(run / "config.yaml") == cfg
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] == torch.__version__
    assert "commit" in env["git"]
    train_rows = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for r in train_rows:
        for key in ("loss", "term/ce", "term/proj", "stat/proj_weight_norm", "lr/student", "lr/projectors",
                    "grad_norm", "n_tokens", "tokens_per_s", "peak_mem_mb"):
            assert key in r and math.isfinite(r[key]), key
        assert r["loss"] == pytest.approx(r["term/ce"] + 0.5 * r["term/proj"], rel=1e-6)  # float32 total
    evals = read_metrics(run / "metrics.jsonl", "eval")
    assert [r["step"] for r in evals] == [2, 4]
    # keep_last_n=1 + keep_best_n=1: the newest and the best checkpoint survive
    kept = [p.name for p in complete_checkpoints(run / "checkpoints")]
    best_step = min(evals, key=lambda r: r["dev/loss"])["step"]
    assert set(kept) == {"checkpoint-4", f"checkpoint-{best_step}"}
    ck = run / "checkpoints" / "checkpoint-4"
    assert (ck / "student" / "config.json").is_file() and (ck / "student" / "tokenizer.json").is_file()
    # the final weights are the checkpoint's student weights
    final_sd, ck_sd = state_of(run / "final"), state_of(ck / "student")
    assert final_sd.keys() == ck_sd.keys() and all(torch.equal(final_sd[k], ck_sd[k]) for k in final_sd)


def _encoded_examples(cfg):
    from dwakd.methods.registry import method_class
    from dwakd.train.data import prepare_data

    return prepare_data(cfg, method_class(cfg.method.name))


def test_loss_is_normalised_over_the_whole_step(tmp_path, cfg_dict, tiny_student_dir, monkeypatch):
    """Same examples split 6x1 / 3x2 / 1x6: the same loss and the same update, both equal to a float64
    per-example recomputation. The step is plain SGD (patched in for this test): AdamW's first update,
    lr * g / (|g| + eps), is blind to how the gradient is scaled, so it could not show a wrong
    normalisation; with SGD the update is lr times the gradient itself."""
    from transformers import AutoModelForCausalLM

    import dwakd.train.engine as engine
    from _train_helpers import no_dropout_copy
    from dwakd.train.optim import param_groups

    def sgd(student, method, tcfg):
        groups = [dict(g, weight_decay=0.0) for g in param_groups(student, method, tcfg)]
        return torch.optim.SGD(groups, lr=tcfg.lr, foreach=False)

    monkeypatch.setattr(engine, "build_optimizer", sgd)
    student = no_dropout_copy(tiny_student_dir, tmp_path / "student_nd")  # dropout masks differ with the split
    results = []
    for b, g in [(6, 1), (3, 2), (1, 6)]:
        d = dict(cfg_dict, output_dir=str(tmp_path / f"run{b}x{g}"))
        d["model"] = dict(d["model"], student=str(student))
        d["data"] = dict(d["data"], dev_fraction=0.0)
        d["train"] = dict(d["train"], batch_size=b, grad_accum=g, max_steps=1, eval_every=0, save_every=0,
                          max_grad_norm=0.0, warmup_steps=0, warmup_ratio=0.0, lr=0.1)
        d["method"] = {"name": "toy-kd", "proj_rate": 0.0}
        cfg = config_from_dict(d)
        train(cfg)
        results.append((read_metrics(tmp_path / f"run{b}x{g}" / "metrics.jsonl", "train")[0],
                        state_of(tmp_path / f"run{b}x{g}" / "final")))
    lr = float(cfg.train.lr)
    # independent reference: each example alone through HF's own shifted-label loss in float64, summed
    # and divided by all tokens of the step; its gradient gives the expected SGD update
    data = _encoded_examples(cfg)
    model = AutoModelForCausalLM.from_pretrained(student).double().eval()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    total, count = 0.0, 0
    for i in StepPlan(len(data.train), 6, 1, seed=cfg.train.seed).step_examples(0):
        s = data.collate([i]).student
        n = int((s.labels[:, 1:] != -100).sum())
        total = total + model(input_ids=s.input_ids, labels=s.labels).loss * n
        count += n
    (total / count).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    moved = 0
    for m, w in results:
        assert m["n_tokens"] == count
        assert m["loss"] == pytest.approx(total.item() / count, rel=1e-5)
        for k, gr in grads.items():
            if k not in w:
                continue  # a tied weight saved once
            expected = w0[k] - lr * gr
            torch.testing.assert_close(w[k].double(), expected, rtol=1e-4, atol=1e-6, msg=k)
            moved += int((lr * gr.abs() > 1e-4).sum())
    assert moved > 0  # the step moved weights well beyond the tolerance (a test that can fail)


def test_lora_student_end_to_end(tmp_path, cfg_dict, tiny_student_dir):
    from transformers import AutoModelForCausalLM

    d = dict(cfg_dict)
    d["model"] = dict(d["model"], lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "c_fc"]},
                      gradient_checkpointing=True)
    d["train"] = dict(d["train"], max_steps=2, lr=5e-2)
    cfg = config_from_dict(d)
    result = train(cfg)
    run = Path(cfg.output_dir)
    start = read_metrics(run / "metrics.jsonl", "event")[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    n_lora = 0
    for name, mod in base.named_modules():
        if name.split(".")[-1] in ("c_attn", "c_fc"):
            d_in, d_out = mod.weight.shape  # GPT-2 Conv1D: [in, out]
            n_lora += 4 * (d_in + d_out)
    assert start["params/student_trainable"] == n_lora
    assert start["params/student_frozen"] == sum(p.numel() for p in base.parameters())
    assert start["params/projectors"] == 64 * 48 + 48
    # checkpoints hold the adapter; final holds the merged model plus the adapter
    ck = result.last_checkpoint
    assert (ck / "student" / "adapter_config.json").is_file()
    assert (run / "final" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    changed = [k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k])]
    assert changed and all(k.endswith(("c_attn.weight", "c_fc.weight")) for k in changed)


def test_dry_run_writes_nothing(tmp_path, cfg_dict, tiny_teacher_dir, tiny_student_dir, capsys):
    from transformers import AutoModelForCausalLM

    path = write_cfg(tmp_path, cfg_dict)
    assert cli("train", path, "train.batch_size=3", "--dry-run") == 0
    out = capsys.readouterr().out
    for section in ("# resolved config", "# parameters", "# peak memory estimate", "# first batch", "exact pairs"):
        assert section in out
    assert "batch_size: 3" in out and "first micro-batch: 3 examples" in out
    assert not Path(cfg_dict["output_dir"]).exists()
    n_student = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_student_dir).parameters())
    n_teacher = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).parameters())
    assert f"student:    {n_student:>14,} trainable" in out
    assert f"teacher:    {0:>14,} trainable  {n_teacher:>14,} frozen" in out
    info = dry_run(config_from_dict(cfg_dict), echo=lambda *a: None)
    assert info["memory_max_length"]["total"] > info["memory_first_batch"]["total"] > 0


# ----------------------------------------------------------------------------- failures
def test_nonfinite_step_is_skipped(tmp_path, cfg_dict):
    d = dict(cfg_dict)
    d["method"] = {"name": "toy-kd", "nan_steps": [1]}
    d["train"] = dict(d["train"], max_steps=3, save_every=1, eval_every=0, keep_last_n=3)
    d["data"] = dict(d["data"], dev_fraction=0.0)
    cfg = config_from_dict(d)
    result = train(cfg)
    run = Path(cfg.output_dir)
    assert result.state.bad_steps_total == 1
    bad = [r for r in read_metrics(run / "metrics.jsonl", "event") if r.get("event") == "bad_step"]
    assert [(r["step"], r["terms"]) for r in bad] == [(2, ["ce", "total"])]
    # the skipped step changed no weight
    w1, w2, w3 = (state_of(run / "checkpoints" / f"checkpoint-{k}" / "student") for k in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, cfg_dict):
    d = dict(cfg_dict)
    d["method"] = {"name": "toy-kd", "nan_steps": [1, 2, 3]}
    d["train"] = dict(d["train"], max_steps=4, max_bad_steps=2, save_every=1, eval_every=0)
    cfg = config_from_dict(d)
    with pytest.raises(NonFiniteLossError, match=r"non-finite ce, total.*2 consecutive steps.*checkpoint-2"):
        train(cfg)
    run = Path(cfg.output_dir)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLossError" in status["error"]
    assert not (run / "final").exists()


def test_config_typo_writes_nothing(tmp_path, cfg_dict, capsys):
    d = dict(cfg_dict, train=dict(cfg_dict["train"], learning_rat=1e-3))
    path = write_cfg(tmp_path, d)
    assert cli("train", path) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learning_rat'" in err and "cfg.yaml:" in err
    assert not Path(cfg_dict["output_dir"]).exists()


def test_missing_data_file_writes_nothing(tmp_path, cfg_dict, capsys):
    d = dict(cfg_dict, data=dict(cfg_dict["data"], train=str(tmp_path / "missing.jsonl")))
    assert cli("train", write_cfg(tmp_path, d)) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl does not exist" in err and "cfg.yaml:" in err
    assert not Path(cfg_dict["output_dir"]).exists()


def test_empty_dataset_writes_nothing(tmp_path, cfg_dict):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    d = dict(cfg_dict, data=dict(cfg_dict["data"], train=str(empty)))
    with pytest.raises(DataError):
        train(config_from_dict(d))
    assert not Path(cfg_dict["output_dir"]).exists()


def _teacher_copy(src: Path, dst: Path, *, drop_eos: bool) -> Path:
    """The tiny teacher with its pad token removed (and, optionally, its EOS token too)."""
    import shutil

    shutil.copytree(src, dst)
    cfg_path = dst / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("pad_token", None)
    if drop_eos:
        tok_cfg.pop("eos_token", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    for name in ("special_tokens_map.json",):
        p = dst / name
        if p.is_file():
            m = json.loads(p.read_text())
            m.pop("pad_token", None)
            if drop_eos:
                m.pop("eos_token", None)
            p.write_text(json.dumps(m))
    return dst


def test_teacher_without_pad_or_eos_is_refused_before_anything_is_written(tmp_path, cfg_dict, tiny_teacher_dir):
    from dwakd.models import load_tokenizer

    bad = _teacher_copy(tiny_teacher_dir, tmp_path / "teacher_nopad_noeos", drop_eos=True)
    with pytest.raises(ModelLoadError, match="neither a pad token nor an EOS token"):
        load_tokenizer(bad)
    d = dict(cfg_dict, model=dict(cfg_dict["model"], teacher=str(bad)))
    with pytest.raises(ModelLoadError, match="neither a pad token nor an EOS token"):
        train(config_from_dict(d))
    assert not Path(cfg_dict["output_dir"]).exists()


def test_teacher_without_pad_token_trains_with_eos_padding(tmp_path, cfg_dict, tiny_teacher_dir):
    from dwakd.models import load_tokenizer

    nopad = _teacher_copy(tiny_teacher_dir, tmp_path / "teacher_nopad", drop_eos=False)
    tok = load_tokenizer(nopad)
    assert tok.pad_token == tok.eos_token  # the documented policy
    d = dict(cfg_dict, model=dict(cfg_dict["model"], teacher=str(nopad)))
    d["train"] = dict(d["train"], max_steps=1, eval_every=0, save_every=0)
    result = train(config_from_dict(d))
    assert result.final_dir is not None and math.isfinite(result.metrics["last_train_loss"])


def test_existing_run_needs_resume(tmp_path, cfg_dict):
    run = Path(cfg_dict["output_dir"])
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match="already holds a run.*--resume auto"):
        train(config_from_dict(cfg_dict))


def test_failure_while_checkpointing_leaves_only_complete_checkpoints(tmp_path, cfg_dict, monkeypatch):
    import dwakd.train.checkpoint as ckpt

    real = ckpt.save_student_dir
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(ckpt, "save_student_dir", flaky)
    d = dict(cfg_dict, train=dict(cfg_dict["train"], eval_every=2, save_every=2))
    cfg = config_from_dict(d)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    run = Path(cfg.output_dir)
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["checkpoint-2"]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (run / "final").exists()
    from dwakd.train.checkpoint import resolve_resume

    assert resolve_resume(run, "auto").name == "checkpoint-2"
    assert not (run / "checkpoints" / ".tmp-checkpoint-4").exists()  # the half-written one was removed
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        resolve_resume(run, str(run / "checkpoints" / ".tmp-checkpoint-4"))


# ----------------------------------------------------------------------------- real methods
@pytest.mark.parametrize("method", ["sft", "dwakd", "mined"])
def test_registered_methods_train_through_the_trainer(tmp_path, cfg_dict, method):
    d = dict(cfg_dict)
    d["method"] = {"name": method}
    d["train"] = dict(d["train"], max_steps=1, eval_every=1, save_every=0)
    if method == "sft":
        d["model"] = dict(d["model"], teacher=None)  # no teacher needed (the student's tokenizer fills both sides)
        d["train"].update(max_steps=2, keep_best_n=1, final_model="best")
    if method == "dwakd":
        d["train"]["bf16"] = True  # bf16 autocast (on CPU here)
    result = train(config_from_dict(d))
    run = Path(d["output_dir"])
    start = read_metrics(run / "metrics.jsonl", "event")[0]
    assert (start["params/teacher"] == 0) == (method == "sft")
    assert math.isfinite(result.metrics["last_train_loss"]) and math.isfinite(result.metrics["best_dev_loss"])
    assert (run / "final" / "config.json").is_file()
    env = json.loads((run / "environment.json").read_text())
    assert env["mixed_precision"] == ("bf16" if method == "dwakd" else "no")
    if method == "sft":  # final_model: best -> the final weights are the best checkpoint's
        evals = read_metrics(run / "metrics.jsonl", "eval")
        best = min(evals, key=lambda r: r["dev/loss"])["step"]
        final, ck = state_of(run / "final"), state_of(run / "checkpoints" / f"checkpoint-{best}" / "student")
        assert all(torch.equal(final[k], ck[k]) for k in final)


def test_kd_with_different_vocabularies_is_explained_before_models_load(tmp_path, cfg_dict):
    d = dict(cfg_dict, method={"name": "kd"})
    with pytest.raises(ConfigError, match="needs the student and teacher to share one tokenizer"):
        train(config_from_dict(d))
    assert not Path(cfg_dict["output_dir"]).exists()

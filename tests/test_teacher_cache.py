"""Teacher cache: same loss as the live teacher (bf16 tolerance), refuses foreign or stale caches."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import base_config
from dwakd.config import config_from_dict
from dwakd.methods import build_method
from dwakd.models import load_model, load_tokenizer
from dwakd.models.outputs import run_model
from dwakd.train.teacher_cache import (
    TeacherCache,
    TeacherCacheError,
    build_cache_for_config,
    cache_can_serve,
    locate_cache,
    teacher_fingerprint,
)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _cfg(tmp_path, teacher_dir, student_dir, data, method="dwakd"):
    d = base_config(tmp_path, teacher_dir, student_dir, data)
    d["method"] = {"name": method}
    d["data"]["dev_fraction"] = 0.0
    return config_from_dict(d)


def _data(cfg):
    from dwakd.train.checks import check_method
    from dwakd.train.data import prepare_data

    return prepare_data(cfg, check_method(cfg))


@pytest.mark.parametrize("method_name", ["dwakd", "uld", "alm", "cdm"])
def test_cached_teacher_gives_the_live_loss(method_name, home, tmp_path, tiny_teacher_dir, tiny_student_dir,
                                            tiny_dolly_path):
    cfg = _cfg(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    summary = build_cache_for_config(cfg, batch_size=4, progress=False)
    assert summary["examples"] == 16 and summary["bytes_per_token"] == 64 * 2  # d_t = 64, bf16
    again = build_cache_for_config(cfg, batch_size=4, progress=False)
    assert again.get("reused") and again["path"] == summary["path"]

    data = _data(cfg)
    teacher = load_model(tiny_teacher_dir).eval()
    student = load_model(tiny_student_dir).eval()
    cache = TeacherCache.load(summary["path"], fingerprint=teacher_fingerprint(tiny_teacher_dir, data.teacher_tokenizer))
    torch.manual_seed(0)
    method = build_method(method_name, student, teacher)
    if hasattr(method, "attach_tokenizers"):
        method.attach_tokenizers(data.student_tokenizer, data.teacher_tokenizer)
    assert cache_can_serve(method.teacher_needs()) is None
    batch = data.collate(list(range(8)))
    with torch.no_grad():
        live = run_model(teacher, batch.teacher)
        s_out = run_model(student, batch.student)
    cached = cache.outputs(teacher, batch.teacher)
    mask = batch.teacher.target_mask
    # Independent check of what the cache rebuilt: the live teacher's hidden states and logits on
    # response positions, within bf16 rounding of the stored hidden states.
    assert torch.allclose(cached.hidden[mask], live.hidden[mask], atol=2e-2, rtol=1e-2)
    assert torch.allclose(cached.full_logits()[mask], live.logits[mask].float(), atol=5e-2, rtol=2e-2)
    assert torch.equal(cached.target_embeds, live.target_embeds)
    loss_live = method(s_out, live, batch)
    loss_cached = method(s_out, cached, batch)
    for name, value in loss_live.terms.items():
        assert torch.allclose(loss_cached.terms[name], value, rtol=2e-2, atol=2e-2), name


def test_cache_for_another_teacher_is_refused(home, tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    cfg = _cfg(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    summary = build_cache_for_config(cfg, batch_size=8, progress=False)
    # Another teacher: the student directory plays the teacher (different weights and tokenizer).
    other = teacher_fingerprint(tiny_student_dir, load_tokenizer(tiny_student_dir))
    with pytest.raises(TeacherCacheError, match="another teacher"):
        TeacherCache.load(summary["path"], fingerprint=other)


def test_cache_for_other_data_is_refused(home, tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    cfg = _cfg(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    summary = build_cache_for_config(cfg, batch_size=8, progress=False)
    cache = TeacherCache.load(summary["path"])
    # Same teacher, other data file: one record's response changed.
    lines = tiny_dolly_path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    rec["response"] = "Paris, on the Seine."
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n", encoding="utf-8")
    cfg2 = _cfg(tmp_path, tiny_teacher_dir, tiny_student_dir, other)
    data2 = _data(cfg2)
    path2, _ = locate_cache(str(tiny_teacher_dir), data2.teacher_tokenizer, data2.train, data2.collator)
    assert str(path2) != summary["path"]  # the default location is keyed by the data
    teacher = load_model(tiny_teacher_dir).eval()
    changed = [i for i, ex in enumerate(data2.train) if ex.response == "Paris, on the Seine."]
    batch = data2.collate(changed)
    with pytest.raises(TeacherCacheError, match="other data"):
        cache.outputs(teacher, batch.teacher)


def test_prefix_positions_refuse_the_cache(tiny_teacher, tiny_student):
    method = build_method("dwakd", tiny_student[0], tiny_teacher[0], dtw_positions="prefix")
    assert "prefix" in cache_can_serve(method.teacher_needs())
    method = build_method("dskd", tiny_student[0], tiny_teacher[0], cma_std="padded-batch")
    assert "padded-batch" in cache_can_serve(method.teacher_needs())


def test_training_reads_the_cache_when_present(home, tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path,
                                               monkeypatch):
    from dwakd.train import engine as engine_mod
    from dwakd.train import train
    from dwakd.train.teacher_cache import CachedTeacherRunner

    runners = []
    original = engine_mod.teacher_runner

    def spy(*args, **kwargs):
        runners.append(original(*args, **kwargs))
        return runners[-1]

    monkeypatch.setattr(engine_mod, "teacher_runner", spy)
    losses = {}
    for mode in ("off", "auto"):
        cfg = _cfg(tmp_path / mode, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
        cfg.model.teacher_cache = mode
        cfg.train.max_steps, cfg.train.save_every, cfg.train.eval_every = 2, 0, 0
        if mode == "auto":
            build_cache_for_config(cfg, progress=False)
        train(cfg)
        rows = [json.loads(x) for x in (tmp_path / mode / "run" / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["loss"] for r in rows if "loss" in r]
    assert not isinstance(runners[0], CachedTeacherRunner)
    assert isinstance(runners[1], CachedTeacherRunner)
    assert len(losses["off"]) == len(losses["auto"]) >= 1
    for a, b in zip(losses["off"], losses["auto"]):
        assert abs(a - b) <= 2e-2 * max(1.0, abs(a)), (a, b)

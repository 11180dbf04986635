"""A damaged teacher cache is refused on open (checksum, size, readability, finiteness), never
consumed; ``dwakd cache-teacher`` rebuilds it; a cache for other data falls back to the live
teacher with a warning."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

import _faults  # noqa: F401  (registers the toy method)
from _faults import status_of
from _train_helpers import base_config
from dwakd.config import config_from_dict
from dwakd.fsio import sha256_file
from dwakd.train import train
from dwakd.train.teacher_cache import TeacherCache, TeacherCacheError, build_cache_for_config


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def cfg(tmp_path, home, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    d = base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, max_steps=2, save_every=0,
                    eval_every=0)
    d["data"]["dev_fraction"] = 0.0
    return config_from_dict(d)


def _random_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = min(16 << 10, len(data) // 2)
    start = len(data) - n - 8
    data[start:start + n] = os.urandom(n)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def _nan_with_valid_checksum(path: Path) -> None:
    """NaN values written through safetensors, with meta.json updated: only the finiteness check can tell."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    t["hidden"][3, :5] = float("nan")
    save_file(t, str(path))
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(hidden_bytes=path.stat().st_size, hidden_sha256=sha256_file(path))
    meta_path.write_text(json.dumps(meta))


def _garbage_meta(path: Path) -> None:
    (path.parent / "meta.json").write_text("\x00\x01 not json")


def _old_format(path: Path) -> None:
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))


DAMAGE = {
    "16 KiB of random bytes": (_random_bytes, "does not match its checksum"),
    "truncated": (_truncate, "truncated or replaced"),
    "NaN values": (_nan_with_valid_checksum, "holds 5 non-finite values"),
    "garbage meta.json": (_garbage_meta, "missing or unreadable"),
    "format without checksums": (_old_format, "older caches carry no checksum"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_cache_is_refused_and_rebuilt(name, cfg, caplog):
    damage, words = DAMAGE[name]
    summary = build_cache_for_config(cfg, batch_size=8, progress=False)
    data_file = Path(summary["path"]) / "hidden.safetensors"
    from safetensors.torch import load_file

    original = load_file(str(data_file))["hidden"].clone()
    damage(data_file)
    with pytest.raises(TeacherCacheError, match=words):
        TeacherCache.load(summary["path"])
    # training with the damaged cache fails with that message; no step ran on bad teacher outputs
    with pytest.raises(TeacherCacheError, match=f"{words}.*rebuild it with `dwakd cache-teacher CONFIG`"):
        train(cfg)
    run = Path(cfg.output_dir)
    status = status_of(run)
    assert status["status"] == "failed" and words in status["error"]
    assert not (run / "metrics.jsonl").exists() or '"train"' not in (run / "metrics.jsonl").read_text()
    # cache-teacher rebuilds a damaged cache instead of reusing it
    with caplog.at_level(logging.WARNING):
        again = build_cache_for_config(cfg, batch_size=8, progress=False)
    assert "rebuilding it" in caplog.text and not again.get("reused")
    rebuilt = TeacherCache.load(again["path"])
    assert torch.equal(rebuilt.hidden, original)  # the same teacher outputs as the first build
    result = train(cfg, resume="auto")
    assert result.final_dir is not None and status_of(run)["status"] == "completed"


def test_cache_for_other_data_falls_back_to_the_live_teacher_and_says_so(cfg, tmp_path, tiny_dolly_path, caplog,
                                                                         monkeypatch):
    from dwakd.train.teacher_cache import CachedTeacherRunner

    build_cache_for_config(cfg, batch_size=8, progress=False)
    lines = tiny_dolly_path.read_text(encoding="utf-8").splitlines()
    other = tmp_path / "changed.jsonl"
    other.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one record fewer
    cfg.data.train = str(other)
    import dwakd.train.engine as engine_mod

    runners = []
    real = engine_mod.teacher_runner
    monkeypatch.setattr(engine_mod, "teacher_runner", lambda *a, **k: runners.append(real(*a, **k)) or runners[-1])
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert "a teacher cache exists for this teacher" in caplog.text and "runs live" in caplog.text
    assert runners and not isinstance(runners[0], CachedTeacherRunner)


def test_cache_teacher_on_a_full_disk_is_a_clear_error(cfg, tmp_path, monkeypatch, capsys, home):
    import errno

    import yaml

    from dwakd.cli.main import main
    from dwakd.config import config_to_dict

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert main(["cache-teacher", str(path)]) == 2
    err = capsys.readouterr().err
    assert "disk full while writing the teacher cache" in err and "Traceback" not in err
    leftover = list((home / "teacher_cache").rglob("*")) if (home / "teacher_cache").exists() else []
    assert leftover == []  # the temporary cache directory was removed

"""Hostile configuration input: values that can only fail, YAML 1.1 words, errors blamed on the
right place (file:line or the override), non-UTF-8 files. Every refusal is one line, no traceback,
and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import _faults  # noqa: F401  (registers the toy method)
from _train_helpers import base_config
from dwakd.config import load_config
from dwakd.errors import ConfigError


@pytest.fixture
def cfg_file(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path) -> Path:
    d = base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def cli(*argv) -> int:
    from dwakd.cli.main import main

    return main(list(map(str, argv)))


@pytest.mark.parametrize("key,value,words", [
    ("train.lr", ".nan", "must be a finite number, got nan"),
    ("train.projector_lr", ".inf", "must be a finite number, got inf"),
    ("train.max_grad_norm", ".nan", "must be a finite number, got nan"),
    ("train.weight_decay", "-.inf", "must be a finite number, got -inf"),
    ("train.adam_eps", "0", "must be > 0, got 0"),
    ("method.proj_rate", ".inf", "must be a finite number, got inf"),
])
def test_values_that_can_only_fail_are_refused_and_blamed_on_the_override(cfg_file, key, value, words):
    override = f"{key}={value}"
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, [override])
    msg = str(info.value)
    assert msg.startswith(f"override '{override}': ") and f"'{key}' {words}" in msg, msg


@pytest.mark.parametrize("key,value,words", [
    ("lr", ".nan", "must be a finite number, got nan"),
    ("adam_eps", "0.0", "must be > 0, got 0.0"),
])
def test_values_that_can_only_fail_in_the_file_name_file_and_line(cfg_file, key, value, words):
    text = cfg_file.read_text().replace("train:\n", f"train:\n  {key}: {value}\n", 1)
    text = text.replace(f"  {key}: 0.001\n", "", 1) if key == "lr" else text
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=rf"{cfg_file}:{_line_of(cfg_file, f'  {key}: {value}')}: "
                                          rf"'train.{key}' {words}"):
        load_config(cfg_file)


def test_teacher_cache_off_unquoted(cfg_file):
    text = cfg_file.read_text().replace("model:\n", "model:\n  teacher_cache: off\n", 1)
    cfg_file.write_text(text)
    assert yaml.safe_load(text)["model"]["teacher_cache"] is False  # YAML 1.1 reads it as a boolean
    assert load_config(cfg_file).model.teacher_cache == "off"
    assert load_config(cfg_file, ["model.teacher_cache=off"]).model.teacher_cache == "off"
    assert load_config(cfg_file, ["model.teacher_cache=auto"]).model.teacher_cache == "auto"
    with pytest.raises(ConfigError, match="override 'model.teacher_cache=on'"):  # 'on' is not a documented word
        load_config(cfg_file, ["model.teacher_cache=on"])


def test_combination_errors_blame_the_override(cfg_file):
    with pytest.raises(ConfigError, match=r"^override 'data.max_length=40': data.max_prompt_length \(48\) must be "
                                          r"smaller than data.max_length \(40\)"):
        load_config(cfg_file, ["data.max_length=40"])
    # set in the file, the same problem names the file and the line of max_prompt_length
    line = _line_of(cfg_file, "max_prompt_length")
    with pytest.raises(ConfigError, match=r"^override 'data.max_prompt_length=200': "):
        load_config(cfg_file, ["data.max_prompt_length=200"])
    with pytest.raises(ConfigError, match=r"^override 'train.stop_at_step=9': train.stop_at_step \(9\) is beyond"):
        load_config(cfg_file, ["train.stop_at_step=9"])
    text = cfg_file.read_text().replace("max_prompt_length: 48", "max_prompt_length: 200")
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{cfg_file}:{line}: data.max_prompt_length \(200\)"):
        load_config(cfg_file)


def test_method_option_errors_blame_the_override(cfg_file, tmp_path):
    from dwakd.train.checks import check_method

    cfg = load_config(cfg_file, ["method.name=dwakd", "method.gamma=abc"])
    with pytest.raises(ConfigError, match=r"^override 'method.gamma=abc': 'method.gamma' must be a number, got 'abc'"):
        check_method(cfg)


def test_non_utf8_config_names_line_and_column(cfg_file, capsys):
    raw = cfg_file.read_bytes().replace(b"train:\n", b"train:\n  # caf\xe9 in latin-1\n", 1)
    cfg_file.write_bytes(raw)
    line = raw[: raw.index(b"\xe9")].count(b"\n") + 1
    with pytest.raises(ConfigError, match=rf"{cfg_file}:{line}:8: the config is not valid UTF-8 \(byte 0xe9\)"):
        load_config(cfg_file)
    assert cli("train", cfg_file) == 2
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "Traceback" not in err
    bom = tmp_path_bom = cfg_file.with_name("bom.yaml")
    tmp_path_bom.write_bytes(b"\xef\xbb\xbf" + raw.replace(b"  # caf\xe9 in latin-1\n", b""))
    assert load_config(bom).train.lr == 1e-3  # a UTF-8 BOM is fine


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path)


def test_allow_config_change_needs_resume(cfg_file, capsys):
    assert cli("train", cfg_file, "--allow-config-change") == 2
    assert "--allow-config-change applies to a resumed run" in capsys.readouterr().err

"""The typed config: YAML with file:line errors, overrides, round trip, validation before models load."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from dwakd.config import (
    DwakdConfig,
    config_from_dict,
    config_to_dict,
    describe_config,
    dump_config,
    load_config,
    parse_override,
    where,
)
from dwakd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"instruction": "a", "context": "", "response": "b"}\n')
    return p


def minimal(data_file) -> str:
    return f"""\
model:
  teacher: smollm2-135m-instruct
  build:
    hidden_size: 64
    num_heads: 4
data:
  train: {data_file}
  max_length: 128
  max_prompt_length: 64
method:
  name: dwakd
train:
  lr: 5e-4
  max_steps: 10
"""


def test_load_minimal_fills_defaults(tmp_path, data_file):
    cfg = load_config(write(tmp_path, minimal(data_file)))
    assert isinstance(cfg, DwakdConfig)
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)  # YAML reads "5e-4" as a string
    assert cfg.train.projector_lr == 1e-3 and cfg.train.weight_decay == 0.01 and cfg.train.max_grad_norm == 1.0
    assert cfg.model.build.hidden_size == 64 and cfg.model.build.num_layers == 4
    assert cfg.model.lora is None and cfg.model.student is None
    assert cfg.output_dir == str(Path("runs") / "cfg")
    assert cfg.method.name == "dwakd" and cfg.method.options == {}


def test_round_trip(tmp_path, data_file):
    cfg = load_config(write(tmp_path, minimal(data_file)), ["model.build=null", "model.student=gpt2", "model.lora.r=16",
                                                            "method.gamma=1.0", "train.trackers=[]"])
    text = dump_config(cfg)
    again = load_config(write(tmp_path, text, "resolved.yaml"))
    assert again == cfg
    assert yaml.safe_load(text) == config_to_dict(cfg)
    assert config_to_dict(cfg)["method"] == {"name": "dwakd", "gamma": 1.0}


def test_overrides(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file))
    cfg = load_config(path, ["train.lr=1e-3", "method.gamma=1.0", "method.options.band=false",
                             "model.build=null", "model.student=gpt2", "model.lora.r=16", "output_dir=runs/x",
                             "data.dev_fraction=0"])
    assert cfg.train.lr == 1e-3
    assert cfg.method.options == {"gamma": 1.0, "band": False}
    assert cfg.model.lora is not None and cfg.model.lora.r == 16 and cfg.model.lora.alpha == 8.0  # defaults: paper's
    assert cfg.output_dir == "runs/x"
    assert cfg.data.dev_fraction == 0.0
    assert where(cfg, "train.lr") == "override 'train.lr=1e-3'"
    assert where(cfg, "train.max_steps") == f"{path}:14"
    assert where(cfg, "method.gamma") == "override 'method.gamma=1.0'"
    # disabling a section again
    assert load_config(path, ["model.lora.r=16", "model.lora=null"]).model.lora is None
    # LoRA on a built (random-init) student is refused: adapters on random weights, and a cache path as base
    with pytest.raises(ConfigError, match="'model.lora' needs a pretrained 'model.student'"):
        load_config(path, ["model.lora.r=16"])


def test_parse_override_values():
    assert parse_override("a.b=5e-4") == ("a.b", "5e-4")  # turned into a float by the float field
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_typo_names_file_line_and_suggests(tmp_path, data_file):
    text = minimal(data_file).replace("  max_length: 128", "  max_lenght: 128")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{path}:8" in msg and "data.max_lenght" in msg and "did you mean 'max_length'" in msg


def test_typo_in_section_name_and_override(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file).replace("train:\n  lr", "trian:\n  lr"))
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'train\.wieght_decay=1'.*did you mean 'weight_decay'"):
        load_config(write(tmp_path, minimal(data_file), "ok.yaml"), ["train.wieght_decay=1"])


def test_wrong_types_name_key_and_line_all_at_once(tmp_path, data_file):
    text = minimal(data_file).replace("max_steps: 10", "max_steps: ten\n  bf16: maybe\n  batch_size: 2.5")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "3 problems" in msg
    assert f"{path}:14: 'train.max_steps' must be an integer or null, got 'ten'" in msg
    assert f"{path}:15: 'train.bf16' must be true/false or one of 'auto'" in msg
    assert f"{path}:16: 'train.batch_size' must be an integer, got 2.5" in msg


def test_literal_choice_suggestion(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file).replace("  max_length: 128", "  max_length: 128\n  on_bad_record: skp"))
    with pytest.raises(ConfigError, match="did you mean 'skip'"):
        load_config(path)


def test_missing_data_file_names_key(tmp_path, data_file):
    text = minimal(data_file).replace(str(data_file), str(tmp_path / "nope.jsonl"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:7" in str(e.value) and "nope.jsonl does not exist" in str(e.value)
    load_config(path, check_files=False)  # the same config is otherwise fine


def test_missing_local_model_path(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file))
    with pytest.raises(ConfigError, match="model.student' is the local path ./no/such/dir"):
        load_config(path, ["model.build=null", "model.student=./no/such/dir"])


def test_incompatible_choices(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file))
    with pytest.raises(ConfigError, match="both set"):
        load_config(path, ["model.student=gpt2"])
    with pytest.raises(ConfigError, match="give the student"):
        load_config(path, ["model.build=null"])
    with pytest.raises(ConfigError, match="max_prompt_length .* must be smaller"):
        load_config(path, ["data.max_prompt_length=128"])
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(path, ["model.build.num_heads=5"])
    with pytest.raises(ConfigError, match="stop_at_step .* beyond"):
        load_config(path, ["train.stop_at_step=11"])
    with pytest.raises(ConfigError, match="dropout must be in"):
        load_config(path, ["model.lora.dropout=1.5"])


def test_duplicate_key_and_bad_yaml(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file) + "train:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:15: duplicate key 'train' \(first written on line 12\)"):
        load_config(path)
    bad = write(tmp_path, "model:\n  teacher: [unclosed\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_override_into_a_value_is_an_error(tmp_path, data_file):
    with pytest.raises(ConfigError, match="'train.lr' is a value"):
        load_config(write(tmp_path, minimal(data_file)), ["train.lr.x=1"])


def test_config_from_dict_matches_yaml(tmp_path, data_file):
    path = write(tmp_path, minimal(data_file))
    from_yaml = load_config(path)
    from_dict = config_from_dict(yaml.safe_load(path.read_text()), origin=str(path))
    assert from_dict == from_yaml


def test_every_field_is_documented():
    from dwakd.config import schema

    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            tp = typing.get_type_hints(cls)[f.name]
            for arg in typing.get_args(tp) or (tp,):
                if dataclasses.is_dataclass(arg):
                    walk(arg)

    walk(schema.DwakdConfig)
    table = describe_config()
    assert "| `train.projector_lr` | a number | `0.001` |" in table
    assert "`model.lora.r`" in table and "`method.options`" in table


def test_method_options_checked_against_registry(tmp_path, data_file):
    from _train_helpers import register_toy
    from dwakd.train.checks import check_method

    register_toy()
    path = write(tmp_path, minimal(data_file).replace("name: dwakd", "name: toy-kd\n  proj_rat: 1.0"))
    cfg = load_config(path)
    with pytest.raises(ConfigError) as e:
        check_method(cfg)
    assert f"{path}:12" in str(e.value) and "did you mean 'proj_rate'" in str(e.value)
    cfg = load_config(path, ["method.proj_rat=null", "method.proj_rate=-1"])
    cfg.method.options.pop("proj_rat")
    with pytest.raises(ConfigError, match="proj_rate must be >= 0"):
        check_method(cfg)
    cfg = load_config(path, ["method.name=toy-kdd"])
    cfg.method.options.clear()
    with pytest.raises(ConfigError, match=r"override 'method.name=toy-kdd': unknown method 'toy-kdd'; did you mean 'toy-kd'"):
        check_method(cfg)


def _shipped_configs():
    return sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path, check_files=False)
    assert cfg.data.max_length >= cfg.data.max_prompt_length
    from dwakd.train.checks import check_method

    check_method(cfg)


def test_tracker_needs_its_package(tmp_path, data_file):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match="tracker 'wandb' needs the 'wandb' package"):
        load_config(write(tmp_path, minimal(data_file)), ["train.trackers=[wandb]"])
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        load_config(write(tmp_path, minimal(data_file)), ["train.trackers=[tensorbord]"])


# ----------------------------------------------------------------------------- method options (typed)
def test_method_option_in_exponent_notation_arrives_as_a_float(tmp_path, data_file):
    from dwakd.methods import validate_method_options
    from dwakd.train.checks import check_method

    path = write(tmp_path, minimal(data_file).replace("name: dwakd", "name: dwakd\n  gamma: 1e-1\n  band_b: 3"))
    cfg = load_config(path)
    assert cfg.method.options["gamma"] == "1e-1"  # what YAML 1.1 hands over
    check_method(cfg)
    assert cfg.method.options == {"gamma": 0.1, "band_b": 3.0} and isinstance(cfg.method.options["gamma"], float)
    assert yaml.safe_load(dump_config(cfg))["method"]["gamma"] == 0.1
    opts = validate_method_options("dwakd", {"gamma": "1e-1"})
    assert opts.gamma == 0.1 and opts.gamma > 0  # the old failure: '>' between 'str' and 'int'


def test_unknown_method_option_gets_a_suggestion_with_its_line(tmp_path, data_file):
    from dwakd.train.checks import check_method

    path = write(tmp_path, minimal(data_file).replace("name: dwakd", "name: dwakd\n  gama: 1.0"))
    with pytest.raises(ConfigError) as e:
        check_method(load_config(path))
    assert f"{path}:12" in str(e.value) and "did you mean 'gamma'" in str(e.value)


def test_bad_method_choice_and_range_name_file_and_line(tmp_path, data_file):
    from dwakd.train.checks import check_method

    text = minimal(data_file).replace("name: dwakd", "name: dwakd\n  weights: entropy+gates\n  band_alpha: 1.5")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        check_method(load_config(path))
    msg = str(e.value)
    assert "2 problems" in msg
    assert f"{path}:12: 'method.weights' must be one of 'none', 'entropy', 'entropy+gate'" in msg
    assert "did you mean 'entropy+gate'" in msg
    assert f"{path}:13: 'method.band_alpha' must be >= 0, <= 1, got 1.5" in msg
    with pytest.raises(ConfigError, match=r"override 'method.divergence=kll'.*did you mean 'skl'"):
        check_method(load_config(path, ["method.weights=none", "method.band_alpha=0.5", "method.divergence=kll"]))


def test_presets_fill_only_the_options_left_unset():
    from dwakd.methods import validate_method_options

    o = validate_method_options("dwakd", {"preset": "authors-code"})
    assert (o.band, o.dtw_positions, o.dtw_teacher_grad, o.cma_std) == (False, "prefix", False, "padded-batch")
    o = validate_method_options("dwakd", {"preset": "authors-code", "band": True})
    assert o.band is True and o.dtw_positions == "prefix"
    o = validate_method_options("dwakd", {})
    assert (o.band, o.dtw_positions, o.dtw_teacher_grad, o.cma_std) == (True, "response", True, "response")
    m = validate_method_options("mined", {"preset": "dskd-code"})
    assert (m.temperature, m.align_tokens, m.match, m.require_id_match, m.many_to_one) == (
        2.0, "input", "single_teacher", True, "first")


def test_every_method_option_is_documented_and_in_the_reference():
    from dwakd.methods.registry import BUILTIN_METHODS, config_reference, method_class

    reference = config_reference(BUILTIN_METHODS)
    doc = (REPO / "docs" / "CONFIG.md").read_text()
    assert reference.strip() in doc, "regenerate docs/CONFIG.md: dwakd train --print-config-reference"
    for name in BUILTIN_METHODS:
        cls = method_class(name).Options
        assert f"### `{name}`" in reference
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}: option {f.name} has no help text"
            tp = typing.get_type_hints(cls)[f.name]
            assert tp is not typing.Any and tp not in (list, dict), f"{name}.{f.name} is untyped"

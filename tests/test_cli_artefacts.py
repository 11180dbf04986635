"""Artefacts and observability of a run: final/ (config, huggingface_hub model card, portable LoRA adapter,
loadable with transformers and peft), push_to_hub (mocked HfApi), trackers (report_to), console output."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from _train_helpers import base_config, register_toy
from dwakd.config import config_from_dict
from dwakd.errors import ConfigError


@pytest.fixture
def cfg_dict(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    register_toy()
    return base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path)


class FakeApi:
    calls: list = []

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))
        return type("Url", (), {"repo_id": f"me/{repo_id}" if "/" not in repo_id else repo_id})()

    def upload_folder(self, **kw):
        FakeApi.calls.append(("upload_folder", kw["repo_id"], sorted(p.name for p in Path(kw["folder_path"]).iterdir())))


def test_final_dir_card_config_console_and_push(tmp_path, cfg_dict, capsys, caplog, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dwakd.cli.main import main

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    caplog.set_level(logging.INFO)
    assert main(["train", str(path), "train.push_to_hub=true", "train.hub_model_id=student-x", "-v"]) == 0
    out = capsys.readouterr()
    final = Path(cfg_dict["output_dir"]) / "final"
    # console: a dev line per evaluation, the progress bar with lr and tokens/s
    assert "step 2/4 dev: loss " in out.out and "step 4/4 dev: loss " in out.out
    assert "lr=" in out.err and "tok/s=" in out.err
    # final/: loadable, with the run config and a huggingface_hub model card
    AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    assert yaml.safe_load((final / "config.yaml").read_text()) == yaml.safe_load(
        (final.parent / "config.yaml").read_text())
    card = ModelCard.load(final / "README.md")
    assert "dwakd" in card.data.tags and card.data.license == "other" and card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local student directory has no hub id
    (ev,) = card.data.eval_results
    status = json.loads((final.parent / "status.json").read_text())
    assert ev.metric_type == "loss" and ev.metric_value == round(status["best_dev_loss"], 4)
    # push_to_hub: create_repo then upload_folder of final/
    assert FakeApi.calls[0][:2] == ("create_repo", "student-x") and FakeApi.calls[0][2]["private"] is True
    assert FakeApi.calls[1][0] == "upload_folder" and FakeApi.calls[1][1] == "me/student-x"
    assert {"config.yaml", "README.md", "model.safetensors"} <= set(FakeApi.calls[1][2])


def test_quiet_by_default(tmp_path, cfg_dict, capsys):
    from dwakd.cli.main import main

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    logging.getLogger("accelerate").setLevel(logging.NOTSET)
    assert main(["train", str(path)]) == 0
    err = capsys.readouterr().err
    assert "accelerate.checkpointing" not in err and "Writing model shards" not in err


def test_push_failure_names_the_retry(tmp_path, cfg_dict):
    from dwakd.errors import DwakdError
    from dwakd.train.card import push_final

    class Broken(FakeApi):
        def upload_folder(self, **kw):
            raise OSError("network down")

    cfg = config_from_dict(cfg_dict)
    with pytest.raises(DwakdError, match=r"push_to_hub to 'me/run' failed: OSError: network down.*huggingface-cli upload"):
        push_final(tmp_path, cfg, api=Broken())


def test_lora_adapter_is_portable_and_loads_with_peft(tmp_path, cfg_dict, tiny_student_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dwakd.train import train

    d = dict(cfg_dict)
    d["model"] = dict(d["model"], lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]})
    d["train"] = dict(d["train"], max_steps=2, lr=5e-2, license="apache-2.0")
    cfg = config_from_dict(d)
    train(cfg)
    final = Path(cfg.output_dir) / "final"
    adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_student_dir)  # the student as the user named it
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]),
                                      final / "adapter")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    from huggingface_hub import ModelCard

    card = ModelCard.load(final / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"


def test_portable_base_maps_aliases_and_hub_names(cfg_dict):
    from dwakd.train.card import _hub_model, portable_base

    cfg = config_from_dict(cfg_dict, check_files=False)
    cfg.model.student = "smollm2-135m-instruct"
    assert portable_base(cfg) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg.model.student = "gpt2"
    assert portable_base(cfg) == "gpt2" and _hub_model("openai-community/gpt2") == "openai-community/gpt2"
    assert _hub_model("/abs/path/student") is None


# --------------------------------------------------------------------------- trackers
def test_report_to_accepts_trl_spellings(cfg_dict, monkeypatch):
    import dwakd.config.inputs as inputs

    monkeypatch.setattr(inputs, "tracker_installed", lambda name: name in ("tensorboard", "trackio"))
    for value, want in (("tensorboard", ["tensorboard"]), (["tensorboard", "trackio"], ["tensorboard", "trackio"]),
                        ("tensorboard,trackio", ["tensorboard", "trackio"]), ("none", []), ([], []),
                        ("all", ["tensorboard", "trackio"])):
        d = dict(cfg_dict, train=dict(cfg_dict["train"], report_to=value))
        assert config_from_dict(d).train.report_to == want, value
    d = dict(cfg_dict, train=dict(cfg_dict["train"], trackers="tensorboard"))  # the old key, a plain string
    assert config_from_dict(d).train.report_to == ["tensorboard"]
    d = dict(cfg_dict, train=dict(cfg_dict["train"], report_to="tensorbord"))
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*did you mean 'tensorboard'"):
        config_from_dict(d)
    d = dict(cfg_dict, train=dict(cfg_dict["train"], report_to="mlflow"))
    with pytest.raises(ConfigError, match="tracker 'mlflow' needs the 'mlflow' package: pip install mlflow"):
        config_from_dict(d)


def test_every_accelerate_tracker_is_accepted(cfg_dict, monkeypatch):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    import dwakd.config.inputs as inputs

    monkeypatch.setattr(inputs, "tracker_installed", lambda name: True)
    d = dict(cfg_dict, train=dict(cfg_dict["train"], report_to=list(LOGGER_TYPE_TO_CLASS)))
    assert config_from_dict(d).train.report_to == list(LOGGER_TYPE_TO_CLASS)


def test_tracker_tags_have_one_prefix():
    from dwakd.train.metrics import tracker_values

    got = tracker_values("eval", {"dev/loss": 1.0, "dev/ce": 2.0})
    assert got == {"dev/loss": 1.0, "dev/ce": 2.0}
    assert tracker_values("train", {"loss": 1.0, "term/ce": 2.0}) == {"train/loss": 1.0, "train/term/ce": 2.0}


def test_run_logs_to_a_tracker_through_accelerate(tmp_path, cfg_dict, monkeypatch):
    """A stand-in tracker registered as 'tensorboard' receives train/ and dev/ tags (no eval/dev/)."""
    from accelerate import tracking

    import dwakd.config.inputs as inputs
    from dwakd.train import train

    logged = []

    class Stub(tracking.GeneralTracker):
        name = "tensorboard"
        requires_logging_directory = False

        def __init__(self, run_name, *a, **kw):
            super().__init__()
            self.run_name = run_name

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            logged.append(("config", values))

        def log(self, values, step=None, **kw):
            logged.append((step, dict(values)))

    monkeypatch.setattr(inputs, "tracker_installed", lambda name: True)
    cfg = config_from_dict(dict(cfg_dict, train=dict(cfg_dict["train"], report_to="tensorboard")))
    import dwakd.train.engine as engine

    real = engine.make_accelerator

    def with_stub(c):
        c.train.report_to = []
        acc = real(c)
        acc.log_with = []
        acc.trackers = []
        c.train.report_to = ["tensorboard"]
        acc._stub = Stub
        return acc

    monkeypatch.setattr(engine, "make_accelerator", with_stub)
    import dwakd.train.run as run_mod

    monkeypatch.setattr(run_mod, "make_accelerator", with_stub)

    def init_trackers(self, project_name, config=None, init_kwargs=None):
        self.trackers = [Stub(project_name)]
        self.trackers[0].store_init_configuration(config)

    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "init_trackers", init_trackers)
    train(cfg)
    tags = {k for step, values in logged if step != "config" for k in values}
    assert "train/loss" in tags and "dev/loss" in tags and not any(t.startswith("eval/") for t in tags)
    assert logged[0][0] == "config" and logged[0][1]["train.report_to"] == "['tensorboard']"


def test_built_tokenizer_that_cannot_reach_the_vocabulary_says_so(tmp_path, caplog):
    from dwakd.models import StudentSpec, build_student

    caplog.set_level(logging.WARNING)
    model, tok = build_student(StudentSpec(family="llama", hidden_size=32, num_layers=1, num_heads=2,
                                           intermediate_size=64, vocab_size=4096), ["tiny text, tiny text."] * 5)
    assert len(tok) < 4096
    assert model.config.vocab_size == len(tok) and model.config.dwakd_requested_vocab_size == 4096
    assert f"has {len(tok)} tokens, not the requested 4096" in caplog.text


def test_training_reads_a_datasetdict_folder_with_renamed_fields(tmp_path, cfg_dict, tiny_dolly_path):
    import datasets

    from dwakd.train import train

    rows = [json.loads(line) for line in tiny_dolly_path.read_text().splitlines() if line.strip()]
    renamed = [{"question": r["instruction"], "answer": r["response"]} for r in rows]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(renamed),
                          "validation": datasets.Dataset.from_list(renamed[:4])}).save_to_disk(str(tmp_path / "dd"))
    d = dict(cfg_dict)
    d["data"] = dict(d["data"], train=str(tmp_path / "dd"), dev=str(tmp_path / "dd"), split="train",
                     dev_split="validation", fields={"instruction": "question", "response": "answer"})
    d["train"] = dict(d["train"], max_steps=2)
    result = train(config_from_dict(d))
    env = json.loads((Path(d["output_dir"]) / "environment.json").read_text())
    assert env["data"]["train"]["records"] == len(rows) and env["data"]["dev"]["records"] == 4
    assert result.final_dir is not None

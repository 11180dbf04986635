"""The run directory: resolved config, environment, status, and the final student's model card.

``<output_dir>/``::

    config.yaml        the resolved configuration (defaults filled in, overrides applied)
    environment.json   package versions, git revision of dwakd, command line, processes, devices
    status.json        {"status": "running" | "failed" | "completed", ...}; a failed run says why
    metrics.jsonl      see :mod:`dwakd.train.metrics`
    checkpoints/       see :mod:`dwakd.train.checkpoint`
    final/             the trained student (HF directory + tokenizer + README.md), only on success

Nothing is created before every check that needs no model has passed (config, data, tokenizers).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import dwakd
from dwakd.config import DwakdConfig, dump_config
from dwakd.errors import ConfigError

PACKAGES = ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "numpy", "pyyaml")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"dwakd": dwakd.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, str | bool | None]:
    """The git commit of the dwakd source tree (and whether it has uncommitted changes), when it is a checkout."""
    src = Path(dwakd.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"status": "unreadable"}


def check_output_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to start a fresh run on top of an existing one."""
    status = read_status(run_dir)
    if status is not None and resume is None:
        raise ConfigError(
            f"output_dir {run_dir} already holds a run (status: {status.get('status')}). Continue it with "
            f"--resume auto, or start a new one elsewhere, e.g. with the override output_dir=runs/<new name>"
        )


class RunDir:
    """Writes the run directory's bookkeeping files (main process only; others get no-ops)."""

    def __init__(self, path: Path, *, main: bool):
        self.path = Path(path)
        self.main = main

    def _write(self, name: str, text: str) -> None:
        if self.main:
            tmp = self.path / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.path / name)

    def start(self, cfg: DwakdConfig, *, extra: dict | None = None, resumed_from: str | None = None) -> None:
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._write("config.yaml", dump_config(cfg))
        env = {
            "packages": package_versions(),
            "git": git_revision(),
            "command": sys.argv,
            "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
        }
        self._write("environment.json", json.dumps(env, indent=2))
        self.status("running", resumed_from=resumed_from)

    def status(self, status: str, **info) -> None:
        self._write("status.json", json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, indent=2))


def model_card(cfg: DwakdConfig, *, steps: int, examples: int, metrics: dict, best_checkpoint: str | None,
               lora: bool) -> str:
    """A short README.md for the final student directory."""
    method_opts = ", ".join(f"{k}={v}" for k, v in cfg.method.options.items()) or "defaults"
    student = cfg.model.student or (f"built {cfg.model.build.family} student (hidden {cfg.model.build.hidden_size}, "
                                    f"{cfg.model.build.num_layers} layers, {cfg.model.build.tokenizer_kind} vocab "
                                    f"{cfg.model.build.vocab_size})" if cfg.model.build else "?")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [dwakd, knowledge-distillation]",
        "---",
        "",
        "# Student distilled with dwakd",
        "",
        f"- teacher: `{cfg.model.teacher}`",
        f"- student: {student}" + (" with LoRA (merged; adapter in `adapter/`)" if lora else ""),
        f"- method: `{cfg.method.name}` ({method_opts})",
        f"- data: `{cfg.data.train}` ({examples} training examples), dev: `{cfg.data.dev or f'{cfg.data.dev_fraction:g} of train'}`",
        f"- optimizer steps: {steps} (batch {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} per process, "
        f"lr {cfg.train.lr:g}, projector lr {cfg.train.projector_lr:g})",
    ]
    for k, v in metrics.items():
        lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    if best_checkpoint:
        lines.append(f"- best checkpoint (dev loss): `{best_checkpoint}`")
    lines += [
        "",
        "Load it with:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('<this directory>')",
        "tokenizer = AutoTokenizer.from_pretrained('<this directory>')",
        "```",
        "",
        "The full resolved configuration is in `../config.yaml`; metrics in `../metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)

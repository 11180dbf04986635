"""Atomic checkpoints, ``--resume``, keep-best-N, and the student directories users load.

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/``::

    state/               accelerator.save_state: trained weights (student trainable parameters +
                         projectors; a LoRA student's frozen base is left out), optimizer,
                         scheduler, RNG states of every process (python, numpy, torch, cuda)
    student/             the student as a Hugging Face directory (or its LoRA adapter) + tokenizer
    trainer_state.json   step counters, data position, bad-step counters, dev loss, best list

A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed when complete (every process
writes its RNG state there, so the temporary name is deterministic rather than
:func:`dwakd.models.home.atomic_directory`'s random one; the rename is the same ``os.replace``).
``trainer_state.json`` is written last: a directory named ``checkpoint-<step>`` that has it is
complete, and ``--resume auto`` picks the newest such directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dwakd.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """Every counter the loop and the schedules use; saved as JSON in each checkpoint."""

    global_step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    consecutive_bad_steps: int = 0
    bad_steps_total: int = 0
    world_size: int = 1
    global_batch: int = 0
    seed: int = 0
    dev_loss: float | None = None
    last_train_loss: float | None = None
    best: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def checkpoint_step(path: Path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (``<run>/checkpoints``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


# --------------------------------------------------------------------------- weights in save_state
def _trainable_and_buffer_keys(model: torch.nn.Module) -> set[str]:
    keys = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    keys |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    return keys


def _save_hook(models, weights, output_dir):
    """accelerate save pre-hook: keep only trainable parameters and buffers in the saved weights."""
    for model, sd in zip(models, weights):
        keep = _trainable_and_buffer_keys(model)
        seen: set[tuple] = set()
        for k in list(sd.keys()):
            v = sd[k]
            # tied weights (embedding = LM head) are stored once; the load hook checks by identity
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if torch.is_tensor(v) else None
            if k not in keep or (key is not None and key in seen):
                del sd[k]
            elif key is not None:
                seen.add(key)


def _load_hook(models, input_dir):
    """accelerate load pre-hook: load the weights ourselves, checking every trainable parameter is restored."""
    from safetensors.torch import load_file

    for i in range(len(models) - 1, -1, -1):
        model = models[i]
        name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
        path = Path(input_dir) / name
        if not path.is_file():
            continue  # e.g. a pickle checkpoint: let accelerate handle it
        device = next(model.parameters()).device
        sd = load_file(str(path), device=str(device))
        result = model.load_state_dict(sd, strict=False)
        if result.unexpected_keys:
            raise ConfigError(f"checkpoint {input_dir} holds weights this model does not have: "
                              f"{result.unexpected_keys[:5]} (was it written with another config?)")
        named = list(model.named_parameters(remove_duplicate=False))
        loaded = {id(p) for n, p in named if n in sd}
        missing = [n for n, p in named if p.requires_grad and id(p) not in loaded]
        if missing:
            raise ConfigError(f"checkpoint {input_dir} lacks trainable weights {missing[:5]} (was it written with another config?)")
        models.pop(i)


def register_weight_hooks(accelerator) -> None:
    accelerator.register_save_state_pre_hook(_save_hook)
    accelerator.register_load_state_pre_hook(_load_hook)


# --------------------------------------------------------------------------- student directories
def _aliases(module: torch.nn.Module) -> set[str]:
    """Names of parameters that are another, earlier name's parameter (tied weights)."""
    seen: set[int] = set()
    out = set()
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.add(name)
        seen.add(id(p))
    return out


def student_state_dict(accelerator, model) -> dict | None:
    """The student's full state dict (gathered under FSDP/ZeRO-3; call on every process). A tied
    weight appears once, under its first name, as in a plain ``save_pretrained`` (a gathered FSDP
    state dict holds separate copies, which the save would otherwise write twice)."""
    full = accelerator.get_state_dict(model)
    if full is None:
        return None
    tied = _aliases(accelerator.unwrap_model(model))
    return {k[len("student."):]: v for k, v in full.items() if k.startswith("student.") and k not in tied}


def save_student_dir(out: Path, student, state_dict: dict | None, tokenizer) -> None:
    """Write the student (HF model, or the LoRA adapter of a peft model) and its tokenizer into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)


class CheckpointManager:
    """Saves, lists, loads and prunes the checkpoints of one run."""

    def __init__(self, run_dir: Path, accelerator, *, keep_last_n: int = 1, keep_best_n: int = 1):
        self.root = Path(run_dir) / "checkpoints"
        self.accelerator = accelerator
        self.keep_last_n = keep_last_n
        self.keep_best_n = keep_best_n

    def latest(self) -> Path | None:
        found = complete_checkpoints(self.root)
        return found[-1] if found else None

    def save(self, state: TrainerState, model, student, tokenizer) -> Path:
        """Write checkpoint ``state.global_step`` atomically (all processes must call this)."""
        acc = self.accelerator
        step = state.global_step
        final = self.root / f"checkpoint-{step}"
        tmp = self.root / f".tmp-checkpoint-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))
        student_sd = student_state_dict(acc, model)
        if acc.is_main_process:
            save_student_dir(tmp / "student", student, student_sd, tokenizer)
            (tmp / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
            if final.exists():
                old = self.root / f".old-checkpoint-{step}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            self.prune()
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> TrainerState:
        """Restore weights, optimizer, scheduler and RNG states from ``path``; return its counters."""
        path = Path(path)
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
        self.accelerator.load_state(str(path / "state"))
        return TrainerState.from_file(path / STATE_FILE)

    def prune(self) -> None:
        """Keep the ``keep_last_n`` newest checkpoints and the ``keep_best_n`` with the lowest dev loss."""
        found = complete_checkpoints(self.root)
        keep = set(found[-self.keep_last_n:]) if self.keep_last_n > 0 else set()
        scored = []
        for p in found:
            dev = TrainerState.from_file(p / STATE_FILE).dev_loss
            if dev is not None:
                scored.append((dev, checkpoint_step(p), p))
        keep |= {p for _, _, p in sorted(scored)[: self.keep_best_n]}
        for p in found:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".old-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)

    def best(self) -> Path | None:
        scored = []
        for p in complete_checkpoints(self.root):
            dev = TrainerState.from_file(p / STATE_FILE).dev_loss
            if dev is not None:
                scored.append((dev, checkpoint_step(p), p))
        return min(scored)[2] if scored else None


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``--resume``: ``None`` (fresh run), ``"auto"`` (newest complete checkpoint or fresh), or a path."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(Path(run_dir) / "checkpoints")
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory")
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE}); "
                          f"complete ones: {[p.name for p in complete_checkpoints(path.parent)] or 'none'}")
    return path

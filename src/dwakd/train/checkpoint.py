"""Atomic checkpoints, ``--resume``, keep-best-N, and the student directories users load.

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/``::

    state/               accelerator.save_state: trained weights (student trainable parameters +
                         projectors; a LoRA student's frozen base is left out), optimizer,
                         scheduler, RNG states of every process (python, numpy, torch, cuda)
    student/             the student as a Hugging Face directory (or its LoRA adapter) + tokenizer
    trainer_state.json   step counters, data position, bad-step counters, dev loss, best list

    config.yaml          the resolved config the checkpoint was written with (for the resume rule)
    MANIFEST.json        size and SHA-256 of every file above (:mod:`dwakd.fsio`), written last

A checkpoint is written into ``.tmp-checkpoint-<step>`` (every process writes its RNG state
there, so the temporary name is deterministic), every file and directory is fsynced, and the
directory is renamed into place (``os.replace``), then the parent is fsynced. The trained weights
are checked finite before anything is written. A write that fails (disk full, file-size limit)
removes the temporary directory and raises :class:`~dwakd.errors.StorageError`; the previous
checkpoints stay as they were.

Opening: :func:`verify_checkpoint` checks the manifest; ``--resume auto`` takes the newest
checkpoint that verifies, warning about each newer one that does not (truncated, corrupted, or
half-written by a killed process). Checkpoints written before manifests existed are accepted
when their ``trainer_state.json`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dwakd.errors import ConfigError, StorageError
from dwakd.fsio import (
    MANIFEST,
    fsync_dir,
    fsync_tree,
    remove_tree,
    replace_directory,
    storage_reason,
    verify_manifest,
    write_manifest,
)

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
    """Complete checkpoints under ``root`` (``<run>/checkpoints``), oldest first (not yet verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def read_state(path: Path) -> TrainerState | None:
    """The counters of checkpoint ``path``, or ``None`` when its ``trainer_state.json`` does not read."""
    try:
        return TrainerState.from_file(Path(path) / STATE_FILE)
    except (OSError, ValueError, TypeError):
        return None


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when checkpoint ``path`` is complete and intact; else what is wrong with it."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        return f"incomplete (no {STATE_FILE})"
    problem = verify_manifest(path)
    if problem == f"no {MANIFEST}":  # written by an older dwakd: accept it when its counters read
        return None if read_state(path) is not None else f"{STATE_FILE} is unreadable"
    if problem is not None:
        return problem
    return None if read_state(path) is not None else f"{STATE_FILE} is unreadable"


def verified_checkpoints(root: Path) -> list[Path]:
    """Checkpoints under ``root`` that verify, oldest first; a warning for each one that does not."""
    out = []
    for p in complete_checkpoints(root):
        problem = verify_checkpoint(p)
        if problem is None:
            out.append(p)
        else:
            log.warning("checkpoint %s does not verify (%s); it is skipped", p, problem)
    return out


def nonfinite_parameters(model: torch.nn.Module, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) trainable parameters holding NaN or +-inf values."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        return []
    sums = torch.stack([torch.sum(p.detach(), dtype=torch.float32) for _, p in params])
    if bool(torch.isfinite(sums).all()):  # a NaN/inf element makes its sum non-finite
        return []
    return [n for (n, _), s in zip(params, sums.tolist()) if not math.isfinite(s)][:limit] or ["(a sum overflowed)"]


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


# --------------------------------------------------------------------------- write phases
# (separate functions so the fault-injection tests can fail or kill the process at each of them)
def _write_state(accelerator, out: Path) -> None:
    accelerator.save_state(str(out))


def _write_trainer_state(path: Path, state: TrainerState) -> None:
    Path(path).write_text(state.to_json(), encoding="utf-8")


def _write_config(path: Path, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def _write_manifest(root: Path) -> None:
    write_manifest(root)
    fsync_tree(root)


def _publish(tmp: Path, final: Path) -> None:
    replace_directory(tmp, final)


class CheckpointManager:
    """Saves, lists, verifies, loads and prunes the checkpoints of one run."""

    def __init__(self, run_dir: Path, accelerator, *, keep_last_n: int = 1, keep_best_n: int = 1):
        self.root = Path(run_dir) / "checkpoints"
        self.accelerator = accelerator
        self.keep_last_n = keep_last_n
        self.keep_best_n = keep_best_n

    def latest(self) -> Path | None:
        found = complete_checkpoints(self.root)
        return found[-1] if found else None

    def save(self, state: TrainerState, model, student, tokenizer, *, config_text: str | None = None) -> Path:
        """Write checkpoint ``state.global_step`` atomically and durably (all processes must call this)."""
        acc = self.accelerator
        step = state.global_step
        final = self.root / f"checkpoint-{step}"
        tmp = self.root / f".tmp-checkpoint-{step}"
        try:
            if acc.is_main_process:
                remove_tree(tmp)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            _write_state(acc, tmp / "state")
            student_sd = student_state_dict(acc, model)
            acc.wait_for_everyone()  # every process's RNG state is in tmp/state
            if acc.is_main_process:
                save_student_dir(tmp / "student", student, student_sd, tokenizer)
                if config_text is not None:
                    _write_config(tmp / "config.yaml", config_text)
                _write_trainer_state(tmp / STATE_FILE, state)
                _write_manifest(tmp)
                _publish(tmp, final)
                self.prune()
        except BaseException as e:
            if acc.is_main_process:
                remove_tree(tmp)
            reason = storage_reason(e, self.root)
            if reason is not None:
                previous = self.latest()
                raise StorageError(
                    f"{reason} while writing checkpoint {step} to {self.root}; the partial checkpoint was removed. "
                    f"The last complete checkpoint is {previous or 'none'}: free space (or raise the limit) and "
                    f"continue with --resume auto") from e
            raise
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> TrainerState:
        """Restore weights, optimizer, scheduler and RNG states from ``path``; return its counters."""
        path = Path(path)
        problem = verify_checkpoint(path)
        if problem is not None:
            raise ConfigError(f"checkpoint {path} cannot be used: {problem}")
        try:
            self.accelerator.load_state(str(path / "state"))
        except ConfigError:
            raise
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {first[:300]}); was it "
                              f"written with another model or method config?") from e
        return TrainerState.from_file(path / STATE_FILE)

    def prune(self) -> None:
        """Keep the ``keep_last_n`` newest checkpoints and the ``keep_best_n`` with the lowest dev loss."""
        found = complete_checkpoints(self.root)
        keep = set(found[-self.keep_last_n:]) if self.keep_last_n > 0 else set()
        scored = []
        for p in found:
            st = read_state(p)
            if st is not None and st.dev_loss is not None and math.isfinite(st.dev_loss):
                scored.append((st.dev_loss, checkpoint_step(p), p))
        keep |= {p for _, _, p in sorted(scored)[: self.keep_best_n]}
        for p in found:
            if p not in keep:
                remove_tree(p)
        for p in self.root.glob(".old-checkpoint-*"):
            remove_tree(p)
        fsync_dir(self.root)

    def best(self) -> Path | None:
        scored = []
        for p in verified_checkpoints(self.root):
            st = read_state(p)
            if st is not None and st.dev_loss is not None and math.isfinite(st.dev_loss):
                scored.append((st.dev_loss, checkpoint_step(p), p))
        return min(scored)[2] if scored else None

    def recover(self) -> list[str]:
        """Clear what killed writers left (main process, under the run lock); return what was done.

        ``.tmp-checkpoint-*`` (never complete) are removed. A ``checkpoint-<N>`` that a kill left
        only as ``.old-checkpoint-<N>-*`` (between the two renames of a re-save) is restored.
        """
        done: list[str] = []
        if not self.root.is_dir():
            return done
        for p in sorted(self.root.glob(".tmp-checkpoint-*")):
            remove_tree(p)
            done.append(f"removed the unfinished {p.name}")
        for p in sorted(self.root.glob(".old-checkpoint-*")):
            step = p.name[len(".old-checkpoint-"):].split("-")[0]
            target = self.root / f"checkpoint-{step}"
            if not target.exists() and verify_checkpoint(p) is None:
                os.replace(p, target)
                done.append(f"restored {target.name} from {p.name}")
            else:
                remove_tree(p)
                done.append(f"removed {p.name}")
        if done:
            fsync_dir(self.root)
        return done


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``--resume``: ``None`` (fresh run), ``"auto"`` (newest checkpoint that verifies, or fresh), or a path."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(Path(run_dir) / "checkpoints")
        problems = []
        for p in reversed(found):
            problem = verify_checkpoint(p)
            if problem is None:
                if problems:
                    log.warning("resuming from %s, the newest checkpoint that verifies; skipped: %s", p, "; ".join(problems))
                return p
            problems.append(f"{p.name}: {problem}")
        if problems:
            raise ConfigError(f"--resume auto: no checkpoint of {run_dir} verifies ({'; '.join(problems)}). Start a "
                              f"new run in another output_dir, or remove the damaged checkpoints to start afresh here")
        return None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory")
    problem = verify_checkpoint(path)
    if problem is not None:
        good = [p.name for p in complete_checkpoints(path.parent) if verify_checkpoint(p) is None]
        raise ConfigError(f"--resume {resume}: not a usable checkpoint ({problem}); checkpoints that verify: "
                          f"{good or 'none'}")
    return path

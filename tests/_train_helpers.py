"""Helpers for the trainer tests: a small test-only method, config builders, tiny-model variants.

``ToyKD`` (registered as ``toy-kd``) is deliberately simple so the tests can recompute its loss
independently: ``ce`` = the student's summed NLL of the gold response tokens; ``proj`` = for each
example, ``n_b * ||P(mean teacher hidden) - mean student hidden (detached)||^2`` (a projector
that needs the teacher and gets gradients); option ``nan_steps`` makes ``ce`` NaN at those
optimizer steps (to test the non-finite guard).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dwakd.methods import DistillMethod, LossTerms, MethodOptions, register_method


@dataclass
class ToyOptions(MethodOptions):
    proj_rate: float = 0.5
    nan_steps: list = field(default_factory=list)

    def validate(self, where: str = "method") -> None:
        from dwakd.errors import ConfigError

        if self.proj_rate < 0:
            raise ConfigError(f"{where}.proj_rate must be >= 0")


class ToyKD(DistillMethod):
    name = "toy-kd"
    description = "test-only: CE + a projector matching mean hidden states"
    Options = ToyOptions

    def __init__(self, student, teacher, options):
        super().__init__(student, teacher, options)
        d_s = student.get_input_embeddings().weight.shape[1]
        d_t = teacher.get_input_embeddings().weight.shape[1]
        self.proj = nn.Linear(d_t, d_s)
        self.step = -1
        self.progress_calls: list[tuple[int, int]] = []

    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = step
        self.progress_calls.append((step, total_steps))

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        smask = batch.student.target_mask
        tmask = batch.teacher.target_mask
        logp = F.log_softmax(student_out.full_logits().float(), dim=-1)
        gold = batch.student.target_ids.clamp(min=0)
        nll = -logp.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        ce = (nll * smask).sum()
        if self.step in self.options.nan_steps:
            ce = ce * float("nan")
        n_s = smask.sum(1).clamp(min=1)
        n_t = tmask.sum(1).clamp(min=1)
        h_s = (student_out.hidden.float() * smask.unsqueeze(-1)).sum(1) / n_s.unsqueeze(-1)
        h_t = (teacher_out.hidden.detach().float() * tmask.unsqueeze(-1)).sum(1) / n_t.unsqueeze(-1)
        proj = ((self.proj(h_t) - h_s.detach()) ** 2).sum(-1)
        proj = (proj * smask.sum(1)).sum()
        return LossTerms(
            terms={"ce": ce, "proj": proj},
            n_tokens=smask.sum(),
            rates={"proj": self.options.proj_rate},
            stats={"proj_weight_norm": float(self.proj.weight.detach().norm())},
        )


def register_toy() -> None:
    register_method("toy-kd", "_train_helpers:ToyKD")


def base_config(tmp_path: Path, teacher_dir: Path, student_dir: Path, data_path: Path, **train) -> dict:
    """A small config dict for the tiny fixture pair (plain data; pass to config_from_dict)."""
    t = {"lr": 1e-3, "projector_lr": 1e-3, "batch_size": 2, "grad_accum": 2, "max_steps": 4, "log_every": 1,
         "eval_every": 2, "save_every": 2, "seed": 7, "bf16": False}
    t.update(train)
    return {
        "output_dir": str(tmp_path / "run"),
        "model": {"teacher": str(teacher_dir), "student": str(student_dir)},
        "data": {"train": str(data_path), "dev_fraction": 0.25, "max_length": 96, "max_prompt_length": 48},
        "method": {"name": "toy-kd"},
        "train": t,
    }


def no_dropout_copy(src: Path, dst: Path) -> Path:
    """Copy an HF model directory with every dropout probability set to 0 (for cross-process comparisons)."""
    import shutil

    shutil.copytree(src, dst)
    cfg_path = dst / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in list(cfg):
        if "pdrop" in k or "dropout" in k:
            if isinstance(cfg[k], (int, float)):
                cfg[k] = 0.0
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return dst


def state_of(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files in ``path`` (a saved HF directory)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out

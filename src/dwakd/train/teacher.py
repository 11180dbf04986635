"""The frozen teacher: loaded once, eval mode, no gradients, kept out of the trained engine.

The teacher is *not* passed to ``accelerator.prepare``: it is moved to this process's device
and run under ``torch.no_grad``. Every teacher forward of the trainer goes through
:meth:`TeacherRunner.__call__`, so a cache of teacher outputs can replace it in one place.

Distributed engines: under DDP and FSDP each process holds a full replicated teacher copy (in
bf16 on GPUs that support it). Under DeepSpeed ZeRO-3 only the student (and the projectors)
are partitioned; the teacher stays a plain replicated inference module, so it must fit on one
device (a 7B teacher needs ~15 GB in bf16). A separate DeepSpeed inference engine for teachers
that do not fit is not implemented.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import torch

from dwakd.models import load_model
from dwakd.models.outputs import ModelOutputs, run_model

log = logging.getLogger(__name__)


def teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    """Resolve ``model.teacher_dtype``: ``auto`` = bf16 on a GPU that supports it, else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(spec: str, *, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
    """Load the teacher through :mod:`dwakd.models`, frozen, on ``device``."""
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    return freeze(model).to(device)


class TeacherSource(Protocol):
    """What the loop calls for the teacher's outputs: the live :class:`TeacherRunner` or the
    :class:`~dwakd.train.teacher_cache.CachedTeacherRunner`, chosen by the method's declared
    :class:`~dwakd.methods.TeacherNeeds`."""

    def can_serve(self, needs) -> str | None:
        """``None`` when this source provides what ``needs`` declares, else why not."""

    def __call__(self, batch) -> ModelOutputs | None: ...


class TeacherRunner:
    """Produces the teacher's :class:`ModelOutputs` for a batch (or ``None`` when the method needs no teacher).

    ``autocast``: a context factory (the accelerator's autocast) used when the teacher runs in
    float32 while training uses bf16; ``None`` runs the teacher in its own dtype.
    """

    def __init__(self, model: torch.nn.Module | None, *, autocast=None):
        self.model = model
        self.autocast = autocast

    def can_serve(self, needs) -> str | None:
        """The live teacher provides every field at every position."""
        return None if (needs is None or self.model is not None) else "no teacher model is loaded"

    def __call__(self, batch) -> ModelOutputs | None:
        if self.model is None:
            return None
        ctx = self.autocast() if self.autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return run_model(self.model, batch.teacher, output_logits=False)

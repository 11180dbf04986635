"""The trained engine: the student and the method's projectors in one module.

``accelerator.prepare`` wraps this module (DDP/FSDP/DeepSpeed), so the student and the projectors
are synchronised together; the teacher is not part of it. The method keeps the student as a plain
reference (see :class:`dwakd.methods.DistillMethod`), so every trainable parameter appears once:
under ``student.`` or ``method.``.
"""

from __future__ import annotations

from torch import nn

from dwakd.methods import DistillMethod, LossTerms
from dwakd.models.outputs import ModelOutputs, run_model


class DistillModule(nn.Module):
    """``forward(batch, teacher_out) -> LossTerms``: runs the student on ``batch.student``, then the method."""

    def __init__(self, student: nn.Module, method: DistillMethod):
        super().__init__()
        self.student = student
        self.method = method

    def tie_weights(self) -> None:
        """Re-tie the student's tied weights (input embedding = LM head). Accelerate's FSDP2 prepare
        moves the module to the meta device and reloads it (``cpu_ram_efficient_loading``, on by
        default in ``accelerate launch``), then calls ``tie_weights()`` on the prepared module: without
        this, a tied student would train its embedding and its head as two parameters."""
        tie = getattr(self.student, "tie_weights", None)
        if callable(tie):
            tie()

    def forward(self, batch, teacher_out: ModelOutputs | None) -> LossTerms:
        student_out = run_model(self.student, batch.student)
        return self.method(student_out, teacher_out, batch)

"""The trained engine: the student and the method's projectors in one module.

``accelerator.prepare`` wraps this module (DDP/FSDP/DeepSpeed), so the student and the projectors
are synchronised together; the teacher is not part of it. The method keeps the student as a plain
reference (see :class:`dwakd.methods.DistillMethod`), so every trainable parameter appears once:
under ``student.`` or ``method.``.
"""

from __future__ import annotations

import torch
from torch import nn

from dwakd.methods import DistillMethod, LossTerms
from dwakd.models.outputs import ModelOutputs, run_model


class DistillModule(nn.Module):
    """``forward(batch, teacher_out) -> LossTerms``: runs the student on ``batch.student``, then the method."""

    def __init__(self, student: nn.Module, method: DistillMethod):
        super().__init__()
        self.student = student
        self.method = method
        #: after each forward: a 0-dim bool tensor, True when the student's or the teacher's logits or
        #: hidden states held NaN/+inf (methods treat such rows like padding, so the loss alone cannot tell)
        self.nonfinite_inputs: torch.Tensor | None = None

    def tie_weights(self) -> None:
        """Re-tie the student's tied weights (input embedding = LM head). Accelerate's FSDP2 prepare
        moves the module to the meta device and reloads it (``cpu_ram_efficient_loading``, on by
        default in ``accelerate launch``), then calls ``tie_weights()`` on the prepared module: without
        this, a tied student would train its embedding and its head as two parameters."""
        tie = getattr(self.student, "tie_weights", None)
        if callable(tie):
            tie()

    def forward(self, batch, teacher_out: ModelOutputs | None) -> LossTerms:
        student_out = run_model(self.student, batch.student, output_logits=False)  # methods work on hidden rows + head
        self.nonfinite_inputs = nonfinite_outputs(student_out, teacher_out)
        return self.method(student_out, teacher_out, batch)


def nonfinite_outputs(*outs: ModelOutputs | None) -> torch.Tensor:
    """True (a 0-dim tensor, no device sync) when a NaN or +inf is in any logits / hidden states of ``outs``.

    One float32 sum per tensor (no full-size mask): NaN and +inf propagate into the sum; a sum of
    finite logits cannot overflow float32. ``-inf`` alone (a masked vocabulary entry) is allowed.
    """
    flags = []
    with torch.no_grad():
        for out in outs:
            if out is None:
                continue
            for t in (out.logits, out.hidden):
                if t is None:
                    continue
                s = torch.sum(t.detach(), dtype=torch.float32)
                flags.append(torch.isnan(s) | torch.isposinf(s))
    if not flags:
        return torch.zeros((), dtype=torch.bool)
    return torch.stack(flags).any()

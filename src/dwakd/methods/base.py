"""The method contract.

A method is an ``nn.Module`` that owns its projectors (and nothing else trainable). It is called
with the student's :class:`~dwakd.models.outputs.ModelOutputs` (with grad), the teacher's (no
grad; ``None`` for methods that need no teacher) and the :class:`~dwakd.data.batch.PairBatch`,
and returns :class:`LossTerms`. It never runs a model: the trainer does.

Normalisation (METHOD.md section 5): every term is a *token sum* over the micro-batch. The trainer
adds ``sum(rate * term)`` over micro-batches and processes and divides by the number of student
response tokens in the whole optimizer step, so results do not depend on how a batch is split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dwakd.config.typed import Problems, build_dataclass
from dwakd.errors import ConfigError


@dataclass
class LossTerms:
    """Named token-sum losses of one micro-batch.

    - ``terms``: name -> scalar tensor, a sum over response tokens (or sequences, for Soft-DTW).
    - ``rates``: name -> weight of that term in the objective (missing = 1.0).
    - ``n_tokens``: number of student response tokens in this micro-batch (the normaliser).
    - ``stats``: scalar tensors (or floats) for logging only (weight statistics, gamma, counts); never
      differentiated. Keep them tensors: the trainer moves every stat of a step to the host in ONE
      sync, together with the loss terms.
    """

    terms: dict[str, torch.Tensor]
    n_tokens: torch.Tensor
    rates: dict[str, float] = field(default_factory=dict)
    stats: dict[str, torch.Tensor | float] = field(default_factory=dict)

    def total(self) -> torch.Tensor:
        """``sum(rate * term)``: the micro-batch's contribution to the step's token-sum objective."""
        out = None
        for name, value in self.terms.items():
            v = self.rates.get(name, 1.0) * value
            out = v if out is None else out + v
        if out is None:
            raise ValueError("a method returned no loss terms")
        return out


@dataclass
class MethodOptions:
    """Base class of every method's options dataclass.

    Fields are declared with :func:`dwakd.config.typed.option` (help text, ``ge``/``gt``/``le``/``lt``
    ranges) and typed with ``Literal[...]`` for choices, so the SAME typed builder as the rest of
    the configuration converts and checks them (``gamma: 1e-1``, which YAML 1.1 reads as a string,
    arrives as a float; an unknown key gets a suggestion; a bad choice names its ``file:line``).
    ``validate`` is left for checks across fields.

    Presets: a subclass may declare ``PRESETS = {name: {field: value}}`` and a ``preset`` field;
    the chosen preset's values replace the defaults of every field the user did not set
    explicitly (explicit values always win).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None, *, where: str = "method", method: str = "",
                  problems: Problems | None = None) -> MethodOptions:
        """Build from plain data (YAML or keyword arguments) with the typed config builder.

        ``where``: the location used when ``problems`` carries no ``file:line`` for a key;
        ``problems``: a :class:`~dwakd.config.typed.Problems` holding the config file's marks
        (keys are ``method.<option>``). Raises :class:`ConfigError` listing every problem.
        """
        given = dict(options or {})
        problems = problems if problems is not None else Problems(origin=where)
        label = f"the options of method '{method}'" if method else f"the options of {cls.__qualname__}"
        obj = build_dataclass(cls, given, "method", problems, section_label=label)
        problems.raise_if_any()
        preset = getattr(obj, "preset", None)
        if preset is not None and cls.PRESETS:
            for key, value in cls.PRESETS[preset].items():
                if key not in given:
                    setattr(obj, key, value)
        try:
            obj.validate("method")
        except ConfigError as e:
            raise ConfigError(f"{problems.where('method')}: {e}") from None
        return obj

    def validate(self, where: str = "method") -> None:
        """Checks across fields (single-field types and ranges are checked by the typed builder)."""


@dataclass(frozen=True)
class TeacherNeeds:
    """What a method reads from the teacher's :class:`~dwakd.models.outputs.ModelOutputs` (its declared
    capability; the trainer picks the teacher runner from it and the cache says whether it can serve it).

    - ``logits`` / ``hidden`` / ``embeddings``: which fields are read;
    - ``positions``: ``response`` (only where ``batch.teacher.target_mask`` is True) or ``all``
      (prompt and padding positions too); ``why``: the option that asks for ``all``.
    """

    logits: bool = True
    hidden: bool = True
    embeddings: bool = True
    positions: str = "response"
    why: str = ""


class DistillMethod(nn.Module):
    """Base class. Subclasses set ``name``, ``description``, ``Options`` and implement ``forward``.

    ``student`` and ``teacher`` are the models (the teacher may be ``None`` for SFT). They are kept
    as plain references, never registered as submodules, so a method's ``parameters()`` are its
    projectors only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    #: capability flag: the method reads no student weight outside the student's own module calls
    #: (or reads it through :meth:`student_head_weight_detached`), so it may run under DeepSpeed
    #: ZeRO-3, where the weights exist whole only inside module calls
    supports_zero3: ClassVar[bool] = False
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options: MethodOptions):
        super().__init__()
        object.__setattr__(self, "_student_ref", student)
        object.__setattr__(self, "_teacher_ref", teacher)
        self.options = options

    @property
    def student_model(self) -> nn.Module:
        return self._student_ref

    @property
    def teacher_model(self) -> nn.Module | None:
        return self._teacher_ref

    def student_head_weight(self) -> torch.Tensor:
        """``[V_s, d_s]`` student LM-head weight (callers detach where METHOD.md says so)."""
        return self._student_ref.get_output_embeddings().weight

    def student_head_weight_detached(self) -> torch.Tensor:
        """The whole ``[V_s, d_s]`` student LM-head weight, detached, for reads outside the student's
        module calls. Under DeepSpeed ZeRO-3 the parameter is a partition between module calls: it is
        gathered (``deepspeed.zero.GatheredParameters``, read-only) and copied, so the copy outlives
        the gather; elsewhere this is ``student_head_weight().detach()`` (no copy)."""
        w = self.student_head_weight()
        if not hasattr(w, "ds_id"):
            return w.detach()
        import contextlib

        import deepspeed
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        whole = w.ds_status == ZeroParamStatus.AVAILABLE  # persistent, or still held by a module call
        with contextlib.nullcontext() if whole else deepspeed.zero.GatheredParameters([w], modifier_rank=None):
            return w.detach().clone()

    def teacher_head_weight(self) -> torch.Tensor:
        """``[V_t, d_t]`` frozen teacher LM-head weight."""
        return self._teacher_ref.get_output_embeddings().weight

    def teacher_needs(self) -> TeacherNeeds | None:
        """The teacher outputs this method reads (``None``: no teacher). Subclasses narrow it."""
        return TeacherNeeds() if self.needs_teacher else None

    @classmethod
    def check_tokenizers(cls, student_tokenizer, teacher_tokenizer) -> None:
        """Called before any model loads; raise :class:`ConfigError` for a tokenizer pair the method cannot use."""

    def attach_tokenizers(self, student_tokenizer, teacher_tokenizer) -> None:
        """Called once by the trainer before training (methods that need token strings override it)."""

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called by the trainer before each optimizer step (for annealing / warm-up schedules)."""

    def forward(self, student_out, teacher_out, batch) -> LossTerms:  # pragma: no cover - abstract
        raise NotImplementedError

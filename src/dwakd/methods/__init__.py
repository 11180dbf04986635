"""Distillation methods: leaf modules over one shared toolkit, and a registry.

Registered methods (one module each; no method module imports another): ``sft``, ``kd``, ``dskd``
(``dskd``, ``dskd-eta``), ``uld``, ``mined``, ``multilevel_ot``, ``dwakd`` (``dwakd``, ``dwakd-eta``).

The toolkit a method builds on:

- :mod:`~dwakd.methods.base`: :class:`DistillMethod` (``forward(student_out, teacher_out, batch) ->
  LossTerms``; ``teacher_needs()`` declares the teacher outputs it reads, :class:`TeacherNeeds`;
  ``check_tokenizers`` / ``attach_tokenizers`` / ``set_progress`` hooks), :class:`MethodOptions`
  (fields via :func:`dwakd.config.typed.option`, ``Literal`` choices, ranges, ``PRESETS``),
  :class:`LossTerms` (token sums, rates, ``n_tokens``, tensor stats: the loop syncs once per step).
- :mod:`~dwakd.methods.rows`: positions (:func:`~dwakd.methods.rows.compact`, rank tables,
  response-start pairing) and row computations that never hold ``[N, V]``:
  :func:`~dwakd.methods.rows.fused_rows` (divergence / CE / entropy / peak, analytic gradients),
  :func:`~dwakd.methods.rows.chunked_rows` (any per-row function, checkpointed),
  :func:`~dwakd.methods.rows.logit_side` / :func:`~dwakd.methods.rows.row_source` (a model's
  logits rows from materialised logits OR hidden states + head weight: the trainer does not
  materialise ``[B, L, V]`` logits), :func:`~dwakd.methods.rows.gold_cross_entropy`.
- :mod:`~dwakd.methods.divergences`: the token divergences and :class:`~dwakd.methods.divergences.DivergenceOptions`.
- :mod:`~dwakd.methods.cma`, :mod:`~dwakd.methods.projectors`: cross-model attention / exact token
  alignment and projectors; :mod:`~dwakd.methods.dual_space`: the dual-space base class whose
  ``combine`` hook DSKD and DWA-KD implement.
"""

from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions, TeacherNeeds
from dwakd.methods.registry import available_methods, build_method, register_method, validate_method_options

__all__ = [
    "DistillMethod",
    "LossTerms",
    "MethodOptions",
    "TeacherNeeds",
    "available_methods",
    "build_method",
    "register_method",
    "validate_method_options",
]

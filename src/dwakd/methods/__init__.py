"""Distillation methods: one module per method, and a registry (:mod:`dwakd.methods.registry`)."""

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

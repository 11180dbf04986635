"""Typed training configuration: YAML files, dotted overrides, validation before any model loads.

- :class:`DwakdConfig` and its sections (:mod:`dwakd.config.schema`, every field documented),
- :func:`load_config` (file + overrides), :func:`config_from_dict`, :func:`dump_config`,
  :func:`config_to_dict`, :func:`where` (``file:line`` of a key), :func:`describe_config`.
"""

from dwakd.config.describe import describe_config
from dwakd.config.loader import config_from_dict, config_to_dict, dump_config, load_config, where
from dwakd.config.schema import (
    BuildStudentConfig,
    DataConfig,
    DwakdConfig,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
)
from dwakd.config.typed import Problems
from dwakd.config.yamlio import parse_override

__all__ = [
    "BuildStudentConfig",
    "DataConfig",
    "DwakdConfig",
    "LoraConfig",
    "MethodConfig",
    "ModelConfig",
    "Problems",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "describe_config",
    "dump_config",
    "load_config",
    "parse_override",
    "where",
]

"""Load, override, validate and write the training configuration.

- :func:`load_config` (YAML file + dotted overrides -> :class:`DwakdConfig`, fully checked),
- :func:`config_from_dict` (the same from plain data, e.g. in tests),
- :func:`config_to_dict` / :func:`dump_config` (the resolved config, as written into the run dir),
- :func:`where` (the ``file:line`` a key came from, for later errors).

The layering rule keeps this module below the methods: the *method options* are checked by
:func:`dwakd.train.checks.check_method` (which knows the registry) before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dwakd.config.schema import SECTIONS, DwakdConfig, MethodConfig
from dwakd.config.typed import Problems, build_dataclass, dataclass_to_dict
from dwakd.config.validate import validate_config
from dwakd.config.yamlio import apply_overrides, read_yaml


def _split_method(data: dict[str, Any], marks: dict[str, str], problems: Problems) -> dict[str, Any]:
    """``method: {name: x, a: 1, options: {b: 2}}`` -> ``{name: x, options: {a: 1, b: 2}}`` (marks follow)."""
    method = data.get("method")
    if method is None:
        return data
    if not isinstance(method, dict):
        problems.add("method", f"'method' must be a mapping with a 'name', got {method!r}")
        data = dict(data)
        data.pop("method")
        return data
    options: dict[str, Any] = {}
    explicit = method.get("options")
    if explicit is not None and not isinstance(explicit, dict):
        problems.add("method.options", f"'method.options' must be a mapping, got {explicit!r}")
        explicit = None
    for key, value in (explicit or {}).items():
        options[key] = value
        if f"method.options.{key}" in marks:
            marks.setdefault(f"method.{key}", marks[f"method.options.{key}"])
    for key, value in method.items():
        if key in ("name", "options"):
            continue
        if key in options:
            problems.add(f"method.{key}", f"method option '{key}' is given twice (flat and under 'options')")
        options[key] = value
    new = {"options": options}
    if "name" in method:
        new["name"] = method["name"]
    data = dict(data)
    data["method"] = new
    return data


def _yaml_words(data: dict[str, Any]) -> None:
    """YAML 1.1 reads an unquoted ``off`` / ``on`` (also ``no`` / ``yes``) as a boolean: give it back as the
    word where a field's documented choices are words (``model.teacher_cache: off``)."""
    import typing

    for section, cls in SECTIONS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        hints = typing.get_type_hints(cls)
        for key, value in list(values.items()):
            if not isinstance(value, bool) or key not in hints:
                continue
            choices = _literal_words(hints[key])
            word = {False: "off", True: "on"}[value]
            if word in choices and not _accepts_bool(hints[key]):
                values[key] = word


def _literal_words(tp) -> set:
    import typing

    if typing.get_origin(tp) is typing.Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str)}
    return {w for arg in typing.get_args(tp) for w in _literal_words(arg)}


def _accepts_bool(tp) -> bool:
    import typing

    return tp is bool or any(_accepts_bool(a) for a in typing.get_args(tp) if typing.get_origin(tp) is not typing.Literal)


def config_from_dict(
    data: dict[str, Any],
    *,
    marks: dict[str, str] | None = None,
    origin: str = "config",
    overrides: list[str] | tuple[str, ...] = (),
    check_files: bool = True,
) -> DwakdConfig:
    """Build and validate a :class:`DwakdConfig` from plain data (raises ConfigError listing every problem)."""
    import copy

    marks = dict(marks or {})
    data = apply_overrides(copy.deepcopy(data or {}), list(overrides), marks)
    _yaml_words(data)
    problems = Problems(marks, origin)
    data = _split_method(data, marks, problems)
    cfg = build_dataclass(DwakdConfig, data, "", problems)
    if not isinstance(cfg.method, MethodConfig):  # a wrong-typed section was reported; keep going
        cfg.method = MethodConfig()
    problems.raise_if_any()
    cfg.__dict__["_sources"] = marks
    cfg.__dict__["_origin"] = origin
    if cfg.output_dir is None:
        stem = Path(origin).stem if origin.endswith((".yaml", ".yml")) else "run"
        cfg.output_dir = str(Path("runs") / stem)
    validate_config(cfg, problems, check_files=check_files)
    problems.raise_if_any()
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, check_files: bool = True) -> DwakdConfig:
    """Read ``path`` (YAML), apply ``key.sub=value`` overrides, and validate everything that needs no model.

    Errors name the key and where it was written (``file:line`` or the override); unknown keys
    come with a suggestion; all problems are reported at once.
    """
    data, marks = read_yaml(path)
    return config_from_dict(data, marks=marks, origin=str(path), overrides=overrides, check_files=check_files)


def where(cfg: DwakdConfig, key: str) -> str:
    """Where ``key`` (dotted) was set: ``file:line``, the override, or the config file when defaulted."""
    problems = Problems(getattr(cfg, "_sources", {}), getattr(cfg, "_origin", "config"))
    return problems.where(key)


def config_to_dict(cfg: DwakdConfig) -> dict[str, Any]:
    """The resolved config as plain data; ``method`` is written flat (``name`` + options)."""
    out = dataclass_to_dict(cfg)
    method = out.pop("method")
    out["method"] = {"name": method["name"], **method["options"]}
    order = ["output_dir", "model", "data", "method", "train"]
    return {k: out[k] for k in order}


def dump_config(cfg: DwakdConfig) -> str:
    """The resolved config as YAML text (loads back to an equal config)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)

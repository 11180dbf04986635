"""The student: a loaded or built model, optionally with LoRA adapters and gradient checkpointing.

Built students (``model.build``) are random-init models with their own tokenizer trained on the
training texts; they are cached under ``$DWAKD_HOME/students/<key>`` (or
``model.build.cache_dir``), keyed by a hash of the build block and of those texts, and written
atomically so reruns and resumed runs reuse exactly the same student.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from dwakd.config import BuildStudentConfig, ModelConfig
from dwakd.errors import ConfigError
from dwakd.models import StudentSpec, build_student, load_model
from dwakd.models.home import atomic_directory, dwakd_home

log = logging.getLogger(__name__)

_MARKER = "dwakd_built_student.json"


def built_student_key(build: BuildStudentConfig, texts: Sequence[str]) -> str:
    """A 16-hex-digit key from the build block (minus ``cache_dir``) and the training texts."""
    h = hashlib.sha256()
    spec = {k: v for k, v in dataclasses.asdict(build).items() if k != "cache_dir"}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    return h.hexdigest()[:16]


def ensure_built_student(build: BuildStudentConfig, texts: Sequence[str]) -> Path:
    """Return the directory of the built student for ``texts``, building it once if needed."""
    if not texts:
        raise ConfigError("model.build needs training texts to train the student's tokenizer, and there are none")
    key = built_student_key(build, texts)
    root = Path(build.cache_dir).expanduser() if build.cache_dir else dwakd_home() / "students"
    out = root / key
    if (out / _MARKER).is_file():
        return out
    spec = StudentSpec(
        family=build.family, hidden_size=build.hidden_size, num_layers=build.num_layers,
        num_heads=build.num_heads, intermediate_size=build.intermediate_size,
        max_positions=build.max_positions, tokenizer_kind=build.tokenizer_kind,
        vocab_size=build.vocab_size, add_bos=build.add_bos, tie_embeddings=build.tie_embeddings,
        seed=build.seed,
    )
    log.info("building a %s student (hidden %d, %d layers, vocab %d) into %s", build.family,
             build.hidden_size, build.num_layers, build.vocab_size, out)
    with atomic_directory(out) as tmp:
        build_student(spec, texts, tmp)
        (tmp / _MARKER).write_text(json.dumps({"key": key, "spec": dataclasses.asdict(spec), "n_texts": len(texts)}, indent=2))
    return out


def apply_lora(model: torch.nn.Module, cfg: ModelConfig):
    """Wrap ``model`` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = cfg.lora
    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ConfigError(f"model.lora: peft could not adapt this student: {e}") from e


def load_student(spec: str, cfg: ModelConfig):
    """Load the student for training: dtype, LoRA, gradient checkpointing, ``use_cache`` off."""
    model = load_model(spec, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = apply_lora(model, cfg)
    model.train()
    return model


def is_lora(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def count_parameters(module: torch.nn.Module | None) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts (shared tensors counted once)."""
    if module is None:
        return 0, 0
    trainable = frozen = 0
    for p in module.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen

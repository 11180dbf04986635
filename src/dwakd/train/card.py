"""What ``final/`` holds besides the weights: the run config, a ``huggingface_hub`` model card, a portable
adapter config; and the optional upload to the hub (``train.push_to_hub``).

- ``config.yaml``: the resolved run config (as in the run directory).
- ``README.md``: :class:`huggingface_hub.ModelCard` with :class:`~huggingface_hub.ModelCardData`:
  ``base_model`` (the student's hub model, when it has one), ``datasets`` (hub datasets used),
  ``license`` (``train.license``; ``other`` when not set), ``tags``, and ``eval_results`` (the dev loss at
  the end of training; ``dwakd eval`` adds its ROUGE-L per test set with :func:`add_eval_results`).
- ``adapter/adapter_config.json`` (LoRA): ``base_model_name_or_path`` is the student as the user named
  it (hub name, path, or the alias's hub model), never a path into ``$DWAKD_HOME``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dwakd.config import DwakdConfig, dump_config
from dwakd.config.inputs import looks_like_local

log = logging.getLogger(__name__)

TAGS = ["dwakd", "knowledge-distillation", "cross-tokenizer-distillation"]


def _alias_hub_id(spec: str) -> str | None:
    from dwakd.models.aliases import ALIASES

    alias = ALIASES.get(str(spec).lower())
    return alias.description.split(" ", 1)[0] if alias is not None else None


def _hub_model(spec: str | None) -> str | None:
    """The hub id of a model spec, or None (local path, built student)."""
    if not spec:
        return None
    hub = _alias_hub_id(spec)
    if hub:
        return hub
    if Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        return None
    return spec


def portable_base(cfg: DwakdConfig) -> str | None:
    """``base_model_name_or_path`` for a LoRA adapter: the student as the user named it (alias -> hub id)."""
    spec = cfg.model.student
    if spec is None:
        return None
    return _alias_hub_id(spec) or spec


def fix_adapter_config(adapter_dir: Path, cfg: DwakdConfig) -> None:
    path = Path(adapter_dir) / "adapter_config.json"
    base = portable_base(cfg)
    if not path.is_file() or base is None:
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _student_text(cfg: DwakdConfig) -> str:
    if cfg.model.student:
        return f"`{cfg.model.student}`"
    b = cfg.model.build
    if b is None:
        return "?"
    return (f"random-init {b.family} (hidden {b.hidden_size}, {b.num_layers} layers) with its own {b.tokenizer_kind} "
            f"tokenizer (vocab {b.vocab_size} requested)")


def build_card(cfg: DwakdConfig, *, steps: int, examples: int, metrics: dict, best_checkpoint: str | None,
               lora: bool, vocab_size: int | None = None):
    """The model card of ``final/`` (a :class:`huggingface_hub.ModelCard`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    datasets = [d for d in (cfg.data.train, cfg.data.dev) if d and not looks_like_local(d) and not Path(d).exists()]
    evals = []
    if metrics.get("best_dev_loss") is not None:
        evals.append(EvalResult(task_type="text-generation", dataset_type=cfg.data.dev or str(cfg.data.train),
                                dataset_name="dev set" + ("" if cfg.data.dev else f" ({cfg.data.dev_fraction:g} of train)"),
                                metric_type="loss", metric_name="dev loss (distillation objective per response token)",
                                metric_value=round(float(metrics["best_dev_loss"]), 4)))
    license_ = getattr(cfg.train, "license", None)
    data = ModelCardData(
        base_model=_hub_model(cfg.model.student), datasets=datasets or None, license=license_ or "other",
        library_name="peft" if lora else "transformers", pipeline_tag="text-generation",
        tags=TAGS + [cfg.method.name], model_name=Path(str(cfg.output_dir)).name,
        eval_results=evals or None,
    )
    method_opts = ", ".join(f"{k}={v}" for k, v in cfg.method.options.items()) or "defaults"
    lines = [
        f"# {Path(str(cfg.output_dir)).name}: a student distilled with dwakd", "",
        f"- teacher: `{cfg.model.teacher}`",
        f"- student: {_student_text(cfg)}" + (" with LoRA (merged here; the adapter is in `adapter/`)" if lora else ""),
        f"- method: `{cfg.method.name}` ({method_opts})",
        f"- data: `{cfg.data.train}` ({examples} training examples); dev: "
        f"`{cfg.data.dev or f'{cfg.data.dev_fraction:g} of train'}`",
        f"- optimizer steps: {steps} (batch {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} per process, "
        f"lr {cfg.train.lr:g}, projector lr {cfg.train.projector_lr:g})",
    ]
    if vocab_size is not None:
        lines.append(f"- tokenizer vocabulary: {vocab_size} tokens")
    for k, v in metrics.items():
        lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    if best_checkpoint:
        lines.append(f"- best checkpoint (dev loss): `{best_checkpoint}`")
    if not license_:
        lines.append("- license: not set (`train.license`); the teacher's, the student's and the data's licences apply")
    lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained('<this directory>')",
              "tokenizer = AutoTokenizer.from_pretrained('<this directory>')", "```", "",
              "The resolved run configuration is `config.yaml` (here); the metrics are in the run directory's "
              "`metrics.jsonl`.", ""]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def write_final_extras(final_tmp: Path, cfg: DwakdConfig, *, steps: int, examples: int, metrics: dict,
                       best_checkpoint: str | None, lora: bool, vocab_size: int | None = None) -> None:
    """config.yaml, README.md (model card) and the portable adapter config, into ``final_tmp``."""
    final_tmp = Path(final_tmp)
    (final_tmp / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    card = build_card(cfg, steps=steps, examples=examples, metrics=metrics, best_checkpoint=best_checkpoint,
                      lora=lora, vocab_size=vocab_size)
    card.save(final_tmp / "README.md")
    if lora:
        fix_adapter_config(final_tmp / "adapter", cfg)


def add_eval_results(model_dir: str | Path, results: dict) -> bool:
    """Add ``dwakd eval`` ROUGE-L (mean over seeds, per test set) to a dwakd model card; False when none."""
    from huggingface_hub import EvalResult, ModelCard

    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return False
    card = ModelCard.load(path)
    if "dwakd" not in (card.data.tags or []):
        return False
    evals = [e for e in (card.data.eval_results or []) if e.metric_type != "rougeL"
             or e.dataset_name not in results.get("sets", {})]
    for name, entry in results.get("sets", {}).items():
        evals.append(EvalResult(task_type="text-generation", dataset_type=entry.get("file", name), dataset_name=name,
                                metric_type="rougeL", metric_name="ROUGE-L (mean over sampling seeds)",
                                metric_value=round(entry["rougeL"]["mean"], 2)))
    card.data.eval_results = evals
    card.data.model_name = card.data.model_name or Path(model_dir).name
    card.save(path)
    return True


def push_final(final_dir: Path, cfg: DwakdConfig, api=None) -> str:
    """Upload ``final/`` to ``train.hub_model_id`` (default: the run directory's name) with ``HfApi``."""
    from huggingface_hub import HfApi

    from dwakd.errors import DwakdError

    api = api or HfApi()
    repo_id = cfg.train.hub_model_id or Path(str(cfg.output_dir)).name
    try:
        url = api.create_repo(repo_id, private=cfg.train.hub_private, exist_ok=True, repo_type="model")
        repo_id = getattr(url, "repo_id", None) or repo_id
        api.upload_folder(folder_path=str(final_dir), repo_id=repo_id, repo_type="model",
                          commit_message=f"dwakd: {cfg.method.name} student from {cfg.model.teacher}")
    except Exception as e:  # noqa: BLE001 - network/auth errors of many kinds; the run itself is complete
        raise DwakdError(f"the run completed ({final_dir}), but push_to_hub to '{repo_id}' failed: "
                         f"{type(e).__name__}: {e}. Retry with: huggingface-cli upload {repo_id} {final_dir}") from e
    log.info("pushed %s to the hub repository %s", final_dir, repo_id)
    return repo_id

"""The rule for a config that differs on ``--resume``: refuse, listing the keys, unless told to apply them.

A resumed run compares its resolved config with the one the checkpoint was written with
(``<checkpoint>/config.yaml``, or ``<run>/config.yaml`` for checkpoints of older versions):

- keys that do not change what is trained (:data:`FREE`: ``train.stop_at_step``, ``output_dir``,
  logging and trackers) may differ freely;
- keys that define the trained model (:data:`FIXED`: teacher, student, LoRA, dtypes, method name)
  can never change on resume: the checkpoint's weights belong to the recorded ones;
- any other difference is refused, listing every key with its recorded and new value, unless
  ``--allow-config-change`` is given: then the new values are applied (optimizer hyper-parameters
  and the schedule's shape are written into the restored optimizer and scheduler, everything
  else is read from the config anyway), the change is logged as a ``config_change`` event in
  ``metrics.jsonl``, and ``config.yaml`` is rewritten with the new values once the checkpoint has
  loaded. A resume that fails leaves the recorded ``config.yaml`` as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from dwakd.config import DwakdConfig, dump_config
from dwakd.errors import ConfigError
from dwakd.train.checkpoint import STATE_FILE, TrainerState

log = logging.getLogger(__name__)

FREE = ("output_dir", "train.stop_at_step", "train.log_every", "train.trackers", "train.eval_batch_size")
FIXED = ("model.teacher", "model.student", "model.build", "model.lora", "model.dtype", "method.name")


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _matches(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def recorded_config(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The config a checkpoint was written with (its own copy, else its run's ``config.yaml``)."""
    checkpoint = Path(checkpoint)
    for path in (checkpoint / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, yaml.YAMLError):
                continue
            if isinstance(data, dict):
                return data, path
    return None, None


def config_changes(cfg: DwakdConfig, checkpoint: Path) -> tuple[dict[str, tuple], Path | None]:
    """``{dotted key: (recorded, new)}`` for every key that differs and matters (FREE keys left out)."""
    old, path = recorded_config(checkpoint)
    if old is None:
        return {}, None
    new = yaml.safe_load(dump_config(cfg))
    a, b = _flat(old), _flat(new)
    changes = {}
    for key in sorted(set(a) | set(b)):
        if _matches(key, FREE):
            continue
        if a.get(key) != b.get(key):
            changes[key] = (a.get(key), b.get(key))
    return changes, path


def check_config_change(cfg: DwakdConfig, checkpoint: Path, *, allow: bool) -> dict[str, tuple]:
    """Apply the rule (module docstring); returns the changes that will be applied (empty if none)."""
    changes, path = config_changes(cfg, checkpoint)
    if not changes:
        return {}
    listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    fixed = [k for k in changes if _matches(k, FIXED)]
    if fixed:
        raise ConfigError(
            f"--resume {checkpoint}: the config changes {', '.join(fixed)}, which the checkpoint's weights depend on "
            f"(recorded in {path}). These cannot change on resume; start a new run instead. All changes: {listing}")
    if not allow:
        raise ConfigError(
            f"--resume {checkpoint}: the config differs from the one recorded in {path}: {listing}. Resume with "
            f"the recorded values, or add --allow-config-change to apply the new ones from this step on")
    log.warning("resuming with a changed config (--allow-config-change): %s", listing)
    return changes


def apply_optimizer_config(optimizer, scheduler, cfg: DwakdConfig) -> None:
    """Write the config's lr / projector_lr / weight decay / AdamW betas and eps and the schedule's
    warm-up and floor into an optimizer and scheduler restored from a checkpoint (they carry the
    recorded values), and set the current learning rates accordingly."""
    from dwakd.train.optim import CosineWithWarmup, warmup_steps_for

    t = cfg.train
    sched = getattr(scheduler, "scheduler", scheduler)
    groups = optimizer.param_groups
    for i, g in enumerate(groups):
        name = str(g.get("name", ""))
        base = t.projector_lr if name.startswith("projectors") else t.lr
        g["initial_lr"] = base
        if hasattr(sched, "base_lrs"):
            sched.base_lrs[i] = base
        if not name.endswith("no_decay"):
            g["weight_decay"] = t.weight_decay
        g["betas"] = (t.adam_beta1, t.adam_beta2)
        g["eps"] = t.adam_eps
    for fn in getattr(sched, "lr_lambdas", []):
        if isinstance(fn, CosineWithWarmup):
            fn.warmup_steps = max(0, int(warmup_steps_for(t, fn.total_steps)))
            fn.min_ratio = float(t.min_lr_ratio)
    if hasattr(sched, "lr_lambdas") and hasattr(sched, "base_lrs"):
        step = sched.last_epoch
        for g, base, fn in zip(groups, sched.base_lrs, sched.lr_lambdas):
            g["lr"] = base * fn(step)
        sched._last_lr = [g["lr"] for g in groups]


def check_resume(path: Path, plan, total_steps: int) -> TrainerState:
    """Refuse a checkpoint whose data order or schedule this run would not continue exactly."""
    st = TrainerState.from_file(Path(path) / STATE_FILE)
    if st.global_batch != plan.global_batch:
        raise ConfigError(
            f"checkpoint {path} was written with a global batch of {st.global_batch} examples "
            f"(batch_size x grad_accum x processes); this run has {plan.global_batch}. Resume with the same "
            f"train.batch_size x train.grad_accum x number of processes so the data order continues exactly")
    if st.total_steps != total_steps:
        raise ConfigError(f"checkpoint {path} belongs to a schedule of {st.total_steps} steps; this config gives "
                          f"{total_steps} (train.epochs / train.max_steps changed)")
    return st

"""``train(cfg)``: the whole run, in the order that keeps failures cheap and honest.

1. method name/options (registry), output-dir guard, ``--resume`` target — nothing loaded yet;
2. data: records, tokenizers (pad/EOS policy), built student (cached), encoding — nothing written yet;
3. run directory (config, environment, ``status.json: running``), models, optimizer, prepare;
4. the loop; ``status.json`` becomes ``completed`` (with ``final/``) or ``failed`` with the error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dwakd.config import DwakdConfig
from dwakd.train.checkpoint import register_weight_hooks, resolve_resume
from dwakd.train.checks import check_method
from dwakd.train.data import prepare_data
from dwakd.train.engine import build_engine, check_backend, make_accelerator
from dwakd.train.loop import Trainer, TrainResult, check_resume, total_steps_for
from dwakd.train.rundir import RunDir, check_output_dir
from dwakd.train.sampler import StepPlan
from dwakd.train.student import ensure_built_student

log = logging.getLogger(__name__)


def prepare(cfg: DwakdConfig, accelerator, method_cls):
    """Data and the step plan (shared by :func:`train` and the dry run)."""

    def build_dir(texts):
        with accelerator.main_process_first():
            return ensure_built_student(cfg.model.build, texts)

    data = prepare_data(cfg, method_cls, build_student_dir=build_dir)
    plan = StepPlan(
        n_examples=len(data.train), batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
        world_size=accelerator.num_processes, rank=accelerator.process_index, seed=cfg.train.seed,
    )
    if plan.steps_per_epoch == 0:
        from dwakd.errors import DataError

        raise DataError(f"{len(data.train)} training examples cannot be shared by {accelerator.num_processes} processes")
    return data, plan


def train(cfg: DwakdConfig, *, resume: str | None = None) -> TrainResult:
    """Train the student described by ``cfg``; ``resume``: None, ``"auto"`` or a checkpoint path."""
    method_cls = check_method(cfg)
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume)
    resume_path = resolve_resume(run_dir, resume)
    accelerator = make_accelerator(cfg)
    check_backend(accelerator, cfg, method_cls)
    data, plan = prepare(cfg, accelerator, method_cls)
    total = total_steps_for(cfg, plan)
    if cfg.train.stop_at_step and cfg.train.stop_at_step > total:
        from dwakd.errors import ConfigError

        raise ConfigError(f"train.stop_at_step ({cfg.train.stop_at_step}) is beyond the {total} steps of this schedule")
    if resume_path is not None:
        check_resume(resume_path, plan, total)

    accelerator.wait_for_everyone()
    rd = RunDir(run_dir, main=accelerator.is_main_process)
    rd.start(cfg, extra={"processes": accelerator.num_processes, "device": str(accelerator.device),
                         "mixed_precision": accelerator.mixed_precision, "data": data.report,
                         "total_steps": total, "steps_per_epoch": plan.steps_per_epoch},
             resumed_from=str(resume_path) if resume_path else None)
    try:
        engine = build_engine(cfg, data, accelerator, method_cls, total)
        register_weight_hooks(accelerator)
        if cfg.train.trackers:
            from dwakd.train.loop import flat_config

            accelerator.init_trackers(run_dir.name, config=flat_config(cfg))
        trainer = Trainer(cfg, accelerator, data, engine, plan, total, run_dir)
        if resume_path is not None:
            trainer.resume(resume_path)
        else:
            trainer.metrics.truncate_after(-1)  # a fresh start (e.g. --resume auto without a checkpoint)
        result = trainer.fit()
        if result.final_dir is not None:
            rd.status("completed", final=str(result.final_dir), **result.metrics)
        else:
            rd.status("stopped", checkpoint=str(result.last_checkpoint), resume="dwakd train CONFIG --resume auto",
                      **result.metrics)
        return result
    except KeyboardInterrupt:
        rd.status("interrupted", resume="dwakd train CONFIG --resume auto")
        raise
    except BaseException as e:
        rd.status("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if cfg.train.trackers:
            accelerator.end_training()

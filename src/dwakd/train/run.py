"""``train(cfg)``: the whole run, in the order that keeps failures cheap and honest.

1. method name/options (registry), output-dir guard, ``--resume`` target (the newest checkpoint that
   verifies) and the config-change rule — nothing loaded yet;
2. the launch check (the launcher's processes are Accelerate's), data: records, tokenizers (pad/EOS
   policy), built student (cached), encoding — nothing written yet;
3. the run-directory lock; leftovers of killed writers are cleared and the checks repeated under it;
   run directory (``status.json: running``, config, environment), models, optimizer, prepare;
4. the loop; ``status.json`` becomes ``completed`` (with ``final/``), ``stopped``, ``interrupted``
   (SIGINT/SIGTERM, with the checkpoint to resume from) or ``failed`` with the error.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from dwakd.config import DwakdConfig
from dwakd.errors import RunLockedError, StorageError, TrainingInterrupted
from dwakd.fsio import storage_reason
from dwakd.train.checkpoint import CheckpointManager, register_weight_hooks, resolve_resume
from dwakd.train.checks import check_method
from dwakd.train.data import prepare_data
from dwakd.train.engine import build_engine, check_backend, check_launch, make_accelerator
from dwakd.train.loop import Trainer, TrainResult, total_steps_for
from dwakd.train.resume_rule import apply_optimizer_config, check_config_change, check_resume
from dwakd.train.rundir import RunDir, RunLock, check_output_dir, clean_stale_temps
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


def _lock_run_dir(accelerator, run_dir: Path) -> RunLock | None:
    """Take the run-directory lock on the main process; every process learns whether it was granted."""
    lock, error = None, None
    if accelerator.is_main_process:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except RunLockedError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error is not None:
        raise RunLockedError(error)
    return lock


def _status_for(rd: RunDir, e: BaseException, trainer) -> None:
    """Leave a status that says what happened (best effort: the disk may be full)."""
    resume = "dwakd train CONFIG --resume auto"
    try:
        if isinstance(e, TrainingInterrupted):
            rd.status("interrupted", signal=signal.Signals(e.signum).name, checkpoint=str(e.checkpoint), resume=resume)
        elif isinstance(e, KeyboardInterrupt):
            last = trainer.ckpt.latest() if trainer is not None else None
            rd.status("interrupted", signal="SIGINT", checkpoint=str(last) if last else None, resume=resume)
        elif isinstance(e, StorageError):
            rd.status("failed", error=str(e), cause="storage")
        else:
            rd.status("failed", error=f"{type(e).__name__}: {e}")
    except OSError as err:  # never hide the original error behind a failed status write
        log.error("could not write %s/status.json: %s", rd.path, err)


def train(cfg: DwakdConfig, *, resume: str | None = None, allow_config_change: bool = False) -> TrainResult:
    """Train the student described by ``cfg``; ``resume``: None, ``"auto"`` or a checkpoint path;
    ``allow_config_change``: apply config values that differ from the checkpoint's (see
    :mod:`dwakd.train.resume_rule`) instead of refusing them."""
    method_cls = check_method(cfg)
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume)
    resume_path = resolve_resume(run_dir, resume)
    if resume_path is not None:
        check_config_change(cfg, resume_path, allow=allow_config_change)
    accelerator = make_accelerator(cfg)
    check_launch(accelerator)
    check_backend(accelerator, cfg, method_cls)
    data, plan = prepare(cfg, accelerator, method_cls)
    total = total_steps_for(cfg, plan)
    if cfg.train.stop_at_step and cfg.train.stop_at_step > total:
        from dwakd.errors import ConfigError

        raise ConfigError(f"train.stop_at_step ({cfg.train.stop_at_step}) is beyond the {total} steps of this schedule")
    if resume_path is not None:
        check_resume(resume_path, plan, total)

    accelerator.wait_for_everyone()
    lock = _lock_run_dir(accelerator, run_dir)
    try:
        return _train_locked(cfg, accelerator, data, plan, total, run_dir, method_cls, resume, allow_config_change)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg, accelerator, data, plan, total, run_dir, method_cls, resume, allow_config_change):
    # Under the lock: clear what killed writers left, and look again (another run may have finished meanwhile).
    if accelerator.is_main_process:
        for what in clean_stale_temps(run_dir) + CheckpointManager(run_dir, accelerator).recover():
            log.warning("%s: %s", run_dir, what)
    accelerator.wait_for_everyone()
    check_output_dir(run_dir, resume)
    resume_path = resolve_resume(run_dir, resume)
    changes = {}
    if resume_path is not None:
        changes = check_config_change(cfg, resume_path, allow=allow_config_change)
        check_resume(resume_path, plan, total)
    # every process has looked before the main one marks the run as running (a slower rank would
    # otherwise find this very launch's status and refuse it)
    accelerator.wait_for_everyone()

    rd = RunDir(run_dir, main=accelerator.is_main_process)
    rd.start(cfg, extra={"processes": accelerator.num_processes, "device": str(accelerator.device),
                         "mixed_precision": accelerator.mixed_precision, "data": data.report,
                         "total_steps": total, "steps_per_epoch": plan.steps_per_epoch},
             resumed_from=str(resume_path) if resume_path else None, write_config=resume_path is None)
    trainer = None
    try:
        engine = build_engine(cfg, data, accelerator, method_cls, total)
        register_weight_hooks(accelerator)
        if cfg.train.report_to:
            from dwakd.train.loop import flat_config

            accelerator.init_trackers(run_dir.name, config=flat_config(cfg))
        trainer = Trainer(cfg, accelerator, data, engine, plan, total, run_dir)
        if resume_path is not None:
            trainer.resume(resume_path)
            if changes:
                apply_optimizer_config(engine.optimizer, engine.scheduler, cfg)
                trainer.metrics.log(trainer.state.global_step, "event", {
                    "event": "config_change", "changes": {k: [old, new] for k, (old, new) in changes.items()}})
            rd.write_config(cfg)  # the resume succeeded: record the config it continues with
        else:
            trainer.metrics.truncate_after(-1)  # a fresh start (e.g. --resume auto without a checkpoint)
        result = trainer.fit()
        if result.final_dir is not None:
            rd.status("completed", final=str(result.final_dir), **result.metrics)
            if result.state.bad_steps_total:
                log.warning("%d of %d optimizer steps were skipped for non-finite values (see the bad_step events "
                            "in %s)", result.state.bad_steps_total, total, run_dir / "metrics.jsonl")
        else:
            rd.status("stopped", checkpoint=str(result.last_checkpoint), resume="dwakd train CONFIG --resume auto",
                      **result.metrics)
        return result
    except BaseException as e:
        reason = None if isinstance(e, StorageError) else storage_reason(e, run_dir)
        if reason is not None:  # e.g. metrics.jsonl or status.json on a full disk
            err = StorageError(f"{reason} while writing to {run_dir} ({type(e).__name__}: {e}); the checkpoints "
                               f"are intact: free space and continue with --resume auto")
            _status_for(rd, err, trainer)
            raise err from e
        _status_for(rd, e, trainer)
        raise
    finally:
        if cfg.train.report_to:
            accelerator.end_training()

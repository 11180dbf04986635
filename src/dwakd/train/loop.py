"""The training loop: exact token normalisation, non-finite guards, evaluation, checkpoints, final student.

Loss normalisation (METHOD.md section 5). An optimizer step on W processes with micro-batches m
minimises ``sum_m LossTerms(m).total() / N`` where N is the number of student response tokens of
the *whole* step (every micro-batch of every process). The trainer collects the step's
micro-batches first, all-reduces their token counts to get N, then back-propagates each
micro-batch's ``total * W / N``: DDP averages gradients over the W processes, so the applied
gradient is exactly ``d/dθ sum_m total(m) / N`` however the step's examples are split into
micro-batches and processes.

DeepSpeed ZeRO: the engine accumulates, reduces, clips and steps inside the backward of the
micro-batch it is told is the accumulation boundary. N is known before the first backward (the
step plan gives every micro-batch up front), so each backward gets ``total * W / N`` with
``scale_wrt_gas=False`` and only the step's last micro-batch is the boundary: the same update.
The non-finite check is made before that last backward (see below).

Non-finite values: when any loss term, the student's or the teacher's logits or hidden states
(on any process; methods treat non-finite rows like padding, so a NaN model would otherwise give
a finite, zero loss) or the gradient norm is not finite, the step's gradients are dropped and the
optimizer does not step; the data position and the learning rate schedule still advance (so a
skipped step never repeats its batch). ``train.max_bad_steps`` consecutive skips stop the run with
:class:`NonFiniteLossError`. Trained weights that became non-finite (e.g. an absurd learning rate)
stop the run at once, and weights are checked finite before every checkpoint and before
``final/``: a run never completes, or saves a "good" checkpoint, with NaN weights. Under DeepSpeed the step is
decided before the boundary's backward and a bad step's boundary loss is multiplied by NaN, so
DeepSpeed's own non-finite-gradient skip drops it (its gradient norm reads inf, also marking it bad).

Signals: SIGINT and SIGTERM (how schedulers preempt jobs) set a flag; at the next step boundary
(agreed by all processes) the trainer writes a checkpoint and raises
:class:`~dwakd.errors.TrainingInterrupted` (status ``interrupted``). A second SIGINT interrupts at
once (``KeyboardInterrupt``).

The step bookkeeping (term sums and their host sync, step metrics, state counters, logging
intervals, best-dev tracking) lives in :mod:`dwakd.train._accounting`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger

from dwakd.config import DwakdConfig, dump_config
from dwakd.errors import DwakdError, TrainingInterrupted
from dwakd.fsio import atomic_directory, fsync_file
from dwakd.train._accounting import (
    StepSums,
    TrainInterval,
    add_best,
    advance_state,
    bad_step_reasons,
    flat_config,  # noqa: F401  (re-exported: dwakd.train.loop.flat_config)
    run_summary,
    step_metrics,
    token_counts,
    total_steps_for,  # noqa: F401  (re-exported: dwakd.train.loop.total_steps_for)
    would_be_best,
)
from dwakd.train.card import push_final, write_final_extras
from dwakd.train.checkpoint import (
    CheckpointManager,
    TrainerState,
    nonfinite_parameters,
    student_state_dict,
)
from dwakd.train.console import console, dev_line, progress_postfix
from dwakd.train.engine import Engine, is_deepspeed
from dwakd.train.guards import StopFlag, storage_errors
from dwakd.train.metrics import MetricsWriter, peak_memory_mb
from dwakd.train.optim import current_lrs
from dwakd.train.resume_rule import check_resume  # noqa: F401  (re-exported: dwakd.train.loop.check_resume)
from dwakd.train.sampler import StepPlan, eval_plan
from dwakd.train.student import is_lora

log = get_logger(__name__)  # accelerate.logging: the main process logs (every process computes the same)


class NonFiniteLossError(DwakdError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient, or the weights became non-finite."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    final_dir: Path | None
    state: TrainerState
    last_checkpoint: Path | None
    metrics: dict


class Trainer:
    """Drives one run. All processes run the same code; only the main process writes files."""

    def __init__(self, cfg: DwakdConfig, accelerator, data, engine: Engine, plan: StepPlan, total_steps: int, run_dir: Path):
        self.cfg = cfg
        self.acc = accelerator
        self.data = data
        self.engine = engine
        self.model = engine.model
        self.plan = plan
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        t = cfg.train
        self.ckpt = CheckpointManager(self.run_dir, accelerator, keep_last_n=t.keep_last_n, keep_best_n=t.keep_best_n)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", accelerator, trackers=bool(t.report_to))
        self.state = TrainerState(
            total_steps=total_steps, steps_per_epoch=plan.steps_per_epoch, world_size=accelerator.num_processes,
            global_batch=plan.global_batch, seed=t.seed,
        )
        self._checked_n_tokens = False
        self._interval = TrainInterval()
        self.last_checkpoint: Path | None = None
        self._stop = StopFlag()
        self._stop_agreed = False

    # ------------------------------------------------------------------ resume
    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, RNG and counters (compatibility was checked by :func:`check_resume`)."""
        st = self.ckpt.load(path)
        st.world_size = self.acc.num_processes
        self.state = st
        self.metrics.truncate_after(st.global_step)
        self.metrics.log(st.global_step, "event", {"event": "resume", "checkpoint": str(path)})
        log.info("resumed from %s at step %d of %d", path, st.global_step, self.total_steps)

    # ------------------------------------------------------------------ one optimizer step
    def _reduce(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float64).to(self.acc.device)
        return self.acc.reduce(t, "sum") if self.acc.num_processes > 1 else t

    def train_step(self, step: int) -> dict:
        """Run optimizer step ``step`` (0-based). Returns its metrics (``bad`` set when it was skipped)."""
        acc, t = self.acc, self.cfg.train
        t0 = time.perf_counter()
        batches = [self.data.collate(idx, "train") for idx in self.plan.micro_batches(step)]
        counts = tuple(float(x) for x in self._reduce(token_counts(batches)).tolist())
        n_tok = counts[0]
        if n_tok <= 0:
            raise DwakdError(f"step {step}: the batch has no response tokens (the data layer should have dropped such records)")
        self.engine.method.set_progress(step, self.total_steps)
        scale = acc.num_processes / n_tok
        sums = StepSums(acc.device, torch.float32 if acc.device.type == "mps" else torch.float64)
        ds = is_deepspeed(acc)
        for i, batch in enumerate(batches):
            batch = batch.to(acc.device)
            sync = i == len(batches) - 1
            if ds:  # DeepSpeed reduces and steps inside the backward of its accumulation boundary
                acc.gradient_state._set_sync_gradients(sync)
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                teacher_out = self.engine.teacher_runner(batch)
                terms = self.model(batch, teacher_out)
                total = terms.total()
                sums.add(terms, total, getattr(self.engine.module, "nonfinite_inputs", None))
                self._check_n_tokens(terms, batch)
                if ds and sync:
                    # Decide the step before the engine steps: a non-finite term on any process makes
                    # the boundary's gradient NaN, so DeepSpeed's own non-finite check skips the step.
                    local, stat_means, bad_terms = sums.host_sync()
                    reduced = self._reduce(local + [float(bool(bad_terms)), float(self._stop.signum or 0)])
                    if reduced[-2].item() > 0:
                        total = total * float("nan")
                if ds:  # the step's N is already in ``scale``: no division by DeepSpeed's accumulation
                    acc.backward(total * scale, scale_wrt_gas=False)
                else:
                    acc.backward(total * scale)
        if not ds:
            local, stat_means, bad_terms = sums.host_sync()
            reduced = self._reduce(local + [float(bool(bad_terms)), float(self._stop.signum or 0)])
        self._stop_agreed = reduced[-1].item() > 0
        # all parameters (frozen ones have no gradient): accelerate's FSDP path needs the model's full list
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        bad = reduced[-2].item() > 0 or not math.isfinite(grad_norm)
        out = step_metrics(counts, grad_norm, reduced, sums.names, stat_means)
        out.update(current_lrs(self.engine.optimizer))
        if bad:
            self.engine.optimizer.zero_grad(set_to_none=True)
            out["bad"] = bad_step_reasons(bad_terms, grad_norm)
        else:
            self.engine.optimizer.step()
        self.engine.scheduler.step()
        self.engine.optimizer.zero_grad(set_to_none=True)
        out["step_time_s"] = time.perf_counter() - t0
        return out

    def _check_n_tokens(self, terms, batch) -> None:
        """Once per run: the method's ``n_tokens`` should be the batch's student response tokens."""
        if self._checked_n_tokens:
            return
        self._checked_n_tokens = True
        expected = int(batch.student.target_mask.sum())
        got = int(terms.n_tokens) if torch.is_tensor(terms.n_tokens) else int(terms.n_tokens)
        if got != expected:
            log.warning("method %s reports n_tokens=%d but the batch has %d student response tokens; the trainer "
                        "normalises by the batch count", self.cfg.method.name, got, expected)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Dev loss (token-normalised objective) and per-term values over the whole dev set, all processes."""
        if not self.data.dev:
            return {}
        eb = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        plan = eval_plan(len(self.data.dev), eb, self.acc.num_processes, self.acc.process_index)
        self.model.eval()
        names, sums = None, None
        try:
            for idx, counts in plan:
                batch = self.data.collate(idx, "dev").to(self.acc.device)
                terms = self.model(batch, self.engine.teacher_runner(batch))
                if names is None:
                    names = list(terms.terms)
                    sums = torch.zeros(len(names) + 2, dtype=torch.float64)
                flag = getattr(self.engine.module, "nonfinite_inputs", None)
                if counts:
                    poison = float("nan") if flag is not None and bool(flag) else 0.0  # NaN logits: no "0.0" dev loss
                    vals = [float(batch.student.target_mask.sum()), float(terms.total()) + poison]
                    vals += [float(terms.terms[n]) for n in names]
                    sums += torch.tensor(vals, dtype=torch.float64)
        finally:
            self.model.train()
        reduced = self._reduce(sums)
        n = reduced[0].item()
        out = {"dev/loss": reduced[1].item() / n, "dev/n_tokens": n}
        out.update({f"dev/{name}": reduced[2 + k].item() / n for k, name in enumerate(names)})
        return out

    # ------------------------------------------------------------------ the loop
    def _log_train(self, step: int, out: dict, force: bool = False) -> None:
        self._interval.add(out)
        if not (force or step % self.cfg.train.log_every == 0):
            return
        rec = self._interval.record(out)
        rec.update({
            "peak_mem_mb": peak_memory_mb(self.acc.device), "epoch": step / max(1, self.plan.steps_per_epoch),
            "bad_steps_total": self.state.bad_steps_total,
        })
        self.metrics.log(step, "train", rec)
        self._interval = TrainInterval()

    def fit(self) -> TrainResult:
        t, st = self.cfg.train, self.state
        stop = min(self.total_steps, t.stop_at_step or self.total_steps)
        spe = self.plan.steps_per_epoch
        if st.global_step == 0:
            self.metrics.log(0, "event", {"event": "start", "total_steps": self.total_steps, "steps_per_epoch": spe,
                                          "global_batch": self.plan.global_batch, "processes": self.acc.num_processes,
                                          **{f"params/{k}": v for k, v in self.engine.counts.items()}})
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=st.global_step, disable=not self.acc.is_main_process, desc="train", dynamic_ncols=True)
        try:
            with self._stop:
                self._loop(stop, spe, bar)
        finally:
            bar.close()
        final = self._finish(stop)
        return TrainResult(self.run_dir, final, self.state, self.last_checkpoint, self._summary())

    def _loop(self, stop: int, spe: int, bar) -> None:
        t, st = self.cfg.train, self.state
        while st.global_step < stop:
            step = st.global_step
            out = self.train_step(step)
            advance_state(st, self.plan, step, out)
            if "bad" in out:
                msg = (f"step {st.global_step}: non-finite {', '.join(out['bad'])}; step skipped "
                       f"({st.consecutive_bad_steps} in a row, limit train.max_bad_steps={t.max_bad_steps})")
                log.warning(msg)
                self.metrics.log(st.global_step, "event", {"event": "bad_step", "terms": out["bad"]})
                self._check_weights(f"after step {st.global_step}")
                if st.consecutive_bad_steps >= t.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{msg}. Stopping: the loss or its gradient was not finite for {st.consecutive_bad_steps} "
                        f"consecutive steps. Lower train.lr / train.projector_lr, check the data, or try "
                        f"train.bf16=false; the last good checkpoint is {self.ckpt.latest() or 'none'}")
            self._log_train(st.global_step, out, force=st.global_step == stop)
            if "bad" not in out:
                bar.set_postfix(progress_postfix(out), refresh=False)
            bar.update(1)
            self._after_step(st.global_step, stop, spe)
            if self._stop_agreed or (self.acc.num_processes == 1 and self._stop.signum is not None):
                self._interrupt(st.global_step)

    def _interrupt(self, gs: int) -> None:
        """SIGINT/SIGTERM: a checkpoint at this step boundary (unless one was just written), then stop."""
        signum = self._stop.signum or signal.SIGTERM
        if self.last_checkpoint is None or self.last_checkpoint.name != f"checkpoint-{gs}":
            self._save()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"{name} received: stopped after step {gs} with checkpoint {self.last_checkpoint}; "
                                  f"continue with --resume auto", signum=signum, checkpoint=self.last_checkpoint)

    def _check_weights(self, when: str) -> None:
        """Stop when a trained weight is NaN/inf (agreed over processes: FSDP shards differ)."""
        bad = nonfinite_parameters(self.model)
        if self._reduce([float(bool(bad))])[0].item() > 0:
            raise NonFiniteLossError(
                f"the trained weights are not finite {when} ({', '.join(bad) or 'on another process'}): every further "
                f"step would be skipped and nothing written would be usable. Lower train.lr / train.projector_lr "
                f"(or check train.max_grad_norm); the last good checkpoint is {self.ckpt.latest() or 'none'}")

    def _save(self) -> None:
        self._check_weights(f"at step {self.state.global_step} (checkpoint not written)")
        if self.acc.is_main_process and self.metrics.path.is_file():
            fsync_file(self.metrics.path)  # the metrics up to this checkpoint are on disk with it
        self.last_checkpoint = self.ckpt.save(self.state, self.model, self.engine.student, self.data.student_tokenizer,
                                              config_text=dump_config(self.cfg))

    def _after_step(self, gs: int, stop: int, spe: int) -> None:
        t, st = self.cfg.train, self.state
        epoch_end = gs % spe == 0
        st.dev_loss = None
        do_eval = bool(self.data.dev) and (
            (t.eval_every > 0 and gs % t.eval_every == 0) or (t.eval_every == 0 and epoch_end) or gs == self.total_steps)
        do_save = (t.save_every > 0 and gs % t.save_every == 0) or (t.save_every == 0 and epoch_end) or gs == stop
        if do_eval:
            ev = self.evaluate()
            st.dev_loss = ev["dev/loss"]
            self.metrics.log(gs, "eval", ev)
            console(self.acc, dev_line(gs, self.total_steps, ev))
            if math.isfinite(st.dev_loss):
                if would_be_best(st.best, t.keep_best_n, st.dev_loss):
                    do_save = True
                st.best = add_best(st.best, gs, st.dev_loss, t.keep_best_n)
            else:
                log.warning("step %d: the dev loss is not finite", gs)
                st.dev_loss = None
        if do_save:
            self._save()

    def _summary(self) -> dict:
        return run_summary(self.state, self.total_steps)

    def _merged_lora(self, student, adapter_dir: Path):
        """The student with its LoRA adapter merged in (a plain HF model).

        Single process / DDP: merge the trained model in place (training is over). FSDP: the
        wrapped modules hold flat shards, so reload the base model and apply the saved adapter.
        """
        from accelerate.utils import DistributedType

        if self.acc.distributed_type != DistributedType.FSDP:
            return student.merge_and_unload()
        from peft import PeftModel

        from dwakd.models import load_model

        base = load_model(self.data.student_spec, dtype=self.cfg.model.dtype, trust_remote_code=self.cfg.model.trust_remote_code)
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()

    def _finish(self, stop: int) -> Path | None:
        """Write ``<run>/final`` when the schedule is complete (not after a ``stop_at_step``)."""
        if self.state.global_step < self.total_steps:
            return None
        acc, t = self.acc, self.cfg.train
        best_ckpt = self.ckpt.best() if self.data.dev else None
        if t.final_model == "best" and best_ckpt is not None and best_ckpt != self.last_checkpoint:
            self.ckpt.load(best_ckpt)
        self._check_weights("at the end of training (final/ not written)")
        state_dict = student_state_dict(acc, self.model)
        final = self.run_dir / "final"
        if acc.is_main_process:
            student = self.engine.student
            with storage_errors(f"writing {final}"), atomic_directory(final, manifest=True) as tmp:
                lora = is_lora(student)
                if lora:
                    student.save_pretrained(tmp / "adapter", state_dict=state_dict)
                    self._merged_lora(student, tmp / "adapter").save_pretrained(tmp)
                else:
                    student.save_pretrained(tmp, state_dict=state_dict)
                self.data.student_tokenizer.save_pretrained(tmp)
                write_final_extras(tmp, self.cfg, steps=self.state.global_step, examples=len(self.data.train),
                                   metrics=self._summary(), best_checkpoint=str(best_ckpt) if best_ckpt else None,
                                   lora=lora, vocab_size=len(self.data.student_tokenizer))
            if t.push_to_hub:
                push_final(final, self.cfg)
        acc.wait_for_everyone()
        return final

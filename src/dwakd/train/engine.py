"""Assemble the training engine: Accelerator, teacher, student, method, optimizer, schedule.

``accelerator.prepare`` receives the :class:`~dwakd.train.module.DistillModule` (student +
projectors), the optimizer and the scheduler; never the teacher and never a DataLoader (the
:class:`~dwakd.train.sampler.StepPlan` shards the data itself).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from dwakd.config import DwakdConfig
from dwakd.methods import build_method
from dwakd.train.module import DistillModule
from dwakd.train.optim import build_optimizer, build_scheduler
from dwakd.train.student import count_parameters, load_student
from dwakd.train.teacher import TeacherRunner, load_teacher, teacher_dtype

log = logging.getLogger(__name__)


def resolve_bf16(setting) -> bool:
    """``train.bf16``: true/false, or ``auto`` = on when a CUDA GPU supports bf16."""
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def make_accelerator(cfg: DwakdConfig):
    """An ``Accelerator`` for this run (several runs may follow each other in one process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    AcceleratorState._reset_state()  # keeps the process group; lets tests/benchmarks run several configs
    GradientState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train.ddp_find_unused_parameters)
    return Accelerator(
        mixed_precision="bf16" if resolve_bf16(cfg.train.bf16) else "no",
        log_with=list(cfg.train.report_to) or None,
        project_dir=cfg.output_dir,
        kwargs_handlers=[ddp],
        step_scheduler_with_optimizer=False,
    )


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def check_backend(accelerator, cfg: DwakdConfig | None = None, method_cls=None) -> None:
    """Refuse the distributed back-ends this loop does not drive correctly (before anything is written);
    fit DeepSpeed's config to the run (:func:`configure_deepspeed`). ZeRO-3 partitions the student
    between module calls, so it is refused for methods that do not declare ``supports_zero3 = True``
    (every cross-tokenizer method does; ``kd`` does not: FSDP shards its student)."""
    from accelerate.utils import DistributedType

    from dwakd.errors import ConfigError

    if accelerator.distributed_type == DistributedType.MEGATRON_LM:
        raise ConfigError("Megatron-LM is not supported by the dwakd trainer; use DDP, FSDP or DeepSpeed ZeRO")
    if is_deepspeed(accelerator) and cfg is not None:
        stage = int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))
        if stage == 3 and method_cls is not None and not getattr(method_cls, "supports_zero3", False):
            raise ConfigError(
                f"DeepSpeed ZeRO-3 is not supported for method '{cfg.method.name}': it reads student weights outside "
                f"the student's own module calls, where ZeRO-3 holds only a partition. Use ZeRO-2 "
                f"(--zero_stage 2) or FSDP (--use_fsdp --fsdp_version 2) to shard the student")
        configure_deepspeed(accelerator, cfg)


def configure_deepspeed(accelerator, cfg: DwakdConfig) -> None:
    """Make DeepSpeed's own accumulation and stepping give dwakd's step (METHOD.md section 5).

    The trainer knows every micro-batch of a step before the first backward, so the step's global
    token count N is known up front; it back-propagates ``total * W / N`` per micro-batch with
    ``scale_wrt_gas=False`` and marks only the last micro-batch as DeepSpeed's accumulation
    boundary, where the engine reduces, clips (``train.max_grad_norm``) and steps. Set here: the
    micro-batch (``train.batch_size``), the accumulation (``train.grad_accum``), the global batch,
    the clipping, and, for ZeRO-3, gathering the 16-bit weights on save (``final/`` is a plain HF
    directory). The learning-rate schedule stays dwakd's (stepped once per step, skipped or not).
    Non-finite steps use DeepSpeed's own skip (see :meth:`dwakd.train.loop.Trainer.train_step`)."""
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = t.batch_size * t.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = float(t.max_grad_norm) if t.max_grad_norm > 0 else 0.0
    ds.setdefault("steps_per_print", 10**9)
    if isinstance(ds.get("bf16"), dict) and ds["bf16"].get("enabled") in (True, "auto"):
        ds["bf16"]["check_grad_overflow"] = True  # a non-finite bf16 gradient skips the step
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    accelerator.gradient_accumulation_steps = t.grad_accum


@contextlib.contextmanager
def no_zero3_init():
    """Load models whole even under DeepSpeed ZeRO-3 (transformers would otherwise partition them at
    load through zero.Init). The teacher is a replicated inference module, never given to the engine;
    the student must be whole while the method reads its weights (projector initialisation) and is
    partitioned by ``accelerator.prepare``. Cost: one full student per process during setup."""
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:  # pragma: no cover
        yield
        return
    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def check_launch(accelerator, environ=None) -> None:
    """Refuse a launch whose processes are not the processes Accelerate sees.

    A launcher (``torchrun``, ``accelerate launch``) tells each process the world it belongs to in
    ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``. When Accelerate did not join that world (e.g.
    ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs), every process
    would run alone and N independent runs would write one directory.
    """
    import os

    from dwakd.errors import ConfigError

    env = os.environ if environ is None else environ
    seen = {"WORLD_SIZE": accelerator.num_processes, "RANK": accelerator.process_index,
            "LOCAL_RANK": accelerator.local_process_index}
    wrong = []
    for name, value in seen.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            launched = int(raw)
        except ValueError:
            wrong.append(f"{name}={raw!r} is not an integer")
            continue
        if launched != value:
            wrong.append(f"{name}={launched} but Accelerate sees {value}")
    if wrong:
        raise ConfigError(
            f"the launcher started processes that Accelerate does not see as one run ({'; '.join(wrong)}): each "
            f"process would train alone and write the same output_dir. On a machine without GPUs run "
            f"'accelerate launch --multi_gpu' with CUDA_VISIBLE_DEVICES=\"\" ACCELERATE_USE_CPU=true (gloo), or "
            f"start one process; on GPUs check that --num_processes matches the visible devices")


@dataclass
class Engine:
    """Everything the loop drives. ``model`` is the prepared (possibly wrapped) DistillModule."""

    model: torch.nn.Module
    module: DistillModule
    student: torch.nn.Module
    method: torch.nn.Module
    teacher: torch.nn.Module | None
    teacher_runner: TeacherRunner
    optimizer: torch.optim.Optimizer
    scheduler: object
    counts: dict


def call_method_hooks(method, data) -> None:
    """Give the method the tokenizers, once, before training (and before a resume restores its weights):
    ``DistillMethod.attach_tokenizers`` (kd: vocabulary check; dskd/dwakd: logit-preserving projector
    init; MinED: vocabulary map). ``check_tokenizers`` runs earlier, before any model loads
    (:mod:`dwakd.train.data`)."""
    method.attach_tokenizers(data.student_tokenizer, data.teacher_tokenizer)


def teacher_runner(cfg: DwakdConfig, data, method, teacher, autocast):
    """The live teacher, or its cache (:mod:`dwakd.train.teacher_cache`) when ``model.teacher_cache``
    is ``auto`` and ``dwakd cache-teacher`` built one for exactly this teacher and data."""
    if teacher is None or cfg.model.teacher_cache == "off":
        return TeacherRunner(teacher, autocast=autocast)
    from dwakd.train.teacher_cache import CachedTeacherRunner, open_cache_if_present

    cache = open_cache_if_present(cfg.model.teacher, data.teacher_tokenizer, list(data.train) + list(data.dev),
                                  data.collator)
    if cache is None:
        return TeacherRunner(teacher, autocast=autocast)
    cached = CachedTeacherRunner(teacher, cache)
    reason = cached.can_serve(method.teacher_needs())  # the method's declared capability decides
    if reason is not None:
        log.warning("teacher cache %s not used: %s", cache.path, reason)
        return TeacherRunner(teacher, autocast=autocast)
    log.info("using the teacher cache %s (the teacher runs no forward pass)", cache.path)
    return cached


def build_engine(cfg: DwakdConfig, data, accelerator, method_cls, total_steps: int, *, teacher=None) -> Engine:
    """Load the models and build everything ``accelerator.prepare`` gets. ``teacher``: an already
    loaded frozen teacher to reuse (benchmarks running several methods in one process)."""
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    device = accelerator.device
    if not method_cls.needs_teacher:
        teacher = None
    elif teacher is None:
        dtype = teacher_dtype(cfg.model.teacher_dtype, device)
        with no_zero3_init():
            teacher = load_teacher(cfg.model.teacher, dtype=dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    with no_zero3_init():  # whole while the method builds its projectors; partitioned by prepare
        student = load_student(data.student_spec, cfg.model).to(device)  # projectors are created beside the heads
    method = build_method(cfg.method.name, student, teacher, **cfg.method.options)
    call_method_hooks(method, data)
    module = DistillModule(student, method)
    optimizer = build_optimizer(student, method, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    counts = {
        "student_trainable": count_parameters(student)[0],
        "student_frozen": count_parameters(student)[1],
        "projectors": count_parameters(method)[0] + count_parameters(method)[1],
        "teacher": sum(count_parameters(teacher)),
    }
    model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    autocast = accelerator.autocast if accelerator.mixed_precision != "no" else None
    runner = teacher_runner(cfg, data, method, teacher, autocast)
    return Engine(model, module, student, method, teacher, runner, optimizer, scheduler, counts)

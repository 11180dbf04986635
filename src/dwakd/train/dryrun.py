"""``dwakd train CONFIG --dry-run``: everything up to the first step, printed, nothing written.

Prints the resolved config, the data counts and schedule, parameter counts (trainable and frozen
for the student, the projectors and the teacher), a peak-memory estimate, and the first
micro-batch as text: each side's prompt, the response tokens as the text each covers, and the
exact-match alignment (pairs of student/teacher response tokens covering identical characters).
"""

from __future__ import annotations

import torch

from dwakd.config import DwakdConfig, dump_config
from dwakd.data.batch import IGNORE_INDEX, PairBatch
from dwakd.methods import build_method
from dwakd.train.checks import check_method
from dwakd.train.engine import call_method_hooks, make_accelerator, resolve_bf16
from dwakd.train.loop import total_steps_for
from dwakd.train.run import prepare
from dwakd.train.student import count_parameters, load_student
from dwakd.train.teacher import load_teacher, teacher_dtype

_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def estimate_peak_memory(*, counts: dict, batch: int, len_s: int, len_t: int, student_cfg, teacher_cfg,
                         student_bytes: int, teacher_bytes: int, bf16: bool, grad_ckpt: bool, uses_teacher: bool) -> dict:
    """A rough per-process peak estimate in bytes (typically within +-50%), by component.

    Weights, gradients (float32) and AdamW moments (2 x float32) of the trainable parameters;
    student activations per layer ~ ``B L (34 d + 5 heads L)`` half-precision bytes (Korthikanti
    et al. 2022; doubled in float32; one layer plus the layer inputs under gradient
    checkpointing); the student's logits with log-softmax and gradient (3 x ``B L V_s`` float32);
    with a teacher, its logits and probabilities and the two cross-space logit tensors of
    DSKD-family methods with their gradients (3 x ``B (L_s V_s + L_t V_t)`` float32).
    """
    act = 2 if bf16 else 4
    trainable = counts["student_trainable"] + counts["projectors"]
    d_s = getattr(student_cfg, "hidden_size", None) or getattr(student_cfg, "n_embd", 0)
    n_layers = getattr(student_cfg, "num_hidden_layers", None) or getattr(student_cfg, "n_layer", 0)
    heads = getattr(student_cfg, "num_attention_heads", None) or getattr(student_cfg, "n_head", 1)
    v_s = getattr(student_cfg, "vocab_size", 0)
    per_layer = batch * len_s * (34 * d_s + 5 * heads * len_s) * act / 2
    layer_inputs = batch * len_s * d_s * act
    out = {
        "student weights": (counts["student_trainable"] + counts["student_frozen"]) * student_bytes,
        "projector weights": counts["projectors"] * 4,
        "gradients": trainable * 4,
        "AdamW moments": trainable * 8,
        "student activations": (n_layers * layer_inputs + per_layer) if grad_ckpt else n_layers * per_layer,
        "student logits": 3 * batch * len_s * v_s * 4,
    }
    if uses_teacher and teacher_cfg is not None:
        v_t = getattr(teacher_cfg, "vocab_size", 0)
        out["teacher weights"] = counts["teacher"] * teacher_bytes
        out["teacher logits"] = batch * len_t * v_t * (teacher_bytes + 4)
        out["cross-space logits"] = 3 * batch * (len_s * v_s + len_t * v_t) * 4
    out["total"] = sum(out.values())
    return out


def _prompt_text(tokenizer, side, b: int) -> str:
    ids = side.input_ids[b][side.attention_mask[b].bool()]
    labels = side.labels[b][side.attention_mask[b].bool()]
    resp = (labels != IGNORE_INDEX).nonzero()
    cut = int(resp[0]) if len(resp) else len(ids)
    return tokenizer.decode(ids[:cut].tolist(), skip_special_tokens=False)


def _response_tokens(side, b: int, response: str) -> list[tuple[tuple[int, int], str]]:
    mask = side.target_mask[b]
    spans = side.target_spans[b][mask].tolist()
    return [((s, e), response[s:e] if e > s else "<eos>") for s, e in spans]


def exact_pairs(student_tokens, teacher_tokens) -> list[tuple[int, int]]:
    """(i, j) pairs of response tokens whose character spans are identical (the ETA definition)."""
    where_t = {span: j for j, (span, _) in enumerate(teacher_tokens)}
    return [(i, where_t[span]) for i, (span, _) in enumerate(student_tokens) if span in where_t]


def render_batch(batch: PairBatch, student_tok, teacher_tok, *, max_examples: int = 2) -> str:
    """The first examples of ``batch`` as text, with the exact-match alignment between the two tokenizations."""
    s, t = batch.student, batch.teacher
    lines = [f"first micro-batch: {batch.batch_size} examples; student ids {tuple(s.input_ids.shape)}, "
             f"teacher ids {tuple(t.input_ids.shape)}; response tokens: student {int(s.target_mask.sum())}, "
             f"teacher {int(t.target_mask.sum())}"]
    for b in range(min(max_examples, batch.batch_size)):
        response = batch.responses[b] if b < len(batch.responses) else ""
        st = _response_tokens(s, b, response)
        tt = _response_tokens(t, b, response)
        pairs = exact_pairs(st, tt)
        lines += [
            f"--- example {b}",
            f"student prompt: {_prompt_text(student_tok, s, b)!r}",
            f"teacher prompt: {_prompt_text(teacher_tok, t, b)!r}",
            f"response: {response!r}",
            f"student response tokens ({len(st)}): " + " ".join(f"[{i}]{txt!r}" for i, (_, txt) in enumerate(st)),
            f"teacher response tokens ({len(tt)}): " + " ".join(f"[{j}]{txt!r}" for j, (_, txt) in enumerate(tt)),
            f"exact pairs ({len(pairs)}; {len(pairs) / max(1, len(st)):.0%} of student, "
            f"{len(pairs) / max(1, len(tt)):.0%} of teacher tokens): "
            + " ".join(f"s{i}=t{j}{st[i][1]!r}" for i, j in pairs),
        ]
    return "\n".join(lines)


def scale_estimate(cfg: DwakdConfig, student, teacher, *, processes: int, device: str, method: str) -> tuple[str, dict]:
    """The :mod:`dwakd.train.sizing` estimate for this config on ``processes`` GPUs of ``device``:
    the config's global batch (``batch_size x grad_accum``) split over the processes, the config's
    LoRA rank, gradient checkpointing, dtypes and ``data.max_length``."""
    from dwakd.train import sizing

    dev = sizing.device_named(device)
    s_arch = sizing.arch_from_config(student.config)
    t_arch = sizing.arch_from_config(teacher.config) if teacher is not None else None
    lora = cfg.model.lora.r if cfg.model.lora is not None else None
    kw = dict(seq=cfg.data.max_length, device=dev, method=method, lora_r=lora, grad_ckpt=cfg.model.gradient_checkpointing,
              weight_bytes=_BYTES.get(getattr(torch, cfg.model.dtype), 4), teacher_bytes=2)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum
    found = sizing.recommend(s_arch, t_arch, global_batch=global_batch, gpus=processes, **kw)
    if found is None:  # nothing fits: show the config's own micro-batch under FSDP
        per = max(1, global_batch // processes)
        plan = sizing.Plan("fsdp", processes, per, 1, cfg.data.max_length, lora, cfg.model.gradient_checkpointing,
                           kw["weight_bytes"], 2)
    else:
        plan = found[0]
    text = sizing.format_estimate(s_arch, t_arch, plan, dev, method)
    return text, {"plan": plan, "memory": sizing.memory_per_gpu(s_arch, t_arch, plan, method), "fits": found is not None}


def dry_run(cfg: DwakdConfig, *, echo=print, processes: int | None = None, device: str | None = None) -> dict:
    """Load and check everything, print the report, write nothing. Returns the numbers shown.
    ``processes`` / ``device`` (e.g. ``cuda``): also print the per-GPU sizing estimate for that launch."""
    size_for = (processes or 1, device or "cuda") if (processes is not None or device is not None) else None
    method_cls = check_method(cfg)
    accelerator = make_accelerator(cfg)
    data, plan = prepare(cfg, accelerator, method_cls)
    total = total_steps_for(cfg, plan)
    echo("# resolved config")
    echo(dump_config(cfg).rstrip())
    echo("\n# data")
    echo(f"train: {data.report['train']}; dev: {data.report['dev'] or 'none'}")
    echo(f"processes {accelerator.num_processes}, global batch {plan.global_batch}, steps/epoch {plan.steps_per_epoch}, "
         f"total steps {total}" + (f", {plan.dropped_per_epoch} examples skipped per epoch" if plan.dropped_per_epoch else ""))

    device = accelerator.device
    teacher = None
    t_dtype = teacher_dtype(cfg.model.teacher_dtype, device)
    if method_cls.needs_teacher:
        teacher = load_teacher(cfg.model.teacher, dtype=t_dtype, device=torch.device("cpu"),
                               trust_remote_code=cfg.model.trust_remote_code)
    student = load_student(data.student_spec, cfg.model)
    method = build_method(cfg.method.name, student, teacher, **cfg.method.options)
    call_method_hooks(method, data)
    st_train, st_frozen = count_parameters(student)
    counts = {"student_trainable": st_train, "student_frozen": st_frozen,
              "projectors": sum(count_parameters(method)), "teacher": sum(count_parameters(teacher))}
    echo("\n# parameters")
    echo(f"student:    {st_train:>14,} trainable  {st_frozen:>14,} frozen")
    echo(f"projectors: {counts['projectors']:>14,} trainable")
    echo(f"teacher:    {0:>14,} trainable  {counts['teacher']:>14,} frozen")

    batch = data.collate(plan.micro_batches(0)[0], "train")
    bf16 = resolve_bf16(cfg.train.bf16)
    s_cfg = getattr(student, "config", None)
    t_cfg = getattr(teacher, "config", None)
    common = dict(counts=counts, batch=cfg.train.batch_size, student_cfg=s_cfg, teacher_cfg=t_cfg,
                  student_bytes=_BYTES.get(getattr(torch, cfg.model.dtype), 4), teacher_bytes=_BYTES.get(t_dtype, 4),
                  bf16=bf16, grad_ckpt=cfg.model.gradient_checkpointing, uses_teacher=teacher is not None)
    worst = estimate_peak_memory(len_s=cfg.data.max_length, len_t=cfg.data.max_length, **common)
    first = estimate_peak_memory(len_s=batch.student.input_ids.shape[1], len_t=batch.teacher.input_ids.shape[1], **common)
    echo(f"\n# peak memory estimate per process on {device} (rough, +-50%)")
    echo(f"{'component':<22}{'at max_length':>16}{'first batch':>16}")
    for k in worst:
        echo(f"{k:<22}{_mib(worst[k]):>16}{_mib(first[k]):>16}")
    scale = None
    if size_for is not None:
        text, scale = scale_estimate(cfg, student, teacher, processes=size_for[0], device=size_for[1],
                                     method=cfg.method.name)
        echo(f"\n# scale-out estimate: {size_for[0]} process(es) on {size_for[1]} (model of the step, "
             f"docs/SCALING.md; +-50%)")
        echo(text)
    echo("\n# first batch")
    echo(render_batch(batch, data.student_tokenizer, data.teacher_tokenizer))
    return {"counts": counts, "memory_max_length": worst, "memory_first_batch": first, "total_steps": total,
            "steps_per_epoch": plan.steps_per_epoch, "scale": scale}

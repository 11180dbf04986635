"""A model of one distillation step: per-GPU memory, the launch to use, and tokens/s to expect.

Used by ``dwakd train CONFIG --dry-run --processes N --device cuda`` and by ``docs/SCALING.md``
(``benchmarks/scaling_table.py`` writes its tables). Nothing is downloaded: an architecture comes
from a loaded model config, or from :data:`KNOWN` (public ``config.json`` numbers of the models in
``configs/``), or from a :class:`Arch` given by hand.

Memory per GPU (bytes) for micro-batch ``B``, sequence ``L``, ``W`` processes:

- student weights ``P_s x w`` (``w``: ``model.dtype`` bytes; the master copy under mixed precision);
  trainable ``T`` (all of the student, or the LoRA matrices) plus projectors: gradients ``4 T``
  and AdamW moments ``8 T`` (float32);
- sharding divides: DDP nothing; ZeRO-2 gradients and moments by ``W``; FSDP / ZeRO-3 weights,
  gradients and moments by ``W``;
- activations per layer ``B L (34 h + 5 a L)`` half-precision bytes (Korthikanti et al. 2022;
  doubled in float32); with gradient checkpointing only each layer's input ``B L h`` plus one
  layer's full set;
- vocabulary-sized terms (float32): student logits with log-softmax and gradient ``3 B L V_s``;
  teacher logits and probabilities ``B L V_t (t + 4)``; the two cross-space logit tensors of the
  DSKD family with gradients ``3 B L (V_s + V_t)``;
- the frozen teacher ``P_t x t`` (``t``: teacher bytes), replicated on every process (dwakd's
  placement under DDP, FSDP and ZeRO: see :mod:`dwakd.train.teacher`);
- a fixed runtime overhead (CUDA context, allocator fragmentation, NCCL buffers):
  :data:`OVERHEAD_BYTES`.

Step FLOPs per student token: student ``6 P_s`` (``8 P_s`` with gradient checkpointing; LoRA
``4 P_s`` / ``6 P_s``: no weight gradients of the frozen base), attention ``12 n_layers L h``
(x 4/3 with checkpointing), teacher forward ``2 P_t + 4 n_layers_t L h_t``, cross-space heads
``6 (h_t V_t + h_s V_s)``. Tokens/s per GPU = efficiency x peak / FLOPs per token; the efficiency
is the one measured on this CPU for the embedded pair (:data:`CPU_ANCHOR`) unless given, and the
result is an estimate (+-50 %), not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
OVERHEAD_BYTES = 2 * GIB
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Arch:
    """What the step model needs of an architecture (public config.json numbers)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool  # Llama-style gate/up/down (3 matrices) vs GPT-2/OPT (2)
    positions: int = 0  # learned position embeddings (GPT-2, OPT)
    lora_targets: tuple[str, ...] = ("q", "v")  # peft's default targets: q/v, or GPT-2's fused c_attn ("qkv")

    @property
    def params(self) -> int:
        """Weight-matrix parameters (biases and norms, < 0.5 %, left out)."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        attn = 2 * h * h + 2 * h * kv
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate
        emb = self.vocab * h * (1 if self.tied else 2) + self.positions * h
        return self.layers * (attn + mlp) + emb

    def lora_params(self, r: int) -> int:
        """LoRA parameters ``r (d_in + d_out)`` per targeted matrix, over all layers."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        if self.lora_targets == ("qkv",):
            per_layer = r * (h + 3 * h)
        else:
            per_layer = r * (h + h) + r * (h + kv)
        return self.layers * per_layer


# Public config.json numbers of the models the configs in configs/ name.
KNOWN: dict[str, Arch] = {
    "Qwen/Qwen1.5-1.8B": Arch(2048, 24, 16, 16, 5504, 151936, False, True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 28, 28, 4, 18944, 152064, False, True),
    "mistralai/Mistral-7B-v0.1": Arch(4096, 32, 32, 8, 14336, 32000, False, True),
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": Arch(2048, 22, 32, 4, 5632, 32000, False, True),
    "openai-community/gpt2": Arch(768, 12, 12, 12, 3072, 50257, True, False, 1024, ("qkv",)),
    "openai-community/gpt2-medium": Arch(1024, 24, 16, 16, 4096, 50257, True, False, 1024, ("qkv",)),
    "openai-community/gpt2-xl": Arch(1600, 48, 25, 25, 6400, 50257, True, False, 1024, ("qkv",)),
    "facebook/opt-2.7b": Arch(2560, 32, 32, 32, 10240, 50272, True, False, 2050),
}


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    peak_tflops: float  # dense bf16 (float32 on CPU)


DEVICES = {
    "h100": Device("H100 80GB SXM", 80.0, 989.0),
    "a100": Device("A100 80GB", 80.0, 312.0),
    "a100-40": Device("A100 40GB", 40.0, 312.0),
    "24gb": Device("24 GB GPU (A10 / L4 / RTX 4090 class, 125 TFLOP/s)", 24.0, 125.0),
}


def device_named(name: str) -> Device:
    """``cuda`` (= ``h100``) or a key of :data:`DEVICES` (``cuda:a100`` also accepted)."""
    key = name.lower().removeprefix("cuda").lstrip(":") or "h100"
    if key not in DEVICES:
        from dwakd.errors import ConfigError

        raise ConfigError(f"--device {name}: unknown; use cuda or cuda:<{'|'.join(DEVICES)}>")
    return DEVICES[key]

# Measured on this CPU (the "Method step" table of BENCHMARKS.md as of commit 404bc82, 2026-11-28,
# benchmarks/bench_methods_step.py: dwakd, embedded pair SmolLM2-135M -> built Llama 256 x 4 layers,
# vocab 4,096; batch 4, ~600 student tokens per step, median 8.709 s, 1 thread, float32, loaded
# machine; peak of one AVX2 core ~ 2 x 8-wide FMA x 2.45 GHz = 78 GFLOP/s). Later tables measure
# other configurations; the anchor only sets the efficiency of the +-50 % estimate.
CPU_ANCHOR = {"tokens_per_step": 600, "step_s": 8.709, "peak_tflops": 0.078, "seq": 150, "batch": 4,
              "teacher": Arch(576, 30, 9, 3, 1536, 49152, True, True),
              "student": Arch(256, 4, 4, 4, 688, 4096, False, True)}


def arch_from_config(cfg) -> Arch:
    """An :class:`Arch` from a transformers config object (Llama/Qwen/Mistral/GPT-2/OPT names)."""
    def get(*names, default=None):
        for n in names:
            v = getattr(cfg, n, None)
            if v is not None:
                return v
        return default

    h = int(get("hidden_size", "n_embd", "d_model"))
    heads = int(get("num_attention_heads", "n_head"))
    mt = str(get("model_type", default=""))
    return Arch(
        hidden=h, layers=int(get("num_hidden_layers", "n_layer")), heads=heads,
        kv_heads=int(get("num_key_value_heads", default=heads)),
        intermediate=int(get("intermediate_size", "ffn_dim", "n_inner", default=4 * h) or 4 * h),
        vocab=int(get("vocab_size")), tied=bool(get("tie_word_embeddings", default=True)),
        gated_mlp=mt not in ("gpt2", "opt", "gpt_neox", "gptj"),
        positions=int(get("n_positions", "max_position_embeddings", default=0)) if mt in ("gpt2", "opt") else 0,
        lora_targets=("qkv",) if mt == "gpt2" else ("q", "v"),
    )


def projector_params(student: Arch, teacher: Arch, method: str) -> int:
    """DSKD's cross-model attention (query 2h_t x 2h_s, t2s, s2t) plus DWA-KD's embedding projector."""
    if method in ("sft", "kd", "uld", "mined"):
        return 0
    ds, dt = student.hidden, teacher.hidden
    n = 4 * ds * dt + 2 * dt + 2 * ds * dt + ds + dt
    if method.startswith("dwakd"):
        n += ds * dt + ds
    return n


@dataclass(frozen=True)
class Plan:
    strategy: str  # ddp | zero2 | fsdp (FSDP or ZeRO-3: same memory model)
    gpus: int
    micro_batch: int
    grad_accum: int
    seq: int
    lora_r: int | None = None
    grad_ckpt: bool = False
    weight_bytes: int = 4
    teacher_bytes: int = 2
    bf16: bool = True


def memory_per_gpu(student: Arch, teacher: Arch | None, plan: Plan, method: str = "dwakd") -> dict[str, float]:
    """Bytes per GPU by component (see the module docstring); key ``total`` sums them."""
    W, B, L = plan.gpus, plan.micro_batch, plan.seq
    P = student.params
    proj = projector_params(student, teacher, method) if teacher is not None else 0
    T = (student.lora_params(plan.lora_r) if plan.lora_r else P) + proj
    shard_w = W if plan.strategy == "fsdp" else 1
    shard_go = W if plan.strategy in ("fsdp", "zero2") else 1
    act = 2 if plan.bf16 else 4
    h, a = student.hidden, student.heads
    per_layer = B * L * (34 * h + 5 * a * L) * act / 2
    acts = student.layers * B * L * h * act + per_layer if plan.grad_ckpt else student.layers * per_layer
    out = {
        "student weights": (P * plan.weight_bytes + proj * 4) / shard_w,
        "gradients": 4 * T / shard_go,
        "AdamW moments": 8 * T / shard_go,
        "activations": acts,
        "student logits": 3 * B * L * student.vocab * 4,
    }
    if teacher is not None:
        out["teacher weights"] = teacher.params * plan.teacher_bytes
        out["teacher logits"] = B * L * teacher.vocab * (plan.teacher_bytes + 4)
        if method not in ("sft", "kd", "uld", "mined"):
            out["cross-space logits"] = 3 * B * L * (student.vocab + teacher.vocab) * 4
    out["runtime overhead"] = OVERHEAD_BYTES
    out["total"] = sum(out.values())
    return out


def flops_per_token(student: Arch, teacher: Arch | None, seq: int, *, lora: bool = False, grad_ckpt: bool = False,
                    method: str = "dwakd") -> float:
    """Training FLOPs per student token of one step (see the module docstring)."""
    k = (4 if lora else 6) + (2 if grad_ckpt else 0)
    f = k * student.params + 12 * student.layers * seq * student.hidden * (4 / 3 if grad_ckpt else 1)
    if teacher is not None:
        f += 2 * teacher.params + 4 * teacher.layers * seq * teacher.hidden
        if method not in ("sft", "kd", "uld", "mined"):
            f += 6 * (teacher.hidden * teacher.vocab + student.hidden * student.vocab)
    return float(f)


def cpu_efficiency() -> float:
    """Achieved / peak FLOP/s of the measured CPU step (:data:`CPU_ANCHOR`)."""
    c = CPU_ANCHOR
    f = flops_per_token(c["student"], c["teacher"], c["seq"]) * c["tokens_per_step"]
    return f / c["step_s"] / (c["peak_tflops"] * 1e12)


def tokens_per_second(student: Arch, teacher: Arch | None, plan: Plan, device: Device, *, method: str = "dwakd",
                      efficiency: float | None = None) -> float:
    """Student tokens/s over all ``plan.gpus`` (efficiency: the CPU anchor's unless given)."""
    eff = cpu_efficiency() if efficiency is None else efficiency
    f = flops_per_token(student, teacher, plan.seq, lora=plan.lora_r is not None, grad_ckpt=plan.grad_ckpt, method=method)
    return plan.gpus * eff * device.peak_tflops * 1e12 / f


def recommend(student: Arch, teacher: Arch | None, *, global_batch: int, seq: int, device: Device, method: str = "dwakd",
              lora_r: int | None = None, grad_ckpt: bool = False, weight_bytes: int = 4, teacher_bytes: int = 2,
              max_gpus: int = 8, headroom: float = 0.9, gpus: int | None = None) -> tuple[Plan, dict[str, float]] | None:
    """The simplest launch that fits ``headroom`` of the device: fewest GPUs (or exactly ``gpus``),
    then DDP before ZeRO-2 before FSDP, then the largest micro-batch dividing the per-GPU batch
    (accumulation makes up the rest of ``global_batch``). None when nothing up to ``max_gpus`` fits."""
    budget = headroom * device.memory_gib * GIB
    only = gpus
    gpus = only or 1
    while gpus <= (only or max_gpus):
        if global_batch % gpus == 0:
            per_gpu = global_batch // gpus
            for strategy in (("ddp",) if gpus == 1 else ("ddp", "zero2", "fsdp")):
                for mb in sorted((d for d in range(1, per_gpu + 1) if per_gpu % d == 0), reverse=True):
                    plan = Plan(strategy, gpus, mb, per_gpu // mb, seq, lora_r, grad_ckpt, weight_bytes, teacher_bytes)
                    mem = memory_per_gpu(student, teacher, plan, method)
                    if mem["total"] <= budget:
                        return plan, mem
        gpus *= 2
    return None


def format_estimate(student: Arch, teacher: Arch | None, plan: Plan, device: Device, method: str = "dwakd") -> str:
    """The estimate as text (printed by the dry run)."""
    mem = memory_per_gpu(student, teacher, plan, method)
    tps = tokens_per_second(student, teacher, plan, device, method=method)
    name = {"ddp": "DDP", "zero2": "DeepSpeed ZeRO-2", "fsdp": "FSDP"}[plan.strategy]
    lines = [f"launch: {name} on {plan.gpus} x {device.name}; micro-batch {plan.micro_batch}, accumulation "
             f"{plan.grad_accum}, sequence {plan.seq}" + (f", LoRA r={plan.lora_r}" if plan.lora_r else "")
             + (", gradient checkpointing" if plan.grad_ckpt else "")]
    for k, v in mem.items():
        lines.append(f"  {k:<22}{v / GIB:>9.2f} GiB")
    fits = "fits" if mem["total"] <= device.memory_gib * GIB else "DOES NOT FIT"
    lines.append(f"  per GPU: {mem['total'] / GIB:.1f} of {device.memory_gib:.0f} GiB ({fits})")
    lines.append(f"expected throughput: ~{tps:,.0f} student tokens/s in all (efficiency {cpu_efficiency():.0%} "
                 f"of peak, from the CPU anchor; an estimate, +-50 %)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- docs/SCALING.md tables
PAIR_CONFIGS = ("qwen1.5-1.8b_gpt2-120m.yaml", "qwen1.5-1.8b_gpt2-340m.yaml", "mistral-7b_tinyllama-1.1b.yaml",
                "qwen2.5-7b-instruct_gpt2-1.5b.yaml", "qwen2.5-7b-instruct_opt-2.7b.yaml")
_STRATEGY = {"ddp": "DDP", "zero2": "ZeRO-2", "fsdp": "FSDP"}


def pair_from_yaml(path) -> dict:
    """What the tables need of a pair config (read as plain YAML: no model, no data is touched)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    m, t, d = raw.get("model", {}), raw.get("train", {}), raw.get("data", {})
    lora = m.get("lora")
    return {"teacher": m["teacher"], "student": m["student"], "lora_r": lora.get("r") if lora else None,
            "grad_ckpt": bool(m.get("gradient_checkpointing", False)), "seq": int(d.get("max_length", 512)),
            "global_batch": int(t.get("batch_size", 8)) * int(t.get("grad_accum", 1)),
            "method": raw.get("method", {}).get("name", "dwakd"),
            "weight_bytes": _BYTES.get(m.get("dtype", "float32"), 4)}


def scaling_markdown(configs_dir) -> str:
    """The tables of ``docs/SCALING.md`` for the pair configs in ``configs_dir`` (generated; a test
    checks the document is current)."""
    from pathlib import Path

    rows = ["| pair (config) | GPU | launch | GPUs | micro-batch x accum | LoRA | per-GPU memory | tokens/s |",
            "|---|---|---|---:|---|---|---:|---:|"]
    detail = []
    for name in PAIR_CONFIGS:
        p = pair_from_yaml(Path(configs_dir) / name)
        s, t = KNOWN[p["student"]], KNOWN[p["teacher"]]
        kw = dict(seq=p["seq"], method=p["method"], lora_r=p["lora_r"], grad_ckpt=p["grad_ckpt"],
                  weight_bytes=p["weight_bytes"], teacher_bytes=2)
        for key in ("h100", "a100-40", "24gb"):
            dev = DEVICES[key]
            found = recommend(s, t, global_batch=p["global_batch"], device=dev, **kw)
            if found is None:
                rows.append(f"| {name} | {dev.name.split(' (')[0]} | does not fit (teacher cache or bigger GPUs) | | | | | |")
                continue
            plan, mem = found
            tps = tokens_per_second(s, t, plan, dev, method=p["method"])
            rows.append(f"| {name} | {dev.name.split(' (')[0]} | {_STRATEGY[plan.strategy]} | {plan.gpus} | "
                        f"{plan.micro_batch} x {plan.grad_accum} | {f'r={plan.lora_r}' if plan.lora_r else 'no'} | "
                        f"{mem['total'] / GIB:.1f} GiB | {tps:,.0f} |")
            if key == "h100":
                parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in mem.items() if k != "total")
                detail.append(f"- **{name}** ({p['teacher']} {t.params / 1e9:.2f}B -> {p['student']} "
                              f"{s.params / 1e9:.2f}B; vocabularies {t.vocab:,} / {s.vocab:,}; sequence {p['seq']}, "
                              f"global batch {p['global_batch']}): {parts} GiB")
    return "\n".join(rows) + "\n\nPer-GPU memory by component on one H100 (GiB):\n\n" + "\n".join(detail) + "\n"

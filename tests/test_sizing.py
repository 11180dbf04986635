"""The step model of dwakd.train.sizing against hand computations and published parameter counts,
and ``dwakd train --dry-run --processes N --device cuda`` printing it."""

from __future__ import annotations

import json

import pytest
import yaml

from _train_helpers import base_config, register_toy
from dwakd.errors import ConfigError
from dwakd.train import sizing
from dwakd.train.sizing import GIB, KNOWN, Arch, Device, Plan

register_toy()


# --------------------------------------------------------------------------- parameter counts
def test_gpt2_and_mistral_weight_counts_by_hand_and_against_published_totals():
    gpt2 = KNOWN["openai-community/gpt2"]
    # 12 layers x (4 h^2 attention + 2 h 4h MLP) + tied vocabulary + 1024 learned positions
    hand = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768 + 1024 * 768
    assert gpt2.params == hand == 124_318_464
    assert gpt2.params == pytest.approx(124_439_808, rel=2e-3)  # HF count (with biases and LayerNorms)
    mistral = KNOWN["mistralai/Mistral-7B-v0.1"]
    kv = 8 * (4096 // 32)  # grouped-query attention: 8 key/value heads of 128
    hand = 32 * (2 * 4096 * 4096 + 2 * 4096 * kv + 3 * 4096 * 14336) + 2 * 32000 * 4096
    assert mistral.params == hand == 7_241_465_856
    assert mistral.params == pytest.approx(7_241_732_096, rel=1e-4)
    published = {"Qwen/Qwen1.5-1.8B": 1.84e9, "Qwen/Qwen2.5-7B-Instruct": 7.62e9, "openai-community/gpt2-medium": 3.55e8,
                 "openai-community/gpt2-xl": 1.56e9, "facebook/opt-2.7b": 2.65e9,
                 "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": 1.10e9}
    for name, n in published.items():
        assert KNOWN[name].params == pytest.approx(n, rel=0.01), name


def test_lora_counts_match_peft_reports():
    # peft's print_trainable_parameters for r=8 on its default targets
    assert KNOWN["openai-community/gpt2"].lora_params(8) == 12 * 8 * (768 + 3 * 768) == 294_912  # c_attn
    tiny = KNOWN["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"]
    assert tiny.lora_params(8) == 22 * (8 * (2048 + 2048) + 8 * (2048 + 256)) == 1_126_400  # q_proj, v_proj


def test_projectors_by_hand():
    s, t = Arch(48, 2, 4, 4, 96, 300, True, False), Arch(64, 2, 4, 4, 128, 512, False, True)
    # query (2 h_t x 2 h_s + bias), t2s (h_s x h_t + bias), s2t (h_t x h_s + bias), DWA-KD's embed projector
    dskd = (128 * 96 + 128) + (48 * 64 + 48) + (64 * 48 + 64)
    assert sizing.projector_params(s, t, "dskd") == dskd
    assert sizing.projector_params(s, t, "dwakd") == dskd + 64 * 48 + 48
    assert sizing.projector_params(s, t, "kd") == 0


# --------------------------------------------------------------------------- memory
SMALL_S = Arch(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=256, vocab=1000, tied=True, gated_mlp=False)
SMALL_T = Arch(hidden=128, layers=2, heads=4, kv_heads=4, intermediate=512, vocab=2000, tied=False, gated_mlp=True)


def test_memory_components_by_hand_for_each_strategy():
    B, L = 2, 16
    P_s = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 1000 * 64
    P_t = 2 * (4 * 128 * 128 + 3 * 128 * 512) + 2 * 2000 * 128
    proj = sizing.projector_params(SMALL_S, SMALL_T, "dskd")
    assert SMALL_S.params == P_s and SMALL_T.params == P_t
    per_layer = B * L * (34 * 64 + 5 * 4 * L)  # bf16: half-precision bytes
    for strategy, W, w_div, go_div in (("ddp", 2, 1, 1), ("zero2", 2, 1, 2), ("fsdp", 4, 4, 4)):
        plan = Plan(strategy, W, B, 1, L, None, False, 4, 2, True)
        m = sizing.memory_per_gpu(SMALL_S, SMALL_T, plan, "dskd")
        assert m["student weights"] == pytest.approx((4 * P_s + 4 * proj) / w_div)
        assert m["gradients"] == pytest.approx(4 * (P_s + proj) / go_div)
        assert m["AdamW moments"] == pytest.approx(8 * (P_s + proj) / go_div)
        assert m["activations"] == 2 * per_layer
        assert m["student logits"] == 3 * B * L * 1000 * 4
        assert m["teacher weights"] == 2 * P_t  # replicated on every process
        assert m["teacher logits"] == B * L * 2000 * (2 + 4)
        assert m["cross-space logits"] == 3 * B * L * (1000 + 2000) * 4
        assert m["runtime overhead"] == 2 * GIB
        assert m["total"] == pytest.approx(sum(v for k, v in m.items() if k != "total"))
    # LoRA: only the adapter and projectors train; checkpointing keeps layer inputs + one layer
    plan = Plan("ddp", 1, B, 1, L, 4, True, 2, 2, True)
    m = sizing.memory_per_gpu(SMALL_S, None, plan, "sft")
    T = 2 * 4 * (64 + 3 * 64)  # GPT-2-style fused qkv target
    assert m["gradients"] == 4 * T and m["AdamW moments"] == 8 * T
    assert m["student weights"] == 2 * P_s
    assert m["activations"] == 2 * B * L * 64 * 2 + per_layer
    assert "teacher weights" not in m and "cross-space logits" not in m


def test_flops_per_token_by_hand():
    L = 16
    f = sizing.flops_per_token(SMALL_S, SMALL_T, L, method="dskd")
    hand = 6 * SMALL_S.params + 12 * 2 * L * 64 + 2 * SMALL_T.params + 4 * 2 * L * 128 + 6 * (128 * 2000 + 64 * 1000)
    assert f == pytest.approx(hand)
    f_lora = sizing.flops_per_token(SMALL_S, None, L, lora=True, grad_ckpt=True, method="sft")
    assert f_lora == pytest.approx(6 * SMALL_S.params + 12 * 2 * L * 64 * 4 / 3)


def test_tokens_per_second_is_efficiency_times_peak_over_flops():
    dev = Device("test", 80.0, 100.0)
    plan = Plan("ddp", 2, 2, 1, 16)
    f = sizing.flops_per_token(SMALL_S, SMALL_T, 16)
    assert sizing.tokens_per_second(SMALL_S, SMALL_T, plan, dev, efficiency=0.5) == pytest.approx(2 * 0.5 * 100e12 / f)
    eff = sizing.cpu_efficiency()
    assert 0.01 < eff < 1.0  # the FLOP model does not claim more than the CPU's peak


def test_recommend_picks_the_simplest_launch_that_fits():
    B, L = 8, 64
    mem = {mb: sizing.memory_per_gpu(SMALL_S, SMALL_T, Plan("ddp", 1, mb, 8 // mb, L), "dwakd")["total"] for mb in (8, 4)}
    # a device that holds micro-batch 4 but not 8 (with 10 % headroom): 1 GPU, micro-batch 4, accumulation 2
    dev = Device("test", (mem[4] + mem[8]) / 2 / 0.9 / GIB, 100.0)
    plan, m = sizing.recommend(SMALL_S, SMALL_T, global_batch=B, seq=L, device=dev)
    assert (plan.strategy, plan.gpus, plan.micro_batch, plan.grad_accum) == ("ddp", 1, 4, 2)
    assert m["total"] == mem[4]
    # too small for any single-GPU plan: more GPUs and a sharding strategy
    one = sizing.memory_per_gpu(SMALL_S, SMALL_T, Plan("ddp", 1, 1, 8, L), "dwakd")["total"]
    two = sizing.memory_per_gpu(SMALL_S, SMALL_T, Plan("fsdp", 2, 1, 4, L), "dwakd")["total"]
    assert two < one
    dev = Device("tiny", (one + two) / 2 / 0.9 / GIB, 100.0)
    plan, m = sizing.recommend(SMALL_S, SMALL_T, global_batch=B, seq=L, device=dev)
    assert plan.gpus == 2 and plan.strategy in ("zero2", "fsdp") and m["total"] <= 0.9 * dev.memory_gib * GIB
    assert sizing.recommend(SMALL_S, SMALL_T, global_batch=B, seq=L, device=Device("none", 0.1, 1.0)) is None
    plan, _ = sizing.recommend(SMALL_S, SMALL_T, global_batch=B, seq=L, device=sizing.DEVICES["h100"], gpus=4)
    assert plan.gpus == 4 and plan.micro_batch * plan.grad_accum == 2


def test_device_names():
    assert sizing.device_named("cuda") is sizing.DEVICES["h100"]
    assert sizing.device_named("cuda:a100-40") is sizing.DEVICES["a100-40"]
    with pytest.raises(ConfigError, match="--device"):
        sizing.device_named("tpu")


# --------------------------------------------------------------------------- the dry run prints it
def test_dry_run_prints_the_estimate_for_n_processes(tmp_path, capsys, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path):
    from transformers import AutoConfig

    from dwakd.cli.main import main

    cfg = base_config(tmp_path, tiny_teacher_dir, tiny_student_dir, tiny_dolly_path, batch_size=2, grad_accum=4)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--dry-run", "--processes", "2", "--device", "cuda:a100"]) == 0
    out = capsys.readouterr().out
    assert "# scale-out estimate: 2 process(es) on cuda:a100" in out
    s = sizing.arch_from_config(AutoConfig.from_pretrained(tiny_student_dir))
    t = sizing.arch_from_config(AutoConfig.from_pretrained(tiny_teacher_dir))
    raw = json.loads((tiny_student_dir / "config.json").read_text())
    assert (s.hidden, s.layers, s.heads, s.vocab) == (raw["n_embd"], raw["n_layer"], raw["n_head"], raw["vocab_size"])
    assert s.tied and not s.gated_mlp and s.lora_targets == ("qkv",)
    # global batch 8 over 2 GPUs: the whole per-GPU batch of 4 fits one micro-batch under DDP
    plan = Plan("ddp", 2, 4, 1, 96)
    mem = sizing.memory_per_gpu(s, t, plan, "toy-kd")
    assert "launch: DDP on 2 x A100 80GB; micro-batch 4, accumulation 1, sequence 96" in out
    assert f"per GPU: {mem['total'] / GIB:.1f} of 80 GiB (fits)" in out
    assert main(["train", str(path), "--processes", "2"]) == 2  # only with --dry-run
    assert main(["train", str(path), "--dry-run", "--processes", "0"]) == 2


def test_scaling_doc_tables_are_current():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "SCALING.md").read_text(encoding="utf-8")
    assert sizing.scaling_markdown(root / "configs") in doc, "regenerate the tables of docs/SCALING.md"

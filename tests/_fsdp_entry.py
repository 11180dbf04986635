"""Entry point for ``accelerate launch`` in the FSDP / DeepSpeed tests (CPU shims below): registers the test method,
records where each process holds the teacher's and the trained module's parameters (file named by
``DWAKD_TEST_PLACEMENT``, one JSON per rank), then runs the CLI."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_helpers import register_toy  # noqa: E402
from dwakd.cli.main import main  # noqa: E402

register_toy()
# The test method reads no student weight outside the student's module calls (ZeRO-3 safe).
from _train_helpers import ToyKD  # noqa: E402

ToyKD.supports_zero3 = True


def _fsdp_on_cpu() -> None:
    """Accelerate turns ``--use_fsdp`` into FSDP only for accelerator devices (MULTI_GPU and kin); on
    CPU processes it silently stays MULTI_CPU (plain DDP over gloo). torch's FSDP2 itself runs on CPU
    over gloo, so this test-only shim lets Accelerate take its FSDP path there: everything after
    (``prepare`` -> ``fully_shard``, no_sync, clipping, sharded save/load, state-dict gathering) is
    Accelerate's and dwakd's own code, as on GPUs."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    real_init = AcceleratorState.__init__

    def init(self, *a, fsdp_plugin=None, **k):
        real_init(self, *a, fsdp_plugin=fsdp_plugin, **k)
        # every AcceleratorState() re-copies PartialState's MULTI_CPU: switch again each time
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    AcceleratorState.__init__ = init


def _deepspeed_on_cpu() -> None:
    """Accelerate gives DeepSpeed processes no backend without an accelerator device (it then counts
    one process); DeepSpeed itself runs on CPU (DS_ACCELERATOR=cpu, gloo). This test-only shim
    hands Accelerate gloo for them; the DeepSpeed engine, its ZeRO optimizer and the trainer are the
    real code."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    real = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        b, t = real(self, cpu, sagemaker_dp, backend)
        if b is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return b, t

    PartialState._prepare_backend = prepare_backend


def _record_placement() -> None:
    out = os.environ.get("DWAKD_TEST_PLACEMENT")
    if not out:
        return
    import torch

    from dwakd.train import run as run_mod

    real = run_mod.build_engine

    def local_numel(p):
        local = p.to_local() if hasattr(p, "to_local") else p
        return int(getattr(p, "ds_numel", 0) and getattr(p, "ds_tensor", local).numel() or local.numel())

    def build(cfg, data, accelerator, *a, **k):
        engine = real(cfg, data, accelerator, *a, **k)
        rec = {"rank": accelerator.process_index, "world": accelerator.num_processes,
               "distributed_type": str(accelerator.distributed_type)}
        for name, mod in (("teacher", engine.teacher), ("module", engine.module)):
            if mod is None:
                continue
            params = list(mod.parameters())
            rec[name] = {
                "n": len(params),
                "dtensor": sum(type(p).__name__ == "DTensor" for p in params),
                "local_numel": sum(local_numel(p) for p in params),
                "full_numel": sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in params),
                "devices": sorted({str(p.device) for p in params}),
                "requires_grad": sum(p.requires_grad for p in params),
                "ds_persistent": sum(bool(getattr(p, "ds_persist", False)) for p in params),
            }
        path = Path(f"{out}.{accelerator.process_index}.json")
        path.write_text(json.dumps(rec))
        torch.distributed.barrier() if torch.distributed.is_initialized() else None
        return engine

    run_mod.build_engine = build


def _zero_options() -> None:
    """``DWAKD_TEST_ZERO_OPTIONS`` (JSON): extra ``zero_optimization`` entries for the DeepSpeed config,
    e.g. ``{"stage3_param_persistence_threshold": 0}`` so that no tiny parameter stays whole."""
    extra = os.environ.get("DWAKD_TEST_ZERO_OPTIONS")
    if not extra:
        return
    from dwakd.train import engine

    real = engine.configure_deepspeed

    def configure(accelerator, cfg):
        real(accelerator, cfg)
        accelerator.state.deepspeed_plugin.deepspeed_config.setdefault("zero_optimization", {}).update(json.loads(extra))

    engine.configure_deepspeed = configure


if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    _fsdp_on_cpu()
if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and os.environ.get("DS_ACCELERATOR") == "cpu":
    _deepspeed_on_cpu()
_record_placement()
_zero_options()
sys.exit(main(sys.argv[1:]))

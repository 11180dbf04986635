#!/usr/bin/env bash
# The multi-process checks on a machine with 2+ GPUs (prepared; not yet run): DDP, FSDP2 and DeepSpeed
# ZeRO-2/3 against one process, as tests/test_train_multiprocess.py, test_fsdp.py and
# test_deepspeed.py do on CPU. With 2+ visible GPUs the FSDP and DeepSpeed tests launch on the GPUs
# (NCCL; no CPU shim). Usage: make install && bash scripts/check_scaleout_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; n = torch.cuda.device_count(); print('GPUs:', n); sys.exit(0 if n >= 2 else 'needs 2+ GPUs')"
"$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_fsdp.py tests/test_deepspeed.py "$@"

"""The Triton soft-DTW kernels, run by Triton's interpreter on CPU tensors at small sizes.

Skipped when triton is not installed (optional extra ``[triton]``). The checks live in
``_sdtw_triton_check.py`` and run in a subprocess: TRITON_INTERPRET=1 must be set before triton is
first imported (it decides, at import, whether triton's own library functions are interpreted),
and a subprocess keeps that mode out of this test session.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
]


def test_triton_kernels_match_naive_in_interpreter():
    script = Path(__file__).resolve().parent / "_sdtw_triton_check.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("ok ") == 6, proc.stdout

"""dwakd compare: intervals against a hand computation, resume after a kill, independent cells."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _compare_helpers import write_grid, write_pretrain
from dwakd.compare import load_compare_config, mean_std, paired_difference, t975
from dwakd.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- statistics
def test_t_quantiles_match_the_table():
    # Standard two-sided 95% t table: df 1, 2, 4, 10, 30.
    assert t975(1) == pytest.approx(12.706, abs=1e-3)
    assert t975(2) == pytest.approx(4.303, abs=1e-3)
    assert t975(4) == pytest.approx(2.776, abs=1e-3)
    assert t975(10) == pytest.approx(2.228, abs=1e-3)
    assert t975(30) == pytest.approx(2.042, abs=1e-3)


def test_paired_difference_against_a_hand_computation():
    a = {1: 10.0, 2: 12.0, 3: 11.0, 7: 99.0}  # seed 7 has no partner: not used
    b = {1: 9.0, 2: 10.5, 3: 11.5}
    d = paired_difference(a, b)
    # By hand: differences 1.0, 1.5, -0.5; mean 2/3; deviations 1/3, 5/6, -7/6;
    # squares 1/9 + 25/36 + 49/36 = 78/36; sample variance 39/36; sd = 1.0408330;
    # half width = 4.3026527 * 1.0408330 / sqrt(3) = 4.4783430 / 1.7320508 = 2.585572.
    assert d["n"] == 3 and d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(2 / 3)
    assert d["std"] == pytest.approx(math.sqrt(39 / 36))
    assert d["half_width"] == pytest.approx(2.585572, rel=1e-6)
    assert d["ci95"] == pytest.approx([2 / 3 - 2.585572, 2 / 3 + 2.585572], rel=1e-6)


def test_one_common_seed_gives_no_interval_and_mean_std_uses_n_minus_1():
    d = paired_difference({1: 3.0}, {1: 1.0, 2: 5.0})
    assert d["mean"] == 2.0 and d["ci95"] is None and d["n"] == 1
    st = mean_std([1.0, 2.0, 4.0])
    assert st["mean"] == pytest.approx(7 / 3) and st["std"] == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2))


# ----------------------------------------------------------------------------- config errors
def test_compare_config_errors_name_the_key(tmp_path, tiny_teacher_dir):
    import yaml

    p = write_grid(tmp_path, tiny_teacher_dir, with_refs=False)
    data = yaml.safe_load(p.read_text())
    data["grid"] = [{"methods": ["sft", "nosuch"], "seeds": [1]}]
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="nosuch"):
        load_compare_config(p)


# ----------------------------------------------------------------------------- the grid
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _compare(cfg: Path, *extra: str, check: bool = True):
    return subprocess.run([sys.executable, "-m", "dwakd.cli.main", "compare", str(cfg), *extra], env=_env(),
                          capture_output=True, text=True, timeout=900, check=check)


def _weights(cell: Path) -> dict:
    return load_file(str(cell / "run" / "final" / "model.safetensors"))


@pytest.mark.slow
def test_grid_resumes_after_a_kill_and_cells_are_independent(tmp_path, tiny_teacher_dir):
    pre = write_pretrain(tmp_path, tmp_path / "home")
    cfg = write_grid(tmp_path, tiny_teacher_dir, pretrain=pre)
    cells = tmp_path / "grid" / "cells"
    proc = subprocess.Popen([sys.executable, "-m", "dwakd.cli.main", "compare", str(cfg)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (cells / "sft-s1" / "eval.json").is_file():
        assert proc.poll() is None, "the grid ended before the kill"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = (cells / "sft-s1" / "eval.json").read_bytes()
    stamp = (cells / "sft-s1" / "eval.json").stat().st_mtime_ns
    out = _compare(cfg)
    assert "sft-s1 already done" in out.stdout
    assert (cells / "sft-s1" / "eval.json").stat().st_mtime_ns == stamp
    assert (cells / "sft-s1" / "eval.json").read_bytes() == first
    res = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert not res["pending"] and all(c["done"] for c in res["cells"])
    assert set(res["methods"]) == {"sft", "dskd"} and "student-pretrained" in res["references"]
    # The reported interval is the paired t-interval of the cells' own scores.
    a = {c["seed"]: c["avg"] for c in res["cells"] if c["label"] == "dskd"}
    b = {c["seed"]: c["avg"] for c in res["cells"] if c["label"] == "sft"}
    d = [a[s] - b[s] for s in (1, 2)]
    mean = (d[0] + d[1]) / 2
    hw = 12.706204736 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
    got = res["differences"]["dskd - sft"]["avg"]
    assert got["mean"] == pytest.approx(mean) and (got["half_width"] or 0.0) == pytest.approx(hw, abs=1e-9)
    # ... and the same for bits per byte (each cell's mean over its sets, from its own eval.json)
    def cell_bpb(label, seed):
        sets = json.loads((cells / f"{label}-s{seed}" / "eval.json").read_text())["sets"]
        return sum(v["bpb"] for v in sets.values()) / len(sets)

    db = [cell_bpb("dskd", s) - cell_bpb("sft", s) for s in (1, 2)]
    gb = res["differences"]["dskd - sft"]["bpb"]
    assert gb["mean"] == pytest.approx((db[0] + db[1]) / 2)
    assert gb["half_width"] == pytest.approx(12.706204736 * abs(db[0] - db[1]) / math.sqrt(2) / math.sqrt(2))
    assert "bits/byte, 95% CI" in (tmp_path / "grid" / "report.md").read_text()
    assert (tmp_path / "grid" / "report.md").is_file()

    # Independence: dskd seed 2 alone, in a fresh grid, gives the same student as inside the full grid.
    alone = tmp_path / "alone"
    alone.mkdir()
    cfg2 = write_grid(alone, tiny_teacher_dir, methods=("dskd",), seeds=(2,), with_refs=False, pretrain=pre)
    _compare(cfg2)
    w_full, w_alone = _weights(cells / "dskd-s2"), _weights(alone / "grid" / "cells" / "dskd-s2")
    assert w_full.keys() == w_alone.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_alone[k]), k
    # ... and another training seed gives another student (the seed reaches the cell).
    w_s1 = _weights(cells / "dskd-s1")
    assert any(not torch.equal(w_full[k], w_s1[k]) for k in w_full)


@pytest.mark.slow
def test_an_interrupted_cell_continues_from_its_checkpoint(tmp_path, tiny_teacher_dir):
    pre = write_pretrain(tmp_path, tmp_path / "home")
    cfg = write_grid(tmp_path, tiny_teacher_dir, methods=("sft",), seeds=(1,), with_refs=False, pretrain=pre)
    stopped = _compare(cfg, "train.stop_at_step=3", check=False)
    assert stopped.returncode == 2 and "stopped before its last step" in stopped.stderr
    cell = tmp_path / "grid" / "cells" / "sft-s1"
    assert not (cell / "run" / "final").exists()
    from dwakd.compare.status import grid_status

    (row,) = grid_status(load_compare_config(cfg))
    assert (row["state"], row["detail"]) == ("interrupted", "step 3; resumes from checkpoint-3")
    status = _compare(cfg, "--status")
    assert "sft-s1" in status.stdout and "interrupted" in status.stdout
    _compare(cfg)
    meta = json.loads((cell / "cell.json").read_text())
    assert meta["done"] and meta["train_sessions"] == 2
    # Same student as an uninterrupted run of the same cell.
    other = tmp_path / "straight"
    other.mkdir()
    cfg2 = write_grid(other, tiny_teacher_dir, methods=("sft",), seeds=(1,), with_refs=False, pretrain=pre)
    _compare(cfg2)
    w1, w2 = _weights(cell), _weights(other / "grid" / "cells" / "sft-s1")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6)


def test_report_without_evaluation_lists_dev_losses(tmp_path, tiny_teacher_dir):
    """eval: null (a budget sweep): training only; the report still writes, with each cell's dev loss."""
    import yaml

    from dwakd.compare import run_grid

    pre = write_pretrain(tmp_path, tmp_path / "home")
    p = write_grid(tmp_path, tiny_teacher_dir, methods=("sft",), seeds=(1,), with_refs=False, pretrain=pre)
    data = yaml.safe_load(p.read_text())
    data["eval"] = None
    p.write_text(yaml.safe_dump(data))
    run_grid(load_compare_config(p), progress=False)
    res = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert res["cells"][0]["done"] and isinstance(res["cells"][0]["dev_loss"], float)
    assert "sft" in (tmp_path / "grid" / "report.md").read_text()
    # A finished cell trained under another config is not reused silently: the rerun with another lr
    # stops before training, naming the cell; the same overrides as before still pass.
    stamp = (tmp_path / "grid" / "cells" / "sft-s1" / "cell.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"sft-s1 \(hash [0-9a-f]{16}, now [0-9a-f]{16}\)"):
        run_grid(load_compare_config(p, train_overrides=["train.lr=2e-3"]), progress=False)
    assert (tmp_path / "grid" / "cells" / "sft-s1" / "cell.json").stat().st_mtime_ns == stamp
    run_grid(load_compare_config(p), progress=False)


def test_a_cell_another_worker_holds_is_skipped_and_picked_up_later(tmp_path, tiny_teacher_dir, monkeypatch):
    """Two `dwakd compare` processes may share a grid: a cell whose directory another live process has
    locked is left to it (reported as busy), and a later run finishes whatever is left."""
    from dwakd.compare import run_grid

    monkeypatch.setenv("DWAKD_HOME", str(tmp_path / "home"))
    pre = write_pretrain(tmp_path, tmp_path / "home")
    cfg = write_grid(tmp_path, tiny_teacher_dir, methods=("sft",), seeds=(1, 2), with_refs=False, pretrain=pre)
    cc = load_compare_config(cfg)
    cell1 = cc.output_dir / "cells" / "sft-s1"
    cell1.mkdir(parents=True)
    holder = subprocess.Popen(  # "another worker": a live process holding sft-s1's lock
        [sys.executable, "-c", "import sys, time; from dwakd.train.rundir import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(cell1)],
        env=_env(), stdout=subprocess.PIPE, text=True)
    from dwakd.compare.status import format_status, grid_status

    def states():
        return {r["name"]: (r["state"], r["detail"]) for r in grid_status(load_compare_config(cfg))}

    try:
        assert holder.stdout.readline().strip() == "locked"
        st = states()
        assert st["sft-s1"][0] == "running" and f"pid {holder.pid} " in st["sft-s1"][1]
        assert st["sft-s2"] == ("pending", "")
        summary = run_grid(cc, progress=False)
        st = states()
        assert st["sft-s1"][0] == "running" and st["sft-s2"][0] == "done"
        cli = _compare(cfg, check=False)  # the command says so in its exit status: 75 (EX_TEMPFAIL)
    finally:
        holder.kill()
        holder.wait()
    assert summary["busy"] == ["sft-s1"]
    assert cli.returncode == 75 and "left to another process: sft-s1" in cli.stdout
    assert not (cell1 / "cell.json").exists()
    st = states()  # the holder is gone and wrote nothing: the cell restarts from scratch
    assert st["sft-s1"] == ("interrupted", "no step logged yet; no checkpoint, restarts")
    assert "1 done, 0 running, 1 interrupted, 0 pending" in format_status(cc, grid_status(cc))
    assert json.loads((cc.output_dir / "cells" / "sft-s2" / "cell.json").read_text())["done"]
    again = run_grid(load_compare_config(cfg), progress=False)  # the holder is gone: its lock is stale
    assert again["busy"] == [] and json.loads((cell1 / "cell.json").read_text())["done"]
    assert {s for s, _ in states().values()} == {"done"}
    assert not json.loads((cc.output_dir / "results.json").read_text())["pending"]

"""Report figures: real PNG files of sensible size; the report links them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from dwakd.errors import DataError
from dwakd.eval.plots import plot_alignment, plot_loss_curves, plot_metric_bars, token_labels, visible_token
from dwakd.eval.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _metrics(path, terms, n=40, scale=1.0):
    with open(path, "w") as fh:
        for step in range(0, n * 10, 10):
            fh.write(json.dumps({"step": step, "lr": 1e-3,
                                 **{t: scale * (k + 1) * (2.0 + np.exp(-step / 100)) for k, t in enumerate(terms)}}) + "\n")
    return path


def test_loss_curves(tmp_path):
    runs = {
        "sft": _metrics(tmp_path / "sft.jsonl", ["loss/ce"]),
        "dskd": _metrics(tmp_path / "dskd.jsonl", ["loss/ce", "loss/kd_stu", "loss/kd_tea"]),
        "dwa-kd": _metrics(tmp_path / "dwa.jsonl", ["loss/ce", "loss/kd_stu", "loss/kd_tea", "loss/sdtw"]),
    }
    out = plot_loss_curves(runs, tmp_path / "figs" / "loss.png", smooth=3, title="loss per term")
    w, h = png_size(out)
    assert 900 <= w <= 2000 and 250 <= h <= 1200
    assert out.stat().st_size > 20_000


def test_metric_bars_from_results_and_plain(tmp_path):
    results = [
        {"name": "teacher", "average": {"rougeL": {"mean": 24.1, "std": 0.5}, "bpb": 0.71}},
        {"name": "sft", "average": {"rougeL": {"mean": 12.3, "std": 1.1}, "bpb": 1.52}},
        {"name": "dwa-kd", "average": {"rougeL": {"mean": 14.0, "std": 0.9}, "bpb": float("nan")}},
    ]
    out = plot_metric_bars(results, tmp_path / "bars.png")
    w, h = png_size(out)
    assert 500 <= w <= 2000 and 250 <= h <= 800 and out.stat().st_size > 10_000
    out2 = plot_metric_bars({"a": {"rougeL": 10.0, "rougeL_std": 1.0, "bpb": 1.2}}, tmp_path / "bars2.png")
    assert png_size(out2)[0] > 300


def test_alignment_with_pairs_and_with_matrix(tmp_path, tiny_teacher, tiny_student):
    ttok, stok = tiny_teacher[1], tiny_student[1]
    text = "The capital of France is Paris.\nSpiders have 8 legs; cost $5."
    s_ids = stok(text, add_special_tokens=False)["input_ids"]
    t_ids = ttok(text, add_special_tokens=False)["input_ids"]
    s_lab, t_lab = token_labels(stok, s_ids), token_labels(ttok, t_ids)
    assert "↵" in "".join(t_lab)  # the newline is drawn visibly
    S, T = len(s_ids), len(t_ids)
    cost = torch.rand(S, T, generator=torch.Generator().manual_seed(0))
    path, i, j = [(0, 0)], 0, 0
    while (i, j) != (S - 1, T - 1):  # a monotone staircase from corner to corner
        if i < S - 1 and (j == T - 1 or i * T <= j * S):
            i += 1
        else:
            j += 1
        path.append((i, j))
    out = plot_alignment(cost, path, s_lab, t_lab, tmp_path / "align_path.png", title="student vs teacher")
    w, h = png_size(out)
    assert w >= 600 and h >= 400 and out.stat().st_size > 20_000
    soft = torch.zeros(S, T, dtype=torch.float64)
    for a, b in path:
        soft[a, b] = 1.0
    out2 = plot_alignment(cost.numpy(), soft / soft.sum(1, keepdim=True), s_lab, t_lab, tmp_path / "align_soft.png")
    assert out2.stat().st_size > 20_000
    with pytest.raises(DataError):
        plot_alignment(cost, [(S, 0)], s_lab, t_lab, tmp_path / "bad.png")
    with pytest.raises(DataError):
        plot_alignment(cost, path, s_lab[:-1], t_lab, tmp_path / "bad.png")


def test_visible_token():
    assert visible_token(" the") == "␣the"
    assert visible_token("\n\n") == "↵↵"
    assert visible_token("") == "∅"


def test_report_links_images_and_holds_the_table(tmp_path):
    img = plot_metric_bars({"a": {"rougeL": 10.0, "bpb": 1.2}}, tmp_path / "run" / "bars.png")
    results = {
        "name": "student", "model": "x", "prompt_format": "plain",
        "options": {"seeds": [1, 2], "limit": None,
                    "generation": {"greedy": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                   "max_prompt_tokens": 256, "max_length": 512, "max_new_tokens": None}},
        "sets": {"dolly": {"rougeL": {"mean": 11.0, "std": 0.5, "per_seed": {"1": 10.5, "2": 11.5}}}},
        "average": {"rougeL": {"mean": 11.0, "std": 0.5, "per_seed": {"1": 10.5, "2": 11.5}}, "bpb": 1.25,
                    "tokens_per_s": 100.0},
    }
    rep = write_report(tmp_path / "run" / "report.md", title="Demo", results=[results], images=[("bars", img)],
                       notes=["DWA-KD did not beat DSKD at this scale."])
    text = rep.read_text()
    assert "](bars.png)" in text
    assert "| student | 11.00 ± 0.50 | 1.250 | 100 |" in text
    assert "DWA-KD did not beat DSKD" in text and "cores" in text

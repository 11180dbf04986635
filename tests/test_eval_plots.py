"""Report figures: real PNG files whose plotted data (read back from the figure and from the PNG's
pixels) is what was given, checked against hand computations; the report links them."""

from __future__ import annotations

import json
import math
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


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions save, in order (the PNG is still written)."""
    from dwakd.eval import plots

    saved, real = [], plots._save

    def keep(fig, out_path):
        saved.append(fig)
        return real(fig, out_path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def png_has_colour(path, hex_colour: str, min_pixels: int = 20, tol: float = 0.02) -> bool:
    """True when at least ``min_pixels`` pixels of the PNG are within ``tol`` of ``hex_colour``."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    img = imread(str(path))[..., :3]
    return int((np.abs(img - np.array(to_rgb(hex_colour))).max(-1) < tol).sum()) >= min_pixels


def _metrics(path, terms, n=40, scale=1.0):
    with open(path, "w") as fh:
        for step in range(0, n * 10, 10):
            fh.write(json.dumps({"step": step, "lr": 1e-3,
                                 **{t: scale * (k + 1) * (2.0 + np.exp(-step / 100)) for k, t in enumerate(terms)}}) + "\n")
    return path


def test_loss_curves(tmp_path, figures):
    runs = {
        "sft": _metrics(tmp_path / "sft.jsonl", ["loss/ce"]),
        "dskd": _metrics(tmp_path / "dskd.jsonl", ["loss/ce", "loss/kd_stu", "loss/kd_tea"]),
        "dwa-kd": _metrics(tmp_path / "dwa.jsonl", ["loss/ce", "loss/kd_stu", "loss/kd_tea", "loss/sdtw"]),
    }
    out = plot_loss_curves(runs, tmp_path / "figs" / "loss.png", smooth=3, title="loss per term")
    w, h = png_size(out)
    assert 900 <= w <= 2000 and 250 <= h <= 1200
    # The plotted lines: one panel per run, one line per term, y = a hand moving average of 3.
    (fig,) = figures
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["sft", "dskd", "dwa-kd"]
    steps = np.arange(0, 400, 10, dtype=float)
    for ax, terms in zip(axes, (["ce"], ["ce", "kd_stu", "kd_tea"], ["ce", "kd_stu", "kd_tea", "sdtw"])):
        assert [ln.get_label() for ln in ax.get_lines()] == terms
        for k, ln in enumerate(ax.get_lines()):
            raw = [(k + 1) * (2.0 + math.exp(-s / 100)) for s in steps]
            hand = [sum(raw[max(0, i - 2): i + 1]) / min(i + 1, 3) for i in range(len(raw))]
            np.testing.assert_allclose(ln.get_xdata(), steps)
            np.testing.assert_allclose(ln.get_ydata(), hand, rtol=1e-12)
    # A term keeps its colour in every panel, and each colour is drawn in the PNG itself.
    colours = {ln.get_label(): ln.get_color() for ax in axes for ln in ax.get_lines()}
    assert colours == {"ce": "C0", "kd_stu": "C1", "kd_tea": "C2", "sdtw": "C3"}
    for hex_colour in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"):  # matplotlib's C0..C3
        assert png_has_colour(out, hex_colour), hex_colour


def _bars(ax):
    return [(round(p.get_x() + p.get_width() / 2, 6), p.get_height()) for p in ax.patches]


def test_metric_bars_from_results_and_plain(tmp_path, figures):
    results = [
        {"name": "teacher", "average": {"rougeL": {"mean": 24.1, "std": 0.5}, "bpb": 0.71}},
        {"name": "sft", "average": {"rougeL": {"mean": 12.3, "std": 1.1}, "bpb": 1.52}},
        {"name": "dwa-kd", "average": {"rougeL": {"mean": 14.0, "std": 0.9}, "bpb": float("nan")}},
    ]
    out = plot_metric_bars(results, tmp_path / "bars.png")
    w, h = png_size(out)
    assert 500 <= w <= 2000 and 250 <= h <= 800
    rouge_ax, bpb_ax = figures[0].axes
    assert _bars(rouge_ax) == [(0, 24.1), (1, 12.3), (2, 14.0)]
    assert _bars(bpb_ax) == [(0, 0.71), (1, 1.52), (2, 0.0)]  # a missing value is drawn as an empty bar
    assert [t.get_text() for t in bpb_ax.texts] == ["0.710", "1.520", "n/a"]
    assert [t.get_text() for t in rouge_ax.texts] == ["24.1", "12.3", "14.0"]
    # error bars: mean +- std, as vertical segments at each bar
    (errs,) = [c for c in rouge_ax.collections if len(c.get_segments()) == 3]
    assert [tuple(np.round(seg[:, 1], 6)) for seg in errs.get_segments()] == [(23.6, 24.6), (11.2, 13.4), (13.1, 14.9)]
    assert [t.get_text() for t in rouge_ax.get_xticklabels()] == ["teacher", "sft", "dwa-kd"]
    for hex_colour in ("#1f77b4", "#ff7f0e", "#2ca02c"):  # one bar colour per model, in the PNG
        assert png_has_colour(out, hex_colour, min_pixels=200), hex_colour
    out2 = plot_metric_bars({"a": {"rougeL": 10.0, "rougeL_std": 1.0, "bpb": 1.2}}, tmp_path / "bars2.png")
    assert png_size(out2)[0] > 300
    assert _bars(figures[1].axes[0]) == [(0, 10.0)] and _bars(figures[1].axes[1]) == [(0, 1.2)]


def test_alignment_with_pairs_and_with_matrix(tmp_path, tiny_teacher, tiny_student, figures):
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
    assert w >= 600 and h >= 400
    ax = figures[0].axes[0]
    (im,) = ax.get_images()
    np.testing.assert_array_equal(np.asarray(im.get_array()), cost.numpy().astype(float))  # rows = student
    (line,) = ax.get_lines()
    assert list(zip(line.get_ydata(), line.get_xdata())) == path  # (i, j) drawn at y = i, x = j
    assert png_has_colour(out, "red", min_pixels=50)  # the path is in the image
    def esc(labels):  # "$" is escaped for matplotlib (it would start mathtext)
        return [lab.replace("$", r"\$") for lab in labels]

    assert [t.get_text() for t in ax.get_yticklabels()] == esc(s_lab)
    assert [t.get_text() for t in ax.get_xticklabels()] == esc(t_lab)
    soft = torch.zeros(S, T, dtype=torch.float64)
    for a, b in path:
        soft[a, b] = 1.0
    soft = soft / soft.sum(1, keepdim=True)
    plot_alignment(cost.numpy(), soft, s_lab, t_lab, tmp_path / "align_soft.png")
    ax2 = figures[1].axes[0]
    (dots,) = ax2.collections
    cells = sorted((int(y), int(x)) for x, y in dots.get_offsets())
    assert cells == sorted(path)  # every weighted cell (all above 2 % of the peak) drawn as a dot
    (argmax,) = ax2.get_lines()
    # row argmax: a row's path cells share its weight equally, so the first (smallest) j wins
    np.testing.assert_array_equal(argmax.get_xdata(), [min(j for i2, j in path if i2 == i) for i in range(S)])
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

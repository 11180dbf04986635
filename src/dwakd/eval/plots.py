"""Matplotlib (Agg, no display, no pyplot state) figures for reports. Every function writes a PNG
and returns its path.

- :func:`plot_loss_curves`: one panel per method, one line per loss term, from metrics JSONL
  files (one JSON object per logged step: ``{"step": 10, "loss/ce": 2.1, "loss/kd_stu": 0.4}``).
- :func:`plot_run_curves`: a run's (or several runs') objective, dev loss, learning rates and loss terms
  from their ``metrics.jsonl`` (``dwakd plot``).
- :func:`plot_metric_bars`: ROUGE-L (mean ± std over seeds) and bits per byte per model.
- :func:`plot_alignment`: a Soft-DTW cost matrix ``[S, T]`` as a heatmap (student tokens down
  the rows, teacher tokens along the columns) with the alignment path on top, given as ``(i, j)``
  pairs or as an expected-alignment matrix ``[S, T]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dwakd.errors import DataError


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=fig.dpi, bbox_inches="tight")
    return out


def _escape(text: str) -> str:
    """Plain text for matplotlib (``$`` would start mathtext)."""
    return text.replace("$", r"\$")


# --- loss curves ----------------------------------------------------------------------------

def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics JSONL file (blank lines skipped)."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return rows


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < 2:
        return y
    window = min(window, len(y))
    kernel = np.ones(window) / window
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def plot_loss_curves(runs: Mapping[str, str | Path | Sequence[dict]], out_path: str | Path, *,
                     prefix: str = "loss/", smooth: int = 1, log_y: bool = False, title: str | None = None) -> Path:
    """One panel per method (``runs``: name -> metrics JSONL path or list of records), one line per
    key starting with ``prefix``; x is ``step`` (the record index when absent). ``smooth``: moving-
    average window in logged points."""
    data = {name: (read_metrics(src) if isinstance(src, str | Path) else list(src)) for name, src in runs.items()}
    if not data:
        raise DataError("plot_loss_curves: no runs given")
    n = len(data)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(4.6 * cols, 3.4 * rows)
    all_keys = sorted({key for recs in data.values() for r in recs for key in r if key.startswith(prefix)})
    color = {key: f"C{i % 10}" for i, key in enumerate(all_keys)}  # a term keeps its colour in every panel
    for k, (name, records) in enumerate(data.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        keys = sorted({key for r in records for key in r if key.startswith(prefix)})
        for key in keys:
            pts = [(r.get("step", i), r[key]) for i, r in enumerate(records)
                   if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
            if not pts:
                continue
            x = np.array([p[0] for p in pts], dtype=float)
            y = _moving_average(np.array([p[1] for p in pts], dtype=float), smooth)
            ax.plot(x, y, label=_escape(key[len(prefix):] or key), linewidth=1.4, color=color[key])
        ax.set_title(_escape(name))
        ax.set_xlabel("step")
        ax.set_ylabel("loss" + (" (log)" if log_y else ""))
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{prefix}*' keys", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(_escape(title))
    fig.tight_layout()
    return _save(fig, out_path)


def _series(records: Sequence[dict], key: str, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(records)
           if (kind is None or r.get("kind") == kind) and isinstance(r.get(key), int | float)
           and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def plot_run_curves(runs: Mapping[str, str | Path], out_path: str | Path, *, smooth: int = 1) -> Path:
    """Training curves of one or several runs (``runs``: name -> run directory or metrics.jsonl).

    Panels: the objective (train ``loss`` solid, ``dev/loss`` dashed with markers; one colour per run),
    the learning rate of every parameter group, and one panel per run with each loss term
    (``term/<name>``, per response token, before its rate).
    """
    data = {}
    for name, src in runs.items():
        path = Path(src) / "metrics.jsonl" if Path(src).is_dir() else Path(src)
        if not path.is_file():
            raise DataError(f"{src}: no metrics.jsonl (is it a dwakd run directory?)")
        data[name] = read_metrics(path)
    if not data:
        raise DataError("plot_run_curves: no runs given")
    n_panels = 2 + len(data)
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = _figure(4.6 * cols, 3.4 * rows)
    ax_loss, ax_lr = fig.add_subplot(rows, cols, 1), fig.add_subplot(rows, cols, 2)
    for k, (name, recs) in enumerate(data.items()):
        c = f"C{k % 10}"
        x, y = _series(recs, "loss", "train")
        if len(x):
            ax_loss.plot(x, _moving_average(y, smooth), color=c, linewidth=1.4, label=_escape(f"{name} train"))
        x, y = _series(recs, "dev/loss", "eval")
        if len(x):
            ax_loss.plot(x, y, color=c, linestyle="--", marker="o", markersize=3, label=_escape(f"{name} dev"))
        lr_keys = sorted({key for r in recs for key in r if key.startswith("lr/")})
        for j, key in enumerate(lr_keys):
            x, y = _series(recs, key, "train")
            if len(x):
                ax_lr.plot(x, y, color=c, linestyle=["-", ":", "--", "-."][j % 4], linewidth=1.2,
                           label=_escape(f"{name} {key[3:]}"))
        ax = fig.add_subplot(rows, cols, 3 + k)
        terms = sorted({key for r in recs for key in r if key.startswith("term/")})
        for j, key in enumerate(terms):
            x, y = _series(recs, key, "train")
            if len(x):
                ax.plot(x, _moving_average(y, smooth), color=f"C{j % 10}", linewidth=1.2, label=_escape(key[5:]))
        ax.set_title(_escape(f"{name}: loss terms"))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if terms:
            ax.legend(fontsize=7)
    ax_loss.set_title("objective per response token")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path)


# --- metric bars ----------------------------------------------------------------------------

def _bar_values(models) -> list[tuple[str, float, float, float]]:
    """(name, ROUGE-L mean, ROUGE-L std, bits/byte) from results dicts or plain mappings."""
    items = models.items() if isinstance(models, Mapping) else [(None, m) for m in models]
    out = []
    for key, m in items:
        if "average" in m:  # an evaluate() results dict
            avg = m["average"]
            name = key or m.get("name") or m.get("model", "?")
            out.append((name, avg["rougeL"]["mean"], avg["rougeL"]["std"], avg.get("bpb", float("nan"))))
        else:
            out.append((key or m["name"], float(m["rougeL"]), float(m.get("rougeL_std", 0.0)),
                        float(m.get("bpb", float("nan")))))
    return out


def plot_metric_bars(models: Sequence[dict] | Mapping[str, dict], out_path: str | Path, *,
                     title: str | None = None) -> Path:
    """Two bar panels: ROUGE-L (%, error bar = std over seeds; higher is better) and bits per byte of
    the references (lower is better). ``models``: :func:`~dwakd.eval.runner.evaluate` results, or
    ``{name: {"rougeL": .., "rougeL_std": .., "bpb": ..}}``."""
    vals = _bar_values(models)
    if not vals:
        raise DataError("plot_metric_bars: no models given")
    names = [_escape(v[0]) for v in vals]
    x = np.arange(len(vals))
    colors = [f"C{i % 10}" for i in range(len(vals))]
    fig = _figure(max(6.0, 1.5 * len(vals) + 3.0), 3.8)
    panels = [
        ("ROUGE-L (%)  ↑", [v[1] for v in vals], [v[2] for v in vals], "{:.1f}"),
        ("bits per byte of references  ↓", [v[3] for v in vals], None, "{:.3f}"),
    ]
    for k, (label, ys, errs, fmt) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        ys_plot = [0.0 if not math.isfinite(y) else y for y in ys]
        bars = ax.bar(x, ys_plot, yerr=errs, capsize=4, color=colors)
        for b, (bar, y) in enumerate(zip(bars, ys)):
            top = bar.get_height() + (errs[b] if errs and math.isfinite(errs[b]) else 0.0)  # above the error bar
            ax.annotate("n/a" if not math.isfinite(y) else fmt.format(y),
                        (bar.get_x() + bar.get_width() / 2, top),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(_escape(title))
    fig.tight_layout()
    return _save(fig, out_path)


# --- Soft-DTW alignment ---------------------------------------------------------------------

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_token(text: str) -> str:
    """A token's text with spaces/newlines/tabs drawn visibly (``"␣the"``, ``"↵"``)."""
    return "".join(_VISIBLE.get(c, c) for c in text) or "∅"


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Axis labels for token ids: the text each token adds to the decoded sequence (so a
    SentencePiece token keeps its leading space), whitespace made visible; a token that only
    completes part of a character falls back to its own decoding."""
    labels, prev = [], ""
    ids = [int(i) for i in ids]
    for k in range(len(ids)):
        cur = tokenizer.decode(ids[: k + 1])
        piece = cur[len(prev):] if cur.startswith(prev) and not prev.endswith("\ufffd") else tokenizer.decode([ids[k]])
        labels.append(visible_token(piece))
        prev = cur
    return labels


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _ticks(ax, axis: str, labels: Sequence[str], max_labels: int) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / max_labels))
    pos = list(range(0, n, step))
    text = [_escape(labels[p]) for p in pos]
    size = 9 if n <= 30 else 7 if n <= 60 else 6
    if axis == "x":
        ax.set_xticks(pos, text, rotation=90, fontsize=size)
    else:
        ax.set_yticks(pos, text, fontsize=size)


def plot_alignment(cost, path, student_tokens: Sequence[str], teacher_tokens: Sequence[str], out_path: str | Path, *,
                   title: str | None = None, cost_label: str = "cost", max_labels: int = 80) -> Path:
    """Heatmap of ``cost`` ``[S, T]`` with the alignment on top.

    ``path``: ``(i, j)`` pairs (student position ``i``, teacher position ``j``; a list or an integer
    array ``[K, 2]``; drawn as a line with markers) or an expected-alignment matrix ``[S, T]`` (a
    float array or tensor; each cell drawn as a dot
    whose area is proportional to its weight, plus the per-row argmax as a line).
    ``student_tokens`` / ``teacher_tokens`` label the rows / columns (see :func:`token_labels`).
    """
    c = _as_array(cost)
    if c.ndim != 2:
        raise DataError(f"plot_alignment: cost must be 2-D [S, T]; got shape {c.shape}")
    S, T = c.shape
    if len(student_tokens) != S or len(teacher_tokens) != T:
        raise DataError(f"plot_alignment: cost is {S}x{T} but got {len(student_tokens)} student and "
                        f"{len(teacher_tokens)} teacher tokens")
    fig = _figure(min(max(0.24 * T + 3.0, 6.0), 22.0), min(max(0.24 * S + 2.0, 5.0), 22.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(c, cmap="viridis", aspect="auto", interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.set_label(_escape(cost_label))
    p = path.detach().cpu().numpy() if hasattr(path, "detach") else path
    if isinstance(p, np.ndarray) and np.issubdtype(p.dtype, np.floating):  # a soft alignment matrix
        w = p.astype(float)
        if w.shape != (S, T):
            raise DataError(f"plot_alignment: alignment matrix must be {S}x{T}; got {w.shape}")
        peak = w.max() if w.size and w.max() > 0 else 1.0
        ii, jj = np.nonzero(w > 0.02 * peak)
        ax.scatter(jj, ii, s=110 * w[ii, jj] / peak, c="red", alpha=0.75, linewidths=0, label="expected alignment")
        ax.plot(w.argmax(1), np.arange(S), color="white", linewidth=1.0, alpha=0.8, label="row argmax")
    else:
        pairs = [(int(i), int(j)) for i, j in p]
        bad = [(i, j) for i, j in pairs if not (0 <= i < S and 0 <= j < T)]
        if bad:
            raise DataError(f"plot_alignment: path cells {bad[:3]} lie outside the {S}x{T} cost matrix")
        if pairs:
            ax.plot([j for _, j in pairs], [i for i, _ in pairs], color="red", linewidth=2.0, marker="o",
                    markersize=4, label="alignment path")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    _ticks(ax, "x", teacher_tokens, max_labels)
    _ticks(ax, "y", student_tokens, max_labels)
    ax.set_xlabel("teacher tokens")
    ax.set_ylabel("student tokens")
    ax.set_title(_escape(title) if title else "Soft-DTW alignment over the cost matrix")
    fig.tight_layout()
    return _save(fig, out_path)

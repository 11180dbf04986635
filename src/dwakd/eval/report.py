"""A Markdown report: title, date and machine, the results table, the protocol, figures, notes.

Images are linked relative to the report's folder (copy or write them beside it), so the
report renders on GitHub and in any Markdown viewer.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from dwakd.eval.runner import protocol_note, results_markdown


def machine_summary() -> str:
    """``"<CPU model>, <n> cores, torch <version>, <OS>"`` (GPU name when CUDA is available)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [cpu, f"{cores} cores"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:  # pragma: no cover
        pass
    parts.append(platform.system())
    return ", ".join(parts)


def _rel(image: Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(image).resolve(), base.resolve()).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return Path(image).resolve().as_uri()


def write_report(path: str | Path, *, title: str, results: Sequence[dict] = (),
                 images: Sequence[tuple[str, str | Path]] = (), notes: str | Sequence[str] = (),
                 intro: str | None = None, sections: Sequence[tuple[str, str]] = (),
                 machine: str | None = None, date: datetime | None = None) -> Path:
    """Write the report to ``path`` (``.md``) and return it.

    ``results``: :func:`~dwakd.eval.runner.evaluate` dicts, one table row each; ``images``:
    ``(caption, png path)``; ``notes``: bullet points (or one paragraph); ``sections``: extra
    ``(heading, markdown body)`` blocks placed after the figures.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    when = (date or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M %Z").strip()
    lines = [f"# {title}", "", f"_{when} · {machine or machine_summary()}_", ""]
    if intro:
        lines += [intro.strip(), ""]
    if results:
        lines += ["## Results", "", results_markdown(list(results)).rstrip(), "", protocol_note(results[0]), ""]
    if images:
        lines += ["## Figures", ""]
        for caption, img in images:
            lines += [f"![{caption}]({_rel(Path(img), out.parent)})", "", f"*{caption}*", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    if notes:
        lines += ["## Notes", ""]
        if isinstance(notes, str):
            lines += [notes.strip(), ""]
        else:
            lines += [f"- {n}" for n in notes] + [""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out

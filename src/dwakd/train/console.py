"""What a training run prints: one process prints, the progress bar carries loss / lr / tokens per second
(tqdm shows the ETA), and each dev evaluation is one line.

Library noise is turned down in :func:`quiet_libraries` (Accelerate's per-file checkpoint INFO lines,
the "Writing model shards" / "Saving the dataset" bars); ``dwakd -v`` keeps them.
"""

from __future__ import annotations

import logging


def quiet_libraries(verbose: bool = False) -> None:
    """Hide Accelerate's INFO lines and the transformers / datasets progress bars unless ``verbose``."""
    if verbose:
        return
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _lr(out: dict) -> float | None:
    for key in ("lr/student", "lr/student_no_decay", "lr/projectors"):
        if key in out:
            return out[key]
    lrs = [v for k, v in out.items() if k.startswith("lr/")]
    return lrs[0] if lrs else None


def progress_postfix(out: dict) -> dict[str, str]:
    """Postfix of the progress bar after a good step: loss, student lr, input tokens per second."""
    post = {"loss": f"{out['loss']:.4f}"}
    lr = _lr(out)
    if lr is not None:
        post["lr"] = f"{lr:.2e}"
    if out.get("step_time_s"):
        post["tok/s"] = f"{out['n_input'] / out['step_time_s']:.0f}"
    return post


def dev_line(step: int, total: int, ev: dict) -> str:
    """``step 40/120 dev: loss 2.3456, ce 2.1000, ...`` (every dev term, per response token)."""
    terms = [f"{k.removeprefix('dev/')} {v:.4f}" for k, v in ev.items() if k != "dev/n_tokens" and isinstance(v, float)]
    return f"step {step}/{total} dev: " + ", ".join(terms)


def console(accelerator, text: str) -> None:
    """Print ``text`` on the main process only, without breaking a tqdm bar."""
    if accelerator is not None and not accelerator.is_main_process:
        return
    from tqdm.auto import tqdm

    tqdm.write(text)

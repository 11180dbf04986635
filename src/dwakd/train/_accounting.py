"""Bookkeeping for the training loop (:mod:`dwakd.train.loop`).

- step counts: :func:`total_steps_for`, :func:`token_counts`, :func:`advance_state`;
- one optimizer step's loss terms: :class:`StepSums` (token sums and method stats kept on the
  device, read back in one host sync that also names the non-finite terms) and
  :func:`step_metrics` (the step's metrics from the process-reduced sums);
- logging: :class:`TrainInterval` (the averages of a ``train`` metrics record) and
  :func:`flat_config` (the config as flat scalars for trackers);
- dev results: :func:`would_be_best`, :func:`add_best` and :func:`run_summary`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from dwakd.config import DwakdConfig, config_to_dict
from dwakd.train.checkpoint import TrainerState
from dwakd.train.sampler import StepPlan


# ----------------------------------------------------------------------------- step counts
def total_steps_for(cfg: DwakdConfig, plan: StepPlan) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return cfg.train.epochs * plan.steps_per_epoch


def token_counts(batches) -> list[float]:
    """This process's student response tokens, student input tokens and examples over a step's micro-batches."""
    return [
        float(sum(int(b.student.target_mask.sum()) for b in batches)),
        float(sum(int(b.student.attention_mask.sum()) for b in batches)),
        float(sum(b.batch_size for b in batches)),
    ]


def advance_state(st: TrainerState, plan: StepPlan, step: int, out: dict) -> None:
    """Count optimizer step ``step`` (0-based, metrics ``out``) in ``st``: position, examples and tokens
    seen, and the bad-step counters (or the last train loss of a good step)."""
    st.global_step = step + 1
    st.epoch, st.step_in_epoch = plan.locate(st.global_step)
    st.examples_seen += int(out["n_examples"])
    st.tokens_seen += int(out["n_tokens"])
    if "bad" in out:
        st.consecutive_bad_steps += 1
        st.bad_steps_total += 1
    else:
        st.consecutive_bad_steps = 0
        st.last_train_loss = out["loss"]


# ----------------------------------------------------------------------------- one step's terms
class StepSums:
    """One optimizer step's loss-term token sums and method stats, on the device until one host sync."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None  # [total, *terms] token sums, on the device (one sync per step)
        self.stats: dict[str, list[torch.Tensor]] = defaultdict(list)  # stays on the device until the one sync
        self.nonfinite_in: torch.Tensor | None = None  # NaN/+inf in the models' logits or hidden states

    def add(self, terms, total: torch.Tensor, flag: torch.Tensor | None) -> None:
        """Add one micro-batch: its ``LossTerms``, their ``total`` and the model's non-finite-inputs flag."""
        if self.names is None:
            self.names = list(terms.terms)
            self.sums = torch.zeros(len(self.names) + 1, dtype=self.dtype, device=self.device)
        self.sums += torch.stack([total.detach().to(self.dtype)]
                                 + [terms.terms[n].detach().to(self.dtype) for n in self.names])
        if flag is not None:
            self.nonfinite_in = (flag.to(self.device) if self.nonfinite_in is None
                                 else self.nonfinite_in | flag.to(self.device))
        for k, v in terms.stats.items():
            self.stats[k].append(torch.as_tensor(v).detach().to(device=self.device, dtype=self.dtype).reshape(()))

    def host_sync(self) -> tuple[list[float], dict, set[str]]:
        """The step's one host sync: this process's term sums and method stats as floats, and the bad terms."""
        sums, stats = self.sums, self.stats
        host = torch.cat([sums] + [torch.stack(v) for v in stats.values()]).tolist()
        local, pos, stat_means = host[:len(sums)], len(sums), {}
        for k, v in stats.items():
            stat_means[k], pos = sum(host[pos:pos + len(v)]) / len(v), pos + len(v)
        # (a non-finite micro-batch value makes its sum non-finite)
        bad_terms = {n for n, v in zip(self.names, local[1:]) if not math.isfinite(v)}
        if not math.isfinite(local[0]):
            bad_terms.add("total")
        if self.nonfinite_in is not None and bool(self.nonfinite_in):
            bad_terms.add("logits")
        return local, stat_means, bad_terms


def step_metrics(counts: tuple[float, float, float], grad_norm: float, reduced: torch.Tensor,
                 names: list[str], stat_means: dict) -> dict:
    """A step's metrics: token counts ``(n_tok, n_input, n_examples)``, gradient norm, and the
    token-normalised loss and terms from the process-reduced sums ``[total, *terms, ...]``."""
    n_tok, n_input, n_examples = counts
    out = {"n_tokens": n_tok, "n_input": n_input, "n_examples": n_examples, "grad_norm": grad_norm,
           "loss": reduced[0].item() / n_tok}
    out.update({f"term/{n}": reduced[1 + k].item() / n_tok for k, n in enumerate(names)})
    out.update({f"stat/{k}": v for k, v in stat_means.items()})
    return out


def bad_step_reasons(bad_terms: set[str], grad_norm: float) -> list[str]:
    """What made a skipped step bad: its non-finite terms, else the gradient or another process."""
    return sorted(bad_terms) or (["gradient"] if not math.isfinite(grad_norm) else ["a term on another process"])


# ----------------------------------------------------------------------------- logging
class TrainInterval:
    """The train metrics of the steps since the last ``train`` record (averaged over its good steps)."""

    def __init__(self):
        self._iv: dict = defaultdict(float)

    def add(self, out: dict) -> None:
        iv = self._iv
        iv["steps"] += 1
        iv["time"] += out["step_time_s"]
        iv["n_input"] += out["n_input"]
        if "bad" not in out:
            iv["good"] += 1
            for k, v in out.items():
                if k.startswith(("loss", "term/", "stat/")):
                    iv[k] += v

    def record(self, out: dict) -> dict:
        """The interval's averages, with the learning rates, gradient norm and token count of the last step ``out``."""
        iv = self._iv
        good = max(1.0, iv["good"])
        rec = {k: iv[k] / good for k in iv if k.startswith(("loss", "term/", "stat/"))}
        rec.update({k: v for k, v in out.items() if k.startswith("lr/")})
        rec.update({
            "grad_norm": out["grad_norm"], "n_tokens": out["n_tokens"],
            "tokens_per_s": iv["n_input"] / max(iv["time"], 1e-9), "step_time_s": iv["time"] / iv["steps"],
        })
        return rec


def flat_config(cfg: DwakdConfig) -> dict:
    """The config as flat scalars (for tracker hyper-parameter tables)."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(config_to_dict(cfg), "")
    return out


# ----------------------------------------------------------------------------- dev results
def would_be_best(best: list[dict], keep_best_n: int, dev_loss: float) -> bool:
    """Whether ``dev_loss`` would enter the ``keep_best_n`` best checkpoints ``best``."""
    if keep_best_n <= 0:
        return False
    losses = sorted(b["dev_loss"] for b in best)
    return len(losses) < keep_best_n or dev_loss < losses[keep_best_n - 1]


def add_best(best: list[dict], step: int, dev_loss: float, keep_best_n: int) -> list[dict]:
    """``best`` with step ``step`` added, sorted by dev loss and cut to ``max(1, keep_best_n)``."""
    best = sorted(best + [{"step": step, "dev_loss": dev_loss}], key=lambda b: b["dev_loss"])
    return best[: max(1, keep_best_n)]


def run_summary(st: TrainerState, total_steps: int) -> dict:
    """The run's summary metrics: steps, bad steps, last train loss and best dev loss."""
    out = {"global_step": st.global_step, "total_steps": total_steps, "bad_steps_total": st.bad_steps_total}
    if st.last_train_loss is not None:
        out["last_train_loss"] = st.last_train_loss
    if st.best:
        out["best_dev_loss"] = st.best[0]["dev_loss"]
        out["best_dev_step"] = st.best[0]["step"]
    return out

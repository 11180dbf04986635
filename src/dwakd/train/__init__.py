"""Training: ``train(cfg)`` on Hugging Face Accelerate, ``dry_run(cfg)``, checkpoints and metrics.

- :func:`train` (:mod:`dwakd.train.run`): the whole run; :class:`TrainResult`.
- :func:`dry_run` (:mod:`dwakd.train.dryrun`): the report ``dwakd train --dry-run`` prints.
- Modules: ``data`` (the only caller of :mod:`dwakd.data`), ``sampler`` (data order per step),
  ``teacher`` (frozen teacher, the one teacher forward), ``student`` (load/build, LoRA),
  ``module`` (student + projectors), ``optim``, ``engine``, ``loop``, ``checkpoint``,
  ``metrics``, ``rundir``.
"""

from dwakd.train.dryrun import dry_run
from dwakd.train.loop import NonFiniteLossError, TrainResult
from dwakd.train.run import train

__all__ = ["NonFiniteLossError", "TrainResult", "dry_run", "train"]

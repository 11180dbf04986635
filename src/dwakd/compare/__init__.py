"""``dwakd compare``: a grid of methods x training seeds from one base config, evaluated and reported.

Layer: above :mod:`dwakd.eval`, :mod:`dwakd.train` and :mod:`dwakd.pretrain`; only the CLI imports it.
"""

from dwakd.compare.config import CompareConfig, load_compare_config
from dwakd.compare.runner import run_grid
from dwakd.compare.stats import mean_std, paired_difference, t975

__all__ = ["CompareConfig", "load_compare_config", "mean_std", "paired_difference", "run_grid", "t975"]

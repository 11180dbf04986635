"""Pretraining a built student (its own tokenizer) as a causal LM on a text corpus.

Layer: above :mod:`dwakd.models` and :mod:`dwakd.config`; nothing below imports it.
"""

from dwakd.pretrain.config import (
           CorpusSource,
           PretrainConfig,
           load_pretrain_config,
           pretrain_config_from_dict,
)
from dwakd.pretrain.run import describe, ensure_pretrained, heldout_bits_per_byte

__all__ = ["CorpusSource", "PretrainConfig", "describe", "ensure_pretrained", "heldout_bits_per_byte",
           "load_pretrain_config", "pretrain_config_from_dict"]

"""The cross-tokenizer data layer.

- Records (:mod:`dwakd.data.records`): :func:`load_records` reads Dolly / Alpaca / MiniLLM-DSKD /
  chat / ShareGPT / prompt-completion data from any source :mod:`dwakd.data.sources` opens (JSONL/JSON
  read with ``file:line`` errors; CSV/TSV/Parquet/Arrow, ``save_to_disk`` folders and hub names through
  ``datasets``), with format detection, field mapping and counted skips.
- The paper's sets (:mod:`dwakd.data.prepare`): ``dwakd data prepare NAME`` with provenance.
- Prompts (:mod:`dwakd.data.prompts`): :func:`format_prompt`, per side (chat template or the plain
  Dolly/MiniLLM template).
- Encoding (:mod:`dwakd.data.encode`): :func:`encode_pair` / :func:`encode_record` /
  :func:`encode_dataset` tokenize each example for both models with character spans of every
  response token; truncation and BOS/EOS rules are documented there. One side's tokenization and
  the span rules: :mod:`dwakd.data.tokenization`.
- Collation (:mod:`dwakd.data.collate`): :func:`collate_pairs` -> :class:`PairBatch` (the contract
  in :mod:`dwakd.data.batch`); :func:`collate_prompts` -> left-padded generation batches.
"""

from dwakd.data.batch import IGNORE_INDEX, PairBatch, SideBatch
from dwakd.data.collate import PairCollator, PromptBatch, collate_pairs, collate_prompts, collate_side
from dwakd.data.encode import (
    EncodedDataset,
    EncodedPair,
    EncodedSide,
    EncodeStats,
    canonical_spans,
    encode_dataset,
    encode_pair,
    encode_record,
    prompt_ids,
    response_tokens,
)
from dwakd.data.prompts import PLAIN_TEMPLATE, PLAIN_TEMPLATE_NO_INPUT, format_prompt, plain_prompt
from dwakd.data.records import FORMATS, LoadResult, Record, detect_format, load_records

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "PLAIN_TEMPLATE",
    "PLAIN_TEMPLATE_NO_INPUT",
    "EncodeStats",
    "EncodedDataset",
    "EncodedPair",
    "EncodedSide",
    "LoadResult",
    "PairBatch",
    "PairCollator",
    "PromptBatch",
    "Record",
    "SideBatch",
    "canonical_spans",
    "collate_pairs",
    "collate_prompts",
    "collate_side",
    "detect_format",
    "encode_dataset",
    "encode_pair",
    "encode_record",
    "format_prompt",
    "load_records",
    "plain_prompt",
    "prompt_ids",
    "response_tokens",
]

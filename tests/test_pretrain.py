"""dwakd pretrain: WikiText detokenization, held-out bits per byte against a naive loop, caching."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from _compare_helpers import write_pretrain
from dwakd.errors import ConfigError
from dwakd.pretrain import heldout_bits_per_byte, load_pretrain_config
from dwakd.pretrain.corpus import detokenize_wikitext, is_heldout, wikitext_articles


def test_detokenize_wikitext_hand_examples():
    raw = 'The <unk> ship , built in 1 @,@ 200 @-@ ton class ( 3 @.@ 5 m ) , wasn \'t " new " .'
    assert detokenize_wikitext(raw) == 'The ship, built in 1,200-ton class (3.5 m), wasn\'t "new".'
    assert detokenize_wikitext("a <unk> b", unk="UNK") == "a UNK b"


def test_wikitext_articles_split_on_level_one_headings():
    raw = (" \n = Alpha = \n \n Alpha is a letter . \n \n = = History = = \n \n It is old . \n"
           " = Beta = \n Beta follows , naturally . \n")
    assert wikitext_articles(raw) == ["Alpha\nAlpha is a letter.\nHistory\nIt is old.",
                                      "Beta\nBeta follows, naturally."]


def test_heldout_split_is_a_pure_function_of_the_text():
    docs = [f"document number {i}" for i in range(400)]
    held = [d for d in docs if is_heldout(d, 0.25)]
    assert 60 < len(held) < 140  # about a quarter
    assert [d for d in reversed(docs) if is_heldout(d, 0.25)] == held[::-1]


def _naive_bits(model, tok, doc: str, block: int) -> float:
    """Token by token: position j of [EOS]+ids is scored with the context its window gives it."""
    s = [tok.eos_token_id] + tok(doc, add_special_tokens=False)["input_ids"]
    total = 0.0
    for j in range(1, len(s)):
        start = ((j - 1) // (block - 1)) * (block - 1)
        ctx = torch.tensor([s[start:j]])
        with torch.no_grad():
            logits = model(input_ids=ctx).logits[0, -1].double()
        total += -(torch.log_softmax(logits, -1)[s[j]]).item() / math.log(2.0)
    return total


def test_bits_per_byte_matches_a_naive_token_loop(tiny_teacher):
    model, tok = tiny_teacher
    docs = ["The quick brown fox jumps over the lazy dog. " * 3, "Short one.", "Ünïcödé text — with bytes."]
    block = 8  # documents span several windows
    got = heldout_bits_per_byte(model, tok, docs, block)
    bits = sum(_naive_bits(model, tok, d, block) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert got["bytes"] == n_bytes
    assert got["bits"] == pytest.approx(bits, rel=1e-4)
    assert got["bpb"] == pytest.approx(bits / n_bytes, rel=1e-4)


def test_pretrain_learns_is_cached_and_loads_as_a_plain_hf_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dwakd.pretrain import ensure_pretrained

    cfg_path = write_pretrain(tmp_path, tmp_path / "home")
    cfg = load_pretrain_config(cfg_path)
    out, rep = ensure_pretrained(cfg, progress=False)
    assert rep["bpb_after"]["bpb"] < rep["bpb_before"]["bpb"]
    assert not rep.get("reused")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    out2, rep2 = ensure_pretrained(load_pretrain_config(cfg_path), progress=False)
    assert out2 == out and rep2["reused"] and (out / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    again = heldout_bits_per_byte(model, tok, ["Some held-out text."], 32)
    assert math.isfinite(again["bpb"])
    # Another corpus (or config) is another cache entry.
    cfg3 = load_pretrain_config(cfg_path, ["train.lr=0.001"])
    cfg3.output_dir = None
    from dwakd.pretrain.corpus import load_corpus
    from dwakd.pretrain.run import pretrain_key

    tr, he = load_corpus(cfg.corpus, cfg.heldout_fraction)
    assert pretrain_key(cfg3, tr, he) != pretrain_key(cfg, tr, he)
    assert pretrain_key(cfg, tr[:-1], he) != pretrain_key(cfg, tr, he)


def test_pretrain_config_errors_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"student": {"hiden_size": 3}, "corpus": [{"kind": "text"}]}))
    with pytest.raises(ConfigError) as e:
        load_pretrain_config(p)
    msg = str(e.value)
    assert "bad.yaml" in msg and "student.hiden_size" in msg and "corpus[0]" in msg


def test_teacher_only_source_options_do_not_move_other_corpora_keys(tmp_path):
    """A cached pretrained student stays valid when sources gain options they do not use."""
    import dataclasses

    from dwakd.pretrain.run import pretrain_key

    cfg = load_pretrain_config(write_pretrain(tmp_path, tmp_path / "home"))
    docs = (["a document"], ["held out"])
    key = pretrain_key(cfg, *docs)
    other = dataclasses.replace(cfg, corpus=[dataclasses.replace(s, seed=9, max_new_tokens=7) for s in cfg.corpus])
    assert pretrain_key(other, *docs) == key
    teacher = dataclasses.replace(cfg.corpus[0], kind="teacher", name="t", limit=3)
    a = dataclasses.replace(cfg, corpus=[teacher])
    b = dataclasses.replace(cfg, corpus=[dataclasses.replace(teacher, seed=9)])
    assert pretrain_key(a, *docs) != pretrain_key(b, *docs)

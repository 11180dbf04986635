"""Pretrain a built student as a causal LM; the result is a plain Hugging Face model directory.

``ensure_pretrained(cfg)`` returns ``$DWAKD_HOME/pretrained/<key>`` (or ``cfg.output_dir``), where
``key`` hashes the config (minus ``output_dir``) and every document of the corpus (a teacher-written
corpus by its own key, so a cached student is reused before any teacher loads): a second call with
the same config and data reuses it. The directory holds the model, the student's own tokenizer
(trained on the training documents) and ``pretrain.json`` (corpus sizes, steps, seconds, the loss
curve, and bits per byte on the held-out documents before and after). It is written atomically:
an interrupted pretraining leaves nothing behind and starts again from scratch.

Bits per byte (:func:`heldout_bits_per_byte`): each held-out document is encoded as
``[EOS] + tokens(doc)`` (EOS is the document separator of training) and every token after the EOS is
scored once, with the preceding tokens of the document as context (windows of ``block_size``
tokens, each starting with the last token of the previous window). bpb = total bits / total UTF-8
bytes of the scored documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from dwakd.config.typed import dataclass_to_dict
from dwakd.models import StudentSpec, build_student
from dwakd.models.home import atomic_directory, dwakd_home
from dwakd.pretrain.config import PretrainConfig
from dwakd.pretrain.corpus import load_corpus, read_source, split_heldout

log = logging.getLogger(__name__)
MARKER = "pretrain.json"


TEACHER_ONLY = ("max_new_tokens", "seed", "batch_size")


def pretrain_key(cfg: PretrainConfig, train_docs: list[str], held_docs: list[str]) -> str:
    """Key of a pretrained student: the config (minus where things live) and the documents.

    ``train_docs`` / ``held_docs`` are the split documents of the sources read from files or
    ``datasets``. A ``teacher`` source counts by its corpus key (teacher identity, prompts, sampling;
    :func:`~dwakd.pretrain.teacher_corpus.corpus_key`) rather than by its text, so a cached student is
    found before any teacher generates; its generation ``batch_size`` does not count (documents do
    not depend on it)."""
    from dwakd.pretrain.teacher_corpus import corpus_key, seed_prompts

    h = hashlib.sha256()
    spec = dataclass_to_dict(cfg)
    spec.pop("output_dir", None)
    spec["student"].pop("cache_dir", None)
    for src, obj in zip(spec["corpus"], cfg.corpus):
        src.pop("path", None)  # the content counts, not where it lives
        if src.get("kind") != "teacher":  # options of the teacher kind only: keys of other corpora stay as they were
            for name in TEACHER_ONLY:
                src.pop(name, None)
        else:
            src.pop("batch_size", None)
            src["corpus_key"] = corpus_key(obj.name, seed_prompts(obj.limit, obj.seed), obj.max_new_tokens, obj.seed)
    h.update(json.dumps(spec, sort_keys=True).encode())
    for tag, docs in ((b"T", train_docs), (b"H", held_docs)):
        for d in docs:
            h.update(tag)
            h.update(d.encode("utf-8"))
    return h.hexdigest()[:16]


def _spec(b) -> StudentSpec:
    return StudentSpec(family=b.family, hidden_size=b.hidden_size, num_layers=b.num_layers, num_heads=b.num_heads,
                       intermediate_size=b.intermediate_size, max_positions=b.max_positions,
                       tokenizer_kind=b.tokenizer_kind, vocab_size=b.vocab_size, add_bos=b.add_bos,
                       tie_embeddings=b.tie_embeddings, seed=b.seed)


def _cap_bytes(docs: list[str], max_bytes: int) -> list[str]:
    out, total = [], 0
    for d in docs:
        n = len(d.encode("utf-8"))
        if out and total + n > max_bytes:
            break
        out.append(d)
        total += n
    return out


@torch.no_grad()
def heldout_bits_per_byte(model, tokenizer, docs: list[str], block_size: int, *, bf16: bool = False) -> dict:
    """``{"bpb", "bits", "bytes", "tokens", "docs"}`` of ``docs`` under ``model`` (see the module doc)."""
    model.eval()
    eos = tokenizer.eos_token_id
    bits, n_bytes, n_tok = 0.0, 0, 0
    for doc in docs:
        ids = [eos] + tokenizer(doc, add_special_tokens=False)["input_ids"]
        start = 0
        while start < len(ids) - 1:
            window = ids[start : start + block_size]
            x = torch.tensor([window])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=x).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            tgt = x[0, 1:]
            bits += float(-logp.gather(1, tgt[:, None]).sum()) / math.log(2.0)
            n_tok += len(window) - 1
            start += block_size - 1
        n_bytes += len(doc.encode("utf-8"))
    return {"bpb": bits / n_bytes if n_bytes else float("nan"), "bits": bits, "bytes": n_bytes, "tokens": n_tok,
            "docs": len(docs)}


def token_blocks(tokenizer, docs: list[str], block_size: int) -> torch.Tensor:
    """``[n_blocks, block_size]`` ids of the documents concatenated with EOS after each (tail dropped)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        stream.append(eos)
    n = len(stream) // block_size
    if n == 0:
        from dwakd.errors import DataError

        raise DataError(f"corpus: {len(stream)} tokens do not fill one block of {block_size}")
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


def _lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    return f


def train_lm(model, blocks: torch.Tensor, t, *, progress: bool = True) -> list[dict]:
    """AdamW + warm-up + cosine on shuffled blocks (shuffled per epoch with ``t.seed``); returns the loss log."""
    g = torch.Generator().manual_seed(t.seed)
    per_epoch = math.ceil(len(blocks) / t.batch_size)
    total = t.max_steps or per_epoch * t.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(t.warmup_ratio * total), t.min_lr_ratio))
    model.train()
    log_rows, step, t0, order = [], 0, time.time(), torch.empty(0, dtype=torch.long)
    while step < total:
        if len(order) == 0:
            order = torch.randperm(len(blocks), generator=g)
        idx, order = order[: t.batch_size], order[t.batch_size:]
        x = blocks[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % t.log_every == 0 or step == total:
            row = {"step": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0], "seconds": time.time() - t0}
            log_rows.append(row)
            if progress:
                eta = (time.time() - t0) / step * (total - step)
                print(f"pretrain step {step}/{total} loss {row['loss']:.3f} ({row['seconds']:.0f}s, ETA {eta:.0f}s)",
                      flush=True)
    model.eval()
    return log_rows


def pretrained_dir(cfg: PretrainConfig, key: str) -> Path:
    return Path(cfg.output_dir).expanduser() if cfg.output_dir else dwakd_home() / "pretrained" / key


def ensure_pretrained(cfg: PretrainConfig, *, progress: bool = True, force: bool = False) -> tuple[Path, dict]:
    """``(directory, report)`` of the pretrained student, pretraining it once if needed."""
    # files and datasets: read once here (their text is the key); teacher sources count by their key
    read = {id(s): read_source(s) for s in cfg.corpus if s.kind != "teacher"}
    key = pretrain_key(cfg, *split_heldout([d for docs in read.values() for d in docs], cfg.heldout_fraction))
    out = pretrained_dir(cfg, key)
    if (out / MARKER).is_file() and not force:
        report = json.loads((out / MARKER).read_text())
        if report.get("key") == key:
            report["reused"] = True
            return out, report
    # Not cached: now read every source, letting teacher sources generate (or reuse) their corpus.
    train_docs, held_docs = load_corpus(cfg.corpus, cfg.heldout_fraction,
                                        read=lambda s: read[id(s)] if id(s) in read else read_source(s))
    torch.manual_seed(cfg.train.seed)
    t_start = time.time()
    held = _cap_bytes(held_docs, cfg.max_heldout_bytes)
    with atomic_directory(out) as tmp:
        model, tok = build_student(_spec(cfg.student), train_docs)
        blocks = token_blocks(tok, train_docs, cfg.train.block_size)
        if progress:
            print(f"pretrain: {len(train_docs)} documents -> {blocks.numel():,} tokens in {len(blocks)} blocks; "
                  f"{len(held)} held-out documents; {sum(p.numel() for p in model.parameters()):,} parameters",
                  flush=True)
        before = heldout_bits_per_byte(model, tok, held, cfg.train.block_size, bf16=cfg.train.bf16)
        t_train = time.time()
        curve = train_lm(model, blocks, cfg.train, progress=progress)
        train_s = time.time() - t_train
        after = heldout_bits_per_byte(model, tok, held, cfg.train.block_size, bf16=cfg.train.bf16)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        report = {"key": key, "config": dataclass_to_dict(cfg), "train_docs": len(train_docs),
                  "heldout_docs": len(held), "train_tokens": int(blocks.numel()), "steps": curve[-1]["step"] if curve else 0,
                  "train_seconds": train_s, "total_seconds": time.time() - t_start,
                  "bpb_before": before, "bpb_after": after, "curve": curve,
                  "torch_threads": torch.get_num_threads()}
        (tmp / MARKER).write_text(json.dumps(report, indent=2))
    return out, report


def describe(report: dict) -> str:
    b, a = report["bpb_before"]["bpb"], report["bpb_after"]["bpb"]
    return (f"held-out bits per byte {b:.3f} -> {a:.3f} ({report['heldout_docs']} documents, "
            f"{report['bpb_after']['bytes']:,} bytes); {report['steps']} steps in {report['train_seconds']:.0f}s")


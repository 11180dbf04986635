"""MinED (Wan et al. 2024, FuseLLM), METHOD.md section 6.

1. Token alignment: per example, DTW over the two responses' token strings with an edit-distance
   cost (:func:`dwakd.align.mined_token_alignment`), giving monotone pairs ``(i, j)`` of response
   indices (``i``: the i-th student response token, ``j``: the j-th teacher response token).
2. Vocabulary map: teacher id -> student id by minimum edit distance
   (:func:`dwakd.align.build_vocab_map`; ``-1`` = unmapped).
3. At an aligned student position the target is the teacher's distribution gathered into the
   student vocabulary: ``z_t->s[v] = max{ z_t[u] : map[u] = v }`` (many-to-one merged by max),
   ``-inf`` where no teacher id maps to ``v``; the term is ``KL(softmax(z_t->s / T) || softmax(z_s / T))``.
   Elsewhere the target is the one-hot gold token (the term is the student's gold NLL at ``T``).

Which positions count as aligned (option ``match``) [I]: ``one_to_one`` (default) when the student
token has exactly one DTW partner and that teacher token has no other student partner;
``single_teacher`` also accepts several student tokens sharing one teacher token.

``preset: dskd-code`` reproduces the official DSKD criterion (the one the paper's MinED numbers ran
with): temperature 2.0, DTW over the INPUT tokens at the response positions with the official
tie order (``dtw_ties: teacher-first``), ``single_teacher`` AND ``student id == map(teacher id)``
(``require_id_match``), many-to-one keeps the FIRST (lowest) teacher id (``many_to_one: first``).
Remaining differences from the official code: the edit distance strips both ``Ġ`` and ``▁`` (and a
WordPiece ``##``) on both sides, where the official code strips each tokenizer's own marker only
(identical for GPT-2/Qwen/Llama tokens unless a token holds the other marker); the vocabulary map
is dwakd's own (:func:`dwakd.align.build_vocab_map`) unless ``vocab_map_path`` loads the official
``tea2stu_id_mapping`` (converted to a tensor).

What the trainer must do (the method never sees tokenizers otherwise): call
``method.attach_tokenizers(student_tokenizer, teacher_tokenizer)`` once after building it
(:func:`dwakd.train.engine.call_method_hooks` does). That builds (or
loads from the align module's cache) the vocabulary map, unless ``vocab_map_path`` is set, and
keeps the tokenizers to compute alignments of batches that do not carry them. A batch may carry
precomputed alignments in ``batch.extras["mined_pairs"]``: a list (one entry per example) of
``(i, j)`` response-index pairs (a list of tuples or an ``[n, 2]`` long tensor), or one ``[B, P, 2]``
long tensor padded with ``-1``. Alignments computed here are cached per example (keyed by both
sides' response token ids), so each distinct example is aligned once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from dwakd.config.typed import option
from dwakd.errors import ConfigError
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions, TeacherNeeds
from dwakd.methods.rows import (
    chunk_size_for,
    chunked_rows,
    gold_log_probs,
    rank_table,
    row_source,
    rows_to_logits,
    upcast,
)

DSKD_CODE = {"temperature": 2.0, "align_tokens": "input", "match": "single_teacher", "require_id_match": True,
             "many_to_one": "first", "dtw_ties": "teacher-first"}


@dataclass
class MinEDOptions(MethodOptions):
    """Options of :class:`MinED`.

    Presets: ``default`` is FuseLLM's criterion as METHOD.md section 6 describes it (DTW over the
    response tokens each position predicts, one-to-one pairs, many-to-one merged by max, T = 1);
    ``dskd-code`` reproduces the official DSKD criterion the paper's MinED numbers were run with
    (T = 2.0, DTW over the input tokens, a student position accepted only with exactly one DTW
    partner AND student id == map(teacher id), many-to-one keeps the first teacher id, DTW ties
    broken as its ``dtw(teacher, student)`` call does).
    """

    PRESETS = {"default": {}, "dskd-code": DSKD_CODE}

    preset: Literal["default", "dskd-code"] = option(
        "default", "default: FuseLLM's criterion as METHOD.md describes it. dskd-code: the official DSKD criterion "
        "(temperature 2.0, DTW over input tokens, one partner AND id match, many-to-one keeps the first teacher id). "
        "Explicit options override the preset.")
    kd_rate: float = option(0.5, "Objective (1 - kd_rate) ce + kd_rate kd (DSKD code base convention).", ge=0, le=1)
    temperature: float = option(1.0, "Softmax temperature of both sides in the kd term (the DSKD scripts use 2.0).", gt=0)
    align_tokens: Literal["target", "input"] = option(
        "target", "Tokens the DTW aligns at the response positions: target (the token each position predicts) or "
        "input (the token fed at that position, as the official code).")
    match: Literal["one_to_one", "single_teacher"] = option(
        "one_to_one", "Which DTW pairs count as aligned: one_to_one (the student token has exactly one partner and that "
        "teacher token no other student partner) or single_teacher (exactly one partner; teacher tokens may be shared).")
    require_id_match: bool = option(False, "Also require student id == map(teacher id) of the aligned tokens (official).")
    many_to_one: Literal["max", "first"] = option(
        "max", "Several teacher ids mapping to one student id: max (merge their logits by max) or first (keep the lowest "
        "teacher id, as the official mapping file read in id order).")
    dtw_ties: Literal["student-first", "teacher-first"] = option(
        "student-first", "DTW back-tracking on ties: diagonal, then a student step (student-first) or a teacher step "
        "(teacher-first, as the official dtw(teacher_tokens, student_tokens)).")
    vocab_map_path: str | None = option(
        None, "A torch.save'd 1-D long tensor (teacher id -> student id, -1 unmapped) or a dwakd vocab-map cache file; "
              "when set the map is not built from the tokenizers.")
    cache_size: int = option(100_000, "Token alignments kept in memory (cleared when full).", ge=0)
    chunk_positions: int | None = option(None, "Positions per chunk; null = about 2M vocabulary entries a chunk.", ge=1)

    def validate(self, where: str = "method") -> None:
        if self.vocab_map_path is not None and not Path(self.vocab_map_path).is_file():
            raise ConfigError(f"{where}.vocab_map_path: no such file {self.vocab_map_path}")


def aligned_partner(pairs, n_student: int, n_teacher: int, match: str = "one_to_one") -> list[int]:
    """Per student response index, the teacher response index it takes its target from, or -1.

    ``pairs``: DTW pairs ``(i, j)``; pairs outside ``[0, n_student) x [0, n_teacher)`` are dropped.
    """
    partners: list[list[int]] = [[] for _ in range(n_student)]
    t_count = [0] * n_teacher
    for i, j in pairs:
        i, j = int(i), int(j)
        if 0 <= i < n_student and 0 <= j < n_teacher:
            partners[i].append(j)
            t_count[j] += 1
    out = []
    for js in partners:
        ok = len(js) == 1 and (match == "single_teacher" or t_count[js[0]] == 1)
        out.append(js[0] if ok else -1)
    return out


def gather_to_student_vocab(teacher_logits, cols, dst, student_width: int) -> torch.Tensor:
    """``[n, V_s]`` float32: ``out[:, v] = max{ teacher_logits[:, u] : u in cols, dst[u] = v }``, else -inf.

    ``cols``: ``[K]`` teacher ids that have a student image; ``dst``: ``[K]`` their student ids.
    """
    src = upcast(teacher_logits).index_select(1, cols)
    out = torch.full((src.shape[0], student_width), float("-inf"), dtype=src.dtype, device=src.device)
    return out.scatter_reduce_(1, dst.unsqueeze(0).expand(src.shape[0], -1), src, reduce="amax")


def mapped_kl(student_logits, mapped_teacher, temperature: float = 1.0) -> torch.Tensor:
    """``[n]`` ``KL(softmax(mapped_teacher / T) || softmax(student_logits / T))``; ``-inf`` teacher
    entries have probability 0 and contribute nothing (no NaN)."""
    logp_t = F.log_softmax(mapped_teacher / temperature, dim=-1)
    p_t = logp_t.exp()
    logp_s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    return (p_t * (logp_t.masked_fill(p_t == 0, 0.0) - logp_s)).sum(-1)


class MinED(DistillMethod):
    """Terms (token sums over student response positions):

    - ``ce``: student cross-entropy on the gold tokens.
    - ``kd``: KL to the mapped teacher distribution at aligned positions, gold NLL elsewhere.
    """

    name = "mined"
    supports_zero3 = True  # reads student logits only through its forward (materialised under ZeRO-3)
    description = "MinED (FuseLLM): edit-distance DTW token alignment and vocabulary map, KL where aligned"
    Options = MinEDOptions

    def teacher_needs(self) -> TeacherNeeds:
        """Teacher logits at the response positions only."""
        return TeacherNeeds(hidden=False, embeddings=False)

    def __init__(self, student, teacher, options: MinEDOptions):
        super().__init__(student, teacher, options)
        # a plain attribute, not a buffer: no DDP buffer broadcast, no checkpoint entry
        self.vocab_map = torch.empty(0, dtype=torch.long)
        self._gather_index: tuple | None = None  # (device, width, cols, dst), see _columns
        self._tokenizers = None
        self._cache: dict[tuple, list[tuple[int, int]]] = {}
        if options.vocab_map_path is not None:
            saved = torch.load(options.vocab_map_path, map_location="cpu", weights_only=True)
            # a bare tensor, or a cache file of dwakd.align.build_vocab_map ({"map": tensor, ...})
            self.set_vocab_map(saved["map"] if isinstance(saved, dict) else saved)

    # --------------------------------------------------------------- set-up the trainer calls
    def attach_tokenizers(self, student_tokenizer, teacher_tokenizer) -> None:
        """Give the method its tokenizers (call once before training). Builds the vocabulary
        map with :func:`dwakd.align.build_vocab_map` (cached on disk by the align module) unless
        one was loaded from ``vocab_map_path`` or set with :meth:`set_vocab_map`."""
        self._tokenizers = (student_tokenizer, teacher_tokenizer)
        if self.vocab_map.numel() == 0:
            from dwakd.align import build_vocab_map

            self.set_vocab_map(build_vocab_map(teacher_tokenizer, student_tokenizer, cache=True))

    def set_vocab_map(self, vocab_map) -> None:
        """Use ``vocab_map`` (1-D, teacher id -> student id, -1 unmapped)."""
        vm = torch.as_tensor(vocab_map, dtype=torch.long).reshape(-1)
        if not bool((vm >= 0).any()):
            raise ConfigError("MinED vocabulary map maps no teacher token to a student token")
        if bool((vm < -1).any()):
            raise ConfigError("MinED vocabulary map holds ids below -1 (use -1 for unmapped)")
        self.vocab_map = vm.cpu()
        self._gather_index = None

    def _columns(self, device, teacher_width: int, student_width: int):
        """(cols, dst) on ``device``: teacher ids below ``teacher_width`` with a student image, and
        that image. Cached per device and width."""
        key = (device, teacher_width)
        if self._gather_index is None or self._gather_index[:2] != key:
            width = min(self.vocab_map.numel(), teacher_width)
            cols = (self.vocab_map[:width] >= 0).nonzero().squeeze(1)  # ascending teacher ids
            dst = self.vocab_map[cols]
            if self.options.many_to_one == "first" and cols.numel():
                # keep, per student id, only the lowest teacher id mapping to it
                first = torch.full((int(dst.max()) + 1,), cols.numel(), dtype=torch.long)
                first.scatter_reduce_(0, dst, cols, reduce="amin")
                keep = first[dst] == cols
                cols, dst = cols[keep], dst[keep]
            top = int(dst.max()) if dst.numel() else -1
            self._gather_index = (*key, cols.to(device), dst.to(device), top)
        cols, dst, top = self._gather_index[2:]
        if top >= student_width:
            raise ConfigError(
                f"MinED vocabulary map points at student id {top} but the student has {student_width} logits"
            )
        if not cols.numel():
            raise ConfigError(f"MinED vocabulary map maps none of the teacher's {teacher_width} logits")
        return cols, dst

    # --------------------------------------------------------------- alignments
    def _pairs_for_batch(self, batch) -> list:
        """Per example, DTW pairs of response indices (from extras, the cache, or computed)."""
        extra = batch.extras.get("mined_pairs")
        bsz = batch.batch_size
        if extra is not None:
            if torch.is_tensor(extra):
                return [[(int(i), int(j)) for i, j in row.tolist() if i >= 0 and j >= 0] for row in extra]
            if len(extra) != bsz:
                raise ConfigError(f"batch.extras['mined_pairs'] has {len(extra)} entries for {bsz} examples")
            return [p.tolist() if torch.is_tensor(p) else p for p in extra]
        if self._tokenizers is None:
            raise ConfigError(
                "MinED needs token alignments: call method.attach_tokenizers(student_tokenizer, teacher_tokenizer) "
                "once before training, or give batches extras['mined_pairs']"
            )
        from dwakd.align import mined_token_alignment

        s_tok, t_tok = self._tokenizers
        out = []
        for b in range(bsz):
            s_ids = _response_ids(batch.student, b, self.options.align_tokens)
            t_ids = _response_ids(batch.teacher, b, self.options.align_tokens)
            key = (s_ids, t_ids)
            pairs = self._cache.get(key)
            if pairs is None:
                s_toks, t_toks = s_tok.convert_ids_to_tokens(list(s_ids)), t_tok.convert_ids_to_tokens(list(t_ids))
                if self.options.dtw_ties == "teacher-first":  # DTW over (teacher, student), pairs swapped back
                    pairs = [(int(i), int(j)) for j, i in mined_token_alignment(t_toks, s_toks)]
                else:
                    pairs = [(int(i), int(j)) for i, j in mined_token_alignment(s_toks, t_toks)]
                if len(self._cache) >= self.options.cache_size:
                    self._cache.clear()
                if self.options.cache_size:
                    self._cache[key] = pairs
            out.append(pairs)
        return out

    # --------------------------------------------------------------- loss
    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        opts: MinEDOptions = self.options
        if self.vocab_map.numel() == 0:
            raise ConfigError(
                "MinED has no vocabulary map: call method.attach_tokenizers(student_tokenizer, teacher_tokenizer) "
                "once before training, or set the option vocab_map_path"
            )
        (s_x, s_w), (t_x, t_w) = row_source(student_out), row_source(teacher_out, detach=True)
        smask, tmask = batch.student.target_mask.bool(), batch.teacher.target_mask.bool()
        n_s, n_t = smask.sum(1).tolist(), tmask.sum(1).tolist()
        partner = []
        for b, pairs in enumerate(self._pairs_for_batch(batch)):
            partner.extend(aligned_partner(pairs, n_s[b], n_t[b], opts.match))
        device = s_x.device
        s_batch, s_pos = smask.nonzero(as_tuple=True)
        j = torch.tensor(partner, dtype=torch.long, device=device)
        aligned = j >= 0
        t_table = rank_table(tmask)
        t_pos = torch.where(aligned, t_table[s_batch, j.clamp(min=0)], 0)
        if opts.require_id_match:  # student id == map(teacher id) of the aligned tokens
            ids = "input_ids" if opts.align_tokens == "input" else "target_ids"
            s_id = getattr(batch.student, ids)[s_batch, s_pos]
            t_id = getattr(batch.teacher, ids)[s_batch, t_pos].clamp(min=0)
            vm = self.vocab_map.to(device)
            mapped = torch.where(t_id < vm.numel(), vm[t_id.clamp(max=vm.numel() - 1)], -1)
            aligned = aligned & (mapped == s_id)

        gold = batch.student.target_ids[s_batch, s_pos]
        zs = s_x[s_batch, s_pos]  # logits rows, or hidden rows (logits formed per chunk)
        v_s, v_t = student_out.vocab_size, teacher_out.vocab_size
        cols, dst = self._columns(device, v_t, v_s)
        temp = opts.temperature

        def per_chunk(zs_c, tb_c, tp_c, gold_c, aligned_c):
            # teacher rows gathered per chunk (no grad); unaligned rows zeroed (never padding values)
            zs_c = rows_to_logits(zs_c, s_w)
            zt_c = rows_to_logits(t_x[tb_c, tp_c], t_w).masked_fill(~aligned_c.unsqueeze(1), 0)
            ce = -gold_log_probs(zs_c, gold_c)
            if temp == 1.0:
                one_hot = ce
            else:
                one_hot = -gold_log_probs(zs_c, gold_c, temp)
            kl = mapped_kl(zs_c, gather_to_student_vocab(zt_c, cols, dst, zs_c.shape[-1]), temp)
            return ce, torch.where(aligned_c, kl, one_hot)

        chunk = chunk_size_for(max(v_s, v_t), opts.chunk_positions)
        ce, kd = chunked_rows(per_chunk, zs, s_batch, t_pos, gold, aligned, chunk=chunk)
        return LossTerms(
            terms={"ce": ce.sum(), "kd": kd.sum()},
            n_tokens=smask.sum(),
            rates={"ce": 1.0 - opts.kd_rate, "kd": opts.kd_rate},
            stats={"mined_aligned_frac": aligned.float().sum() / max(aligned.numel(), 1)},
        )


def _response_ids(side, b: int, which: str = "target") -> tuple[int, ...]:
    """Example ``b``'s ids at its response positions, in order: the ``target`` ids (what the positions
    predict) or the ``input`` ids (what is fed there)."""
    ids = side.target_ids if which == "target" else side.input_ids
    return tuple(ids[b][side.target_mask[b].bool()].tolist())


__all__ = ["MinED", "MinEDOptions", "aligned_partner", "gather_to_student_vocab", "mapped_kl"]

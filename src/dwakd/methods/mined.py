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

import torch
import torch.nn.functional as F

from dwakd.errors import ConfigError
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions
from dwakd.methods.uld import check_rate, chunk_size_for, chunked_rows, gold_log_probs, rank_table, upcast

MATCH_RULES = ("one_to_one", "single_teacher")


@dataclass
class MinEDOptions(MethodOptions):
    """Options of :class:`MinED`.

    - ``kd_rate`` (0.5): objective ``(1 - kd_rate) * ce + kd_rate * kd`` (DSKD code base convention).
    - ``temperature`` (1.0): softmax temperature of both sides in the ``kd`` term [I].
    - ``match`` (``one_to_one``): which DTW pairs count as aligned (module docstring) [I].
    - ``vocab_map_path`` (None): a ``torch.save``d 1-D long tensor, teacher id -> student id (-1
      unmapped), or a cache file written by :func:`dwakd.align.build_vocab_map`; when set,
      :meth:`MinED.attach_tokenizers` does not build the map.
    - ``cache_size`` (100000): alignments kept in memory (cleared when full).
    - ``chunk_positions`` (None): positions per chunk; None = about 2M vocabulary entries a chunk.
    """

    kd_rate: float = 0.5
    temperature: float = 1.0
    match: str = "one_to_one"
    vocab_map_path: str | None = None
    cache_size: int = 100_000
    chunk_positions: int | None = None

    def validate(self, where: str = "method") -> None:
        check_rate(where, "kd_rate", self.kd_rate, upper=1.0)
        if not self.temperature > 0:
            raise ConfigError(f"{where}.temperature must be > 0, got {self.temperature!r}")
        if self.match not in MATCH_RULES:
            raise ConfigError(f"{where}.match must be one of {MATCH_RULES}, got {self.match!r}")
        if self.vocab_map_path is not None and not Path(self.vocab_map_path).is_file():
            raise ConfigError(f"{where}.vocab_map_path: no such file {self.vocab_map_path}")
        if self.cache_size < 0:
            raise ConfigError(f"{where}.cache_size must be >= 0, got {self.cache_size!r}")
        if self.chunk_positions is not None and self.chunk_positions < 1:
            raise ConfigError(f"{where}.chunk_positions must be >= 1 or null, got {self.chunk_positions!r}")


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
    description = "MinED (FuseLLM): edit-distance DTW token alignment and vocabulary map, KL where aligned"
    Options = MinEDOptions

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
            cols = (self.vocab_map[:width] >= 0).nonzero().squeeze(1)
            dst = self.vocab_map[cols]
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
            s_ids = _response_ids(batch.student, b)
            t_ids = _response_ids(batch.teacher, b)
            key = (s_ids, t_ids)
            pairs = self._cache.get(key)
            if pairs is None:
                pairs = [
                    (int(i), int(j))
                    for i, j in mined_token_alignment(s_tok.convert_ids_to_tokens(list(s_ids)), t_tok.convert_ids_to_tokens(list(t_ids)))
                ]
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
        s_logits, t_logits = student_out.logits, teacher_out.logits.detach()
        smask, tmask = batch.student.target_mask.bool(), batch.teacher.target_mask.bool()
        n_s, n_t = smask.sum(1).tolist(), tmask.sum(1).tolist()
        partner = []
        for b, pairs in enumerate(self._pairs_for_batch(batch)):
            partner.extend(aligned_partner(pairs, n_s[b], n_t[b], opts.match))
        device = s_logits.device
        s_batch, s_pos = smask.nonzero(as_tuple=True)
        j = torch.tensor(partner, dtype=torch.long, device=device)
        aligned = j >= 0
        t_table = rank_table(tmask)
        t_pos = torch.where(aligned, t_table[s_batch, j.clamp(min=0)], 0)

        gold = batch.student.target_ids[s_batch, s_pos]
        zs = s_logits[s_batch, s_pos]
        cols, dst = self._columns(device, t_logits.shape[-1], zs.shape[-1])
        temp = opts.temperature

        def per_chunk(zs_c, tb_c, tp_c, gold_c, aligned_c):
            # teacher rows gathered per chunk (no grad); unaligned rows zeroed (never padding values)
            zt_c = t_logits[tb_c, tp_c].masked_fill(~aligned_c.unsqueeze(1), 0)
            ce = -gold_log_probs(zs_c, gold_c)
            if temp == 1.0:
                one_hot = ce
            else:
                one_hot = -gold_log_probs(zs_c, gold_c, temp)
            kl = mapped_kl(zs_c, gather_to_student_vocab(zt_c, cols, dst, zs_c.shape[-1]), temp)
            return ce, torch.where(aligned_c, kl, one_hot)

        chunk = chunk_size_for(max(zs.shape[-1], t_logits.shape[-1]), opts.chunk_positions)
        ce, kd = chunked_rows(per_chunk, zs, s_batch, t_pos, gold, aligned, chunk=chunk)
        return LossTerms(
            terms={"ce": ce.sum(), "kd": kd.sum()},
            n_tokens=smask.sum(),
            rates={"ce": 1.0 - opts.kd_rate, "kd": opts.kd_rate},
            stats={"mined_aligned_frac": float(aligned.float().mean()) if aligned.numel() else 0.0},
        )


def _response_ids(side, b: int) -> tuple[int, ...]:
    """Example ``b``'s response target ids in order (what its response positions predict)."""
    return tuple(side.target_ids[b][side.target_mask[b].bool()].tolist())


__all__ = ["MinED", "MinEDOptions", "aligned_partner", "gather_to_student_vocab", "mapped_kl"]

"""ALM: approximate likelihood matching (Minixhofer et al. 2025, arXiv 2503.20083; tokenkit).

Idea. Two tokenizers split the same response text differently, but wherever both have a token
boundary at the same character, the text between two such common boundaries (a **chunk**) is
spelled by a contiguous run of tokens on each side. The likelihood a model gives to a chunk is the
product of its tokens' gold probabilities, and the two models' chunk likelihoods are comparable
without any vocabulary map. ALM matches them with a binarised f-divergence.

Chunks from character spans. Every response position carries the character span of its target
token (:attr:`dwakd.data.batch.SideBatch.target_spans`). A character offset ``c > 0`` is a
boundary of one side when no span of that side straddles it (``start < c < end``). Candidate
offsets are the span ends of both sides; the common boundaries are the candidates that are
boundaries of both. The chunk of a position is the number of common boundaries ``<= start`` of
its span, so the chunk ids agree across the two sides by construction (same characters). A chunk
counts only when both sides have at least one token in it (a whitespace-only token that one side
has and the other folds into the next word is skipped [I]). An empty span (the appended EOS, a
prepended Metaspace marker) joins the chunk that starts at its offset, so the two EOS tokens form
their own chunk. Everything is vectorised over the batch (``[B, K, L]`` boolean comparisons,
``K = L_s + L_t`` candidates): no per-example Python loop.

Loss (per micro-batch, token sums as every method; ``a`` = ``kd_rate``):

- ``ce``     = student gold cross-entropy over its response positions            (rate 1 - a)
- ``alm``    = sum over counted chunks of ``w(chunk) f(log P_t(chunk), log P_s(chunk))``
  (rate ``a * alm_weight``); ``log P(chunk)`` = sum of the side's gold log-probabilities in the
  chunk (temperature 1), clipped at 0; ``w`` = 1 (``chunk_weight: chunk``, tokenkit's default
  ``chunk_count``) or the number of teacher tokens in the chunk (``teacher_tokens``).
- ``hidden`` (only when ``hidden_rate > 0``): the optional hidden-state term. At each counted
  chunk, the last-layer hidden state that has read the chunk's last token (position
  ``last + 1`` in dwakd's target convention) on each side; the student's goes through a
  ``d_s -> d_t`` linear projector (tokenkit's ``latents_do_project``, needed when the widths
  differ); squared error per channel divided by the channel's mean square over the micro-batch's
  teacher states (tokenkit's ``l2_channelwise``; ``l2`` divides by one scalar), averaged over
  channels, summed over chunks (rate ``a * hidden_rate``).

Divergences ``f(lt, ls)`` on chunk log-likelihoods, with ``T = binarization_temp`` and ``e`` =
1e-6 (tokenkit's constant); ``y = exp(log P / T - e)`` turns each chunk likelihood into the
probability of a Bernoulli event:

- ``binary_ce`` (tokenkit default): ``-(y_t log y_s + (1 - y_t) log(1 - y_s))``.
- ``binary_kl`` [I]: ``binary_ce`` minus the teacher's binary entropy (same gradient, 0 at match).
- ``reverse_binary_kl``: ``KL(Bern(y_s) || Bern(y_t))``.
- ``abs_exp``: ``|y_t - y_s|``.
- ``abs``: ``|log P_t - log P_s|`` (no binarisation; the first ALM variant, "legacy" in tokenkit).

Normalisation [I]: tokenkit divides the chunk sum by the mean number of chunks; dwakd divides every
term by the number of student response tokens of the optimizer step (METHOD.md section 5), so the
``alm`` term here is a per-student-token rate (chunks per token is about 1 for similar tokenizers).

Debiasing (tokenkit's ``alm_mode``; ``tokenkit/training/losses.py`` ``compute_alm_loss``). A chunk's
likelihood alone is biased by where each tokenizer may end a token ("the cat" is also the start of
"the cats"). tokenkit multiplies it by the probability that a word ends there, i.e. that the NEXT
token starts with whitespace or is special (a boundary both tokenizations share):

- space probability of a chunk, per side: the softmax mass that side's model puts, right after the
  chunk's last token, on its whitespace-initial ids (token text begins with a space, newline or tab)
  and special ids (EOS ...): tokenkit's ``space_mask_mode = "space+tab+newline+special"``
  (``tokenkit/utils.py`` ``get_space_mask``; dwakd reads each tokenizer's own spelling, see
  :func:`dwakd.methods._alm_space.space_initial_mask`). In dwakd's target convention that is the
  logits row at ``last + 1``, computed for those rows only, chunk by chunk. Log clipped at 0.
- ``append_space``: each side adds its chunk's log space probability to the chunk log-likelihood
  (the student's with gradient: its whole softmax row at ``last + 1``).
- ``merge_by_space_prob``: consecutive counted chunks merge into one, closing at a chunk whose
  *teacher* space probability exceeds ``space_prob_threshold`` (tokenkit's
  ``tokenizer_pair_bias_threshold``); a merged chunk sums its members' log-likelihoods and token
  counts and takes the space probability of its last member.
- [I] A chunk whose next position is not a response position on both sides (the EOS chunk, the
  end of a truncated response) has no space term and closes a merged chunk; tokenkit reads the row
  after the last token whatever it holds (the prediction after EOS). Uncounted chunks take no part
  in merging. The hidden term keeps the unmerged chunks (tokenkit's latents loss has its own).

Which is tokenkit's default: ``scripts/cross_tokenizer_distill.py`` ``CrossTokenizerDistillArgs``
declares ``alm_mode = "merge_by_space_prob+append_space"`` and ``tokenizer_pair_bias_threshold =
0.1`` (its ``docs/tokenizer_transfer.md`` and ``examples/*.sh`` use exactly this, with
``losses=[sft,alm_unconstrained]``, the chunks dwakd builds): ``preset: tokenkit``. dwakd's default
(``preset: plain``) keeps plain chunk likelihoods (no tokenizer needed), as before.

Left out (documented, not implemented): the ``alm_unbiased`` chunk kind of tokenkit's YAML configs
(the paper's setting, per ``docs/tokenizer_transfer.md``; ``tokenkit/align.py`` ``get_unbiased_alignments``: a chunk closes only where
precomputed tokenizer-pair bias matrices ``bias1_matrix.npz`` / ``bias2_matrix.npz`` from
``scripts/compute_tokenizer_info.py`` are below the threshold; needs those corpus statistics);
``alm_mode`` ``eos_as_space`` (the EOS probability instead of the space mass); tokenkit's logit mask
dropping padded vocabulary entries from the softmax (dwakd normalises over the full logits width,
as its gold log-probabilities do); ``distill_chunk_sizes`` (deprecated upstream, always 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dwakd.config.typed import option
from dwakd.errors import ConfigError
from dwakd.methods._alm_space import ChunkSums, debias_chunks, space_initial_mask
from dwakd.methods.base import DistillMethod, LossTerms, MethodOptions
from dwakd.methods.rows import gold_cross_entropy

ALM_DIVERGENCES = ("binary_ce", "binary_kl", "reverse_binary_kl", "abs_exp", "abs")
CHUNK_WEIGHTS = ("chunk", "teacher_tokens")
HIDDEN_NORMS = ("l2_channelwise", "l2")
EPS = 1e-6
TOKENKIT_DEFAULT = {"append_space": True, "merge_by_space_prob": True}  # alm_mode of CrossTokenizerDistillArgs


# ----------------------------------------------------------------------------- chunks from spans
@dataclass
class Chunks:
    """Chunk ids of both sides: ``student`` ``[B, L_s]``, ``teacher`` ``[B, L_t]`` long (``-1``
    outside the response); ``n_chunks`` = the id range per example (``K``)."""

    student: torch.Tensor
    teacher: torch.Tensor
    n_chunks: int


def span_chunks(student_spans, student_mask, teacher_spans, teacher_mask) -> Chunks:
    """Chunk ids from the two sides' target spans (see the module docstring)."""
    s_sp, t_sp = student_spans.long(), teacher_spans.long()
    s_m, t_m = student_mask.bool() & (s_sp[..., 0] >= 0), teacher_mask.bool() & (t_sp[..., 0] >= 0)
    neg = torch.full((), -1, dtype=torch.long, device=s_sp.device)
    cand = torch.cat([torch.where(s_m, s_sp[..., 1], neg), torch.where(t_m, t_sp[..., 1], neg)], dim=1)

    def straddled(sp, m):  # [B, K]: some real span of this side has start < c < end
        c = cand[:, :, None]
        return ((sp[:, None, :, 0] < c) & (c < sp[:, None, :, 1]) & m[:, None, :]).any(-1)

    ok = (cand > 0) & ~straddled(s_sp, s_m) & ~straddled(t_sp, t_m)
    big = torch.iinfo(torch.long).max
    ordered = torch.sort(torch.where(ok, cand, big), dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    bounds = torch.where(first & (ordered != big), ordered, big)  # unique common boundaries

    def ids(sp, m):
        n = (bounds[:, None, :] <= sp[:, :, 0:1]).sum(-1)
        return torch.where(m, n, neg)

    return Chunks(ids(s_sp, s_m), ids(t_sp, t_m), int(cand.shape[1]) + 1)


# ----------------------------------------------------------------------------- divergences
def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of log(1/2)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def chunk_divergence(kind: str, log_pt: torch.Tensor, log_ps: torch.Tensor, temp: float) -> torch.Tensor:
    """Elementwise ``f(log P_t, log P_s)`` (see the module docstring) for chunk log-likelihoods."""
    if kind == "abs":
        return (log_pt - log_ps).abs()
    lt, ls = log_pt / temp - EPS, log_ps / temp - EPS
    if kind == "abs_exp":
        return (lt.exp() - ls.exp()).abs()
    if kind in ("binary_ce", "binary_kl"):
        yt = lt.exp()
        out = -(yt * ls + (1 - yt) * _log1mexp(ls))
        if kind == "binary_kl":
            out = out + (yt * lt + (1 - yt) * _log1mexp(lt))
        return out
    if kind == "reverse_binary_kl":
        ys = ls.exp()
        return ys * (ls - lt) + (1 - ys) * (_log1mexp(ls) - _log1mexp(lt))
    raise ValueError(f"unknown ALM divergence {kind!r}")


# ----------------------------------------------------------------------------- options
@dataclass
class ALMOptions(MethodOptions):
    """Options of :class:`ALM`.

    Presets: ``plain`` (default) matches plain chunk likelihoods; ``tokenkit`` is tokenkit's default
    ``alm_mode = "merge_by_space_prob+append_space"`` (``scripts/cross_tokenizer_distill.py``), which
    needs the tokenizers (:meth:`ALM.attach_tokenizers`, called by the trainer).

    - ``kd_rate`` (0.5): objective ``(1 - kd_rate) ce + kd_rate (alm_weight alm + hidden_rate hidden)``
      (the DSKD code base convention the paper's baselines ran in; tokenkit trains ALM alone).
    - ``alm_weight`` (1.0): weight of the chunk-likelihood term.
    - ``divergence`` (``binary_ce``): one of binary_ce, binary_kl, reverse_binary_kl, abs_exp, abs.
    - ``binarization_temp`` (100.0): T of the binarised divergences (tokenkit's default).
    - ``chunk_weight`` (``chunk``): ``chunk`` (every chunk counts once) or ``teacher_tokens``.
    - ``hidden_rate`` (0.0): weight of the hidden-state term; > 0 creates a ``d_s -> d_t`` projector.
    - ``hidden_norm`` (``l2_channelwise``): per-channel (or ``l2``: one scalar) teacher mean square.
    - ``append_space`` (False; ``tokenkit``: True): add each side's log space probability to every chunk.
    - ``merge_by_space_prob`` (False; ``tokenkit``: True): merge chunks until the teacher's space
      probability exceeds ``space_prob_threshold`` (0.1, tokenkit's ``tokenizer_pair_bias_threshold``).
    """

    PRESETS = {"plain": {}, "tokenkit": TOKENKIT_DEFAULT}

    preset: Literal["plain", "tokenkit"] = option(
        "plain", "plain: chunk likelihoods without debiasing. tokenkit: tokenkit's default alm_mode "
        "merge_by_space_prob+append_space (reads the tokenizers). Explicit options override the preset.")
    kd_rate: float = option(0.5, "Objective (1 - kd_rate) ce + kd_rate (alm_weight alm + hidden_rate hidden).")
    alm_weight: float = option(1.0, "Weight of the chunk-likelihood term.")
    divergence: str = option("binary_ce", "binary_ce (tokenkit default), binary_kl, reverse_binary_kl, abs_exp or abs.")
    binarization_temp: float = option(100.0, "T of the binarised divergences (tokenkit default).")
    chunk_weight: str = option("chunk", "chunk (every chunk counts once) or teacher_tokens.")
    hidden_rate: float = option(0.0, "Weight of the hidden-state term; > 0 creates a d_s -> d_t projector.")
    hidden_norm: str = option("l2_channelwise", "Teacher mean square per channel (l2_channelwise) or one scalar (l2).")
    append_space: bool = option(
        False, "Debiasing: add each side's log-probability that the next token starts with a space, newline or tab "
        "(or is special) to every chunk log-likelihood (tokenkit's append_space).")
    merge_by_space_prob: bool = option(
        False, "Merge consecutive chunks until one whose teacher space probability exceeds space_prob_threshold "
        "(tokenkit's merge_by_space_prob).")
    space_prob_threshold: float = option(
        0.1, "Teacher space probability that closes a merged chunk (tokenkit's tokenizer_pair_bias_threshold).",
        ge=0, le=1)

    def validate(self, where: str = "method") -> None:
        for name in ("kd_rate", "alm_weight", "hidden_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"{where}.{name} must be a number >= 0, got {v!r}")
        if self.kd_rate > 1:
            raise ConfigError(f"{where}.kd_rate must be in [0, 1], got {self.kd_rate!r}")
        t = self.binarization_temp
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"{where}.binarization_temp must be a number > 0, got {t!r}")
        for name, choices in (("divergence", ALM_DIVERGENCES), ("chunk_weight", CHUNK_WEIGHTS),
                              ("hidden_norm", HIDDEN_NORMS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{where}.{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------- method
def _hidden_size(model) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if cfg is not None and isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return int(emb.weight.shape[1]) if emb is not None else None


class ALM(DistillMethod):
    """Approximate likelihood matching on span-derived chunks (see the module docstring)."""

    name = "alm"
    supports_zero3 = True  # reads student logits only through its forward (materialised under ZeRO-3)
    description = "ALM: approximate likelihood matching of chunk likelihoods over common character boundaries"
    Options = ALMOptions

    def __init__(self, student, teacher, options: ALMOptions):
        super().__init__(student, teacher, options)
        self.latent_proj = None
        if options.hidden_rate > 0:
            d_s, d_t = _hidden_size(student), _hidden_size(teacher)
            if d_s is None or d_t is None:
                raise ConfigError("method (alm).hidden_rate > 0 needs models with a known hidden size")
            self.latent_proj = nn.Linear(d_s, d_t)
        # plain attributes, not buffers (no DDP broadcast, no checkpoint entry)
        self.space_masks: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def debiased(self) -> bool:
        return bool(self.options.append_space or self.options.merge_by_space_prob)

    def attach_tokenizers(self, student_tokenizer, teacher_tokenizer) -> None:
        """Trainer hook: with debiasing on, the whitespace-initial/special id masks of both vocabularies."""
        if self.debiased:
            self.set_space_masks(space_initial_mask(student_tokenizer), space_initial_mask(teacher_tokenizer))

    def set_space_masks(self, student_mask, teacher_mask) -> None:
        """Use these ``[V]`` bool masks (True = whitespace-initial or special id) for the space probabilities."""
        masks = tuple(torch.as_tensor(m, dtype=torch.bool).reshape(-1).cpu() for m in (student_mask, teacher_mask))
        for side, m in zip(("student", "teacher"), masks):
            if not bool(m.any()):
                raise ConfigError(f"method (alm): the {side} vocabulary has no whitespace-initial or special id")
        self.space_masks = masks

    def forward(self, student_out, teacher_out, batch) -> LossTerms:
        opts: ALMOptions = self.options
        s_side, t_side = batch.student, batch.teacher
        # only the gold rows' log-likelihoods are needed: never the [B, L, V] logits
        s_ce, s_comp = gold_cross_entropy(student_out, s_side)
        with torch.no_grad():
            t_ce, t_comp = gold_cross_entropy(teacher_out, t_side)
        bsz = s_side.target_mask.shape[0]
        sb, spos = s_comp.flat // s_comp.width, s_comp.flat % s_comp.width
        tb, tpos = t_comp.flat // t_comp.width, t_comp.flat % t_comp.width

        ch = span_chunks(s_side.target_spans, s_side.target_mask, t_side.target_spans, t_side.target_mask)
        k = ch.n_chunks
        s_key = sb * k + ch.student[sb, spos]
        t_key = tb * k + ch.teacher[tb, tpos]
        zeros = s_ce.new_zeros(bsz * k)
        log_ps = zeros.scatter_add(0, s_key, -s_ce).clamp(max=0.0)
        log_pt = zeros.detach().scatter_add(0, t_key, -t_ce).clamp(max=0.0)
        n_s = torch.zeros(bsz * k, dtype=torch.long, device=zeros.device).scatter_add(0, s_key, torch.ones_like(s_key))
        n_t = torch.zeros_like(n_s).scatter_add(0, t_key, torch.ones_like(t_key))
        counted = (n_s > 0) & (n_t > 0)
        sums, stats = ChunkSums(log_ps, log_pt, n_s, n_t, counted), {}
        if self.debiased:
            if self.space_masks is None:
                raise ConfigError("method (alm) with append_space / merge_by_space_prob needs the tokenizers "
                                  "(attach_tokenizers or set_space_masks) before the first step")
            sums, spaced = debias_chunks(sums, k, (s_key, spos, t_key, tpos), student_out, teacher_out, batch,
                                         self.space_masks, append_space=opts.append_space,
                                         merge=opts.merge_by_space_prob, threshold=float(opts.space_prob_threshold))
            stats["alm_spaced_chunks"] = float(spaced.sum())
        c = sums.counted
        weight = c.float() if opts.chunk_weight == "chunk" else (sums.n_t * c).float()
        div = chunk_divergence(opts.divergence, sums.log_pt, sums.log_ps, float(opts.binarization_temp))
        alm = (torch.where(c, div, 0.0) * weight).sum()

        terms = {"ce": s_ce.sum(), "alm": alm}
        rates = {"ce": 1.0 - opts.kd_rate, "alm": opts.kd_rate * opts.alm_weight}
        if self.latent_proj is not None:  # on the unmerged chunks
            terms["hidden"] = self._hidden_term(student_out, teacher_out, s_key, spos, t_key, tpos, counted, bsz, k)
            rates["hidden"] = opts.kd_rate * opts.hidden_rate
        n_counted = c.sum()
        return LossTerms(
            terms=terms,
            n_tokens=s_side.target_mask.sum(),
            rates=rates,
            stats={"alm_chunks": float(n_counted),
                   "alm_tokens_per_chunk": float(sums.n_s[c].sum() / n_counted.clamp(min=1)), **stats},
        )

    def _hidden_term(self, student_out, teacher_out, s_key, spos, t_key, tpos, counted, bsz, k):
        """Projected student vs teacher hidden states after each counted chunk's last token."""
        def last_state(hidden, key, pos):
            last = torch.full((bsz * k,), -1, dtype=torch.long, device=key.device)
            last = last.scatter_reduce(0, key, pos, reduce="amax")
            rows = torch.arange(bsz * k, device=key.device) // k
            idx = (last + 1).clamp(min=0, max=hidden.shape[1] - 1)
            return hidden[rows[counted], idx[counted]]

        hs = self.latent_proj(last_state(student_out.hidden, s_key, spos).to(self.latent_proj.weight.dtype))
        ht = last_state(teacher_out.hidden.detach(), t_key, tpos).to(hs.dtype)
        if ht.shape[0] == 0:
            return hs.sum() * 0.0
        scale = ht.pow(2).mean(0) if self.options.hidden_norm == "l2_channelwise" else ht.pow(2).mean()
        return ((hs - ht).pow(2) / (scale + 1e-8)).mean(-1).sum()

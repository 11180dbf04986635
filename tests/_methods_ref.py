"""Plain float64 references for the method tests, written from METHOD.md with loops and full tensors.

Nothing here imports dwakd's method code: each function recomputes its quantity the obvious way
(full ``[n, V]`` softmaxes, one example at a time, Python loops for Soft-DTW and the band), so the
tests compare the chunked / fused / batched implementation against an independent reading of the spec.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from dwakd.models.outputs import ModelOutputs


# ----------------------------------------------------------------------------- divergences
def ref_divergence(kind, student_logits, teacher_logits, temperature=1.0, skew=0.1, alpha=0.5):
    """Per-row D(q || p) in float64 (q from the teacher logits, p from the student logits)."""
    lp = torch.log_softmax(student_logits.double() / temperature, -1)
    lq = torch.log_softmax(teacher_logits.double() / temperature, -1)
    p, q = lp.exp(), lq.exp()
    if kind == "fkl":
        return (q * (lq - lp)).sum(-1)
    if kind == "rkl":
        return (p * (lp - lq)).sum(-1)
    if kind == "skl":
        m = skew * q + (1 - skew) * p
        return (q * (lq - m.log())).sum(-1)
    if kind == "srkl":
        m = (1 - skew) * q + skew * p
        return (p * (lp - m.log())).sum(-1)
    if kind == "js":
        m = 0.5 * (p + q)
        return 0.5 * (p * (lp - m.log())).sum(-1) + 0.5 * (q * (lq - m.log())).sum(-1)
    if kind == "tvd":
        return 0.5 * (q - p).abs().sum(-1)
    if kind == "akl":
        # official adaptive_kl: q sorted ASCENDING; tail = the prefix whose cumulative mass (the entry
        # included) is <= alpha; head = the rest
        out = []
        qd, pd = q.detach(), p.detach()  # the coefficients are constants
        for r in range(q.shape[0]):
            order = sorted(range(q.shape[1]), key=lambda v: float(qd[r, v]))
            mass, g_head, g_tail = 0.0, 0.0, 0.0
            for v in order:
                gap = abs(float(qd[r, v]) - float(pd[r, v]))
                mass += float(qd[r, v])
                if mass <= alpha:
                    g_tail += gap
                else:
                    g_head += gap
            fkl = (q[r] * (lq[r] - lp[r])).sum()
            rkl = (p[r] * (lp[r] - lq[r])).sum()
            out.append((g_head * fkl + g_tail * rkl) / (g_head + g_tail))
        return torch.stack(out)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- soft-DTW
def ref_cosine_cost(x, y):
    c = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64)
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(y.shape[0]):
            row.append(1.0 - (x[i] * y[j]).sum() / (x[i].norm() * y[j].norm()))
        rows.append(torch.stack(row))
    c = torch.stack(rows)
    return c


def ref_soft_dtw(cost, gamma):
    n, m = cost.shape
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    R = [[inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = torch.tensor(0.0, dtype=torch.float64)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = torch.stack([R[i - 1][j - 1], R[i - 1][j], R[i][j - 1]])
            R[i][j] = cost[i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, 0)
    return R[n][m]


def ref_ndtw(x, y, gamma, penalty=None):
    cxy = ref_cosine_cost(x, y)
    if penalty is not None:
        cxy = cxy + penalty
    return ref_soft_dtw(cxy, gamma) - 0.5 * (ref_soft_dtw(ref_cosine_cost(x, x), gamma) + ref_soft_dtw(ref_cosine_cost(y, y), gamma))


def ref_band(a, b=5.0, beta=2.0, alpha=0.7, lam=1.0):
    """Band penalty ``[S, T]`` for one example's attention ``a`` ``[S, T]`` (rows sum to 1)."""
    S, T = a.shape
    pen = torch.zeros(S, T, dtype=torch.float64)
    for i in range(S):
        centre = alpha * sum(j * float(a[i, j]) for j in range(T)) + (1 - alpha) * i * T / S
        ent = -sum(float(a[i, j]) * math.log(float(a[i, j])) for j in range(T) if float(a[i, j]) > 0)
        width = b + beta * ent
        for j in range(T):
            if abs(j - centre) > width:
                pen[i, j] = lam
    return pen


# ----------------------------------------------------------------------------- whole methods
def _lin(params, prefix, x):
    return x @ params[prefix + ".weight"].t() + params[prefix + ".bias"]


def _positions(side, b):
    return side.target_mask[b].nonzero().squeeze(1)


def ref_eta_pairs(s_spans, t_spans):
    """Aligned (i, j) for one example: identical non-empty spans, plus the final empty (EOS) spans."""
    pairs = []
    for i, si in enumerate(s_spans):
        for j, tj in enumerate(t_spans):
            if si == tj and si[1] > si[0]:
                pairs.append((i, j))
    if s_spans and t_spans and s_spans[-1][0] == s_spans[-1][1] and s_spans[-1] == t_spans[-1]:
        pairs.append((len(s_spans) - 1, len(t_spans) - 1))
    return pairs


def ref_method(method, s_model, t_model, batch, outputs_fn, *, eta=False, dwakd=False):
    """Reference terms of DSKD / DWA-KD (CMA or ETA), float64, with gradients.

    Returns ``(terms, s_model64, params64)``: the term values (scalar tensors), the float64 copy of
    the student whose ``.grad`` the caller can read after ``backward``, and the float64 copies of
    the method's parameters (by name).
    """
    o = method.options
    sd = copy.deepcopy(s_model).double()
    td = copy.deepcopy(t_model).double()
    params = {n: p.detach().double().clone().requires_grad_() for n, p in method.named_parameters()}
    so = outputs_fn(sd, batch.student)
    to_ = outputs_fn(td, batch.teacher)
    to = ModelOutputs(*(x.detach() for x in (to_.logits, to_.hidden, to_.input_embeds, to_.target_embeds)))
    w_s, w_t = sd.get_output_embeddings().weight.detach(), td.get_output_embeddings().weight.detach()
    d_t = w_t.shape[1]
    bsz = batch.student.input_ids.shape[0]
    s_pos = [_positions(batch.student, b) for b in range(bsz)]
    t_pos = [_positions(batch.teacher, b) for b in range(bsz)]
    k_rows = [torch.cat([to.input_embeds[b, t_pos[b]], to.target_embeds[b, t_pos[b]]], -1) for b in range(bsz)]
    sd_k = torch.cat(k_rows).std()
    sd_h = torch.cat([to.hidden[b, t_pos[b]] for b in range(bsz)]).std()
    sd_e = torch.cat([to.target_embeds[b, t_pos[b]] for b in range(bsz)]).std()
    if getattr(o, "cma_std", "response") == "padded-batch":
        # the official DSKD normaliser: std over the whole padded [B, T, .] tensors; outside the
        # response, input and target ids are replaced by token 0; hidden states at every position
        emb_t = td.get_input_embeddings()
        resp = batch.teacher.target_mask.bool()
        e_in = emb_t(torch.where(resp, batch.teacher.input_ids, 0)).detach()
        e_tgt = emb_t(torch.where(resp, batch.teacher.target_ids, 0)).detach()
        sd_k, sd_e, sd_h = torch.cat([e_in, e_tgt], -1).std(), e_tgt.std(), to.hidden.std()
    zero = torch.zeros((), dtype=torch.float64)
    terms = {"ce": zero, "kd_stu": zero, "kd_tea": zero, "ce_t2s": zero}
    if dwakd and o.dtw in ("hidden", "both"):
        terms["dtw_hidden"] = zero
    if dwakd and o.dtw in ("embed", "both"):
        terms["dtw_embed"] = zero
    for b in range(bsz):
        sp, tp = s_pos[b], t_pos[b]
        n_s, n_t = sp.numel(), tp.numel()
        if n_s == 0:
            continue
        gold = batch.student.target_ids[b, sp]
        zs = so.logits[b, sp]
        terms["ce"] = terms["ce"] + F.cross_entropy(zs, gold, reduction="sum")
        if n_t == 0:
            continue
        hs = so.hidden[b, sp]
        if eta:
            s_sp = [tuple(x) for x in batch.student.target_spans[b, sp].tolist()]
            t_sp = [tuple(x) for x in batch.teacher.target_spans[b, tp].tolist()]
            m = torch.zeros(n_s, n_t, dtype=torch.float64)
            for i, j in ref_eta_pairs(s_sp, t_sp):
                m[i, j] = 1.0
            a_ts = m / m.sum(1, keepdim=True).clamp(min=1)
            a_st = m.t() / m.t().sum(1, keepdim=True).clamp(min=1)
            value = _lin(params, "align.t2s", to.hidden[b, tp])
            s_al, t_al = m.sum(1) > 0, m.sum(0) > 0
        else:
            q_in = torch.cat([so.input_embeds[b, sp], so.target_embeds[b, sp]], -1).detach()
            query = _lin(params, "align.query", q_in)
            key = k_rows[b] / sd_k
            value = _lin(params, "align.t2s", to.hidden[b, tp] / sd_h + to.target_embeds[b, tp] / sd_e)
            scores = query @ key.t() / math.sqrt(2 * d_t)
            a_ts, a_st = torch.softmax(scores, -1), torch.softmax(scores.t(), -1)
            s_al = torch.ones(n_s, dtype=torch.bool)
            t_al = torch.ones(n_t, dtype=torch.bool)
            m = None
        h_t2s = a_ts @ value
        h_s2t = a_st @ _lin(params, "align.s2t", hs)
        z_t2s = h_t2s @ w_s.t()
        z_s2t = h_s2t @ w_t.t()
        zt = to.logits[b, tp]
        div_s = ref_divergence(o.divergence, zs, z_t2s.detach(), o.temperature, o.skew, o.akl_alpha)
        div_t = ref_divergence(o.teacher_divergence, z_s2t, zt, o.temperature, o.skew, o.akl_alpha)
        ce_t2s = F.cross_entropy(z_t2s, gold, reduction="none")
        terms["ce_t2s"] = terms["ce_t2s"] + (ce_t2s * s_al).sum()
        if not dwakd:
            hit = z_t2s.argmax(-1) == gold
            mask = s_al & hit if o.argmax_mask else s_al
            terms["kd_stu"] = terms["kd_stu"] + (div_s * mask).sum()
            terms["kd_tea"] = terms["kd_tea"] + (div_t * t_al).sum()
            continue
        # DWA-KD weights (detached), renormalised over the participating positions
        if o.weights == "none":
            ws, wt = s_al.double(), t_al.double()
        else:
            ps = torch.softmax(zs.detach(), -1)
            ent_s = -(ps * ps.log()).sum(-1) * s_al
            ws = ent_s * s_al.sum() / ent_s.sum()
            if o.weights == "entropy+gate":
                ws = ws * torch.softmax(z_t2s.detach(), -1).max(-1).values
            pt = torch.softmax(zt, -1)
            ent_t = -(pt * pt.log()).sum(-1)
            conf = (1 - ent_t / math.log(zt.shape[-1])).clamp(0, 1) * t_al
            wt = conf * t_al.sum() / conf.sum()
        terms["kd_stu"] = terms["kd_stu"] + (div_s * ws).sum()
        terms["kd_tea"] = terms["kd_tea"] + (div_t * wt).sum()
        if o.dtw == "none":
            continue
        if not o.band:
            pen = None
        elif eta:
            pen = o.band_lambda * (1 - m)
        else:
            pen = ref_band(a_ts.detach(), o.band_b, o.band_beta, o.band_alpha, o.band_lambda)
        xp, yp = sp, tp
        if o.dtw_positions == "prefix":  # the first n real tokens of each sequence
            xp = batch.student.attention_mask[b].nonzero().squeeze(1)[:n_s]
            yp = batch.teacher.attention_mask[b].nonzero().squeeze(1)[:n_t]
        # the authors' fork detaches the projected teacher in both Soft-DTW terms
        keep = (lambda y: y) if o.dtw_teacher_grad else (lambda y: y.detach())
        if "dtw_hidden" in terms:
            y = keep(_lin(params, "align.t2s", to.hidden[b, yp]))
            terms["dtw_hidden"] = terms["dtw_hidden"] + ref_ndtw(so.hidden[b, xp], y, o.gamma, pen)
        if "dtw_embed" in terms:
            y = keep(_lin(params, "embed_proj", to.target_embeds[b, yp]))
            terms["dtw_embed"] = terms["dtw_embed"] + ref_ndtw(so.target_embeds[b, xp], y, o.gamma, pen)
    return terms, sd, params

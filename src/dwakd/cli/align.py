"""``dwakd align``: show how two tokenizers split one response and which tokens align exactly.

Prints both tokenizations side by side (``==`` marks an exact pair, ``~`` tokens that overlap
without being identical, ``<`` / ``>`` a token of only one side in that stretch of text) and writes
a PNG heatmap of the character-overlap matrix with the exact pairs outlined.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dwakd.errors import ConfigError

NAME = "align"
HELP = "print two tokenizations of a text side by side with the exact token pairs, and plot their overlap"

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--teacher", required=True, help="teacher tokenizer: alias, local directory or hub name")
    p.add_argument("--student", required=True, help="student tokenizer: alias, local directory or hub name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the response text to tokenize")
    src.add_argument("--data", help="a data file (JSONL/JSON); its record --index gives the response")
    p.add_argument("--index", type=int, default=0, help="record index in --data (default: %(default)s)")
    p.add_argument("--format", default="auto", help="record format of --data (default: %(default)s)")
    p.add_argument("--out", default="align.png", help="PNG heatmap path (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="print only")


def _side(text: str, tokenizer):
    from dwakd.data.encode import response_tokens, side_tokenizer

    ids, spans = response_tokens(text, tokenizer)
    ids = [*ids, side_tokenizer(tokenizer).eos_id]
    spans = [*spans, (len(text), len(text))]
    return ids, spans, tokenizer.convert_ids_to_tokens(ids)


def side_by_side_rows(student_spans, teacher_spans, pairs: dict[int, int]) -> list[tuple[int | None, int | None, str]]:
    """Rows ``(student index | None, teacher index | None, mark)`` walking both sides in text order.

    ``pairs``: exact pairs ``student index -> teacher index`` (monotone). Marks: ``==`` exact pair,
    ``~`` overlapping tokens (a token overlapping several on the other side appears in several
    rows), ``<`` student only, ``>`` teacher only.
    """
    paired_t = set(pairs.values())
    rows: list[tuple[int | None, int | None, str]] = []
    i = j = 0
    n_s, n_t = len(student_spans), len(teacher_spans)
    while i < n_s or j < n_t:
        if i >= n_s or (j < n_t and i in pairs and pairs[i] != j):
            rows.append((None, j, ">"))
            j += 1
            continue
        if j >= n_t or j in paired_t and pairs.get(i) != j:
            rows.append((i, None, "<"))
            i += 1
            continue
        if pairs.get(i) == j:
            rows.append((i, j, "=="))
            i, j = i + 1, j + 1
            continue
        (s0, s1), (t0, t1) = student_spans[i], teacher_spans[j]
        if min(s1, t1) - max(s0, t0) > 0:
            rows.append((i, j, "~"))
            i, j = i + (s1 <= t1), j + (t1 <= s1)
        elif (s1, s0) <= (t1, t0):
            rows.append((i, None, "<"))
            i += 1
        else:
            rows.append((None, j, ">"))
            j += 1
    return rows


def _plot(overlap, s_tokens, t_tokens, pairs, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_s, n_t = overlap.shape
    size = (min(24, 4 + 0.18 * n_t), min(24, 4 + 0.18 * n_s))
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(overlap, cmap="Blues", aspect="auto", interpolation="nearest")
    for i, j in pairs.items():
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_xlabel(f"teacher tokens ({n_t})")
    ax.set_ylabel(f"student tokens ({n_s})")
    if n_t <= 120:
        ax.set_xticks(range(n_t), [repr(t)[1:-1] for t in t_tokens], rotation=90, fontsize=6)
    if n_s <= 120:
        ax.set_yticks(range(n_s), [repr(t)[1:-1] for t in s_tokens], fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run(args) -> int:
    import torch

    from dwakd.align.spans import exact_token_alignment, span_overlap
    from dwakd.models import load_tokenizer

    if args.text is not None:
        text = args.text
    else:
        from dwakd.data.records import load_records

        records = load_records(args.data, format=args.format)
        if not 0 <= args.index < len(records):
            raise ConfigError(f"--index {args.index} is out of range: {args.data} holds {len(records)} records")
        text = records[args.index].response
    if not text:
        raise ConfigError("the text is empty")
    s_tok, t_tok = load_tokenizer(args.student), load_tokenizer(args.teacher)
    s_ids, s_spans, s_tokens = _side(text, s_tok)
    t_ids, t_spans, t_tokens = _side(text, t_tok)
    s_t = torch.tensor(s_spans, dtype=torch.long).unsqueeze(0)
    t_t = torch.tensor(t_spans, dtype=torch.long).unsqueeze(0)
    ex = exact_token_alignment(s_t, t_t)
    pairs = dict(zip(ex.student.tolist(), ex.teacher.tolist()))

    print(f"student: {args.student}  ({len(s_ids) - 1} tokens + EOS)")
    print(f"teacher: {args.teacher}  ({len(t_ids) - 1} tokens + EOS)")
    print(f"exact pairs: {len(pairs)} (covering {len(pairs) / len(s_ids):.0%} of student and "
          f"{len(pairs) / len(t_ids):.0%} of teacher tokens, EOS included)")
    print()
    width = 34
    print(f"{'#':>4} {'student token':<{width}} {'':^4} {'#':>4} teacher token")

    def cell(k, tokens, spans, previous):
        if k is None or k == previous:  # a token already shown in the row above
            return f"{'':>4} {'':<{width}}"
        s, e = spans[k]
        label = f"{tokens[k]!r} {text[s:e]!r}"
        return f"{k:>4} {label[:width]:<{width}}"

    last_i = last_j = None
    for i, j, mark in side_by_side_rows(s_spans, t_spans, pairs):
        right = cell(j, t_tokens, t_spans, last_j).rstrip()
        print(f"{cell(i, s_tokens, s_spans, last_i)} {mark:^4} {right}")
        last_i, last_j = (i if i is not None else last_i), (j if j is not None else last_j)
    if not args.no_plot:
        overlap = span_overlap(s_t, t_t)[0].numpy()
        out = Path(args.out)
        _plot(overlap, s_tokens, t_tokens, pairs, out, f"character overlap: {args.student} (rows) vs {args.teacher} (cols)")
        print(f"\nheatmap: {out}")
    return 0

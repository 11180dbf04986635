"""Writers of an evaluation's results: the Markdown table, the protocol note, ``results.json``,
``results.md``, ``samples.jsonl`` and ``teacher_answers.jsonl``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def _pm(stat: dict) -> str:
    if len(stat.get("per_seed", {})) > 1:
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
    return f"{stat['mean']:.2f}"


def _num(x, fmt: str = "{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def results_markdown(results: dict | Sequence[dict]) -> str:
    """A Markdown table, one row per model: ROUGE-L per set and averaged (mean ± std over seeds),
    bits per byte of the references (avg over sets), agreement with the teacher when present,
    and generation throughput."""
    rows = [results] if isinstance(results, Mapping) else list(results)
    if not rows:
        return ""
    set_names: list[str] = []
    for r in rows:
        set_names += [s for s in r["sets"] if s not in set_names]
    agree = any("agreement" in r["average"] for r in rows)
    multi = len(set_names) > 1
    head = ["model", *[f"{s} ROUGE-L" for s in set_names]]
    if multi:
        head.append("avg ROUGE-L")
    head.append("ref bits/byte" + (" (avg)" if multi else ""))
    if agree:
        head += ["ROUGE-L vs teacher", "teacher-answer bits/byte"]
    head.append("gen tokens/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r.get("name", r.get("model", "?"))]
        cells += [_pm(r["sets"][s]["rougeL"]) if s in r["sets"] else "–" for s in set_names]
        avg = r["average"]
        if multi:
            cells.append(_pm(avg["rougeL"]))
        cells.append(_num(avg.get("bpb")))
        if agree:
            a = avg.get("agreement")
            cells += [_pm(a["rougeL"]) if a else "–", _num(a["teacher_bpb"]) if a else "–"]
        cells.append(_num(avg.get("tokens_per_s"), "{:.0f}"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def protocol_note(results: dict) -> str:
    """One line stating the decoding protocol and seeds behind a results dict."""
    o = results["options"]
    g = o["generation"]
    how = "greedy" if g["greedy"] else (f"sampled (temperature {g['temperature']}, top_p {g['top_p']}, "
                                        f"top_k {g['top_k']}), seeds {', '.join(map(str, o['seeds']))}")
    cap = f", at most {g['max_new_tokens']} new tokens" if g.get("max_new_tokens") else ""
    lim = f"; first {o['limit']} examples per set" if o.get("limit") else ""
    return (f"ROUGE-L (%, rouge-score, stemmed, max over references): {how}; prompt <= {g['max_prompt_tokens']} "
            f"tokens, total <= {g['max_length']}{cap}; prompts: {results['prompt_format']} template{lim}. "
            "Bits/byte: -log2 p(reference + EOS | prompt) / UTF-8 bytes (lower is better).")


def sample_rows(set_name: str, seed, prompts, refs, texts, scores) -> list[dict]:
    """``samples.jsonl`` rows: set, seed, key, prompt, references, output, per-example ROUGE-L (percent)."""
    return [{"set": set_name, "seed": int(seed), "key": k, "prompt": p, "references": r, "output": t, "rougeL": sc}
            for k, (p, r, t, sc) in enumerate(zip(prompts, refs, texts, scores))]


def write_results(results: dict, out_dir: str | Path, *, store=None) -> dict[str, Path]:
    """Write ``results.json`` (no samples), ``results.md`` and, unless ``store`` wrote them as the
    evaluation went, ``samples.jsonl`` (:func:`sample_rows`) and ``teacher_answers.jsonl``; returns
    every path written."""
    from dwakd.eval.store import write_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    core = {k: v for k, v in results.items() if k not in ("samples", "examples", "teacher_answers")}
    write_atomic(out / "results.json", json.dumps(core, indent=2, allow_nan=True) + "\n")
    write_atomic(out / "results.md", results_markdown(results) + "\n" + protocol_note(results) + "\n")
    if store is not None:
        return store.paths()
    paths = {"json": out / "results.json", "md": out / "results.md", "samples": out / "samples.jsonl"}
    lines = []
    for set_name, by_seed in results.get("samples", {}).items():
        ex = results.get("examples", {}).get(set_name, {})
        for seed, texts in by_seed.items():
            n = len(texts)
            rows = sample_rows(set_name, seed, ex.get("prompts", [None] * n), ex.get("references", [None] * n), texts,
                               ex.get("rougeL", {}).get(str(seed), [None] * n))
            lines += [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    write_atomic(paths["samples"], "".join(lines))
    if results.get("teacher_answers"):
        paths["teacher_answers"] = out / "teacher_answers.jsonl"
        write_atomic(paths["teacher_answers"], "".join(
            json.dumps({"set": s, "key": k, "text": t}, ensure_ascii=False) + "\n"
            for s, answers in results["teacher_answers"].items() for k, t in enumerate(answers)))
    return paths

"""Write docs/RESULTS.md and docs/results.json from the study's run directories (any stage of progress).

    PYTHONPATH=src python configs/study/write_results.py /work/study-runs [docs]

Reads <study>/grid/results.json (via ``dwakd compare --report-only`` semantics), <study>/budget.json,
<study>/budget/results.json, <study>/teacher-sft/ and the pretrained student's report.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

study = Path(sys.argv[1])
docs = Path(sys.argv[2] if len(sys.argv) > 2 else "docs")


def read(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def fmt_s(s):
    return "–" if s is None else (f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h")


res = read(study / "grid" / "results.json")
budget = read(study / "budget.json")
sweep = read(study / "budget" / "results.json")
pre = read(study / "grid" / "pretrain.json") or read(study / "budget" / "pretrain.json")
tstatus = read(study / "teacher-sft" / "status.json")
now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
L = ["# Results: distilling SmolLM2-135M-Instruct into a pretrained 4.2M-parameter student", "",
     f"_Updated {now}. Machine: {cpu()}, 2 cores shared with other jobs, every run on 1 thread "
     "(`OMP_NUM_THREADS=1`), no GPU; torch " + __import__("torch").__version__ + "._", ""]
if res:
    done = sum(c["done"] for c in res["cells"])
    if res["pending"]:
        L += [f"**Status: {done} of {len(res['cells'])} grid cells done; the study is still running.** "
              "Pending: " + ", ".join(res["pending"]) + ". Every number below comes from finished "
              "cells only; a method with fewer training seeds than planned is marked by its seed list.", ""]
    else:
        L += [f"**Status: complete.** All {len(res['cells'])} grid cells and every reference row are done.", ""]
else:
    L += ["**Status: no grid cell has finished yet** (the stages before the grid are listed below).", ""]
def _diff(key, metric="avg", digits=2):
    """``(text, interval contains 0)`` of a paired difference (``avg`` ROUGE-L or ``bpb``), or ``None``."""
    d = (res or {}).get("differences", {}).get(key, {}).get(metric)
    if not d or d.get("mean") is None:
        return None
    name = key.replace("dwakd", "DWA-KD").replace("dskd", "DSKD").replace("sft", "SFT")
    hw = d.get("half_width")
    if hw is None:
        return f"{name} = {d['mean']:+.{digits}f} (n={d.get('n')}, no interval)", True
    lo, hi = d["mean"] - hw, d["mean"] + hw
    return f"{name} = {d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] (n={d.get('n')})", lo <= 0 <= hi


HEAD = "Headline" if res and not res["pending"] else "Headline so far"
heads = [h for h in (_diff("dwakd - dskd"), _diff("dskd - sft"), _diff("dwakd - sft")) if h]
if heads:
    L += [f"**{HEAD}, ROUGE-L** (avg over the three sets, paired by training seed, 95% t-interval): "
          + "; ".join(t for t, _ in heads) + "."
          + (" Every interval contains 0: no ordering of these methods by ROUGE-L can be claimed from these seeds."
             if all(z for _, z in heads) else ""), ""]
bheads = [h for h in (_diff(k, "bpb", 3) for k in ("dwakd - dskd", "dskd - sft", "dwakd - sft")) if h]
if bheads:
    L += [f"**{HEAD}, bits per byte** of the reference responses (lower is better; same pairing): "
          + "; ".join(t for t, _ in bheads) + ". "
          + "Intervals that exclude 0: " + (", ".join(t.split(" =")[0] for t, z in bheads if not z) or "none") + ".",
          ""]
ms = (res or {}).get("methods", {})
ranked = [(k, m["avg"]["mean"], (m.get("bpb") or {}).get("mean")) for k, m in ms.items() if (m.get("avg") or {}).get("mean") is not None]
if ranked:
    by_r = sorted(ranked, key=lambda x: -x[1])
    by_b = sorted([r for r in ranked if r[2] is not None], key=lambda x: x[2])
    L += ["Methods by avg ROUGE-L (mean over training seeds): " + ", ".join(f"{k} {r:.2f}" for k, r, _ in by_r)
          + ". By bits per byte (lower is better): " + ", ".join(f"{k} {b:.3f}" for k, _, b in by_b)
          + f". {by_r[0][0]}, first by ROUGE-L, is number {[k for k, _, _ in by_b].index(by_r[0][0]) + 1} of "
          f"{len(by_b)} by bits per byte; the intervals of the tables below say which differences the seeds "
          "support.", ""]
L += ["## How to reproduce / resume", "",
      "From the repository root (the study ran from a frozen checkout of commit "
      f"`{(study / 'FROZEN_COMMIT').read_text().strip() if (study / 'FROZEN_COMMIT').is_file() else '?'}` at "
      "`/work/study-frozen`, run directories under `/work/study-runs`):", "",
      "```", "STUDY=/work/study-runs OMP_NUM_THREADS=1 nohup bash configs/study/run_study.sh >> /work/study-runs/study.log 2>&1 &",
      "```", "",
      "The script is resumable: rerun it after any interruption. Stages: data split, `dwakd pretrain "
      "configs/study/pretrain.yaml`, the SFT budget sweep (`dwakd compare configs/study/budget.yaml`), "
      "teacher fine-tuning (`dwakd train configs/study/teacher-sft.yaml`; `TEACHER_SFT=0` skips it), then the "
      "grid (`dwakd compare configs/study/compare.yaml ... model.teacher=<study>/teacher-sft/final "
      "train.lr=<budget> train.epochs=<budget>`). Refresh this page with the same compare command plus "
      "`--report-only` (it rewrites the grid's report from every finished cell), then "
      "`PYTHONPATH=src python configs/study/write_results.py /work/study-runs docs`.", ""]
L += ["## Setup", "",
      ("- **Teacher:** SmolLM2-135M-Instruct, first fine-tuned (all weights, SFT on gold responses, chat template, "
       "lr 2e-5, 1 epoch, batch 8, bf16 autocast) on the same 620 training records "
       + f"(status: {tstatus.get('status')}, {tstatus.get('global_step')} steps"
       + (f", dev loss {tstatus['best_dev_loss']:.3f}" if isinstance(tstatus.get("best_dev_loss"), float) else "")
       + "); rows `teacher-sft` (after) and `teacher-base` (before)." if tstatus else
       "- **Teacher:** SmolLM2-135M-Instruct as released (an instruction-tuned model; its own ROUGE-L is the "
       "`teacher` row), because `TEACHER_SFT=0` was set: the paper fine-tunes its teachers on Dolly first."),
      "- **Data:** `dolly-train-688.jsonl` split once: every 10th record is dev (68), the rest train (620). "
      "Gold responses as targets, as in the paper; student prompts in the plain Dolly template, teacher prompts "
      "in its chat template; at most 256 tokens per side, prompts cut to 128.",
      ]
if pre:
    L.append(f"- **Student:** a Llama (hidden 256, 4 layers, 4.2M parameters) with its own 4,096-token byte-level "
             f"BPE, pretrained by `dwakd pretrain configs/study/pretrain.yaml` on WikiText-2 validation + test "
             f"(detokenized; {pre['train_docs']} articles, {pre['train_tokens']:,} tokens, 3 epochs, "
             f"{pre['steps']} steps of 16 x 256 tokens, {fmt_s(pre['train_seconds'])} on 1 thread). Held-out bits "
             f"per byte ({pre['heldout_docs']} held-out articles, {pre['bpb_after']['bytes']:,} bytes): "
             f"{pre['bpb_before']['bpb']:.3f} before, {pre['bpb_after']['bpb']:.3f} after.")
if budget and sweep:
    cands = ", ".join(f"{k} {v:.3f}" for k, v in sorted(budget["candidates"].items()))
    L.append(f"- **Budget, fixed from SFT's dev loss before any KD cell ran:** candidates (SFT from the pretrained "
             f"student, training seed 1; final dev loss): {cands}. Chosen: **lr {budget['lr']}, "
             f"{budget['epochs']} epochs** (batch 8, warm-up 5%, cosine; projector lr 1e-3), for every method. "
             "No DWA-KD option was tuned; all methods use their defaults (METHOD.md).")
else:
    L.append("- **Budget:** pending (the SFT sweep of `configs/study/budget.yaml` fixes it before any KD cell).")
L += ["- **Methods:** sft, dskd, dskd-eta, uld, mined, multilevel-ot, dwakd, dwakd-eta, and DWA-KD ablations: "
      "`dwakd-ew` (entropy weights with the gate, no Soft-DTW), `dwakd-dtw` (+ Soft-DTW without the band), "
      "`dwakd-nogate` (full DWA-KD with entropy weights but no gate); \"+ banded Soft-DTW\" is full DWA-KD "
      "(the `dwakd` row). Training seeds 1-3 for sft/dskd/dwakd, 1-2 for the rest; the seed fixes the data order "
      "(identical across methods) and projector initialisation.",
      "- **Evaluation:** ROUGE-L (%) of sampled answers (temperature 1, top-p 1, seeds 10/20/30, at most 128 new "
      "tokens) on Dolly test (first 100 of 500), SelfInst (first 50 of 242) and Vicuna (all 80); a training seed's "
      "score is the mean over the 3 sampling seeds; `avg` is the unweighted mean of the three sets. Bits per byte "
      "of the reference responses (EOS included), averaged over the sets. Methods: mean ± sample std over "
      "training seeds. Differences: paired by training seed, 95% t-interval (n-1 degrees of freedom; with 2 seeds "
      "t = 12.7, so those intervals are wide by construction).", ""]
if res:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from dwakd.compare.report import tables

    sets = list(res["protocol"]["sets"]) if res.get("protocol") else []
    L += ["## Results", "", tables(res, sets), ""]
    if (study / "grid" / "bars.png").is_file():
        shutil.copy(study / "grid" / "bars.png", docs / "results_bars.png")
        L += ["![avg ROUGE-L per method, 95% interval over training seeds](results_bars.png)", ""]
    rows = [c for c in res["cells"] if c["done"]]
    if rows:
        L += ["Wall time per finished cell (training + evaluation, 1 thread, shared machine): "
              + ", ".join(f"{c['label']}-s{c['seed']} {fmt_s((c['train_seconds'] or 0) + (c['eval_seconds'] or 0))}"
                          for c in rows) + ".", ""]
    shutil.copy(study / "grid" / "results.json", docs / "results.json")
    # DWA-KD's ablations, paired against full DWA-KD (the paper's ablation order).
    abl = [("dwakd-ew", "entropy weights (with the gate) only, no Soft-DTW"),
           ("dwakd-dtw", "+ Soft-DTW without the band"),
           ("dwakd", "+ banded Soft-DTW (full DWA-KD)"),
           ("dwakd-nogate", "full DWA-KD without the gate")]
    per_avg, per_bpb = {}, {}
    for c in res["cells"]:
        if c["done"]:
            per_avg.setdefault(c["label"], {})[c["seed"]] = c.get("avg")
            per_bpb.setdefault(c["label"], {})[c["seed"]] = c.get("bpb")
    if "dwakd" in per_avg and any(k in per_avg for k, _ in abl if k != "dwakd"):
        from dwakd.compare.stats import mean_std, paired_difference

        def cell(d, digits):
            if d.get("mean") is None:
                return "–"
            if d.get("half_width") is None:
                return f"{d['mean']:+.{digits}f} (n={d['n']})"
            return (f"{d['mean']:+.{digits}f} [{d['mean'] - d['half_width']:+.{digits}f}, "
                    f"{d['mean'] + d['half_width']:+.{digits}f}] (n={d['n']})")

        arows = []
        for label, what in abl:
            if label not in per_avg:
                continue
            ms = mean_std(list(per_avg[label].values()))
            mb = mean_std(list(per_bpb[label].values()))
            if label == "dwakd":
                da = db = "(reference)"
            else:
                da = cell(paired_difference(per_avg[label], per_avg["dwakd"]), 2)
                db = cell(paired_difference(per_bpb[label], per_bpb["dwakd"]), 3)
            sd = f" ± {ms['std']:.2f}" if ms.get("std") is not None else ""
            arows.append(f"| {what} (`{label}`) | {', '.join(map(str, sorted(per_avg[label])))} | "
                         f"{ms['mean']:.2f}{sd} | {mb['mean']:.3f} | {da} | {db} |")
        L += ["### DWA-KD ablations", "",
              "Each row against full DWA-KD, paired by training seed (seeds both finished):", "",
              "| variant | training seeds | avg ROUGE-L | bits/byte | ROUGE-L - dwakd | bits/byte - dwakd |",
              "|---|---|---|---|---|---|", *arows, ""]

    # Mean answer length (words), from the sampled answers of every finished model.
    def words(d: Path):
        p = d / "eval" / "samples.jsonl"
        if not p.is_file():
            return None
        n = [len(json.loads(line).get("output", "").split()) for line in p.read_text(encoding="utf-8").split("\n")
             if line.strip()]
        return sum(n) / len(n) if n else None

    lengths = {}
    for label in res.get("references", {}):
        lengths[label] = [w for w in [words(study / "grid" / "refs" / label)] if w is not None]
    for c in res["cells"]:
        if c["done"]:
            w = words(study / "grid" / "cells" / f"{c['label']}-s{c['seed']}")
            if w is not None:
                lengths.setdefault(c["label"], []).append(w)
    lengths = {k: sum(v) / len(v) for k, v in lengths.items() if v}
    if lengths:
        L += ["Mean answer length in words (all sets and sampling seeds; at most 128 new tokens): "
              + ", ".join(f"{k} {v:.0f}" for k, v in lengths.items()) + ".", ""]
L += ["## Reading these numbers", "",
      "- One small student, one small teacher, a 620-record training set and a CPU budget: this tests whether the "
      "methods' differences show up in the pretrained-student regime at this scale, not the paper's numbers.",
      "- Cells that are still pending are not imputed; intervals use only seeds that both methods finished.",
      "- **ROUGE-L at this scale mostly measures lexical overlap of near-gibberish, and rewards length.** A "
      "4.2M-parameter student writes barely grammatical text after any method (the samples are in each cell's "
      "`eval/samples.jsonl`). The pretrained student, which never learned to stop, writes about twice as many "
      "words as the fine-tuned ones (lengths above) and so scores a higher ROUGE-L than every distilled student, "
      "although its bits per byte on the references are far worse. Read the ROUGE-L differences between methods "
      "with that in mind, next to the bits-per-byte differences, which do not depend on sampling or length.",
      "- Bits per byte scores the gold responses, the very likelihood SFT maximises with its whole objective; "
      "the KD methods give part of theirs to KD terms (`kd_rate` 0.5), so SFT leading on it is expected. "
      "Between KD methods, which share that split, it is a fair comparison.",
      "- `dev loss` is each method's own training objective on the dev part (for KD methods it includes their KD "
      "terms), so it compares seeds of one method, not methods; `bits/byte` is the likelihood that compares them.", ""]
docs.mkdir(exist_ok=True)
(docs / "RESULTS.md").write_text("\n".join(L), encoding="utf-8")
print(f"wrote {docs / 'RESULTS.md'}")

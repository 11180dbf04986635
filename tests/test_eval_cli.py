"""``dwakd eval`` end to end on the tiny fixture models; numbers re-checked with rouge-score directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from dwakd.cli.main import main


def _references(path, n):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
    return [r["response"] for r in rows]


def test_eval_cli_writes_results(tmp_path, capsys, tiny_student_dir, tiny_teacher_dir, tiny_dolly_path):
    out = tmp_path / "ev"
    second = tmp_path / "second.jsonl"  # a second set (two examples), so the cross-set average is real
    second.write_text("".join(tiny_dolly_path.read_text().splitlines(keepends=True)[3:5]))
    rc = main(["eval", str(tiny_student_dir), "--data", str(tiny_dolly_path), str(second), "--limit", "3", "--seeds", "1,2",
               "--max-new-tokens", "8", "--teacher", str(tiny_teacher_dir), "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | tiny_dolly ROUGE-L |" in printed
    for name in ("results.json", "results.md", "samples.jsonl", "teacher_answers.jsonl"):
        assert str(out / name) in printed, name  # every file written is named
    for name in ("results.json", "results.md", "samples.jsonl", "teacher_answers.jsonl"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    entry = res["sets"]["tiny_dolly"]
    assert entry["n"] == 3 and res["prompt_format"] == "plain"  # the tiny student has no chat template
    assert set(entry["rougeL"]["per_seed"]) == {"1", "2"}

    # recompute ROUGE-L from the written samples with rouge-score itself
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = _references(tiny_dolly_path, 3)
    all_samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(all_samples) == 6 + 4
    samples = [s for s in all_samples if s["set"] == "tiny_dolly"]
    per_seed = {}
    for seed in (1, 2):
        rows = [s for s in sorted(samples, key=lambda s: s["key"]) if s["seed"] == seed]
        texts = [s["output"] for s in rows]
        each = [100 * scorer.score(r, t)["rougeL"].fmeasure for r, t in zip(refs, texts)]
        assert [s["rougeL"] for s in rows] == pytest.approx(each, abs=1e-9)  # per-example ROUGE-L
        assert [s["references"] for s in rows] == [[r] for r in refs]
        assert all(s["prompt"].startswith("Below is an instruction") and s["set"] == "tiny_dolly" for s in rows)
        per_seed[seed] = np.mean(each)  # each is already in percent
        assert entry["rougeL"]["per_seed"][str(seed)] == np.float64(per_seed[seed])
    assert entry["rougeL"]["mean"] == np.float64(np.mean(list(per_seed.values())))
    assert abs(entry["rougeL"]["std"] - abs(per_seed[1] - per_seed[2]) / 2) < 1e-9

    assert entry["bpb"]["value"] > 0 and entry["bpb"]["n_examples"] == 3
    agree = entry["agreement"]
    # agreement: the samples scored against the teacher's written answers, recomputed; bits per byte
    # of those answers counts each non-empty answer once (the tiny teacher may answer with nothing:
    # zero-byte answers are skipped, and with none scored the value is NaN).
    answers = [json.loads(line) for line in (out / "teacher_answers.jsonl").read_text().splitlines()]
    t_texts = [a["text"] for a in sorted(answers, key=lambda a: a["key"]) if a["set"] == "tiny_dolly"]
    assert len(t_texts) == 3
    n_scored = sum(bool(t) for t in t_texts)
    t_bpb = agree["teacher_bpb"]
    assert (t_bpb["n_examples"], t_bpb["skipped"]) == (n_scored, 3 - n_scored)
    assert t_bpb["value"] > 0 if n_scored else np.isnan(t_bpb["value"])
    for seed in (1, 2):
        texts = [s["output"] for s in sorted(samples, key=lambda s: s["key"]) if s["seed"] == seed and s["set"] == "tiny_dolly"]
        want = 100 * np.mean([scorer.score(t, x)["rougeL"].fmeasure for t, x in zip(t_texts, texts)])
        assert agree["rougeL"]["per_seed"][str(seed)] == pytest.approx(want, abs=1e-9)
    # the average: each set counts once, per seed, then mean over seeds
    other = res["sets"]["second"]
    assert other["n"] == 2
    for seed in ("1", "2"):
        want = (entry["rougeL"]["per_seed"][seed] + other["rougeL"]["per_seed"][seed]) / 2
        assert res["average"]["rougeL"]["per_seed"][seed] == pytest.approx(want, abs=1e-9)
    assert res["average"]["rougeL"]["mean"] == pytest.approx(np.mean(list(res["average"]["rougeL"]["per_seed"].values())))
    assert res["average"]["bpb"] == pytest.approx((entry["bpb"]["value"] + other["bpb"]["value"]) / 2)
    md = (out / "results.md").read_text()
    assert "ROUGE-L vs teacher" in md and "seeds 1, 2" in md


def test_eval_cli_greedy_chat_model(tmp_path, tiny_teacher_dir, tiny_dolly_path):
    out = tmp_path / "greedy"
    rc = main(["eval", str(tiny_teacher_dir), "--data", str(tiny_dolly_path), "--limit", "2", "--greedy",
               "--max-new-tokens", "4", "--no-bpb", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["prompt_format"] == "chat"  # the tiny teacher has a chat template
    assert list(res["sets"]["tiny_dolly"]["rougeL"]["per_seed"]) == ["0"]
    assert "bpb" not in res["sets"]["tiny_dolly"]


def test_eval_cli_user_errors(tmp_path, capsys, tiny_student_dir):
    assert main(["eval", str(tiny_student_dir), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    assert main(["eval", str(tiny_student_dir), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["eval", str(tiny_student_dir), "--data", str(bad), "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["eval", str(tiny_student_dir), "--data", str(bad), "--chat-template", "on"]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_runner_multi_reference_and_average_with_known_outputs(tmp_path, tiny_student):
    """A bigram model that always answers "the blue" + EOS: every ROUGE-L is known by hand."""
    import torch

    from _eval_fakes import BigramLM
    from dwakd.eval.generate import GenerationSettings
    from dwakd.eval.runner import EvalOptions, evaluate, results_markdown

    tok = tiny_student[1]
    V, eos = len(tok), tok.eos_token_id
    the, blue = tok.convert_tokens_to_ids(["▁the", "▁blue"])
    assert tok.unk_token_id not in (the, blue)
    table = torch.full((V, V), -30.0)
    table[:, the] = 10.0
    table[the, :] = -30.0
    table[the, blue] = 10.0
    table[blue, :] = -30.0
    table[blue, eos] = 10.0
    a = tmp_path / "minillm.jsonl"
    a.write_text(
        json.dumps({"prompt": "### Instruction:\nName an animal.\n\n### Response:\n",
                    "output": ["completely different", "The blue!"]}) + "\n"
        + json.dumps({"prompt": "### Instruction:\nAnother.\n\n### Response:\n", "output": "a blue sky"}) + "\n"
    )
    b = tmp_path / "dolly.jsonl"
    b.write_text(json.dumps({"instruction": "Say it.", "context": "", "response": "the blue"}) + "\n")
    opts = EvalOptions(seeds=(1, 2), generation=GenerationSettings(max_new_tokens=5), progress=False)
    res = evaluate("bigram", [a, b], opts, model=BigramLM(table), tokenizer=tok, teacher_refs=None)
    # set a: max(0, 100) for the first record; "the blue" vs "a blue sky": LCS 1, P 1/2, R 1/3 -> F 40
    assert res["sets"]["minillm"]["rougeL"]["mean"] == pytest.approx((100 + 40) / 2)
    assert res["sets"]["minillm"]["rougeL"]["std"] == pytest.approx(0.0)
    assert res["sets"]["dolly"]["rougeL"]["mean"] == pytest.approx(100.0)
    assert res["average"]["rougeL"]["mean"] == pytest.approx((70 + 100) / 2)
    assert res["samples"]["minillm"]["1"] == ["the blue", "the blue"]
    assert res["sets"]["minillm"]["generation"]["stopped_at_eos"] == 1.0
    # both references of the multi-reference record are scored for bits per byte
    ref_bytes = len("completely different") + len("The blue!") + len("a blue sky")
    assert res["sets"]["minillm"]["bpb"]["n_bytes"] == ref_bytes
    assert "| bigram | 70.00 ± 0.00 | 100.00 ± 0.00 | 85.00 ± 0.00 |" in results_markdown(res)


def test_eval_cli_lora_adapter_directory(tmp_path, tiny_student_dir, tiny_dolly_path):
    from peft import LoraConfig, get_peft_model

    from dwakd.models import load_model

    base = load_model(tiny_student_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)  # adapter weights and config only: no tokenizer files
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "tokenizer.json").exists()
    out = tmp_path / "lora_eval"
    rc = main(["eval", str(adapter), "--data", str(tiny_dolly_path), "--limit", "2", "--seeds", "3",
               "--max-new-tokens", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert json.loads((out / "results.json").read_text())["sets"]["tiny_dolly"]["n"] == 2

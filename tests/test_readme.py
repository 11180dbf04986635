"""The README, followed literally: its Python blocks run, and its Quick start lines fit together in order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def quick_start() -> list[list[str]]:
    section = README[README.index("## Quick start"):]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[:1]
    lines = []
    for raw in block.splitlines():
        line = raw.split("  #")[0].strip()
        if line.startswith("dwakd "):
            lines.append(shlex.split(line))
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_blocks_run(index):
    code = blocks("python")[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})  # noqa: S102


def test_quick_start_lines_parse_and_fit_together():
    from dwakd.cli.main import build_parser
    from dwakd.config import load_config

    lines = quick_start()
    assert [ln[1] for ln in lines] == ["prepare-teacher", "data", "train", "cache-teacher", "train", "plot", "align",
                                       "eval"]
    parser = build_parser()
    for argv in lines:
        parser.parse_args(argv[1:])  # every line is a valid command (argparse exits on an error)
    data_out = Path(lines[1][lines[1].index("--out") + 1])
    config = lines[2][2]
    assert (ROOT / config).is_file()
    cfg = load_config(ROOT / config, lines[4][3:], check_files=False)  # the training line's overrides apply
    assert Path(cfg.data.train) == data_out / "train.jsonl"  # the data line writes what the config reads
    assert cfg.method.name == "dwakd" and cfg.train.lr == 5e-4
    run = Path(cfg.output_dir)
    assert Path(lines[5][2]) == run  # plot the run just trained
    assert Path(lines[6][lines[6].index("--student") + 1]) == run / "final"  # align with the trained student
    assert Path(lines[7][2]) == run / "final" and Path(lines[7][lines[7].index("--data") + 1]) == data_out / "test.jsonl"


def test_demo_config_has_no_placeholder():
    text = (ROOT / "configs" / "demo.yaml").read_text()
    assert "PLACEHOLDER" not in text and "tests/fixtures" not in yaml.safe_load(text)["data"]["train"]


def test_help_shows_examples_and_v_works_anywhere(capsys):
    from dwakd.cli.main import _pull_verbose, main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out
    for cmd in ("train", "eval", "plot", "data"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out, cmd
    assert _pull_verbose(["train", "c.yaml", "-v", "a=1"]) == (["train", "c.yaml", "a=1"], True)
    assert _pull_verbose(["-v", "eval", "m"]) == (["eval", "m"], True)
    assert _pull_verbose(["eval", "m", "--", "-v"]) == (["eval", "m", "--", "-v"], False)


def test_resume_hint_keeps_the_overrides():
    from dwakd.cli.train import resume_command

    cmd = resume_command("configs/demo.yaml", ["output_dir=runs/my run", "train.lr=5e-4"])
    assert shlex.split(cmd) == ["dwakd", "train", "configs/demo.yaml", "output_dir=runs/my run", "train.lr=5e-4",
                                "--resume", "auto"]


def test_pyproject_license_is_an_spdx_string():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert not any("License ::" in c for c in project.get("classifiers", []))


def test_plot_draws_curves_of_runs(tmp_path, capsys):
    import json

    from dwakd.cli.main import main

    for name, shift in (("a", 0.0), ("b", 0.5)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "kind": "train", "loss": 3 - 0.1 * s + shift, "term/ce": 2.0, "term/kd": 1.0,
                 "lr/student": 1e-3 * s / 10} for s in range(1, 11)]
        rows.append({"step": 10, "kind": "eval", "dev/loss": 2.5 + shift})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    out = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--smooth", "3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.stat().st_size > 1000
    assert main(["plot", str(tmp_path / "missing")]) == 2

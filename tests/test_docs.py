"""The generated config reference in docs/CONFIG.md matches the code."""

from pathlib import Path

from dwakd.config import describe_config


def test_config_reference_is_current():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert describe_config().strip() in doc, "regenerate: dwakd train --print-config-reference (see docs/CONFIG.md)"

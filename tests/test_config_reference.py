"""docs/configs.md is generated from the config dataclasses and must be up to date."""

from __future__ import annotations

from pathlib import Path

from es_lottery.experiments import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    committed = (ROOT / "docs" / "configs.md").read_text()
    assert committed == config_reference.document(), "run `python scripts/config_reference.py`"


def test_every_field_of_every_config_is_documented():
    text = config_reference.document()
    for needle in (
        "`ga.population_size`",
        "`trainer.learning_rate`",
        "`nets.inner_learning_rate`",
        "`networks.<label>.sizes`",
        "`edge_popup[].kept_fraction`",
        "`trainer.type`",
    ):
        assert needle in text, needle
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    undocumented = [r.split("`")[1] for r in rows if r.rstrip().endswith("|  |")]
    assert not undocumented, f"fields without a description: {undocumented}"

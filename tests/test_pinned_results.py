"""Refactors that claim to change no number are held to the numbers of the code before them.

``tests/pins.json`` was recorded by ``python tests/_pins.py --write`` on the code before the task-protocol
refactor; see ``tests/_pins.py`` for what each pin covers. Every value is a digest of exact bit patterns.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import _pins
import pytest

PINNED = json.loads(_pins.PINS.read_text())


@pytest.mark.parametrize("group", ["slt", "imp", "nets"])
def test_small_runs_give_the_pinned_numbers(group):
    with tempfile.TemporaryDirectory() as tmp:
        now = _pins.GROUPS[group](Path(tmp))
    for name, want in PINNED[group].items():
        for what, digest in want.items():
            assert now[name][what] == digest, (
                f"{group} run {name!r}: {what} changed (pinned {digest}, now {now[name][what]}); "
                "`python tests/_pins.py --show` prints the values"
            )


def test_shipped_configs_keep_their_run_directory_names():
    now = _pins.config_hashes()
    for path, digest in PINNED["config_hashes"].items():
        assert now.get(path) == digest, f"configs/{path} would now run in another directory"

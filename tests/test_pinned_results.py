"""Refactors that claim to change no number are held to the numbers of the code before them.

``tests/pins.json`` was recorded by ``python tests/_pins.py --write`` on the code before the task-protocol
refactor; see ``tests/_pins.py`` for what each pin covers. Every value is a digest of exact bit patterns.
The run store moved the files, not their contents: the digests are unchanged. ``job_keys`` pins where every
job of every shipped config lives in the store (its key), replacing the old layout's run-directory names;
``tests/test_store.py`` checks that run directories of the old layout are migrated.
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
    assert set(now) == set(PINNED[group])
    for name, want in PINNED[group].items():
        assert set(now[name]) == set(want)
        for what, digest in want.items():
            assert now[name][what] == digest, (
                f"{group} run {name!r}: {what} changed (pinned {digest}, now {now[name][what]}); "
                "`python tests/_pins.py --show` prints the values"
            )


def test_shipped_configs_keep_their_jobs_in_the_store():
    now = _pins.job_keys()
    assert set(now) == set(PINNED["job_keys"]), "a config was added or removed: record it with --write"
    for path, jobs in PINNED["job_keys"].items():
        assert now[path] == jobs, f"configs/{path}: a job would now run in another store directory"

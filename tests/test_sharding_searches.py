"""GA, ES, NeTS and control searches give bit-identical results on 1 and 4 devices.

Each case runs in a subprocess with 4 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``
plus ``distributed.REPRODUCIBLE_XLA_FLAGS``; see ``tests/_sharding_searches.py``): the search is run with its
task built inside ``distributed.use_devices(1)`` and ``use_devices(4)`` and every bit of the result (final
state, history, final evaluation) is compared. The populations (10 GA members with 8 evaluation slots, 7 ES
members, 6 NeTS genomes, 10 control members in blocks of 8) do not divide the 4 devices, so padding is
exercised. Where ``es_lottery.distributed`` says the sharded numbers equal the unsharded (pinned) ones —
GA with accuracy fitness, NeTS — that is checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from es_lottery import distributed

ROOT = Path(__file__).resolve().parents[1]
UNSHARDED_EQUAL = ("ga_accuracy", "nets")


def run_case(name: str) -> dict:
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(
        [*flags, "--xla_force_host_platform_device_count=4", *distributed.REPRODUCIBLE_XLA_FLAGS]
    )
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_sharding_searches.py"), name],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["device_count"] == 4 and out["reproducible"]
    return out["cases"][name]


@pytest.mark.parametrize(
    "name",
    [
        "es",  # the default suite keeps one case; the others are end-to-end minutes (-m slow)
        *(
            pytest.param(n, marks=pytest.mark.slow)
            for n in ("ga_accuracy", "ga_cross_entropy", "nets", "control", "control_own_keys")
        ),
    ],
)
def test_search_is_bit_identical_on_1_and_4_devices(name):
    rows = run_case(name)
    one, four = rows["devices=1"], rows["devices=4"]
    assert one["digest"] == four["digest"], (name, one, four)
    assert one["fitness"] == four["fitness"]
    if name in UNSHARDED_EQUAL:
        assert rows["unsharded"]["digest"] == one["digest"], (name, rows)

"""A two-process ``jax.distributed`` run on localhost completes a small ES run; only process 0 writes.

Two processes (one CPU device each, gloo collectives) train SNES on digits with the population sharded
over the 2-device global mesh (``tests/_distributed_check.py``). The result must equal, bit for bit, the
same run in ONE process with 2 host devices (the mesh is the same size, the program the same), and only
process 0's result may reach the output directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from es_lottery import distributed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_distributed_check.py"


def _env(devices: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, *distributed.REPRODUCIBLE_XLA_FLAGS])
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_two_processes_run_es_and_only_process_0_writes(tmp_path):
    out = tmp_path / "out"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out), str(i), "2", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(1),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    # the same run in one process with 2 host devices, meanwhile
    single = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "single"), "0", "0", "0"],
        capture_output=True,
        text=True,
        env=_env(2),
        cwd=ROOT,
        timeout=600,
    )
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        results.append(_last_json(stdout))
    assert single.returncode == 0, single.stderr[-3000:]
    one = _last_json(single.stdout)

    assert [r["process_index"] for r in results] == [0, 1]
    assert all(r["process_count"] == 2 and r["devices"] == 2 for r in results)
    assert one["process_count"] == 1 and one["devices"] == 2
    assert results[0]["digest"] == results[1]["digest"] == one["digest"]
    # only process 0 wrote into the output directory; process 1 wrote into its scratch copy
    written = json.loads((out / "run" / "result.json").read_text())
    assert written["process_index"] == 0
    assert (out / "run" / "log.txt").read_text() == "written by process 0\n"
    assert sorted(p.name for p in out.iterdir()) == ["run"]
    assert not results[1]["wrote"].startswith(str(out))


# ----------------------------------------------------------------------------------------------
# settings and helpers (in this process: one CPU device)


def test_cli_values_are_parsed_and_bad_ones_name_the_flag():
    assert distributed.parse_devices(None) is None
    assert distributed.parse_devices("all") == "all"
    assert distributed.parse_devices("2") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="--devices must be 'all' or a positive int"):
            distributed.parse_devices(bad)
    assert distributed.parse_distributed(None) is None
    assert distributed.parse_distributed(True) == {} == distributed.parse_distributed("auto")
    assert distributed.parse_distributed("node1:1234,4,3") == {
        "coordinator_address": "node1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    for bad in ("node1,4,3", "node1:1234,4,4", "node1:1234,4"):
        with pytest.raises(ValueError, match="--distributed takes"):
            distributed.parse_distributed(bad)


def test_sharding_settings_and_errors(monkeypatch):
    import jax

    s = distributed.make_sharding(1)
    assert s.num_devices == 1 and s.blocks == distributed.DEFAULT_BLOCKS
    assert [s.block_size(n) for n in (1, 7, 8, 9, 128)] == [1, 1, 1, 2, 16]
    with pytest.raises(ValueError, match=r"devices=\d+ but JAX sees 1 device.*configure\(devices="):
        distributed.make_sharding(jax.device_count() + 1)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        distributed.make_sharding(1, blocks=0)
    monkeypatch.setenv(distributed.BLOCKS_ENV, "32")
    assert distributed.make_sharding(1).blocks == 32
    monkeypatch.setenv(distributed.BLOCKS_ENV, "many")
    with pytest.raises(ValueError, match="ES_LOTTERY_BLOCKS must be a positive int"):
        distributed.make_sharding(1)
    assert distributed.current_sharding() is None
    with distributed.use_devices(1, blocks=4) as inside:
        assert distributed.current_sharding() is inside and inside.blocks == 4
    assert distributed.current_sharding() is None
    with pytest.raises(TypeError, match="sharding must be 'context', None or a PopulationSharding"):
        distributed.resolve_sharding(2)


def test_map_blocks_pads_drops_and_returns_per_block_values():
    import jax
    import jax.numpy as jnp
    import numpy as np

    members = {"w": jnp.arange(7.0)[:, None] * jnp.ones((7, 3))}

    def fn(block, live, shared):
        return block["w"].sum(axis=1) * shared, jnp.sum(jnp.where(live, block["w"][:, 0], 0.0))

    per_member, per_block = jax.jit(
        lambda m: distributed.map_blocks(fn, m, jnp.float32(2.0), distributed.make_sharding(1, blocks=3))
    )(members)
    np.testing.assert_array_equal(per_member, np.arange(7.0) * 6.0)
    # 7 members in blocks of ceil(7/3) = 3: [0 1 2] [3 4 5] [6 + 2 padding rows, not counted]
    np.testing.assert_array_equal(per_block, [3.0, 12.0, 6.0])


def test_configure_after_start_says_what_to_do():
    import jax

    jax.devices()  # JAX is running in this process
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        distributed.configure(devices=jax.device_count() + 3, reproducible=False)

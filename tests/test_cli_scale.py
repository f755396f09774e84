"""The command line's scale-out: ``--devices`` / ``--distributed`` on slt, imp and nets, and ``sweep``.

* A two-process ``es-lottery imp --distributed localhost:PORT,2,I`` run (one CPU device per process, gloo
  collectives) completes a small ES-IMP run. An audit hook (``tests/_cli_process.py``) records every write
  of each process under the output directory: process 1 makes none, process 0 writes the run. The bytes
  it writes equal those of the same config run in ONE process with ``--devices 2`` (same mesh size, same
  program), apart from the wall-clock seconds in the metrics files.
* Neither flag is part of the run: a run without them writes the same file names (run directory, store
  job keys).
* Bad values name the flag; a sweep with a bad grid value names the field and submits nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from es_lottery import cli, distributed

ROOT = Path(__file__).resolve().parents[1]
PROCESS = ROOT / "tests" / "_cli_process.py"

TINY_IMP = {
    "name": "tiny",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 16, 10]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 7,  # does not divide the 2 devices
        "sigma_init": 0.05,
        "num_generations": 6,
        "eval_every": 3,
        "batch_size": 64,
        "checkpoint_every": 3,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["snr"],
    "seeds": 1,
}
TIMING_KEY = re.compile(r"seconds")


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _contents(root: Path) -> dict[str, object]:
    """Every file under ``root``: JSON / JSONL parsed without wall-clock fields, anything else as bytes."""
    out: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if path.suffix == ".json":
            out[rel] = _strip_timing(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[rel] = [_strip_timing(json.loads(line)) for line in path.read_text().splitlines() if line]
        else:
            out[rel] = path.read_bytes()
    return out


@pytest.mark.slow
def test_two_process_cli_run_completes_and_only_process_0_writes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_IMP))
    out, single = tmp_path / "out", tmp_path / "single"
    port = _free_port()

    def start(record: Path, root: Path, *args: str, devices: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(PROCESS), str(record), str(root), "imp", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(devices),
            cwd=tmp_path,
        )

    procs = [
        start(
            tmp_path / f"p{i}.json",
            out,
            "--out",
            str(out),
            "--distributed",
            f"localhost:{port},2,{i}",
            devices=1,
        )
        for i in range(2)
    ]
    reference = start(tmp_path / "ref.json", single, "--out", str(single), "--devices", "2", devices=1)
    plain = start(tmp_path / "plain.json", tmp_path / "plain", "--out", str(tmp_path / "plain"), devices=1)
    everything = [*procs, reference, plain]
    outputs = [p.communicate(timeout=1800) for p in everything]
    for p, (_, stderr) in zip(everything, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    rec = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("p0", "p1", "ref", "plain")]
    assert [r["returncode"] for r in rec] == [0, 0, 0, 0]

    # process 1 wrote nothing under the output directory and printed no table; process 0 wrote the run
    assert rec[1]["events"] == []
    assert "run directory" not in outputs[1][0]
    written = {Path(path) for _, path in rec[0]["events"]}
    assert any(p.name == "summary.json" for p in written), sorted(map(str, written))[:20]
    assert f"run directory: {out / 'tiny'}" in outputs[0][0]

    # what process 0 wrote equals the one-process run on 2 host devices
    got, want = _contents(out), _contents(single)
    assert sorted(got) == sorted(want)
    assert any(name.endswith(".npz") for name in got)
    for name in want:
        assert got[name] == want[name], name
    # neither flag is part of the run: a run without them has the same run directory and store job keys
    assert sorted(_contents(tmp_path / "plain")) == sorted(want)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--devices", "0"], "--devices must be 'all' or a positive int"),
        (["--devices", "two"], "--devices must be 'all' or a positive int"),
        (["--distributed", "node1,2,0"], "--distributed takes"),
        (["--distributed", "node1:1234,2,2"], "--distributed takes"),
        (["--devices", "2", "--distributed", "node1:1234,2,0"], "--devices must be 'all' with --distributed"),
    ],
)
@pytest.mark.parametrize("kind", ["slt", "imp", "nets"])
def test_bad_flags_name_the_flag(kind, flags, words, tmp_path, capsys):
    config = (
        ROOT
        / "configs"
        / kind
        / {"slt": "quickstart.yaml", "imp": "mnist_snes_cpu.yaml"}.get(kind, "xor_mlp10.yaml")
    )
    assert cli.main([kind, str(config), "--out", str(tmp_path), *flags]) == 2
    assert words in capsys.readouterr().out.replace("\n", "")
    assert not any(tmp_path.iterdir())  # nothing written


def test_sweep_cli_rejects_a_bad_grid_value_before_submitting(tmp_path, capsys):
    pytest.importorskip("submitit")
    config = tmp_path / "slt" / "tiny.yaml"
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "dataset": "moons",
                "networks": {"A": {"sizes": [2, 4, 2]}},
                "variants": ["ga"],
                "seeds": 1,
            }
        )
    )
    argv = ["sweep", str(config), "--grid", "ga.population_size=10,-1", "--out", str(tmp_path / "runs")]
    assert cli.main(argv) == 2
    assert "population_size" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "sweeps" / "tiny" / "submitit").exists()


def test_distributed_flag_forms():
    args = cli.build_parser().parse_args(["slt", "--distributed"])
    assert args.distributed is True and distributed.parse_distributed(args.distributed) == {}
    args = cli.build_parser().parse_args(["nets", "--distributed", "h:1,2,1"])
    assert distributed.parse_distributed(args.distributed) == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 1,
    }

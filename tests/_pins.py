"""Pinned results of small GA, ES-IMP and NeTS runs and the run-store keys of every shipped config's jobs.

``python tests/_pins.py --write`` records them in ``tests/pins.json``; ``tests/test_pinned_results.py``
recomputes them and demands bit-identical values. They were first recorded on the code BEFORE the task
protocol refactor (``es_lottery/tasks/``), so that refactor — and any later one that claims to change no
number — is checked against the numbers the old code produced.

What is pinned (every float as its exact bit pattern, via SHA-256 of the bytes):

* ``slt``: a tiny moons experiment (arch A and a deep arch on the 2-input table path; plain GA and adaptive
  AB; a cross-entropy-fitness GA on digits) — every results row (without wall-clock seconds) and every
  per-generation metrics row of the experiment's view.
* ``imp``: a tiny ES-IMP run (digits, MLP, SNES and Sep-CMA-ES, SNR + magnitude + random re-init, 2 levels)
  — metrics rows and every saved array (masks, θ₀, final params, std, curves), named by their path below
  the run's directory in the store (``seed_0/magnitude/level_0/mask.npz:packed``: the names the run
  directory of the code before the store gave them, so the digests are those recorded then).
* ``nets``: a tiny NeTS experiment (XOR; the paper's train-then-validate fitness and the forward one) —
  results and metrics rows, and the saved tickets (named ``tickets/nets_seed<s>.npz:<array>`` as then).
* ``job_keys``: the directory in the run store of every job of every YAML under ``configs/`` (a change of
  the loader, a default or the hashing rule must not move a finished job; replaced the config-hash pins of
  the old layout, whose directory names hashed every field).

The number pins were recorded on the code BEFORE the task-protocol refactor and are unchanged by the run
store (the store changed where files live, not what they hold).

A pin is a digest, so a mismatch says only WHICH group changed; rerun with ``--show`` on both versions to
see the values.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("pins.json")

SLT = {
    "name": "pin_slt",
    "dataset": "moons",
    "dataset_args": {"n_train": 1200, "n_test": 400},
    "archs": {"A": [2, 12, 2], "D": [2, 6, 6, 2]},
    "variants": ["ga", "adaptive_ab"],
    "seeds": 2,
    "ga": {"pop_size": 12, "min_generations": 6, "patience": 3, "bound_patience": 40},
    "progress_every": 4,
}
SLT_CE = {
    "name": "pin_slt_ce",
    "dataset": "digits",
    "dataset_args": {"classes": [0, 1, 2]},
    "archs": {"B": [64, 10, 3]},
    "variants": ["ga"],
    "seeds": 2,
    "ga": {"pop_size": 10, "min_generations": 5, "patience": 3, "fitness": "cross_entropy"},
    "progress_every": 5,
}
IMP = {
    "name": "pin_imp",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 12, 10]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 8,
        "sigma_init": 0.05,
        "num_generations": 12,
        "eval_every": 4,
        "batch_size": 64,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["magnitude", "snr", "random_reinit"],
    "seeds": 1,
}
NETS = {
    "name": "pin_nets",
    "dataset": "xor",
    "dataset_args": {"n": 12},
    "network": {"name": "mlp", "sizes": [2, 4, 1], "weight_init": "lecun_normal"},
    "nets": {"pop_size": 4, "generations": 3, "inner_batch_size": 8},
    "final_training": {"epochs": 3, "lr": 0.1, "batch_size": 8},
    "imp": {"num_levels": 2},
    "methods": ["nets", "imp", "random"],
    "seeds": 2,
}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _rows(path: Path) -> list[dict]:
    """The JSON rows of ``path`` without wall-clock fields (any key ending in ``seconds``)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def _npz_digests(root: Path) -> dict[str, str]:
    out = {}
    for f in sorted(root.rglob("*.npz")):
        with np.load(f, allow_pickle=False) as data:
            for k in sorted(data.files):
                out[f"{f.relative_to(root)}:{k}"] = _array_digest(data[k])
    return out


def _quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), width=150)


def slt_pins(out: Path) -> dict:
    from es_lottery.experiments import slt

    pins = {}
    for cfg in (SLT, SLT_CE):
        run = slt.run_experiment(slt.parse_config(copy.deepcopy(cfg)), out, console=_quiet())
        pins[cfg["name"]] = {
            "results": _digest(_rows(run / "results.jsonl")),
            "metrics": _digest(_rows(run / "metrics.jsonl")),
        }
    return pins


def imp_pins(out: Path) -> dict:
    from es_lottery.experiments import imp

    pins = {}
    for algorithm in ("SNES", "Sep_CMA_ES"):
        cfg = copy.deepcopy(IMP)
        cfg["name"] = f"pin_imp_{algorithm}"
        cfg["trainer"]["algorithm"] = algorithm
        exp = imp.parse_config(cfg)
        run = imp.run_experiment(exp, out, console=_quiet())
        pins[cfg["name"]] = {
            "metrics": _digest(_rows(run / "metrics.jsonl")),
            "arrays": _digest(_npz_digests(imp.data_dir(exp, out))),
        }
    return pins


def nets_pins(out: Path) -> dict:
    from es_lottery.experiments import nets

    pins = {}
    for fitness in ("train_then_val", "forward"):
        cfg = copy.deepcopy(NETS)
        cfg["name"] = f"pin_nets_{fitness}"
        cfg["nets"]["fitness"] = fitness
        exp = nets.parse_config(cfg)
        run = nets.run_experiment(exp, out, console=_quiet())
        tickets = nets.branches(exp, out)["nets"]
        arrays = {}
        for s in range(exp.seeds):
            with np.load(tickets.seed(s) / "ticket.npz", allow_pickle=False) as data:
                for k in sorted(data.files):
                    arrays[f"tickets/nets_seed{s}.npz:{k}"] = _array_digest(data[k])
        pins[cfg["name"]] = {
            "results": _digest(_rows(run / "results.jsonl")),
            "metrics": _digest(_rows(run / "metrics.jsonl")),
            "arrays": _digest(arrays),
        }
    return pins


def job_keys(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """Per shipped config: job → its directory in the run store (nothing is created)."""
    import warnings

    from es_lottery.experiments import imp, nets, slt

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the shipped configs use the current spellings
        for path in sorted((root / "configs").glob("*/*.yaml")):
            kind, name = path.parent.name, f"{path.parent.name}/{path.name}"
            if kind == "slt":
                exp = slt.load_config(path)
                out[name] = {j.name: j.branch.relpath for j in slt.plan(exp, "runs")}
            elif kind == "imp":
                exp = imp.load_config(path)
                out[name] = {"trunk": imp.trunk(exp, "runs").relpath, **imp.branch_dirs(exp)}
            elif kind == "nets":
                exp = nets.load_config(path)
                out[name] = {m: b.relpath for m, b in nets.branches(exp, "runs").items() if m in exp.methods}
    return out


GROUPS = {"slt": slt_pins, "imp": imp_pins, "nets": nets_pins}


def compute(groups=tuple(GROUPS)) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for g in groups:
            out[g] = GROUPS[g](Path(tmp) / g)
    out["job_keys"] = job_keys()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"record the pins in {PINS}")
    ap.add_argument("--show", action="store_true", help="print the pins computed now")
    args = ap.parse_args(argv)
    pins = compute()
    if args.show or not args.write:
        print(json.dumps(pins, indent=2))
    if args.write:
        PINS.write_text(json.dumps(pins, indent=2) + "\n")
        print(f"wrote {PINS}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

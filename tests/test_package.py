"""The package face: every public name resolves, importing the package is light and has no side effects,
and drawing a figure leaves matplotlib's backend alone."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

FACES = [
    "es_lottery",
    "es_lottery.search",
    "es_lottery.tasks",
    "es_lottery.pruning",
    "es_lottery.gradient",
    "es_lottery.experiments",
    "es_lottery.experiments.reports",
]
HEAVY = ("gymnax", "brax", "matplotlib", "orbax", "tensorflow_datasets", "evosax")


def test_importing_the_faces_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in FACES)
        + "import es_lottery.plots, es_lottery.keys, es_lottery.treeio\n"
        + f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("face", FACES)
def test_every_public_name_resolves(face):
    mod = importlib.import_module(face)
    assert mod.__all__, face
    for name in mod.__all__:
        if name in ("control", "ppo"):  # gymnax / Brax: test_the_heavy_names_resolve
            continue
        assert getattr(mod, name) is not None, f"{face}.{name}"
    assert set(mod.__all__) <= set(dir(mod))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mod.nope  # noqa: B018


def test_the_heavy_names_resolve():
    import es_lottery as el

    assert callable(el.tasks.control.make_control_task) and callable(el.gradient.ppo.train_ppo)


def test_the_searches_share_their_verbs():
    import es_lottery as el

    for search in (el.ga, el.nets):
        for verb in ("init", "step", "advance", "run"):
            assert callable(getattr(search, verb)), (search.__name__, verb)
    for verb in ("init", "ask", "tell", "step", "run", "train"):
        assert callable(getattr(el.es, verb)), verb
    assert el.pruning.run is importlib.import_module("es_lottery.pruning.loop").run
    assert el.ga.split_run_key is el.nets.split_run_key is el.keys.split_run_key  # one definition


def test_drawing_leaves_the_matplotlib_backend_alone(tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")
import sys
import numpy as np
from es_lottery import plots
from es_lottery.experiments import slt
rows = [dict(job="A/ga", arch="A", method="ga", seed=s, test_acc=0.9, sparsity=0.5) for s in range(2)]
keys = ("best_acc", "sparsity_fittest", "best_sparsity", "best_ever_sparsity")
slt.write_plots({str(tmp_path)!r}, "t", rows, {{"A/ga": {{k: np.full((2, 3), 0.5) for k in keys}}}})
level = dict(criterion="snr", level=0, density=1.0, test_accuracy=0.9)
plots.performance_vs_density([level], {str(tmp_path / "p.png")!r}, "t")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "acc_vs_sparsity.png",
        "box_test_acc.png",
        "curves_A_ga.png",
        "p.png",
    ]

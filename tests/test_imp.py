"""ES lottery-ticket runs: the ES trainer, resumable run directories and config validation.

Tiny settings throughout (digits, MLP [64, 16, 10], population 8, 20 generations, 3 levels) so that the
whole module stays at a few compiles: every run below reuses the masks, and hence the compiled programs,
of the first one.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from rich.console import Console

from es_lottery import cli, networks
from es_lottery import masks as M
from es_lottery.experiments import imp
from es_lottery.pruning import es_trainer as EST
from es_lottery.pruning import loop as L
from es_lottery.search import es

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 16, 10]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 8,
        "sigma_init": 0.05,
        "num_generations": 20,
        "eval_every": 5,
        "batch_size": 64,
        "checkpoint_every": 5,
    },
    "imp": {"num_levels": 3, "prune_rate": 0.2},
    # no magnitude: the baseline falls back to the masks of the first IMP criterion (snr)
    "criteria": ["snr", "random_reinit"],
    "seeds": 1,
}
SEGMENTS_PER_LEVEL = 4  # 20 generations / checkpoint_every 5


class Killed(Exception):
    """Stands in for SIGKILL."""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=150)


def tiny(**changes) -> dict:
    cfg = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The reference: the tiny config run once, never interrupted; its data directory (the store's trunk)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    exp = imp.parse_config(TINY)
    imp.run_experiment(exp, out, console=quiet())
    return imp.data_dir(exp, out)


def out_of(data_dir: Path) -> Path:
    """The output directory of a trunk ``<out>/store/imp/<trunk>``."""
    return data_dir.parents[2]


def load(path: Path, like):
    return imp.load_tree(path, like)[0]


def npz_files(root: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(root.rglob("*.npz")):
        with np.load(f) as data:
            out[str(f.relative_to(root))] = {k: data[k] for k in data.files}
    return out


def level_dirs(root: Path):
    return sorted(root.glob("seed_*/*/level_*"))


# ----------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize(  # level 0 at generation 10; level 1 at generation 15 (minutes: -m slow)
    "kill_after", [2, pytest.param(7, marks=pytest.mark.slow)]
)
def test_resume_after_kill_mid_level_is_bitwise_identical(full_run, tmp_path, kill_after):
    exp = imp.parse_config(TINY)
    seen = []

    def kill(info):
        seen.append(info)
        if len(seen) == kill_after:
            raise Killed

    with pytest.raises(Killed):
        imp.run_experiment(exp, tmp_path, console=quiet(), on_segment=kill)
    root = imp.data_dir(exp, tmp_path)  # same config → same key → same place in the store
    assert root.relative_to(tmp_path) == full_run.relative_to(out_of(full_run))
    level, gen = divmod(kill_after - 1, SEGMENTS_PER_LEVEL)
    ldir = root / "seed_0" / "snr" / f"level_{level}"
    assert not (ldir / "metrics.json").exists()  # the level is unfinished …
    assert EST.NpzCheckpointer(ldir / "checkpoint").latest_generation() == 5 * (gen + 1)  # … mid-way

    resumed = []
    imp.run_experiment(exp, tmp_path, console=quiet(), on_segment=resumed.append)
    # a baseline chain shares level 0 with the IMP chain (not trained again)
    total = (len(exp.criteria) * exp.num_levels - len(exp.baseline_criteria)) * SEGMENTS_PER_LEVEL
    assert len(resumed) == total - kill_after  # finished segments and levels were not trained again
    assert (resumed[0]["criterion"], resumed[0]["level"]) == ("snr", level)
    assert resumed[0]["generation"] == 5 * (gen + 2)

    want, got = npz_files(full_run), npz_files(root)
    assert sorted(got) == sorted(want)
    for name, arrays in want.items():
        assert sorted(got[name]) == sorted(arrays), name
        for k, a in arrays.items():
            b = got[name][k]
            assert a.dtype == b.dtype and a.shape == b.shape, (name, k)
            assert a.tobytes() == b.tobytes(), f"{name}:{k} differs after resume"
    for d in level_dirs(full_run):
        a = json.loads((d / "metrics.json").read_text())
        b = json.loads((root / d.relative_to(full_run) / "metrics.json").read_text())
        a.pop("seconds"), b.pop("seconds")
        assert a == b
        assert not (root / d.relative_to(full_run) / "checkpoint").exists()  # removed once finished
    rows = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(exp.criteria) * exp.num_levels


def test_finished_levels_are_skipped(full_run, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a finished level was trained again")

    monkeypatch.setattr(EST.ESTrainer, "train", boom)
    exp = imp.parse_config(TINY)
    console = quiet()
    path = imp.run_experiment(exp, out_of(full_run), console=console)
    assert path == out_of(full_run) / "tiny"
    assert "finished earlier, skipped" in console.file.getvalue()
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["criteria"]) == set(TINY["criteria"])
    assert (path / "plots" / "performance_vs_density.png").stat().st_size > 0


def test_exact_nested_densities_on_disk(full_run):
    sdir = full_run / "seed_0"
    exp = imp.parse_config(TINY)
    like = networks.init_params(jax.random.key(0), exp.module())
    theta0 = load(sdir / "theta0.npz", like)
    total = 64 * 16 + 16 * 10
    dirs = imp.branch_dirs(exp)
    assert (
        dirs == {"snr": "snr", "random_reinit": dirs["random_reinit"]}
        and dirs["random_reinit"] != "random_reinit"
    )
    for crit in TINY["criteria"]:
        prev = None
        for k in range(3):
            d = sdir / dirs[crit] / f"level_{k}"
            mask = imp.load_mask(d / "mask.npz", theta0)
            kept, tot = M.count(mask)
            assert tot == total and int(kept) == M.kept_count(0.8**k, total)
            row = json.loads((d / "metrics.json").read_text())
            assert (row["kept"], row["total"], row["level"]) == (int(kept), total, k)
            assert row["density"] == int(kept) / total
            biases = [m for p, m in jax.tree_util.tree_leaves_with_path(mask) if "bias" in M.path_name(p)]
            assert all(bool(jnp.all(b)) for b in biases)
            final = load(d / "final_params.npz", theta0)
            std = load(d / "std.npz", theta0)
            start = load(d / "theta0.npz", theta0)
            for m, f, s, t in zip(
                *(jax.tree_util.tree_leaves(x) for x in (mask, final, std, start)), strict=True
            ):
                assert not np.any(np.asarray(f)[~np.asarray(m)])  # pruned entries exactly zero
                assert not np.any(np.asarray(s)[~np.asarray(m)])
                assert np.all(np.asarray(s)[np.asarray(m)] > 0)
                assert not np.any(np.asarray(t)[~np.asarray(m)])
            if crit != "random_reinit":
                for a, b in zip(
                    jax.tree_util.tree_leaves(start),
                    jax.tree_util.tree_leaves(M.apply(theta0, mask)),
                    strict=True,
                ):
                    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # rewound to θ₀ ⊙ m_k
                if prev is not None:
                    assert bool(M.is_nested(mask, prev))
                    nxt = imp.load_mask(sdir / crit / f"level_{k - 1}" / "next_mask.npz", theta0)
                    assert all(
                        np.array_equal(a, b)
                        for a, b in zip(
                            jax.tree_util.tree_leaves(nxt), jax.tree_util.tree_leaves(mask), strict=True
                        )
                    )
                prev = mask
            else:
                assert row["mask_source"] == "snr"
                src = imp.load_mask(sdir / "snr" / f"level_{k}" / "mask.npz", theta0)
                assert int(M.count(src)[0]) == int(kept)  # same count as the IMP mask it replaces


# ----------------------------------------------------------------------------------------------
# the ES trainer


def test_es_trainer_starts_every_level_from_theta0_with_sigma_init(full_run):
    exp = imp.parse_config(TINY)
    module = exp.module()
    data = imp.load_data(exp)
    trainer = imp.make_trainer(exp, module, data)
    seen = []
    original = trainer.init_state

    def spy(key, theta0, mask):
        state = original(key, theta0, mask)
        seen.append((state, theta0, mask))
        return state

    trainer.init_state = spy
    run_key = jax.random.fold_in(jax.random.key(0), 0)
    result = L.run(run_key, trainer, exp.imp_config("snr"))
    assert len(seen) == 3
    theta0 = result.theta0
    for (state, th, mask), record in zip(seen, result.records, strict=True):
        active = int(sum(np.sum(np.asarray(m)) for m in jax.tree_util.tree_leaves(mask)))
        space = es.make_space("compressed", mask, theta0)
        assert state.es_state.mean.shape == (active,)
        np.testing.assert_array_equal(state.es_state.mean, space.from_params(M.apply(theta0, mask)))
        np.testing.assert_array_equal(es.std_vector(state), np.full(active, np.float32(0.05)))
        assert int(state.generation) == 0 and float(state.best_eval) == -np.inf
        assert int(state.es_state.generation_counter) == 0
        for a, b in zip(
            jax.tree_util.tree_leaves(th), jax.tree_util.tree_leaves(M.apply(theta0, mask)), strict=True
        ):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        # the run directory's snr level holds exactly this (no state carried over between levels)
        d = full_run / "seed_0" / "snr" / f"level_{record.level}"
        final = load(d / "final_params.npz", theta0)
        for a, b in zip(
            jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(record.final_params), strict=True
        ):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # a brand-new trainer on the last level gives the same result as the one that trained levels 0 and 1
    fresh = imp.make_trainer(exp, module, data)
    k_train, _ = L.level_keys(run_key, 2)
    last = result.records[2]
    again = fresh.train(k_train, M.apply(theta0, last.mask), last.mask)
    for a, b in zip(
        jax.tree_util.tree_leaves(again.final_params),
        jax.tree_util.tree_leaves(last.final_params),
        strict=True,
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert again.eval_score == last.eval_score


def test_best_mean_option_returns_the_best_evaluated_mean():
    exp = imp.parse_config(tiny(**{"trainer.use_best_mean": True}))
    module = exp.module()
    trainer = imp.make_trainer(exp, module, imp.load_data(exp))
    theta0 = trainer.init_params(jax.random.key(3))
    mask = M.ones(theta0)
    result = trainer.train(jax.random.key(4), theta0, mask)
    accs = result.metrics["eval"]["accuracy"]
    assert result.eval_score == pytest.approx(float(np.max(accs)))
    assert trainer.task.evaluate(None, result.final_params)["accuracy"] == pytest.approx(result.eval_score)
    assert result.metrics["chosen_generation"] == int(result.metrics["eval"]["generation"][np.argmax(accs)])


def test_trainer_config_validation():
    with pytest.raises(ValueError, match="checkpoint_every must be a multiple of eval_every"):
        EST.ESTrainerConfig(num_generations=20, eval_every=5, checkpoint_every=7)
    with pytest.raises(ValueError, match="num_generations"):
        EST.ESTrainerConfig(num_generations=0)


# ----------------------------------------------------------------------------------------------
# gradient descent through the same pipeline


def test_gd_imp_run_and_skip(tmp_path, monkeypatch):
    cfg = {
        "name": "tiny_gd",
        "dataset": "digits",
        "network": {"name": "mlp", "sizes": [64, 16, 10]},
        "trainer": {"type": "gd", "epochs": 2, "batch_size": 128},
        "imp": {"num_levels": 2},
        "criteria": ["magnitude", "mask_reinit"],
        "seeds": 1,
    }
    exp = imp.parse_config(cfg)
    path = imp.run_experiment(exp, tmp_path, console=quiet())
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["criterion"], r["level"]) for r in rows] == [
        ("magnitude", 0),
        ("magnitude", 1),
        ("mask_reinit", 0),
        ("mask_reinit", 1),
    ]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert not list(imp.data_dir(exp, tmp_path).rglob("std.npz"))  # GD has no search distribution
    from es_lottery.pruning import gd

    monkeypatch.setattr(gd.GDTrainer, "train", lambda *a, **k: pytest.fail("finished GD level trained again"))
    assert imp.run_experiment(exp, tmp_path, console=quiet()) == path


# ----------------------------------------------------------------------------------------------
# bad configs fail before anything compiles, naming the field and the allowed values


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"generations": 100}, ["generations", "criteria", "trainer"]),
        ({"trainer.generations": 100}, ["trainer.generations", "num_generations"]),
        ({"trainer.num_generations": 20.0}, ["trainer.num_generations", "integer"]),
        ({"trainer.use_best_mean": "false"}, ["trainer.use_best_mean", "true or false"]),
        ({"seeds": 2.5}, ["seeds", "integer"]),
        ({"trainer.algorithm": "CMAES"}, ["trainer.algorithm", "Sep_CMA_ES", "PGPE", "SNES"]),
        ({"trainer.type": "adam"}, ["trainer.type", "es", "gd"]),
        ({"imp.prune_rate": 1.5}, ["prune_rate", "(0, 1)"]),
        ({"imp.prune_rate": 0}, ["prune_rate", "(0, 1)"]),
        ({"imp.scope": "per_layer"}, ["imp.scope", "global", "layerwise"]),
        ({"imp.num_levels": 60}, ["num_levels"]),
        (
            {"criteria": ["magnitude", "snrr"]},
            ["criteria", "snrr", "snr", "random_reinit", "permute_weights"],
        ),
        ({"criteria": ["random_reinit"]}, ["criteria", "magnitude"]),
        ({"dataset": "cifar10"}, ["dataset", "cifar10", "mnist", "digits", "kmnist"]),
        ({"dataset_args": {"n_train": 5}}, ["dataset_args.n_train", "classes"]),
        ({"network": {"name": "resnet"}}, ["network.name", "mlp", "paper_cnn", "lenet_300_100"]),
        ({"network": {"name": "mlp", "sizes": [64, 16, 10], "depth": 2}}, ["network.depth", "sizes"]),
        ({"trainer.checkpoint_every": 7}, ["checkpoint_every", "eval_every"]),
        ({"trainer.sigma_init": -1.0}, ["sigma_init"]),
    ],
)
def test_bad_config_names_the_field(changes, words, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validating"))
    with pytest.raises(ValueError) as err:
        imp.parse_config(tiny(**changes))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_snr_with_gd_is_rejected():
    cfg = tiny(trainer={"type": "gd", "epochs": 1}, criteria=["magnitude", "snr"])
    with pytest.raises(ValueError, match=r"criteria.*snr"):
        imp.parse_config(cfg)


def test_missing_data_fails_before_compiling(tmp_path, monkeypatch):
    cfg = tiny(
        dataset="kmnist",
        dataset_args={"idx_dir": str(tmp_path / "nowhere"), "test_split_only": True},
        network={"name": "paper_cnn"},
    )
    exp = imp.parse_config(cfg)
    monkeypatch.setattr(es, "run", lambda *a, **k: pytest.fail("trained without data"))
    with pytest.raises(FileNotFoundError, match="field 'dataset' = 'kmnist'"):
        imp.run_experiment(exp, tmp_path / "runs", console=quiet())
    assert not (tmp_path / "runs").exists()


def test_network_must_fit_the_data(tmp_path):
    exp = imp.parse_config(tiny(network={"name": "paper_cnn"}))
    with pytest.raises(ValueError, match=r"network: paper_cnn.*digits"):
        imp.run_experiment(exp, tmp_path, console=quiet())


def test_cli_reports_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(**{"imp.prune_rate": 1.5})))
    assert cli.main(["imp", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "prune_rate" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()

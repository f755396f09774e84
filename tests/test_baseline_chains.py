"""Baselines as their own IMP chains (``baseline_mode: chain``, the original code's semantics) vs the
one-shot branches off the IMP masks (``baseline_mode: branch``, the behaviour before the key).

Tiny settings (digits, MLP [64, 16, 10], GD for one epoch, 3 levels) so that the GD program compiles once
for every level and chain; one ES run (SNES, 2 generations per segment, 2 levels: two compiled masks) checks
a kill in the middle of a chain level. The rules checked are those of the module doc of
``es_lottery.pruning.baselines`` (O1–O7).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from rich.console import Console

from es_lottery import masks as M
from es_lottery.experiments import imp
from es_lottery.pruning import baselines as B
from es_lottery.pruning import es_trainer as EST
from es_lottery.pruning import gd
from es_lottery.pruning import loop as L

BASELINES = ["mask_reinit", "permute_weights", "permute_mask_and_weights", "random_reinit"]
CFG = {
    "name": "chains",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 16, 10]},
    "trainer": {"type": "gd", "epochs": 1, "batch_size": 128},
    "imp": {"num_levels": 3, "prune_rate": 0.2},
    "criteria": ["magnitude", *BASELINES],
    "seeds": 1,
}
TRAIN_CALLS = 3 + len(BASELINES) * 2  # IMP levels 0–2, each chain levels 1–2 (level 0 is shared)


class Killed(Exception):
    """Stands in for SIGKILL."""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=150)


def config(**top) -> dict:
    cfg = copy.deepcopy(CFG)
    cfg.update(top)
    return cfg


def counting_train(calls: list, kill_at: int | None = None):
    original = gd.GDTrainer.train

    def train(self, key, theta0, mask):
        calls.append(1)
        if kill_at is not None and len(calls) == kill_at:
            raise Killed
        return original(self, key, theta0, mask)

    return train


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory) -> tuple[Path, int]:
    """(the run's data directory in the store, the number of training calls)."""
    out = tmp_path_factory.mktemp("chain")
    calls: list = []
    exp = imp.parse_config(config())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gd.GDTrainer, "train", counting_train(calls))
        imp.run_experiment(exp, out, console=quiet())
    return imp.data_dir(exp, out), len(calls)


@pytest.fixture(scope="module")
def setup():
    """exp, trainer (for init_params only), θ₀ of seed 0 and its run key."""
    exp = imp.parse_config(config())
    trainer = imp.make_trainer(exp, exp.module(), imp.load_data(exp))
    run_key = jax.random.fold_in(jax.random.key(exp.seed), 0)
    theta0 = trainer.init_params(L.split_run_key(run_key)[0])
    return exp, trainer, theta0, run_key


def files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file() and f.name != "metrics.json"}


def npz_files(root: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(root.rglob("*.npz")):
        with np.load(f) as data:
            out[str(f.relative_to(root))] = {k: data[k] for k in data.files}
    return out


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in zip(leaves(a), leaves(b), strict=True))


def biases(tree) -> list[np.ndarray]:
    return [np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if "bias" in M.path_name(p)]


def prunable(tree) -> list[tuple[str, np.ndarray]]:
    return [
        (M.path_name(p), np.asarray(x))
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
        if "kernel" in M.path_name(p)
    ]


class Level:
    """The saved files of one level of one chain."""

    def __init__(self, root: Path, name: str, level: int, like, dirs: dict | None = None):
        d = root / "seed_0" / (dirs or {}).get(name, name) / f"level_{level}"
        self.dir = d
        self.mask = imp.load_mask(d / "mask.npz", like)
        nxt = d / "next_mask.npz"
        self.next_mask = imp.load_mask(nxt, like) if nxt.exists() else None
        self.start = imp.load_tree(d / "theta0.npz", like)[0]
        self.final = imp.load_tree(d / "final_params.npz", like)[0]
        self.row = json.loads((d / "metrics.json").read_text())


# ----------------------------------------------------------------------------------------------
# config key and hash rule


def test_baseline_mode_and_mask_source_key_the_baseline_branches(monkeypatch, tmp_path):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validating"))
    chain = imp.parse_config(config())
    branch = imp.parse_config(config(baseline_mode="branch"))
    assert chain.baseline_mode == "chain" and branch.baseline_mode == "branch"
    # the defaults (chain, from magnitude) keep the plain names; another mode or source gets a key
    assert imp.branch_dirs(chain) == {c: c for c in CFG["criteria"]}
    for name in BASELINES:
        assert imp.branch_dirs(branch)[name].startswith(f"{name}-")
    snr = imp.parse_config(config(trainer={"type": "es"}, criteria=["snr", "random_reinit"]))
    assert (
        imp.branch_dirs(snr)["random_reinit"]
        != imp.branch_dirs(
            imp.parse_config(config(trainer={"type": "es"}, criteria=["magnitude", "snr", "random_reinit"]))
        )["random_reinit"]
    )
    # the mode and the criteria are branches, not part of the trunk: every variant shares its IMP chains
    trunks = {
        imp.data_dir(imp.parse_config(config(criteria=c, **m)), tmp_path)
        for c in (["magnitude"], ["magnitude", *BASELINES])
        for m in ({}, {"baseline_mode": "branch"})
    }
    assert len(trunks) == 1
    for bad in ("chains", 1, None):
        with pytest.raises(ValueError) as err:
            imp.parse_config(config(baseline_mode=bad))
        for word in ("baseline_mode", "chain", "branch"):
            assert word in str(err.value)


# ----------------------------------------------------------------------------------------------
# chain semantics


def test_level0_is_the_imp_dense_run_and_not_retrained(chain_run):
    root, calls = chain_run
    assert calls == TRAIN_CALLS
    imp0 = root / "seed_0" / "magnitude" / "level_0"
    want = json.loads((imp0 / "metrics.json").read_text())
    for name in BASELINES:
        d = root / "seed_0" / name / "level_0"
        assert files(d) == files(imp0), name  # mask, next_mask, θ₀, final params, curves: bit-identical
        row = json.loads((d / "metrics.json").read_text())
        assert row["test_accuracy"] == want["test_accuracy"] and row["kept"] == row["total"]
        assert (row["criterion"], row["kind"], row["shared_from"]) == (name, "baseline", "magnitude/level_0")
        assert row["baseline_mode"] == "chain"
    view = root.parents[2] / CFG["name"]
    rows = [json.loads(x) for x in (view / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["criterion"], r["level"]) for r in rows) == sorted(
        (c, k) for c in CFG["criteria"] for k in range(3)
    )


def test_next_mask_comes_from_the_chains_own_network(chain_run, setup):
    root, _ = chain_run
    exp, _, theta0, run_key = setup
    cfg = exp.imp_config("magnitude")
    imp_lv = [Level(root, "magnitude", k, theta0) for k in range(3)]
    for name in BASELINES:
        lv = [Level(root, name, k, theta0) for k in range(3)]
        assert lv[2].next_mask is None
        for k in (0, 1):
            _, k_score = L.level_keys(run_key, k)
            again = L.next_mask(
                B.chain_config(name, cfg), k, L.TrainResult(lv[k].final), lv[k].start, lv[k].mask, k_score
            )
            assert same(again, lv[k].next_mask), (name, k)  # pruned from ITS trained network …
            assert bool(M.is_nested(lv[k].next_mask, lv[k].mask))  # … nested in ITS mask
            want = M.kept_count(0.8 ** (k + 1), lv[k].row["total"])
            assert int(M.count(lv[k].next_mask)[0]) == want == lv[k + 1].row["kept"]
        if name in ("mask_reinit", "permute_weights"):  # the transform keeps the pruned mask
            assert same(lv[1].mask, lv[0].next_mask) and same(lv[2].mask, lv[1].next_mask)
            assert same(lv[1].mask, imp_lv[1].mask)  # from the shared dense run …
            assert not same(lv[2].mask, imp_lv[2].mask)  # … then the chain's own network decides
        elif name == "permute_mask_and_weights":
            for k in (1, 2):
                prev = lv[k - 1].next_mask
                assert L.layer_counts(lv[k].mask) == L.layer_counts(prev) and not same(lv[k].mask, prev)
    # a chain level trains with the IMP chain's level key (O3): retraining its start reproduces it
    _, trainer, _, _ = setup
    lv = Level(root, "mask_reinit", 2, theta0)
    again = trainer.train(L.level_keys(run_key, 2)[0], lv.start, lv.mask)
    assert same(again.final_params, lv.final) and not same(lv.final, imp_lv[2].final)


def test_each_transform_is_applied_as_the_original_does(chain_run, setup):
    root = chain_run[0]
    _, trainer, theta0, run_key = setup
    th0 = dict(prunable(theta0))
    for k in (1, 2):
        lv = {name: Level(root, name, k, theta0) for name in BASELINES}
        pruned = {name: Level(root, name, k - 1, theta0).next_mask for name in BASELINES}
        for name in BASELINES:  # the saved start is exactly the documented transform of the chain's mask
            t, m = B.chain_ticket(
                name, B.chain_transform_key(run_key, k), theta0, pruned[name], trainer.init_params
            )
            assert same(m, lv[name].mask) and same(t, lv[name].start), (name, k)
        # permute_weights: same mask, the layer's surviving θ₀ values shuffled among its surviving positions
        pw = lv["permute_weights"]
        for (path, s), (_, m) in zip(prunable(pw.start), prunable(pw.mask), strict=True):
            np.testing.assert_array_equal(np.sort(s[m]), np.sort(th0[path][m]))
            assert not np.array_equal(s[m], th0[path][m])
        assert all(np.array_equal(a, b) for a, b in zip(biases(pw.start), biases(theta0), strict=True))
        # permute_mask_and_weights: per-layer counts kept, the pruned mask's θ₀ values at new positions
        pp = lv["permute_mask_and_weights"]
        pm = dict(prunable(pruned["permute_mask_and_weights"]))
        for (path, s), (_, m) in zip(prunable(pp.start), prunable(pp.mask), strict=True):
            assert m.sum() == pm[path].sum()
            np.testing.assert_array_equal(np.sort(s[m]), np.sort(th0[path][pm[path]]))
        # mask_reinit: the pruned mask, a fresh init (not θ₀) — the same fresh init as random_reinit's
        mr, rr = lv["mask_reinit"], lv["random_reinit"]
        for (path, s), (_, m) in zip(prunable(mr.start), prunable(mr.mask), strict=True):
            assert not np.any(np.isclose(s[m], th0[path][m]))
        both = [a & b for a, b in zip(leaves(mr.mask), leaves(rr.mask), strict=True)]
        for a, b, m in zip(leaves(mr.start), leaves(rr.start), both, strict=True):
            assert m.any() and np.array_equal(a[m], b[m])  # shared fresh init (O5); biases included
        # random_reinit: a random global mask with the schedule's count, not nested in the chain's last one
        assert rr.row["kept"] == M.kept_count(0.8**k, rr.row["total"])
        if k == 2:
            assert not bool(M.is_nested(rr.mask, Level(root, "random_reinit", 1, theta0).mask))


def test_library_chain_trains_level0_like_imp_and_matches_the_run_directory(chain_run, setup):
    root = chain_run[0]
    exp, trainer, theta0, run_key = setup
    records = B.run_baseline_chain(
        run_key, trainer, "mask_reinit", exp.imp_config("magnitude"), theta0, end_level=2
    )
    imp0, lv1 = Level(root, "magnitude", 0, theta0), Level(root, "mask_reinit", 1, theta0)
    assert same(records[0].final_params, imp0.final) and same(records[0].next_mask, imp0.next_mask)
    assert same(records[1].mask, lv1.mask) and same(records[1].theta_start, lv1.start)
    assert same(records[1].final_params, lv1.final) and same(records[1].next_mask, lv1.next_mask)
    with pytest.raises(ValueError, match="start_mask"):
        B.run_baseline_chain(
            run_key, trainer, "mask_reinit", exp.imp_config("magnitude"), theta0, start_level=1
        )


# ----------------------------------------------------------------------------------------------
# branch mode and resume


def test_branch_mode_is_the_old_one_shot_behaviour(chain_run, setup, tmp_path):
    exp = imp.parse_config(
        config(baseline_mode="branch", criteria=["magnitude", "mask_reinit", "permute_weights"])
    )
    imp.run_experiment(exp, tmp_path, console=quiet())
    root, dirs = imp.data_dir(exp, tmp_path), imp.branch_dirs(exp)
    _, trainer, theta0, run_key = setup
    for k in range(3):  # the IMP chain does not depend on the mode
        assert files(root / "seed_0" / "magnitude" / f"level_{k}") == files(
            chain_run[0] / "seed_0" / "magnitude" / f"level_{k}"
        )
    for name in ("mask_reinit", "permute_weights"):
        key = jax.random.fold_in(run_key, imp.BASELINE_KEY_OFFSET + imp.BASELINE_CRITERIA.index(name))
        for k in range(3):
            lv = Level(root, name, k, theta0, dirs)
            src = Level(root, "magnitude", k, theta0, dirs).mask
            (want,) = B.run_baseline(key, trainer, name, theta0, {k: src}, levels=[k])
            assert (
                same(lv.mask, want.mask)
                and same(lv.start, want.theta_start)
                and same(lv.final, want.final_params)
            )
            assert lv.next_mask is None and "baseline_mode" not in lv.row and "shared_from" not in lv.row
        assert not same(Level(root, name, 0, theta0, dirs).start, theta0)  # level 0 transformed too


def test_killed_chain_resumes_bitwise_identically(chain_run, tmp_path):
    root0, _ = chain_run
    exp = imp.parse_config(config())
    kill_at = 3 + 2 + 2  # IMP and mask_reinit done, permute_weights level 1 done, killed in its level 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gd.GDTrainer, "train", counting_train([], kill_at=kill_at))
        with pytest.raises(Killed):
            imp.run_experiment(exp, tmp_path, console=quiet())
    root = imp.data_dir(exp, tmp_path)
    assert (root / "seed_0" / "permute_weights" / "level_1" / "metrics.json").exists()
    assert not (root / "seed_0" / "permute_weights" / "level_2" / "metrics.json").exists()
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gd.GDTrainer, "train", counting_train(calls))
        imp.run_experiment(exp, tmp_path, console=quiet())
    assert len(calls) == TRAIN_CALLS - (kill_at - 1)  # finished levels were not trained again
    want, got = npz_files(root0), npz_files(root)
    assert sorted(got) == sorted(want)
    for f, arrays in want.items():
        assert all(arrays[k].tobytes() == got[f][k].tobytes() for k in arrays), f
    for d in sorted(root0.glob("seed_*/*/level_*")):
        a = json.loads((d / "metrics.json").read_text())
        b = json.loads((root / d.relative_to(root0) / "metrics.json").read_text())
        a.pop("seconds"), b.pop("seconds")
        assert a == b


ES_CFG = {
    **CFG,
    "name": "chains_es",
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 8,
        "sigma_init": 0.05,
        "num_generations": 4,
        "eval_every": 2,
        "batch_size": 64,
        "checkpoint_every": 2,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["magnitude", "permute_weights"],
}


@pytest.mark.slow  # minutes; the plain IMP chain's kill-and-resume stays in the default suite
def test_es_chain_killed_mid_level_resumes_bitwise_identically(tmp_path):
    exp = imp.parse_config(copy.deepcopy(ES_CFG))
    imp.run_experiment(exp, tmp_path / "full", console=quiet())
    full = imp.data_dir(exp, tmp_path / "full")
    seen = []

    def kill(info):
        seen.append(info)
        if (info["criterion"], info["level"], info["generation"]) == ("permute_weights", 1, 2):
            raise Killed

    with pytest.raises(Killed):
        imp.run_experiment(exp, tmp_path / "killed", console=quiet(), on_segment=kill)
    root = imp.data_dir(exp, tmp_path / "killed")
    ckpt = root / "seed_0" / "permute_weights" / "level_1" / "checkpoint"
    assert EST.NpzCheckpointer(ckpt).latest_generation() == 2  # killed in the middle of the chain level
    resumed = []
    imp.run_experiment(exp, tmp_path / "killed", console=quiet(), on_segment=resumed.append)
    assert [(r["criterion"], r["level"], r["generation"]) for r in resumed] == [("permute_weights", 1, 4)]
    want, got = npz_files(full), npz_files(root)
    assert sorted(got) == sorted(want)
    for f, arrays in want.items():
        assert all(arrays[k].tobytes() == got[f][k].tobytes() for k in arrays), f
    assert not ckpt.exists()

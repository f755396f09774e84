"""``es-lottery report es_imp_control``: the per-level archive (merge, stale rows replaced, unchanged bytes
when nothing changed), the "keeps its return" rule on hand-built curves, the no-skill reference, and the
page built from an archive alone."""

from __future__ import annotations

import copy
import math

import numpy as np

from es_lottery.experiments import imp
from es_lottery.experiments.reports import archive
from es_lottery.experiments.reports import es_imp_control as page

ENV = {
    "name": "CartPole-v1",
    "episode_length": 100,
    "test_episodes": 4,
    "policy": {"hidden": [8], "action_mode": "argmax"},
}
ES = {
    "name": "tiny_es_cpu",
    "env": ENV,
    "trainer": {"type": "es", "algorithm": "SNES", "population_size": 8, "num_generations": 4},
    "imp": {"num_levels": 3, "prune_rate": 0.5},
    "criteria": ["magnitude", "random_reinit"],
    "seeds": 2,
}
PPO = {
    "name": "tiny_ppo_cpu",
    "env": ENV,
    "trainer": {"type": "ppo", "total_env_steps": 2048, "num_envs": 4, "rollout_length": 64},
    "imp": {"num_levels": 3, "prune_rate": 0.5},
    "criteria": ["magnitude"],
    "seeds": 2,
}


CFG = {"any": "config"}


def row(criterion, seed, level, ret, density=None):
    return {
        "criterion": criterion,
        "seed": seed,
        "level": level,
        "test_return": ret,
        "density": 0.5**level if density is None else density,
        "seconds": 1.0,
    }


def test_merge_keeps_archived_rows_and_lets_the_store_win(tmp_path):
    exp = imp.parse_config(copy.deepcopy(ES))
    jobs = {"magnitude": "imp/A/seed_*/magnitude", "random_reinit": "imp/A/seed_*/random_reinit"}
    first = [row("magnitude", 0, 0, 10.0), row("magnitude", 0, 1, 9.0)]
    archive.merge_levels(tmp_path, exp.name, CFG, first, jobs)
    stored = (tmp_path / "tiny_es_cpu.levels.jsonl.gz").read_bytes()
    # the same rows again: nothing rewritten, same bytes
    assert archive.merge_levels(tmp_path, exp.name, CFG, first, jobs) == sorted(
        first, key=lambda r: (r["criterion"], r["seed"], r["level"])
    )
    assert (tmp_path / "tiny_es_cpu.levels.jsonl.gz").read_bytes() == stored
    # a later store holds only seed 1 (e.g. a fresh machine): the archived seed 0 stays, the store's win
    out = archive.merge_levels(
        tmp_path, exp.name, CFG, [row("magnitude", 1, 0, 7.0), row("magnitude", 0, 1, 8.0)], jobs
    )
    assert [(r["seed"], r["level"], r["test_return"]) for r in out] == [
        (0, 0, 10.0),
        (0, 1, 8.0),
        (1, 0, 7.0),
    ]
    # magnitude's settings changed (another store directory): its archived rows go, random_reinit's stay
    archive.merge_levels(tmp_path, exp.name, CFG, [row("random_reinit", 0, 0, 3.0)], jobs)
    moved = {**jobs, "magnitude": "imp/B/seed_*/magnitude"}
    out = archive.merge_levels(tmp_path, exp.name, CFG, [row("magnitude", 0, 0, 1.0)], moved)
    assert [(r["criterion"], r["seed"], r["level"], r["test_return"]) for r in out] == [
        ("magnitude", 0, 0, 1.0),
        ("random_reinit", 0, 0, 3.0),
    ]
    meta, rows = archive.read_levels(tmp_path, "tiny_es_cpu")
    assert meta["jobs"]["magnitude"] == "imp/B/seed_*/magnitude" and rows == out


def test_kept_levels_on_a_hand_built_curve():
    # reference 10, dense 500: a level keeps its return when its mean ≥ 10 + 0.9 · 490 = 451
    c = {
        0: (500.0, 0.0, 3, 1.0),
        1: (451.0, 1.0, 3, 0.8),
        2: (450.9, 1.0, 3, 0.64),
        3: (480.0, 1.0, 3, 0.512),
        4: (499.0, None, 1, 0.41),  # one seed of three: not judged
    }
    assert page.kept_levels(c, 10.0, 3) == ([0, 1, 3], 2)
    assert page.kept_levels({k: v for k, v in c.items() if k != 2}, 10.0, 3) == ([0, 1, 3], None)
    assert page.kept_levels({1: c[1]}, 10.0, 3) == ([], None)  # no dense level: nothing to hold against
    # returns below zero (Pendulum): reference −1200, dense −130 → threshold −1200 + 0.9 · 1070 = −237
    p = {0: (-130.0, 1.0, 2, 1.0), 1: (-236.0, 1.0, 2, 0.8), 2: (-238.0, 1.0, 2, 0.64)}
    assert page.kept_levels(p, -1200.0, 2) == ([0, 1], 2)


def test_no_skill_reference_is_the_all_zero_policy():
    exp = imp.parse_config(copy.deepcopy(ES))
    # every kernel and bias zero: equal logits, argmax picks action 0 (push left) at every step, and a
    # cart pushed left from rest drops its pole after 8–10 steps (gymnax CartPole-v1, +1 per step)
    assert 8.0 <= page.no_skill_return(exp) <= 11.0


def test_page_from_the_archive_alone(tmp_path):
    es = imp.parse_config(copy.deepcopy(ES))
    ppo = imp.parse_config(copy.deepcopy(PPO))
    data = tmp_path / "data"
    es_rows = [row("magnitude", s, k, [100.0, 90.0, 20.0][k] + s) for s in (0, 1) for k in range(3)]
    es_rows += [row("random_reinit", 0, 0, 100.0)]  # one seed of two, one level
    archive.merge_levels(data, es.name, CFG, es_rows, {"magnitude": "a", "random_reinit": "b"})
    archive.merge_levels(data, ppo.name, CFG, [row("magnitude", 0, 0, 50.0)], {"magnitude": "c"})
    budget = {"criterion": "magnitude", "seed": 0, "level": 2, "density": 0.25, "population_size": 32}
    archive.write_jsonl(
        data / "tiny_es_cpu.budget.jsonl",
        [{**budget, "num_generations": 40, "test_return": 77.0, "stored_test_return": 20.0, "seconds": 3.0}],
    )
    out = tmp_path / "page.md"
    text = page.build_page([ppo, es], data, out, "the command", references={"CartPole-v1": 10.0})
    assert "| magnitude | 0 | 2 | 25.00% | 32 × 40 | 77.0 | 20.0 | 3 |" in text
    # ES magnitude, level 1: seeds 90 and 91 → 90.5 ± std(ddof=1)/√2 = 0.5
    se = np.std([90.0, 91.0], ddof=1) / math.sqrt(2)
    assert f"| 1 | 0.5000 | missing | {90.5:.1f} ± {se:.1f} | missing |" in text
    assert "| 0 | 1.0000 | 50.0 (n=1/2) | 100.5 ± 0.5 | 100.0 (n=1/2) |" in text
    # ES magnitude keeps ≥ 90 % of its dense gain (10 + 0.9 · 90.5 = 91.45) only at level 0
    assert "| ES magnitude | 100.5 ± 0.5 | 100.00% (level 0) | 1/3 | level 1 |" in text
    assert "| tiny_es_cpu.yaml` |" not in text and "`configs/imp/tiny_es_cpu.yaml`" in text
    assert "| `configs/imp/tiny_es_cpu.yaml` | " in text and "| 7/12 |" in text
    assert (
        tmp_path / "page" / "CartPole-v1.png"
    ).is_file() and "![CartPole-v1](page/CartPole-v1.png)" in text


def test_archive_rows_round_trip_gzip_deterministically(tmp_path):
    rows = [row("magnitude", 0, k, float(k)) for k in range(3)]
    a = tmp_path / "a.jsonl.gz"
    archive.write_jsonl(a, rows)
    first = a.read_bytes()
    archive.write_jsonl(a, rows)  # gzip's header carries no time: same rows, same bytes (clean git diffs)
    assert a.read_bytes() == first and archive.read_jsonl(a) == rows


def test_shipped_control_configs_are_on_the_page():
    from pathlib import Path

    names = [e.name for e in page.control_configs(Path(__file__).resolve().parents[1] / "configs" / "imp")]
    for name in ("cartpole_snes_cpu", "cartpole_ppo_cpu", "pendulum_sep_cma_cpu", "pendulum_ppo_cpu"):
        assert name in names
    assert not any(n.startswith(("mnist", "gd_")) for n in names)  # classification configs are not


def test_budget_rows_of_a_classification_run_show_accuracies(tmp_path):
    from es_lottery.experiments.reports import archive

    row = {"criterion": "snr", "seed": 1, "level": 19, "density": 0.0144, "population_size": 64}
    row["stored_test_accuracy"] = 0.8
    archive.write_jsonl(
        tmp_path / "mnist_x.budget.jsonl",
        [
            {**row, "num_generations": 1600, "test_accuracy": 0.87654, "seconds": 9},
            {**row, "num_generations": 400, "test_accuracy": 0.8, "seconds": 2},
        ],
    )
    lines = archive.budget_table(tmp_path, ["mnist_x", "absent"], "accuracy")
    assert "scripts/es_budget.py configs/imp/mnist_x.yaml" in lines[0] and "stored accuracy" in lines[0]
    body = [ln for ln in lines if ln.startswith("| snr")]
    # sorted by budget: the config's own 64 × 400 first
    assert body == [
        "| snr | 1 | 19 | 1.44% | 64 × 400 | 0.8000 | 0.8000 | 2 |",
        "| snr | 1 | 19 | 1.44% | 64 × 1600 | 0.8765 | 0.8000 | 9 |",
    ]
    assert archive.budget_table(tmp_path, ["absent"], "accuracy") == []

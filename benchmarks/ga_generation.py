"""Strong-ticket GA: wall time per generation and per complete run, against a NumPy reference GA.

The reference is the original papers' approach: the same GA in NumPy, evaluating ONE genome at a time
(a masked forward pass over all 50,000 moons points per genome), measured in the same run on the same
machine. Our GA is `es_lottery.search.ga_slt` (jitted `step` / `run`, only new members evaluated, the
population kernels of `es_lottery.population`).

    python benchmarks/ga_generation.py            # full (≈ 20 min on 2 CPU cores)
    python benchmarks/ga_generation.py --quick    # A and B only, fewer repeats

Writes benchmarks/results/ga_generation.{json,md}. Goal (issue 3): a full 25-seed moons-A experiment
finishes faster than ONE seed of the NumPy reference.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import machine_info, md_table, time_fn, write_results

from es_lottery import networks
from es_lottery.search import ga_slt
from es_lottery.tasks import classification

ARCHS = {"A": (2, 20, 2), "B": (2, 75, 2), "C": (2, 100, 2), "D": (2, 50, 50, 2)}


# ----------------------------------------------------------------------------------------------
# the NumPy reference: the same GA, one genome at a time


class NumpyGA:
    """The paper's GA in NumPy with per-genome evaluation (survivors keep their fitness)."""

    def __init__(self, sizes, params, x, y, cfg: ga_slt.GAConfig, seed: int):
        self.kernels = [np.asarray(params[f"dense_{i}"]["kernel"]) for i in range(len(sizes) - 1)]
        self.biases = [np.asarray(params[f"dense_{i}"]["bias"]) for i in range(len(sizes) - 1)]
        self.shapes = [k.shape for k in self.kernels]
        self.length = sum(k.size for k in self.kernels)
        self.x, self.y, self.cfg = np.asarray(x), np.asarray(y), cfg
        self.rng = np.random.default_rng(seed)
        self.evals = 0

    def accuracy(self, genome: np.ndarray) -> float:
        self.evals += 1
        h, off = self.x, 0
        for i, (k, b) in enumerate(zip(self.kernels, self.biases, strict=True)):
            m = genome[off : off + k.size].reshape(k.shape)
            off += k.size
            h = h @ (k * m) + b
            if i < len(self.kernels) - 1:
                h = np.maximum(h, 0.0)
        return float(np.mean(np.argmax(h, axis=1) == self.y))

    def fresh(self, n):
        return [self.rng.random(self.length) < 0.5 for _ in range(n)]

    def init(self):
        self.pop = [(g, self.accuracy(g)) for g in self.fresh(self.cfg.pop_size)]
        self._select()

    def _select(self):
        self.pop.sort(key=lambda t: (-t[1], -(self.length - int(t[0].sum()))))
        self.pop = self.pop[: self.cfg.pop_size]

    def generation(self):
        c = self.cfg
        top = self.pop[: c.n_mates]
        children = []
        for g, _ in self.pop:
            if self.rng.random() < c.rec_rate:
                mate = top[self.rng.integers(len(top))][0]
                child = np.where(self.rng.random(self.length) < 0.5, g, mate)
                children.append((child, self.accuracy(child)))
        enlarged = self.pop + children
        mutants = []
        for g, _ in enlarged:
            if self.rng.random() < c.mut_rate:
                m = g.copy()
                pos = self.rng.integers(self.length)
                m[pos] = ~m[pos]
                mutants.append((m, self.accuracy(m)))
        migrants = [(g, self.accuracy(g)) for g in self.fresh(c.n_migrants)]
        self.pop = enlarged + mutants + migrants
        self._select()


# ----------------------------------------------------------------------------------------------


def bench_arch(label, sizes, data, cfg, n_seeds, quick) -> dict:
    module = networks.make_network("mlp", sizes=sizes, weight_init="uniform")
    task = ga_slt.make_task(module, data.x_train, data.y_train, data.x_test, data.y_test)
    row = {
        "arch": label,
        "sizes": str(list(sizes)),
        "bits": networks.num_prunable(networks.init_params(jax.random.key(0), module)),
    }

    # ours: one generation (one seed), compiled, median of repeats
    key = jax.random.key(1)
    k_init, k_run = ga_slt.split_run_key(key)
    state = ga_slt.init(k_init, task, cfg)
    gens = iter(range(10_000))
    t = time_fn(
        lambda: ga_slt.step(ga_slt.generation_key(k_run, next(gens)), state, task, cfg),
        repeats=10 if not quick else 5,
    )
    row["ours_gen_ms"] = t["median_s"] * 1e3

    # ours: one complete run (one seed), compile excluded (compiled ahead of time, not warmed up by a
    # whole extra run: a D run costs ~45 s on 2 CPU cores)
    one = jax.jit(lambda k: ga_slt.run(k, task, cfg)).lower(key).compile()
    t0 = time.perf_counter()
    final, _ = jax.block_until_ready(one(key))
    row["ours_run_s"] = time.perf_counter() - t0
    row["generations"] = int(final.generation)
    row["evals_per_gen"] = float(final.n_evals - cfg.pop_size) / max(int(final.generation), 1)

    # ours: the whole n-seed experiment (vmap over seeds), compile excluded
    keys = jax.random.split(jax.random.key(7), n_seeds)
    many = jax.jit(jax.vmap(lambda k: ga_slt.run(k, task, cfg))).lower(keys).compile()
    t0 = time.perf_counter()
    states, _ = jax.block_until_ready(many(keys))
    row[f"ours_{n_seeds}_seeds_s"] = time.perf_counter() - t0
    row["seeds"] = n_seeds
    # the same seeds one after another inside ONE jitted program (lax.map): on a CPU the vmapped
    # while-loops run until the slowest seed and batch the per-seed GEMMs, so sequential can win
    seq = jax.jit(lambda ks: jax.lax.map(lambda k: ga_slt.run(k, task, cfg), ks)).lower(keys).compile()
    t0 = time.perf_counter()
    jax.block_until_ready(seq(keys))
    row[f"ours_{n_seeds}_seeds_map_s"] = time.perf_counter() - t0
    row["mean_generations_seeds"] = float(np.mean(np.asarray(states.generation)))

    # the NumPy reference: per generation, and a complete run (extrapolated from the measured
    # per-generation time with OUR run's generation count, plus the measured initial population)
    params = jax.tree_util.tree_map(np.asarray, final.params)
    ref = NumpyGA(sizes, params, data.x_train, data.y_train, cfg, seed=1)
    t0 = time.perf_counter()
    ref.init()
    init_s = time.perf_counter() - t0
    n_ref = 3 if quick else 5
    ref.evals = 0
    t0 = time.perf_counter()
    for _ in range(n_ref):
        ref.generation()
    ref_gen_s = (time.perf_counter() - t0) / n_ref
    row["numpy_gen_ms"] = ref_gen_s * 1e3
    row["numpy_ms_per_genome"] = ref_gen_s / max(ref.evals / n_ref, 1) * 1e3
    row["numpy_run_s"] = init_s + ref_gen_s * row["generations"]
    row["speedup_gen"] = row["numpy_gen_ms"] / row["ours_gen_ms"]
    row["speedup_run"] = row["numpy_run_s"] / row["ours_run_s"]
    row[f"{n_seeds}_seeds_vs_one_numpy_seed"] = row["numpy_run_s"] / row[f"ours_{n_seeds}_seeds_s"]
    row[f"{n_seeds}_seeds_map_vs_one_numpy_seed"] = row["numpy_run_s"] / row[f"ours_{n_seeds}_seeds_map_s"]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=25)
    parser.add_argument("--out", default=None, help="output directory (default: benchmarks/results)")
    args = parser.parse_args(argv)
    data = classification.moons()
    cfg = ga_slt.GAConfig()
    archs = {k: v for k, v in ARCHS.items() if not args.quick or k in ("A", "B")}
    rows = []
    for label, sizes in archs.items():
        # the goal is about moons A with all seeds; B–D report per-run figures on fewer seeds (D: ~45 s
        # per seed and per timing on 2 CPU cores)
        seeds = args.seeds if label == "A" else (4 if args.quick or label == "D" else 8)
        row = bench_arch(label, sizes, data, cfg, seeds, args.quick)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    info = machine_info()
    cols = [
        ("arch", "arch"),
        ("bits", "mask bits"),
        ("ours_gen_ms", "ours ms/gen"),
        ("numpy_gen_ms", "NumPy ms/gen"),
        ("speedup_gen", "× per gen"),
        ("generations", "gens (seed)"),
        ("ours_run_s", "ours s/run"),
        ("numpy_run_s", "NumPy s/run"),
        ("speedup_run", "× per run"),
        ("seeds", "seeds (vmap)"),
    ]
    extra = md_table(
        [
            {
                "arch": r["arch"],
                "seeds": r["seeds"],
                "all": r[f"ours_{r['seeds']}_seeds_s"],
                "map": r[f"ours_{r['seeds']}_seeds_map_s"],
                "numpy": r["numpy_run_s"],
                "ratio": r[f"{r['seeds']}_seeds_vs_one_numpy_seed"],
                "ratio_map": r[f"{r['seeds']}_seeds_map_vs_one_numpy_seed"],
                "ms": r["numpy_ms_per_genome"],
            }
            for r in rows
        ],
        [
            ("arch", "arch"),
            ("seeds", "seeds"),
            ("all", "ours: all seeds, vmap, s"),
            ("map", "ours: all seeds, lax.map, s"),
            ("numpy", "NumPy: ONE seed, s"),
            ("ratio", "NumPy one seed / ours (vmap)"),
            ("ratio_map", "NumPy one seed / ours (lax.map)"),
            ("ms", "NumPy ms per genome"),
        ],
    )
    md = f"""# GA generation benchmark (moons, 50,000 training points, population 100)

Command: `python benchmarks/ga_generation.py{" --quick" if args.quick else ""}` — {info["time"]},
{info["cpu"]}, {info["cpu_count"]} cores, load average {info["load_average_1_5_15"]}, jax {info["jax"]}.

The NumPy reference runs the same GA and evaluates one genome at a time (the original code's approach).
Its complete-run time is its measured per-generation time × our run's generation count + its measured
initial population. Ours exclude compilation (warm-up with another key).

{md_table(rows, cols)}

All seeds of an experiment against ONE seed of the NumPy reference. `vmap` runs the seeds in lock-step
(batched kernels; every while-loop runs until the slowest seed); `lax.map` runs them one after another
inside one compiled program.

{extra}
"""
    write_results("ga_generation", {"machine": info, "config": str(cfg), "rows": rows}, md, args.out)
    print(md)


if __name__ == "__main__":
    main()

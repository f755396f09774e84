"""ES generation on the paper CNN: our evosax adapter against the plain evosax loop, and ES-state memory.

    .venv/bin/python benchmarks/es_generation.py            # full run  (≈ 5–8 min on 2 shared CPU cores)
    .venv/bin/python benchmarks/es_generation.py --quick    # smoke run (≈ 2–3 min): Sep-CMA-ES plain loop
                                                            # only, fewer repeats, no peak-RSS workers

Workload: the paper CNN (``networks.make_network("paper_cnn")``, 11,274 params), population 128,
cross-entropy fitness on a fresh random training batch per generation (the shared MNIST when present,
random images otherwise; the report says which).

1. **Time per generation** (median wall time, compile excluded and reported separately):

   * **ours** — one jitted ``es.step`` (ask → ``space.to_params`` → population kernel
     ``population.eval_params_jit`` → tell, with our NaN guard, mean decay and metrics) in the compressed
     space at density 1.0, for Sep-CMA-ES and SNES, at batch 256 and 1024. Also the ES part alone (the same
     ``es.step`` with a trivial fitness), to show what the evaluation costs.
   * **plain evosax loop** — ``algo.ask`` → ``jax.vmap(lambda p: model.apply({'params': unravel(p)}, x))``
     → cross-entropy → ``algo.tell``, no masks, jitted as one step (``unravel`` from ``ravel_pytree``). It
     runs in a SUBPROCESS, so an out-of-memory kill cannot take the benchmark down. Batch 256 always;
     batch 1024 only when its estimated peak (from the batch-256 child: resident after compile + 4 × the
     growth during the step) fits in ``MemAvailable`` (with a margin), otherwise it is reported as skipped.
     REFERENCE.md §4 measured ≈ 7.3 s/generation and 7.5 GB resident at batch 256, killed at 1024.

2. **ES-state memory** (Sep-CMA-ES and SNES, population 128, densities 1.0 / 0.1 / 0.0144, compressed vs
   masked space): bytes of every array in the ES run state (sum of leaf ``nbytes`` of ``es.ESRunState``,
   which holds the evosax state twice: current and best), the search dimension, and the (P, D) population
   matrix a generation samples. Full run only: the peak RSS (``ru_maxrss``) of a subprocess that builds
   the state and runs one jitted step per (mode, density) — it is dominated by the evaluation, not the
   ES state.

Results: ``benchmarks/results/es_generation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

from es_lottery import masks as masks_lib
from es_lottery import networks as N
from es_lottery import population as pop
from es_lottery.search import es
from es_lottery.tasks import classification

POP = 128
SIGMA = 0.05
BATCHES = (256, 1024)
ALGOS = ("Sep_CMA_ES", "SNES")
DENSITIES = (1.0, 0.1, 0.0144)
MODES = ("compressed", "masked")
MEM_MARGIN = 0.85  # run the plain loop at 1024 only if its estimated peak < this × MemAvailable
RESULT_TAG = "RESULT "
QUICK_NOTE = "QUICK run (fewer repeats, plain loop for Sep-CMA-ES only, no RSS workers). "


# ----------------------------------------------------------------------------------------------
# helpers


def cnn_flops(n: int, npop: int) -> float:
    """Plain per-member forward FLOPs of the paper CNN (same count as population_eval.py)."""
    return 2.0 * n * npop * (28 * 28 * 8 * 25 + 14 * 14 * 16 * 200 + 784 * 10)


def mem_available_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def rss_now_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def maxrss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def tree_bytes(tree) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree)))


def load_data(log=print) -> tuple[classification.Dataset | None, str]:
    """The shared MNIST (whatever split the loader finds), or None (then random images are used)."""
    try:
        ds = classification.load_dataset("mnist")
        info = ds.info
        split = (
            f"t10k only, split {len(ds.x_train)}/{len(ds.x_test)}"
            if info.get("test_split_only")
            else f"{len(ds.x_train)} train / {len(ds.x_test)} test"
        )
        return ds, f"MNIST ({info.get('source')}, {info.get('path', '')}; {split})"
    except (FileNotFoundError, ValueError, ImportError) as err:  # pragma: no cover - machine dependent
        log(f"MNIST not available ({type(err).__name__}); using random images")
        return None, "random U[0,1] images (MNIST not found)"


def arrays(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if ds is not None:
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test
    rng = np.random.default_rng(0)
    x = rng.random((10000, 28, 28, 1), np.float32)
    y = rng.integers(0, 10, 10000).astype(np.int32)
    return x[:8000], y[:8000], x[8000:], y[8000:]


def setup(algo: str, mode: str, density: float, seed: int = 0):
    """(module, θ₀, mask, config, ESRunState) for the paper CNN."""
    module = N.make_network("paper_cnn")
    theta0 = N.init_params(jax.random.key(seed), module)
    if density >= 1.0:
        mask = masks_lib.ones(theta0)
    else:
        mask = jax.device_get(masks_lib.random_mask(jax.random.key(seed + 1), density, theta0))
    config = es.ESConfig(algorithm=algo, population_size=POP, sigma_init=SIGMA, search_space=mode)
    state = es.init(jax.random.key(seed + 2), theta0, mask, config)
    return module, theta0, mask, config, state


def compile_step(state, task, config):
    """es.step lowered + compiled for these arguments: (compiled callable, compile seconds)."""
    t0 = time.perf_counter()
    compiled = es.step.lower(jax.random.key(7), state, task, config=config).compile()
    return compiled, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# subprocess workers


def plain_step_fn(algo_name: str, module, theta0, batch: int):
    """The plain evosax generation, jitted as one step: ask → vmap(apply ∘ unravel) → CE → tell."""
    from evosax.algorithms.distribution_based import SNES, Sep_CMA_ES
    from jax.flatten_util import ravel_pytree

    flat0, unravel = ravel_pytree(theta0)
    cls = {"Sep_CMA_ES": Sep_CMA_ES, "SNES": SNES}[algo_name]
    algo = cls(POP, jnp.zeros_like(flat0))
    params = algo.default_params.replace(std_init=jnp.float32(SIGMA))
    es_state = algo.init(jax.random.key(1), flat0, params)

    def step(key, es_state, x_all, y_all):
        k_ask, k_batch, k_tell = jax.random.split(key, 3)
        population, es_state = algo.ask(k_ask, es_state, params)
        xb, yb = classification.sample_batch(k_batch, x_all, y_all, batch)
        logits = jax.vmap(lambda p: module.apply({"params": unravel(p)}, xb))(population)  # (P, B, 10)
        logz = jax.nn.logsumexp(logits, axis=-1)
        ce = jnp.mean(logz - jnp.take_along_axis(logits, yb[None, :, None], axis=-1)[..., 0], axis=-1)
        es_state, _ = algo.tell(k_tell, population, ce, es_state, params)  # evosax minimises the CE
        return es_state, ce

    return jax.jit(step), es_state


def worker_plain(spec: dict) -> dict:
    """Child process: compile + time the plain evosax loop; report RSS and the HLO's convolution groups."""
    ds, data_desc = load_data()
    x_tr, y_tr, _, _ = arrays(ds)
    x_all, y_all = jnp.asarray(x_tr, jnp.float32), jnp.asarray(y_tr, jnp.int32)
    module = N.make_network("paper_cnn")
    theta0 = N.init_params(jax.random.key(0), module)
    step, es_state = plain_step_fn(spec["algo"], module, theta0, spec["batch"])
    rss_setup = rss_now_gb()
    t0 = time.perf_counter()
    lowered = step.lower(jax.random.key(2), es_state, x_all, y_all)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    groups = sorted({int(g) for g in re.findall(r"feature_group_count\s*=\s*(\d+)", lowered.as_text())})
    rss_compiled, maxrss_compiled = rss_now_gb(), maxrss_gb()
    out = compiled(jax.random.key(3), es_state, x_all, y_all)
    jax.block_until_ready(out)
    ce = np.asarray(out[1])
    t = C.time_fn(
        lambda: compiled(jax.random.key(3), es_state, x_all, y_all),
        repeats=spec["repeats"],
        warmup=0,  # the call above was the warm-up (its time is not used)
    )
    return {
        "compile_s": compile_s,
        "timing": t,
        "rss_setup_gb": rss_setup,
        "rss_after_compile_gb": rss_compiled,
        "maxrss_after_compile_gb": maxrss_compiled,
        "maxrss_gb": maxrss_gb(),
        "ce_mean": float(np.mean(ce)),
        "ce_finite": bool(np.all(np.isfinite(ce))),
        "conv_feature_groups": groups,
        "data": data_desc,
    }


def worker_ours_rss(spec: dict) -> dict:
    """Child process: build our ES state, compile one es.step, run it once; report RSS at each stage."""
    ds, data_desc = load_data()
    x_tr, y_tr, x_te, y_te = arrays(ds)
    module, _, _, config, state = setup(spec["algo"], spec["mode"], spec["density"])
    task = es.make_classification_task(module, x_tr, y_tr, x_te, y_te, batch_size=spec["batch"])
    rss_setup = rss_now_gb()
    compiled, compile_s = compile_step(state, task, config)
    rss_compiled, maxrss_compiled = rss_now_gb(), maxrss_gb()
    t0 = time.perf_counter()
    new_state, metrics = compiled(jax.random.key(3), state, task)
    jax.block_until_ready(new_state)
    return {
        "compile_s": compile_s,
        "step_s": time.perf_counter() - t0,
        "rss_setup_gb": rss_setup,
        "rss_after_compile_gb": rss_compiled,
        "maxrss_after_compile_gb": maxrss_compiled,
        "maxrss_gb": maxrss_gb(),
        "state_bytes": tree_bytes(state),
        "fitness_mean": float(metrics["fitness_mean"]),
        "data": data_desc,
    }


WORKERS = {"plain": worker_plain, "ours_rss": worker_ours_rss}


def run_worker(spec: dict, timeout_s: float, log) -> dict:
    """Run a worker in a subprocess; returns its result, or {"status": "killed"/"failed"/"timeout", …}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - t0, "timeout_s": timeout_s}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return dict(json.loads(line[len(RESULT_TAG) :]), status="ok", wall_s=wall)
    rc = proc.returncode
    status = "killed" if rc in (-9, 137) else "failed"
    tail = (proc.stderr or "")[-1500:]
    log(f"  worker {spec} {status} (rc {rc}): {tail[-300:]}")
    return {"status": status, "returncode": rc, "wall_s": wall, "stderr_tail": tail}


# ----------------------------------------------------------------------------------------------
# parts of the benchmark


def bench_ours(algo: str, batch: int, data, args, log) -> dict:
    x_tr, y_tr, x_te, y_te = data
    module, _, _, config, state = setup(algo, "compressed", 1.0)
    task = es.make_classification_task(module, x_tr, y_tr, x_te, y_te, batch_size=batch)
    compiled, compile_s = compile_step(state, task, config)
    key = jax.random.key(3)
    _, metrics = compiled(key, state, task)
    t = C.time_fn(lambda: compiled(key, state, task), repeats=args.repeats, warmup=1)
    log(f"  ours {algo} batch {batch}: {t['median_s']:.2f} s/gen (compile {compile_s:.1f} s)")
    return {
        "compile_s": compile_s,
        "timing": t,
        "dim": state.space.dim,
        "fitness_mean": float(metrics["fitness_mean"]),
        "update_skipped": bool(metrics["update_skipped"]),
        "chunk": pop.plan_chunk(module, POP, batch, "auto", widest=16),
    }


def bench_es_only(algo: str, args, log) -> dict:
    """The same es.step with a trivial fitness (−Σ w² per member): the cost of the ES part alone."""
    _, _, _, config, state = setup(algo, "compressed", 1.0)

    def fitness(key, member_params):
        return -sum(
            jnp.sum(jnp.reshape(w, (w.shape[0], -1)) ** 2, axis=1)
            for w in jax.tree_util.tree_leaves(member_params)
        )

    task = es.make_task(fitness)
    compiled, compile_s = compile_step(state, task, config)
    key = jax.random.key(3)
    t = C.time_fn(lambda: compiled(key, state, task), repeats=max(args.repeats, 10), warmup=1)
    log(f"  ES part only {algo}: {t['median_s'] * 1e3:.1f} ms/gen")
    return {"compile_s": compile_s, "timing": t}


def state_memory(log) -> list[dict]:
    rows = []
    for algo in ALGOS:
        for density in DENSITIES:
            for mode in MODES:
                _, _, mask, _, state = setup(algo, mode, density)
                kept, total = masks_lib.count(mask)
                rows.append(
                    {
                        "algorithm": algo,
                        "density": density,
                        "mode": mode,
                        "kept_prunable": int(kept),
                        "prunable": int(total),
                        "active": state.space.num_active,
                        "dim": state.space.dim,
                        "run_state_bytes": tree_bytes(state),
                        "run_state_kb": tree_bytes(state) / 1024,
                        "es_state_bytes": tree_bytes(state.es_state),
                        "es_state_kb": tree_bytes(state.es_state) / 1024,
                        "population_mb": POP * state.space.dim * 4 / 2**20,
                        "keep_host_bytes": 0 if state.space.keep is None else int(state.space.keep.nbytes),
                    }
                )
        log(f"  state memory {algo}: done")
    return rows


# ----------------------------------------------------------------------------------------------
# report


def why_ratio(time_rows: list[dict], es_only_rows: list[dict], plain: dict) -> str:
    ok = [r for r in plain.values() if r.get("status") == "ok"]
    groups = sorted({g for r in ok for g in r["conv_feature_groups"]} - {1})
    rss = max((r["maxrss_gb"] for r in ok), default=None)
    es_ms = {r["algorithm"]: r["es_only_ms"] for r in es_only_rows}
    shares = [100 * es_ms[r["algorithm"]] / 1e3 / r["ours_s"] for r in time_rows if r["algorithm"] in es_ms]
    plain_gf = [r["plain_gflops"] for r in time_rows if r.get("plain_gflops")]
    ours_gf = [r["ours_gflops"] for r in time_rows if r.get("plain_gflops")]
    parts = [
        "Both loops run the same evosax ask/tell; the ES part alone (ask, scatter to params, tell, "
        f"trivial fitness) takes {min(es_ms.values()):.0f}–{max(es_ms.values()):.0f} ms, "
        f"{min(shares):.0f}–{max(shares):.0f} % of our generation, so the difference is the population "
        "evaluation.",
        "In the plain loop `vmap(apply)` batches the member kernels into the convolutions: conv1 (shared "
        "input) becomes one convolution with P·8 = 1024 output channels, conv2 (input AND kernel batched, "
        "≈ 80 % of the FLOPs) one grouped convolution (feature_group_count "
        f"{', '.join(map(str, groups)) or '?'} in the lowered HLO) over the whole batch, which XLA:CPU runs "
        "slowly"
        + (
            f" ({min(plain_gf):.1f} GFLOP/s for the whole step here vs {min(ours_gf):.0f} for ours)"
            if plain_gf
            else ""
        )
        + ", and every member's activations for the whole batch are materialised at once (conv1 output "
        "alone: P·B·28·28·8·4 B = 0.8 GB at batch 256, 3.3 GB at 1024"
        + (f"; {rss:.1f} GB peak RSS measured at batch 256" if rss is not None else "")
        + ").",
        "Our population kernel scans the batch in chunks of 128 images and runs members in blocks of 4: "
        "conv1 of a block is one convolution of the shared input with 4·8 output channels, conv2 a plain "
        "per-member convolution (lax.map); the intermediates stay at a few MB.",
    ]
    return " ".join(parts)


def markdown(payload: dict) -> str:
    m = payload["machine"]
    peak = payload["peak"]["gflops"]
    lines = [
        "# ES generation benchmark (paper CNN, population 128)",
        "",
        f"`{payload['command']}` — {m['time']}, {m['cpu']}, {m['cpu_count']} CPU cores, {m['memory_gb']} GB, "
        f"jax {m['jax']}, evosax {payload['evosax']}, devices {', '.join(m['devices'])}. "
        + (QUICK_NOTE if payload["quick"] else "")
        + f"Load average at start / end: {payload['load_start']} / {payload['load_end']} (other jobs share "
        f"the 2 cores: timings are medians, the JSON keeps every sample). Measured f32 matmul peak now: "
        f"{peak:.0f} GFLOP/s. Total wall time {payload['wall_s']:.0f} s.",
        f"Data: {payload['data']}; a fresh random batch per generation (same sampling in both loops). "
        f"σ₀ = {SIGMA}, compressed space, density 1.0 (D = 11,274).",
        "",
        "## Time per generation",
        "",
        C.md_table(
            payload["time_rows"],
            [
                ("algorithm", "algorithm"),
                ("batch", "batch"),
                ("ours_s", "ours: es.step (s, median)"),
                ("ours_gflops", "ours GFLOP/s"),
                ("ours_compile_s", "ours compile (s)"),
                ("plain_s", "plain evosax loop (s, median)"),
                ("plain_gflops", "plain GFLOP/s"),
                ("plain_compile_s", "plain compile (s)"),
                ("plain_rss_gb", "plain peak RSS (GB)"),
                ("ratio", "plain / ours"),
                ("plain_status", "plain status"),
            ],
        ),
        "",
        "GFLOP/s counts the plain forward pass (2·B·P·(28·28·8·25 + 14·14·16·200 + 784·10)); % of the "
        f"{peak:.0f} GFLOP/s peak = GFLOP/s / {peak / 100:.2f}. 'plain' runs in a subprocess (its peak RSS "
        "includes the Python/jax runtime and the dataset, ≈ 0.5 GB).",
        "",
        C.md_table(
            payload["es_only_rows"],
            [
                ("algorithm", "algorithm"),
                ("es_only_ms", "ES part only: es.step with a trivial fitness (ms, median)"),
                ("compile_s", "compile (s)"),
            ],
        ),
        "",
        f"**Why the ratio.** {payload['why']}",
        "",
        "## ES-state memory (population 128)",
        "",
        C.md_table(
            payload["memory_rows"],
            [
                ("algorithm", "algorithm"),
                ("density", "density"),
                ("mode", "space"),
                ("active", "active entries"),
                ("dim", "search dim D"),
                ("es_state_kb", "evosax state (KB)"),
                ("run_state_kb", "ES run state (KB)"),
                ("population_mb", "population P·D·4 (MB)"),
            ],
        ),
        "",
        "ES run state = sum of leaf nbytes of `es.ESRunState` (the evosax state twice — current and best — "
        "plus 3 scalars). Sep-CMA-ES keeps 6 D-vectors (mean, p_std, p_c, C, D, best_solution), SNES 3 "
        "(mean, std, best_solution). The masked space also holds a host-side bool `keep` vector of D bytes "
        "(static, not in the pytree). The population matrix is sampled anew every generation (transient).",
    ]
    if payload["rss_rows"]:
        lines += [
            "",
            "## Peak RSS of one jitted es.step (subprocess, Sep-CMA-ES)",
            "",
            C.md_table(
                payload["rss_rows"],
                [
                    ("mode", "space"),
                    ("density", "density"),
                    ("batch", "batch"),
                    ("dim", "D"),
                    ("rss_setup_gb", "RSS after data + state (GB)"),
                    ("maxrss_after_compile_gb", "peak after compile (GB)"),
                    ("maxrss_gb", "peak after one step (GB)"),
                    ("compile_s", "compile (s)"),
                    ("status", "status"),
                ],
            ),
            "",
            "ru_maxrss of a fresh process; it includes the Python/jax runtime, the dataset and XLA's "
            "compilation. The ES state (≤ 0.5 MB) does not show at this resolution."
            + (
                " In every row the peak was set by the compilation: running the step did not raise it "
                "(compare the plain loop's ≈ 7 GB at batch 256)."
                if all(
                    r.get("status") == "ok" and r["maxrss_gb"] <= r["maxrss_after_compile_gb"] + 1e-3
                    for r in payload["rss_rows"]
                )
                else ""
            ),
        ]
    lines += ["", "## Notes", "", *payload["notes"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no RSS workers (≈ 2–3 min)")
    ap.add_argument("--out", default=str(C.RESULTS_DIR), help="output directory")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the optional RSS workers past this wall time"
    )
    ap.add_argument(
        "--force-plain-1024",
        action="store_true",
        help="run the plain loop at batch 1024 even when its estimated peak exceeds MemAvailable",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        result = WORKERS[spec["kind"]](spec)
        print(RESULT_TAG + json.dumps(C._jsonable(result)), flush=True)
        return 0

    args.repeats = 3 if args.quick else 5
    plain_repeats = 2 if args.quick else 3
    plain_algos = ALGOS[:1] if args.quick else ALGOS
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    from importlib.metadata import version

    machine = C.machine_info()
    load_start = C.load_average()
    log(
        f"machine: {machine['cpu']}, {machine['cpu_count']} cores, load {load_start}, "
        f"MemAvailable {mem_available_gb():.1f} GB"
    )
    peak = C.matmul_peak((2048,), repeats=3)
    log(f"matmul peak {peak['gflops']:.0f} GFLOP/s")
    ds, data_desc = load_data(log)
    data = arrays(ds)
    log(f"data: {data_desc}")

    # 1a. ours
    ours: dict[tuple[str, int], dict] = {}
    es_only: dict[str, dict] = {}
    for algo in ALGOS:
        for batch in BATCHES:
            ours[(algo, batch)] = bench_ours(algo, batch, data, args, log)
        es_only[algo] = bench_es_only(algo, args, log)

    # 1b. the plain evosax loop, in subprocesses
    plain: dict[tuple[str, int], dict] = {}
    for algo in plain_algos:
        avail = mem_available_gb()
        log(f"  plain {algo} batch 256 (subprocess; MemAvailable {avail:.1f} GB) …")
        r = run_worker({"kind": "plain", "algo": algo, "batch": 256, "repeats": plain_repeats}, 480, log)
        r["mem_available_before_gb"] = avail
        plain[(algo, 256)] = r
        if r["status"] == "ok":
            log(
                f"  plain {algo} batch 256: {r['timing']['median_s']:.2f} s/gen, "
                f"compile {r['compile_s']:.1f} s, peak RSS {r['maxrss_gb']:.1f} GB"
            )
        # batch 1024: only if the estimate fits
        avail = mem_available_gb()
        if r["status"] == "ok":
            base = r["rss_after_compile_gb"]
            est = base + (r["maxrss_gb"] - base) * 1024 / 256
            how = (
                f"estimated peak {est:.1f} GB = resident after compile {base:.1f} GB + 4 × the "
                f"{r['maxrss_gb'] - base:.1f} GB the batch-256 step added"
            )
        else:
            est, how = None, "no batch-256 measurement to estimate from"
        fits = est is not None and avail is not None and est < MEM_MARGIN * avail
        if fits or args.force_plain_1024:
            log(f"  plain {algo} batch 1024 (subprocess; {how}; MemAvailable {avail:.1f} GB) …")
            r2 = run_worker(
                {"kind": "plain", "algo": algo, "batch": 1024, "repeats": max(1, plain_repeats - 1)}, 540, log
            )
        else:
            r2 = {"status": "skipped"}
            log(f"  plain {algo} batch 1024 skipped: {how} > {MEM_MARGIN} × MemAvailable {avail:.1f} GB")
        r2.update(estimate_gb=est, estimate_how=how, mem_available_before_gb=avail)
        plain[(algo, 1024)] = r2

    # 2. memory of the ES state
    memory_rows = state_memory(log)

    # 2b. optional: peak RSS of one jitted step per (mode, density), in subprocesses
    rss_rows = []
    if not args.quick:
        specs = [
            ("compressed", 1.0, 256),
            ("compressed", 1.0, 1024),
            ("masked", 1.0, 1024),
            ("compressed", 0.0144, 1024),
            ("masked", 0.0144, 1024),
            ("compressed", 0.1, 1024),
            ("masked", 0.1, 1024),
        ]
        for mode, density, batch in specs:
            if time.perf_counter() - t_start > args.budget_s:
                rss_rows.append(
                    {"mode": mode, "density": density, "batch": batch, "status": "skipped (time)"}
                )
                continue
            r = run_worker(
                {"kind": "ours_rss", "algo": "Sep_CMA_ES", "mode": mode, "density": density, "batch": batch},
                240,
                log,
            )
            dim = next(
                (
                    x["dim"]
                    for x in memory_rows
                    if x["algorithm"] == "Sep_CMA_ES" and x["mode"] == mode and x["density"] == density
                ),
                None,
            )
            rss_rows.append(dict(r, mode=mode, density=density, batch=batch, dim=dim))
            if r["status"] == "ok":
                log(f"  RSS {mode} d={density} batch {batch}: peak {r['maxrss_gb']:.2f} GB")

    # tables
    flops = {b: cnn_flops(b, POP) for b in BATCHES}
    time_rows = []
    for algo in ALGOS:
        for batch in BATCHES:
            o = ours[(algo, batch)]
            p = plain.get((algo, batch))
            row = {
                "algorithm": algo,
                "batch": batch,
                "ours_s": o["timing"]["median_s"],
                "ours_gflops": flops[batch] / o["timing"]["median_s"] / 1e9,
                "ours_compile_s": o["compile_s"],
                "ours_cores_busy": o["timing"]["cpu_per_wall"],
                "dim": o["dim"],
                "chunk": o["chunk"],
            }
            if p is None:
                row["plain_status"] = "not run (--quick)"
            elif p["status"] == "ok":
                row.update(
                    plain_s=p["timing"]["median_s"],
                    plain_gflops=flops[batch] / p["timing"]["median_s"] / 1e9,
                    plain_compile_s=p["compile_s"],
                    plain_rss_gb=p["maxrss_gb"],
                    ratio=p["timing"]["median_s"] / o["timing"]["median_s"],
                    plain_status="ok",
                )
            elif p["status"] == "skipped":
                row["plain_status"] = (
                    f"skipped: est. {p['estimate_gb']:.0f} GB > "
                    f"{MEM_MARGIN}·{p['mem_available_before_gb']:.0f} GB available"
                    if p.get("estimate_gb") is not None
                    else "skipped"
                )
            else:
                row["plain_status"] = f"{p['status']} (rc {p.get('returncode')})"
            time_rows.append(row)
    es_only_rows = [
        {"algorithm": a, "es_only_ms": v["timing"]["median_s"] * 1e3, "compile_s": v["compile_s"]}
        for a, v in es_only.items()
    ]

    notes = [
        "* **Same run, same machine**: ours in this process, the plain loop in child processes started "
        "right after; both median of ≥ "
        f"{plain_repeats} generations after a warm-up call, compile excluded (`lower().compile()` timed "
        "separately). Both draw a fresh batch per generation with `classification.sample_batch`.",
        "* **ours** = `es.step` as used by `es.run`/`es.train`: ask, `space.to_params` (scatter into the "
        "params tree), `population.eval_params_jit` (chunk 'auto'), NaN guard, tell, metrics (mean / max / "
        "min fitness, mean norm, mean std).",
        "* **plain** = evosax `ask` → `jax.vmap(lambda p: model.apply({'params': unravel(p)}, x))` → "
        "softmax cross-entropy → `tell`, one `jax.jit`. Same evosax class and σ₀; no masks, no guard.",
        "* REFERENCE.md §4 (earlier measurement on this machine): plain loop ≈ 7.3 s/generation at batch "
        "256, 7.5 GB resident, killed for memory at batch 1024.",
        "* The plain loop at batch 1024 is only attempted when the estimate fits in "
        f"{MEM_MARGIN} × MemAvailable (a kill by the kernel's OOM killer could also hit other jobs on this "
        "shared machine); `--force-plain-1024` runs it anyway (still in a subprocess).",
    ]
    if ds is not None and ds.info.get("test_split_only"):
        notes.append(
            "* The shared MNIST holds only the 10k test images (split 8000 train / 2000 test by the loader); "
            "for timing only the batch shape matters."
        )

    payload = {
        "benchmark": "es_generation",
        "command": " ".join(["benchmarks/es_generation.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine,
        "evosax": version("evosax"),
        "load_start": load_start,
        "load_end": C.load_average(),
        "peak": peak,
        "data": data_desc,
        "population": POP,
        "sigma_init": SIGMA,
        "time_rows": time_rows,
        "es_only_rows": es_only_rows,
        "ours": {f"{a}@{b}": v for (a, b), v in ours.items()},
        "es_only": es_only,
        "plain": {f"{a}@{b}": v for (a, b), v in plain.items()},
        "memory_rows": memory_rows,
        "rss_rows": rss_rows,
        "why": why_ratio(time_rows, es_only_rows, plain),
        "notes": notes,
    }
    payload["wall_s"] = time.perf_counter() - t_start
    md = markdown(payload)
    jpath, mpath = C.write_results("es_generation", payload, md, args.out)
    print()
    print(md)
    log(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

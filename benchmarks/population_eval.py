"""Population evaluation throughput: the GA (masks over frozen weights) and ES (per-member weights) kernels.

    .venv/bin/python benchmarks/population_eval.py            # full run  (≈ 5–10 min on 2 CPU cores)
    .venv/bin/python benchmarks/population_eval.py --quick    # smoke run (< 2 min): fewer repeats, no sweep

Workloads
---------
* GA (strong tickets, Altmann et al.): moons, 50,000 training points, population 153 (100 survivors + 30
  children + ~13 mutants + 10 migrants), U[-1, 1] MLPs A=[2,20,2], B=[2,75,2], C=[2,100,2],
  D=[2,50,50,2], Bernoulli(0.5) kernel masks, metric accuracy, via ``population.evaluate_masks``.
* ES (Lange & Sprekeler): the paper CNN, population 128, a batch of 1024 MNIST images (the shared MNIST
  files when present, random images otherwise), ``θ₀ + 0.025·ε`` members, metric cross-entropy, via
  ``population.evaluate_params``.

Measured in the same run, for every workload
---------------------------------------------
* the kernel (``chunk_size="auto"``): median wall time per population evaluation (compile excluded,
  ``block_until_ready``), members/s, GFLOP/s counting the PLAIN per-member forward pass
  (2·n·Σ fan_in·fan_out for MLPs; 2·n·(28·28·8·25 + 14·14·16·200 + 784·10) for the CNN), % of the
  measured f32 matmul peak;
* (i) the NumPy per-genome reference — the original papers' way: a Python loop over members, each doing
  its masked forward pass in NumPy (float32, BLAS matmuls) over all the data, on ONE BLAS thread like the
  reference implementation (``--numpy-threads`` changes that). For the CNN each member runs im2col +
  matmul convolutions; only a few members are timed and the time is extrapolated to P (likewise the GA
  reference in ``--quick`` mode);
* (ii) a per-member jitted loop: one jitted single-network forward (+ metric) called P times from Python;
* the chunk-size sweep (full run only): the same kernel at fixed chunk sizes, to check the "auto" choice.

Results: ``benchmarks/results/population_eval.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path


def _early_devices(argv: list[str]) -> int:
    """``--devices N`` must become an XLA flag before jax initialises its CPU backend."""
    for i, a in enumerate(argv):
        if a == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--devices="):
            return int(a.split("=", 1)[1])
    return 1


if (_N_DEV := _early_devices(sys.argv)) > 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_N_DEV}"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from es_lottery import masks as masks_lib  # noqa: E402
from es_lottery import networks as N  # noqa: E402
from es_lottery import population as pop  # noqa: E402
from es_lottery.tasks import classification  # noqa: E402

GA_ARCHS = {"A": (2, 20, 2), "B": (2, 75, 2), "C": (2, 100, 2), "D": (2, 50, 50, 2)}
GA_POP = 153
ES_POP, ES_BATCH, ES_SIGMA = 128, 1024, 0.025
GOAL_SPEEDUP = 30.0  # × the NumPy per-genome reference (memory-bound shapes A, B, C)
GOAL_PEAK = 0.30  # fraction of the measured matmul peak (compute-bound shapes D and the CNN)
GA_SWEEP = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
ES_SWEEP = (16, 32, 64, 128, 256)


# ----------------------------------------------------------------------------------------------
# FLOP counts


def mlp_flops(sizes, n: int, npop: int) -> float:
    return 2.0 * n * npop * sum(a * b for a, b in itertools.pairwise(sizes))


def cnn_flops(n: int, npop: int) -> float:
    return 2.0 * n * npop * (28 * 28 * 8 * 25 + 14 * 14 * 16 * 200 + 784 * 10)


def ga_path(sizes, metrics=("accuracy",)) -> tuple[str, float]:
    """(description of the kernel path, FLOPs it executes per data point per member)."""
    module = N.make_network("mlp", sizes=list(sizes))
    margin = pop._margin_applies(module, metrics, sizes[-1])
    if pop.table_path_applies(module):
        k = 2 ** sizes[0] - 1
        h1 = sizes[1]
        if len(sizes) == 3:
            o = 1 if margin else sizes[-1]
            return (
                f"table: ONE ({k}·{h1}) GEMM for all members" + (", logit margin" if margin else ""),
                2.0 * k * h1 * o,
            )
        h2 = sizes[2]
        rest = sum(a * b for a, b in itertools.pairwise(sizes[2:]))
        if margin:
            rest -= sizes[-2] * (sizes[-1] - 1)
        return (
            f"table → layer 2 of all members as ONE GEMM (K={k}·{h1}), then per-member layers",
            2.0 * (k * h1 * h2 + rest),
        )
    return "data-minor batched GEMMs", 2.0 * sum(a * b for a, b in itertools.pairwise(sizes))


# ----------------------------------------------------------------------------------------------
# references


def numpy_ga_counts(sizes, params, masks, x, y, members=None) -> np.ndarray:
    """The NumPy per-genome reference: one masked forward pass per member over all the data."""
    ws = [np.asarray(params[f"dense_{i}"]["kernel"], np.float32) for i in range(len(sizes) - 1)]
    bs = [np.asarray(params[f"dense_{i}"]["bias"], np.float32) for i in range(len(sizes) - 1)]
    ms = [np.asarray(masks[f"dense_{i}"]["kernel"]) for i in range(len(sizes) - 1)]
    x, y = np.asarray(x, np.float32), np.asarray(y)
    counts = []
    for p in range(ms[0].shape[0]) if members is None else members:
        h = x
        for i, (w, b, m) in enumerate(zip(ws, bs, ms, strict=True)):
            h = h @ (w * m[p]) + b
            if i < len(ws) - 1:
                h = np.maximum(h, 0.0)
        counts.append(int(np.sum(np.argmax(h, axis=1) == y)))
    return np.asarray(counts)


def _im2col_nhwc(z: np.ndarray, k: int = 5) -> np.ndarray:
    """SAME-padded k×k patches of NHWC ``z`` as a (n·h·w, k·k·c) matrix, ordered (dy, dx, c) like HWIO."""
    n, h, w, c = z.shape
    p = k // 2
    zp = np.pad(z, ((0, 0), (p, p), (p, p), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(zp, (k, k), axis=(1, 2))  # (n, h, w, c, k, k)
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * h * w, k * k * c)


def _pool_nhwc(z: np.ndarray) -> np.ndarray:
    n, h, w, c = z.shape
    return z.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def numpy_cnn_logits(p: dict, x: np.ndarray) -> np.ndarray:
    """One member's paper-CNN forward pass in NumPy (float32): convolutions as im2col + BLAS matmul."""
    n = x.shape[0]
    k0 = np.asarray(p["conv_0"]["kernel"], np.float32)
    z = _im2col_nhwc(x) @ k0.reshape(-1, k0.shape[-1]) + np.asarray(p["conv_0"]["bias"], np.float32)
    z = _pool_nhwc(np.maximum(z.reshape(n, 28, 28, -1), 0.0))
    k1 = np.asarray(p["conv_1"]["kernel"], np.float32)
    z = _im2col_nhwc(z) @ k1.reshape(-1, k1.shape[-1]) + np.asarray(p["conv_1"]["bias"], np.float32)
    z = _pool_nhwc(np.maximum(z.reshape(n, 14, 14, -1), 0.0))
    return z.reshape(n, -1) @ np.asarray(p["dense_0"]["kernel"], np.float32) + np.asarray(
        p["dense_0"]["bias"], np.float32
    )


def numpy_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    lg = logits.astype(np.float64)
    mx = lg.max(axis=1)
    logz = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
    return float(np.mean(logz - lg[np.arange(len(y)), y]))


def member_slices(tree, npop: int) -> list:
    """Per-member device arrays, prepared before timing (the loop times dispatch + compute only)."""
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], tree) for i in range(npop)]


# ----------------------------------------------------------------------------------------------
# workloads


def bench_ga(label, sizes, x, y, args, peak, log) -> dict:
    n = x.shape[0]
    module = N.make_network("mlp", sizes=list(sizes))
    params = N.init_params(jax.random.key(0), module)
    flags = masks_lib.prunable_flags(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    flag_leaves = jax.tree_util.tree_leaves(flags)
    masks = jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.bernoulli(k, 0.5, (GA_POP, *np.shape(w)))
            if f
            else jnp.ones((GA_POP, *np.shape(w)), bool)
            for k, w, f in zip(keys, leaves, flag_leaves, strict=True)
        ],
    )
    metrics = ("accuracy",)
    path, path_flops = ga_path(sizes, metrics)
    use_table = pop.table_path_applies(module)
    widest = max(np.shape(w)[-1] for w in leaves) * (2 ** sizes[0] if use_table else 1)
    auto_chunk = pop.plan_chunk(module, GA_POP, n, "auto", widest=widest)

    def kernel(chunk="auto"):
        return pop.evaluate_masks(module, params, masks, x, y, metrics, chunk_size=chunk, shard=args.shard)

    t = C.time_fn(kernel, repeats=args.repeats, min_total_s=0 if args.quick else 1.0)
    counts = np.round(np.asarray(kernel()["accuracy"]) * n).astype(int)
    flops = mlp_flops(sizes, n, GA_POP)
    log(f"  {label} {sizes}: kernel {t['median_s'] * 1e3:.1f} ms (chunk {auto_chunk}, {path})")

    sweep = {}
    if args.sweep:
        for cs in GA_SWEEP:
            if cs > n:
                continue
            ts = C.time_fn(lambda cs=cs: kernel(cs), repeats=3)
            sweep[str(cs)] = ts["median_s"]
        log("    sweep: " + ", ".join(f"{k}: {v * 1e3:.1f} ms" for k, v in sweep.items()))

    # (i) NumPy per-genome reference (all members, or every k-th one in --quick mode, extrapolated)
    params_np = jax.tree_util.tree_map(np.asarray, params)
    masks_np = jax.tree_util.tree_map(np.asarray, masks)
    members = list(range(0, GA_POP, args.ga_numpy_stride))
    with threadpool_limits(args.numpy_threads):
        ref_counts = numpy_ga_counts(sizes, params_np, masks_np, x, y, members)  # warm-up + exactness check
        t_np = C.time_fn(
            lambda: numpy_ga_counts(sizes, params_np, masks_np, x, y, members),
            repeats=args.ref_repeats,
            warmup=0,
        )
    scale = GA_POP / len(members)
    t_np = dict(
        t_np, median_s=t_np["median_s"] * scale, min_s=t_np["min_s"] * scale, members_timed=len(members)
    )
    log(f"    NumPy per-genome: {t_np['median_s']:.2f} s")

    # (ii) per-member jitted loop
    @jax.jit
    def one(p, m, xx, yy):
        out = N.apply(module, masks_lib.apply(p, m), xx)
        return jnp.sum(jnp.argmax(out, axis=-1) == yy)

    per_member = member_slices(masks, GA_POP)
    loop = lambda: [one(params, m, x, y) for m in per_member]  # noqa: E731
    loop_counts = np.asarray([int(c) for c in loop()])
    t_loop = C.time_fn(loop, repeats=args.ref_repeats)
    log(f"    per-member jit loop: {t_loop['median_s']:.3f} s")

    gflops = flops / t["median_s"] / 1e9
    executed = path_flops * n * GA_POP
    goal_kind = "speedup" if label in ("A", "B", "C") else "peak"
    row = {
        "workload": f"GA {label} {list(sizes)}",
        "path": path,
        "P": GA_POP,
        "n": n,
        "chunk": auto_chunk,
        "time_ms": t["median_s"] * 1e3,
        "time_min_ms": t["min_s"] * 1e3,
        "cores_busy": t["cpu_per_wall"],
        "members_per_s": GA_POP / t["median_s"],
        "gflops": gflops,
        "pct_peak": 100 * gflops / peak,
        "executed_gflop": executed / 1e9,
        "executed_gflops": executed / t["median_s"] / 1e9,
        "floor_ms": 1e3 * executed / (peak * 1e9),
        "numpy_s": t_np["median_s"],
        "x_numpy": t_np["median_s"] / t["median_s"],
        "loop_s": t_loop["median_s"],
        "x_loop": t_loop["median_s"] / t["median_s"],
        "numpy_how": (
            f"{len(members)} of {GA_POP} members timed, ×{scale:.3g}" if scale != 1 else "all P members"
        )
        + f", {args.numpy_threads} BLAS thread(s)",
        "goal": f"≥ {GOAL_SPEEDUP:.0f}× NumPy"
        if goal_kind == "speedup"
        else f"≥ {100 * GOAL_PEAK:.0f} % peak",
        "met": (t_np["median_s"] / t["median_s"] >= GOAL_SPEEDUP)
        if goal_kind == "speedup"
        else (gflops / peak >= GOAL_PEAK),
        "equal_to_numpy": f"{int(np.sum(counts[members] == ref_counts))}/{len(members)}",
        "max_count_diff_numpy": int(np.max(np.abs(counts[members] - ref_counts))),
        "equal_to_loop": f"{int(np.sum(counts == loop_counts))}/{GA_POP}",
        "sweep_ms": {k: v * 1e3 for k, v in sweep.items()},
        "timing": {"kernel": t, "numpy": t_np, "loop": t_loop},
    }
    if sweep:
        best = min(sweep, key=sweep.get)
        row["best_chunk"] = int(best)
        row["best_chunk_ms"] = sweep[best] * 1e3
    return row


def load_images(n: int, log) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        ds = classification.load_dataset("mnist")
        x, y = ds.x_train[:n], ds.y_train[:n]
        if len(x) == n:
            return (
                x,
                y,
                f"MNIST ({ds.info.get('source')}, {ds.info.get('path', '')}), first {n} training images",
            )
    except (FileNotFoundError, ValueError, ImportError) as err:  # pragma: no cover - depends on the machine
        log(f"  MNIST not available ({type(err).__name__}); using random images")
    rng = np.random.default_rng(0)
    return (
        rng.random((n, 28, 28, 1), np.float32),
        rng.integers(0, 10, n).astype(np.int32),
        "random U[0,1] images",
    )


def bench_es(args, peak, log) -> dict:
    module = N.make_network("paper_cnn")
    theta0 = N.init_params(jax.random.key(0), module)
    leaves, treedef = jax.tree_util.tree_flatten(theta0)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    member_params = jax.tree_util.tree_unflatten(
        treedef,
        [
            w[None] + ES_SIGMA * jax.random.normal(k, (ES_POP, *w.shape))
            for k, w in zip(keys, leaves, strict=True)
        ],
    )
    x_np, y_np, data_desc = load_images(ES_BATCH, log)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    metrics = ("cross_entropy",)
    widest = max(np.shape(w)[-1] for w in leaves)
    auto_chunk = pop.plan_chunk(module, ES_POP, ES_BATCH, "auto", widest=widest)

    def kernel(chunk="auto"):
        return pop.evaluate_params(module, member_params, x, y, metrics, chunk_size=chunk, shard=args.shard)

    t = C.time_fn(kernel, repeats=args.cnn_repeats)
    ce = np.asarray(kernel()["cross_entropy"])
    flops = cnn_flops(ES_BATCH, ES_POP)
    log(f"  CNN: kernel {t['median_s']:.2f} s (chunk {auto_chunk})")

    sweep = {}
    if args.sweep:
        for cs in ES_SWEEP:
            ts = C.time_fn(lambda cs=cs: kernel(cs), repeats=2)
            sweep[str(cs)] = ts["median_s"]
        log("    sweep: " + ", ".join(f"{k}: {v:.2f} s" for k, v in sweep.items()))

    # (i) NumPy per-genome reference (im2col + matmul), a few members timed, extrapolated to P
    k_np = args.cnn_numpy_members
    members_np = member_slices(jax.tree_util.tree_map(np.asarray, member_params), k_np)
    with threadpool_limits(args.numpy_threads):
        numpy_cnn_logits(members_np[0], x_np[:64])  # warm-up
        t0 = time.perf_counter()
        ce_np = [numpy_cross_entropy(numpy_cnn_logits(p, x_np), y_np) for p in members_np]
        t_np_k = time.perf_counter() - t0
    t_np = t_np_k * ES_POP / k_np
    ce_rel = float(np.max(np.abs(np.asarray(ce_np) - ce[:k_np]) / np.abs(ce[:k_np])))
    log(f"    NumPy per-genome (im2col): {t_np_k:.2f} s for {k_np} members → {t_np:.1f} s for {ES_POP}")

    # (ii) per-member jitted loop
    @jax.jit
    def one(p, xx, yy):
        out = N.apply(module, p, xx)
        logz = jax.nn.logsumexp(out, axis=-1)
        return jnp.mean(logz - jnp.take_along_axis(out, yy[:, None], axis=-1)[:, 0])

    k_loop = args.cnn_loop_members
    per_member = member_slices(member_params, k_loop)
    loop = lambda: [one(p, x, y) for p in per_member]  # noqa: E731
    ce_loop = np.asarray([float(v) for v in loop()])
    t_loop_k = C.time_fn(loop, repeats=args.ref_repeats)
    t_loop = t_loop_k["median_s"] * ES_POP / k_loop
    loop_rel = float(np.max(np.abs(ce_loop - ce[:k_loop]) / np.abs(ce[:k_loop])))
    log(f"    per-member jit loop: {t_loop_k['median_s']:.2f} s for {k_loop} members → {t_loop:.1f} s")

    gflops = flops / t["median_s"] / 1e9
    row = {
        "workload": "ES paper CNN",
        "path": "member blocks: conv1 as one conv with block·8 channels, per-member conv2 (lax.map)",
        "P": ES_POP,
        "n": ES_BATCH,
        "chunk": auto_chunk,
        "member_block": pop._cnn_block_size(ES_POP, auto_chunk),
        "time_ms": t["median_s"] * 1e3,
        "time_min_ms": t["min_s"] * 1e3,
        "cores_busy": t["cpu_per_wall"],
        "members_per_s": ES_POP / t["median_s"],
        "gflops": gflops,
        "pct_peak": 100 * gflops / peak,
        "executed_gflop": flops / 1e9,
        "executed_gflops": gflops,
        "floor_ms": 1e3 * flops / (peak * 1e9),
        "numpy_s": t_np,
        "x_numpy": t_np / t["median_s"],
        "loop_s": t_loop,
        "x_loop": t_loop / t["median_s"],
        "numpy_how": f"im2col + BLAS matmul per member; {k_np} of {ES_POP} members timed, "
        f"×{ES_POP / k_np:g}, {args.numpy_threads} BLAS thread(s)",
        "loop_how": f"{k_loop} of {ES_POP} members timed"
        + (f", ×{ES_POP / k_loop:g}" if k_loop != ES_POP else ""),
        "goal": f"≥ {100 * GOAL_PEAK:.0f} % peak",
        "met": gflops / peak >= GOAL_PEAK,
        "ce_max_rel_diff_numpy": ce_rel,
        "ce_max_rel_diff_loop": loop_rel,
        "data": data_desc,
        "sweep_ms": {k: v * 1e3 for k, v in sweep.items()},
        "timing": {"kernel": t, "numpy_k_members_s": t_np_k, "loop_k_members": t_loop_k},
    }
    if sweep:
        best = min(sweep, key=sweep.get)
        row["best_chunk"] = int(best)
        row["best_chunk_ms"] = sweep[best] * 1e3
    return row


# ----------------------------------------------------------------------------------------------
# report


def why(row: dict, peak: float, bandwidth: float) -> str:
    """A short explanation of where the time goes, from the measured numbers."""
    ex_pct = 100 * row["executed_gflops"] / peak
    ratio = row["executed_gflop"] / (row["gflops"] * row["time_ms"] / 1e3)
    if row["workload"].startswith("GA") and "layer 2" not in row["path"]:
        return (
            f"one GEMM with short K runs at {ex_pct:.0f} % of peak (FLOP floor {row['floor_ms']:.1f} ms); "
            "the rest: building the table per chunk, compare + count, scan steps. Memory is no limit "
            "(the data is 0.4 MB)"
        )
    if row["workload"].startswith("GA"):
        return (
            f"executes {ratio:.1f}× the plain FLOPs as one big GEMM ({ex_pct:.0f} % of peak actual); "
            "per-member (50 × 50) GEMMs plus the per-member first layer were slower"
        )
    return (
        f"conv2 (79 % of the FLOPs) has 8 → 16 channels per member: short GEMMs inside XLA's convolution; "
        f"the conv1 output (25 KB per member-image) streams through memory ({bandwidth:.0f} GB/s measured)"
    )


COLUMNS = [
    ("workload", "workload"),
    ("chunk", "chunk"),
    ("time_ms", "time / eval (ms, median)"),
    ("members_per_s", "members/s"),
    ("gflops", "GFLOP/s (plain)"),
    ("pct_peak", "% of peak"),
    ("numpy_s", "NumPy per-genome (s)"),
    ("x_numpy", "× NumPy"),
    ("loop_s", "per-member jit loop (s)"),
    ("x_loop", "× loop"),
    ("goal", "goal"),
    ("met", "met"),
]


def markdown(payload: dict) -> str:
    m, rows = payload["machine"], payload["rows"]
    peak, bw = payload["peak"]["gflops"], payload["bandwidth"]["gbps"]
    lines = [
        "# Population evaluation benchmark",
        "",
        f"`{payload['command']}` — {m['time']}, {m['cpu']}, {m['cpu_count']} CPU cores, {m['memory_gb']} GB, "
        f"jax {m['jax']}, devices {', '.join(m['devices'])}.",
        f"Measured f32 matmul peak: **{peak:.0f} GFLOP/s** ({payload['peak']['how']}); streaming bandwidth "
        f"{bw:.1f} GB/s ({payload['bandwidth']['how']}). Load average at start/end: "
        f"{payload['load_start']} / {payload['load_end']} (other processes share the cores: timings are "
        "medians, the JSON keeps every sample).",
        "",
        C.md_table(rows, COLUMNS),
        "",
        "GFLOP/s counts the plain per-member forward pass (2·n·Σ fan_in·fan_out; CNN 2·n·(28·28·8·25 + "
        "14·14·16·200 + 784·10)), whatever the kernel actually executes. × NumPy / × loop = reference time / "
        "kernel time, both measured in this run.",
        "",
        "## Paths, exactness and why",
        "",
        C.md_table(
            [dict(r, why=why(r, peak, bw)) for r in rows],
            [
                ("workload", "workload"),
                ("path", "kernel path"),
                ("executed_gflop", "executed GFLOP"),
                ("executed_gflops", "executed GFLOP/s"),
                ("floor_ms", "FLOP floor at peak (ms)"),
                ("cores_busy", "cores busy (CPU/wall)"),
                ("why", "why"),
            ],
        ),
        "",
    ]
    ga = [r for r in rows if r["workload"].startswith("GA")]
    if ga:
        parts = [
            f"{r['workload'].split()[1]}: {r['equal_to_numpy']} equal to NumPy "
            f"(max |Δ| {r['max_count_diff_numpy']}), {r['equal_to_loop']} equal to the jit loop"
            for r in ga
        ]
        lines += [
            "Exactness (GA accuracy counts of the members the references ran): " + "; ".join(parts) + ". "
            f"NumPy reference: {ga[0]['numpy_how']}.",
            "",
        ]
    for r in (r for r in rows if r["workload"].startswith("ES")):
        lines += [
            f"ES CNN: cross-entropy max relative difference {r['ce_max_rel_diff_numpy']:.1e} vs NumPy, "
            f"{r['ce_max_rel_diff_loop']:.1e} vs the jit loop. Data: {r['data']}. "
            f"NumPy reference: {r['numpy_how']}; jit loop: {r['loop_how']}. "
            f"Member block {r['member_block']}.",
        ]
    if any(r.get("sweep_ms") for r in rows):
        lines += ["", "## Chunk-size sweep (ms per evaluation, median)", ""]
        for r in rows:
            if r.get("sweep_ms"):
                sw = ", ".join(f"{k}: {v:.1f}" for k, v in r["sweep_ms"].items())
                best, best_ms = r.get("best_chunk"), r.get("best_chunk_ms", math.nan)
                lines.append(
                    f"* {r['workload']} — auto = {r['chunk']} ({r['time_ms']:.1f}); "
                    f"best {best} ({best_ms:.1f}); {sw}"
                )
    lines += ["", "## Notes", "", *payload["notes"]]
    return "\n".join(lines)


NOTES = [
    "* **GA A–C (table path).** With 2 inputs every first-layer unit has only 4 possible activation columns "
    "(its 2 input bits); combo 00 is the constant act(b₀) and is folded into the next bias. The other 3 "
    "columns per unit form a table (3h × chunk) shared by all members, and the next layer of the WHOLE "
    "population is ONE GEMM. For accuracy with 2 classes and a linear output only the logit margin "
    "l₁ − l₀ is computed. It executes 2·3h·P FLOPs per point (0.75× the plain 2·4h·P), as one GEMM "
    "instead of P tiny ones; the data (50k × 2 floats) never limits: it is compute- and overhead-bound.",
    "* **GA D** ([2,50,50,2]): the table feeds layer 2 of all 153 members as ONE (153·50 × 150) @ "
    "(150 × chunk) GEMM — 3× the plain FLOPs of that layer, yet ≈ 20 % faster than 153 per-member "
    "(50 × 50) @ (50 × chunk) GEMMs plus the per-member first layer (the general path). % of peak counts "
    "only the plain FLOPs, so it is capped near 1/3 of what the GEMM itself achieves.",
    "* **CNN**: the grouped convolution (feature_group_count = P) of the first version ran at ≈ 10 GFLOP/s "
    "on XLA:CPU (16 s per evaluation); per-member plain convolutions inside lax.map run ≈ 10× faster. The "
    "first convolution has a shared input: one convolution with block·8 output channels. Pooling comes "
    "before bias + ReLU (exact) as reshapes + maxima of contiguous halves.",
    "* **Per-member jit loop** is close for D and the CNN (≈ 1.2–1.5×): one network over all 50k points "
    "(or 1024 images) is already a tall GEMM / convolution per layer that XLA runs well, so batching members "
    "mainly saves dispatch. The population kernels win ≈ 10× where per-member work is tiny (A–C).",
    "* **Exactness.** Accuracy counts equal the per-member references except where a point's two logits "
    "agree to within float32 rounding: the kernels sum in a different order (one GEMM instead of a "
    "per-member dot), so such a tie can fall either way (seen once in 7.65 M point-evaluations).",
    "* **One core.** XLA:CPU runs these loop bodies on ONE thread (CPU time / wall time ≈ 1.0, column "
    "'cores busy'): its GEMMs only fan out to the second core for much larger matrices (the 2048² peak "
    "matmul does). The measured peak is a 2-core number, so single-threaded kernels are capped near 50 %. "
    "``shard=True`` with two host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``) runs the "
    "two halves of the population on separate threads.",
    "* **Peak under load.** The peak is re-measured in every run and the best value kept; with other "
    "processes on the machine it drops (158–180 GFLOP/s seen) from the idle 340–365 GFLOP/s of a quiet "
    "moment. The kernels ran on one thread either way, so against the idle 2-core peak D and the CNN are at "
    "≈ 16–17 %: read '% of peak' and 'met' of a loaded run with the load average in mind.",
    "* The NumPy reference runs on one BLAS thread, like the papers' reference (≈ 10 ms per genome on one "
    "core); with 2 threads it is not faster for these shapes and suffers more from other processes.",
    "* Timings on a shared 2-core machine are noisy: compare numbers from the same run; the JSON keeps every "
    "sample and the load average.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no chunk sweep (< 2 min)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None, help="chunk-size sweep")
    ap.add_argument("--only", default="A,B,C,D,CNN", help="comma-separated subset of A,B,C,D,CNN")
    ap.add_argument("--out", default=str(C.RESULTS_DIR), help="output directory")
    ap.add_argument(
        "--numpy-threads", type=int, default=1, help="BLAS threads of the NumPy reference (default 1)"
    )
    ap.add_argument(
        "--devices",
        type=int,
        default=1,
        help="split the population over N host CPU devices (shard=True; sets the XLA host device count)",
    )
    args = ap.parse_args(argv)
    if args.sweep is None:
        args.sweep = not args.quick
    args.repeats = 3 if args.quick else 7
    args.ref_repeats = 1 if args.quick else 3
    args.cnn_repeats = 2 if args.quick else 5
    args.cnn_numpy_members = 2 if args.quick else 8
    args.cnn_loop_members = 16 if args.quick else ES_POP
    args.ga_numpy_stride = 3 if args.quick else 1
    args.shard = args.devices > 1
    only = {s.strip().upper() for s in args.only.split(",")}

    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    machine = C.machine_info()
    load_start = C.load_average()
    log(f"machine: {machine['cpu']}, {machine['cpu_count']} cores, load {load_start}")
    peak = C.matmul_peak((2048,) if args.quick else (2048, 4096), repeats=3 if args.quick else 5)
    bandwidth = C.memory_bandwidth(128 if args.quick else 256)
    log(f"matmul peak {peak['gflops']:.0f} GFLOP/s, bandwidth {bandwidth['gbps']:.1f} GB/s")

    rows = []
    ga_labels = [k for k in GA_ARCHS if k in only]
    if ga_labels:
        ds = classification.moons()
        x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
        for label in ga_labels:
            rows.append(bench_ga(label, GA_ARCHS[label], x, y, args, peak["gflops"], log))
    if "CNN" in only:
        rows.append(bench_es(args, peak["gflops"], log))

    # a second peak measurement: on a shared machine keep the better one
    peak2 = C.matmul_peak((2048,), repeats=3)
    if peak2["gflops"] > peak["gflops"]:
        peak = dict(peak2, how=peak2["how"] + " (re-measured at the end: better than at the start)")
        for r in rows:
            r["pct_peak"] = 100 * r["gflops"] / peak["gflops"]
            r["floor_ms"] = 1e3 * r["executed_gflop"] / peak["gflops"]
            if "%" in r["goal"]:
                r["met"] = r["gflops"] / peak["gflops"] >= GOAL_PEAK
    payload = {
        "benchmark": "population_eval",
        "command": " ".join(["benchmarks/population_eval.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "devices": args.devices,
        "machine": machine,
        "load_start": load_start,
        "load_end": C.load_average(),
        "peak": peak,
        "bandwidth": bandwidth,
        "goals": {"speedup_vs_numpy_A_B_C": GOAL_SPEEDUP, "fraction_of_peak_D_CNN": GOAL_PEAK},
        "rows": rows,
        "notes": NOTES,
        "wall_s": time.perf_counter() - t_start,
    }
    md = markdown(payload)
    jpath, mpath = C.write_results("population_eval", payload, md, args.out)
    print()
    print(md)
    log(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

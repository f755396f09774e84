"""2-D loss landscape (51 × 51 grid) as ONE population vs a per-point jitted loop, on MNIST test images.

    .venv/bin/python benchmarks/landscape.py            # full run  (≈ 5–10 min on 2 shared CPU cores)
    .venv/bin/python benchmarks/landscape.py --quick    # smoke run (≈ 2 min): fewer repeats, fewer images

Workload: ``analysis.landscape.projection_2d`` of a network at ``θ + α·η₁ + β·η₂`` for α, β on 51 steps in
[−1, 1] (2601 points; η filter-normalised, biases unperturbed), metrics accuracy + cross-entropy on the
first ``--images`` images of the MNIST test split (``tasks.classification.load_dataset("mnist")``: the
shared t10k files, split 8000/2000, so 2000 test images; the CNN uses ``--cnn-images``, default 500, to
keep the run to minutes: 2601 points × 500 images are 1.3 M CNN forward passes). θ is a fresh init (the
cost does not depend on the values). Networks: the MLP 784-16-10, LeNet-300-100 and the paper CNN.

Measured in the same run, per network (wall time, ``block_until_ready``, compile excluded):

* **population** — ``projection_2d(classification_evaluator(...), …)``: for the MLPs the shared-first-layer
  path (``evaluate.evaluate_affine``: the first layer is affine in (α, β), so its products are computed
  once for the whole grid); for the CNN the population kernel (``population.evaluate_params``) on the
  built grid. For the MLP 784-16-10 also the plain population-kernel path (``fast=False``), for comparison.
* **per-point loop** — one jitted function ``(α, β) ↦ (accuracy, CE)`` of ``θ + α·η₁ + β·η₂`` through
  ``module.apply`` on all the images, called from Python for every grid point (dispatched asynchronously,
  one sync at the end). For the MLP 784-16-10 on the whole grid; for LeNet and the CNN on the first
  ``--point-rows`` rows of the grid (51 points each) and extrapolated linearly to 2601 points (every point
  costs the same; the table says so).
* agreement: the largest |ΔCE| and the number of differing accuracies between the population result and
  the per-point loop on the points both evaluated.

Goals (issue 17): ≥ 5× for the MLP 784-16-10 or LeNet, ≥ 2× for the paper CNN.
Results: ``benchmarks/results/landscape.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

from es_lottery import networks
from es_lottery.analysis import evaluate as E
from es_lottery.analysis import landscape as LS
from es_lottery.tasks import classification

GRID = np.linspace(-1.0, 1.0, 51)
METRICS = ("accuracy", "cross_entropy")
NETWORKS = {
    "mlp_784_16_10": (dict(name="mlp", sizes=[784, 16, 10], weight_init="lecun_normal"), 5.0),
    "lenet_300_100": (dict(name="lenet_300_100"), 5.0),
    "paper_cnn": (dict(name="paper_cnn"), 2.0),
}


def per_point_fn(module):
    @jax.jit
    def point(a, b, theta, d1, d2, x, y):
        p = jax.tree_util.tree_map(lambda c, u, v: c + a * u + b * v, theta, d1, d2)
        out = module.apply({"params": p}, x)
        ce = jnp.mean(jax.nn.logsumexp(out, -1) - jnp.take_along_axis(out, y[:, None], 1)[:, 0])
        return jnp.mean(jnp.argmax(out, -1) == y), ce

    return point


def run_points(point, pts, theta, d1, d2, x, y):
    res = [point(jnp.float32(a), jnp.float32(b), theta, d1, d2, x, y) for a, b in pts]
    res = jax.block_until_ready(res)
    return np.asarray([float(r[0]) for r in res]), np.asarray([float(r[1]) for r in res])


def bench_network(
    key: str, spec: dict, goal: float, images: np.ndarray, labels: np.ndarray, args, log
) -> dict:
    name = spec["name"]
    module = networks.make_network(name, **{k: v for k, v in spec.items() if k != "name"})
    theta = networks.init_params(jax.random.key(0), module)
    d1, d2 = LS.random_directions(jax.random.key(1), theta, 2)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    ev = E.classification_evaluator(module, x, y, METRICS)
    n_params = networks.num_params(theta)
    row: dict = {
        "network": key,
        "params": n_params,
        "images": len(x),
        "points": GRID.size**2,
        "goal": goal,
    }

    # the population (fast path where the evaluator has one)
    fast = ev.supports_affine
    reps = {"paper_cnn": 1, "lenet_300_100": min(args.repeats, 3)}.get(key, args.repeats)
    t0 = time.perf_counter()
    land = LS.projection_2d(ev, theta, d1, d2, GRID, fast=fast)
    first = time.perf_counter() - t0
    t = C.time_fn(lambda: LS.projection_2d(ev, theta, d1, d2, GRID, fast=fast).values, repeats=reps, warmup=0)
    row.update(
        population_path="shared first layer (evaluate_affine)"
        if fast
        else "population kernel (evaluate_params)",
        population_s=t["median_s"],
        population_compile_s=max(first - t["median_s"], 0.0),
        population_samples_s=t["samples_s"],
    )
    log(f"  {key}: population {t['median_s']:.3f} s (first call {first:.1f} s)")
    if key == "mlp_784_16_10" and not args.quick:
        tk = C.time_fn(
            lambda: LS.projection_2d(ev, theta, d1, d2, GRID, fast=False).values, repeats=1, warmup=1
        )
        row["population_kernel_s"] = tk["median_s"]
        log(f"  {key}: plain population kernel (fast=False) {tk['median_s']:.3f} s")

    # the per-point loop
    point = per_point_fn(module)
    rows_eval = GRID.size if key == "mlp_784_16_10" else min(args.point_rows, GRID.size)
    pts = [(a, b) for b in GRID[:rows_eval] for a in GRID]
    jax.block_until_ready(point(jnp.float32(0), jnp.float32(0), theta, d1, d2, x, y))  # compile
    tp = C.time_fn(
        lambda: run_points(point, pts, theta, d1, d2, x, y),
        repeats=1 if rows_eval < GRID.size else reps,
        warmup=0,
    )
    acc_p, ce_p = run_points(point, pts, theta, d1, d2, x, y)
    per_point_total = tp["median_s"] * GRID.size**2 / len(pts)
    row.update(
        per_point_points=len(pts),
        per_point_measured_s=tp["median_s"],
        per_point_s=per_point_total,
        per_point_extrapolated=len(pts) < GRID.size**2,
        ratio=per_point_total / t["median_s"],
    )
    row["met"] = row["ratio"] >= goal
    acc_g = land.values["accuracy"][:rows_eval].ravel()
    ce_g = land.values["cross_entropy"][:rows_eval].ravel()
    row["max_abs_ce_diff"] = float(np.max(np.abs(ce_g - ce_p)))
    row["accuracy_mismatches"] = int(np.sum(np.abs(acc_g - acc_p) > 1e-6))
    row["accuracy_compared"] = len(pts)
    log(
        f"  {key}: per-point {tp['median_s']:.2f} s for {len(pts)} points → {per_point_total:.2f} s "
        "for the grid; "
        f"ratio {row['ratio']:.1f}× (goal ≥ {goal:g}×), max |ΔCE| {row['max_abs_ce_diff']:.2g}"
    )
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images (≈ 2 min)")
    ap.add_argument("--images", type=int, default=2000, help="test images for the MLPs (default 2000)")
    ap.add_argument("--cnn-images", type=int, default=500, help="test images for the CNN (default 500)")
    ap.add_argument(
        "--point-rows", type=int, default=3, help="grid rows the per-point loop runs for LeNet/CNN"
    )
    ap.add_argument("--only", nargs="*", choices=list(NETWORKS), help="benchmark only these networks")
    ap.add_argument("--out", default=str(C.RESULTS_DIR), help="output directory")
    args = ap.parse_args(argv)
    args.repeats = 2 if args.quick else 5
    if args.quick:
        args.images, args.cnn_images = min(args.images, 1000), min(args.cnn_images, 256)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    machine = C.machine_info()
    load_start = C.load_average()
    log(f"machine: {machine['cpu']}, {machine['cpu_count']} cores, load {load_start}")
    ds = classification.load_dataset("mnist")
    data_desc = (
        f"MNIST ({ds.info.get('source')}, {ds.info.get('path')}"
        + (f"; t10k only, split {len(ds.x_train)}/{len(ds.x_test)}" if ds.info.get("test_split_only") else "")
        + ")"
    )
    log(f"data: {data_desc}")
    rows = []
    for key, (spec, goal) in NETWORKS.items():
        if args.only and key not in args.only:
            continue
        n = args.cnn_images if spec["name"] == "paper_cnn" else args.images
        rows.append(bench_network(key, spec, goal, ds.x_test[:n], ds.y_test[:n], args, log))
    load_end = C.load_average()
    total = time.perf_counter() - t_start

    for r in rows:
        r["per_point_note"] = (
            f"{r['per_point_points']} points measured, × {GRID.size**2 / r['per_point_points']:.0f}"
            if r["per_point_extrapolated"]
            else "whole grid"
        )
        r["ok"] = "met" if r["met"] else "short"
    payload = {
        "machine": machine,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "total_wall_s": total,
        "data": data_desc,
        "grid": "51 × 51, α, β in [−1, 1]",
        "metrics": list(METRICS),
        "quick": args.quick,
        "rows": rows,
    }
    md = [
        "# 2-D loss landscape: one population vs a per-point jitted loop",
        "",
        f"`benchmarks/landscape.py{' --quick' if args.quick else ''}` — {machine['time']}, {machine['cpu']}, "
        f"{machine['cpu_count']} CPU cores, jax {machine['jax']}. Load average at start / end: "
        f"{load_start} / {load_end} (other jobs share the cores: timings are medians, the JSON keeps every "
        f"sample). Total wall time {total:.0f} s.",
        f"Data: {data_desc}; the first N test images (column 'images'). Grid 51 × 51 (2601 points), "
        "filter-normalised directions, metrics accuracy + cross-entropy; θ a fresh init.",
        "",
        C.md_table(
            rows,
            [
                ("network", "network"),
                ("params", "params"),
                ("images", "images"),
                ("population_path", "population path"),
                ("population_s", "population (s)"),
                ("population_kernel_s", "plain population kernel, fast=False (s)"),
                ("per_point_s", "per-point loop (s)"),
                ("per_point_note", "per-point measured"),
                ("ratio", "per-point / population"),
                ("goal", "goal ×"),
                ("ok", "goal"),
                ("max_abs_ce_diff", "max |ΔCE|"),
                ("accuracy_mismatches", "accuracy mismatches"),
            ],
        ),
        "",
        "**Why.** Per point, the loop runs one full forward pass over all images (for the MLP 784-16-10 "
        "a (n × 784) @ (784 × 16) GEMM that dominates); XLA runs it efficiently, so batching points alone "
        "gains little (the `fast=False` column: the plain population kernel streams every member's weights "
        "per data chunk). The landscape's points differ only by α·η₁ + β·η₂, so the first layer of every "
        "point is xW + b + α(xD₁ + e₁) + β(xD₂ + e₂): its three products are computed ONCE for all data, and "
        "each point costs only K = 2 multiply-adds per hidden unit plus its later layers, run in cache-sized "
        "blocks (members × images). The paper CNN has no such shortcut (pooling follows its first "
        "convolution and the second convolution holds ≈ 80 % of the FLOPs): there the gain is the "
        "population kernel's blocked convolutions. Accuracy and cross-entropy agree with the per-point loop "
        "to float32 rounding.",
    ]
    jpath, mpath = C.write_results("landscape", payload, "\n".join(md), args.out)
    log(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

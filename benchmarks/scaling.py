"""Scaling over populations and devices: the sharded evaluation of ``es_lottery.distributed``.

    .venv/bin/python benchmarks/scaling.py            # full run  (≈ 25–40 min on 2 shared CPU cores)
    .venv/bin/python benchmarks/scaling.py --quick    # smoke run (≈ 5–8 min): smaller, fewer repeats

The process starts with ``distributed.configure(devices=4)`` (4 host devices on a CPU, reproducible
compilation — what ``es-lottery --devices 4`` does); on a GPU host it uses the GPUs it finds. Every timing
is a median over rounds in which the settings take turns (unsharded, 1, 2, 4 devices), so a change of the
machine's load hits them alike; the load average is recorded per part.

1. **Kernel scaling** — time per member of one population evaluation through the task protocol (what a
   search calls), populations 64 → 4096, unsharded and over 1, 2, 4 devices:
   GA kernel = ``ClassificationTask`` accuracy fitness of masks over shared weights, moons, arch B
   [2, 75, 2] (the table path), 50,000 points; ES kernel = cross-entropy fitness of per-member weights,
   paper CNN, 128 images.
2. **ES generation** — ``es.step`` on the paper CNN, Sep-CMA-ES, population 128, batch 1024 and 256,
   unsharded / 1 / 2 devices; the plain evosax loop (ask → ``vmap(apply)`` → tell, from
   ``benchmarks/es_generation.py``) at batch 256 in a child process with one device, the same run.
   Goals: 2 devices ≥ 1.6 × 1 device at batch 1024; ≥ 12 × the plain loop at batch 256.
3. **GA generation** — ``ga_slt.step`` (population 100, the paper's rates), moons D [2, 50, 50, 2],
   unsharded / 1 / 2 devices. Goal: 2 devices ≥ 1.6 × 1 device.

CPU and GPU figures are not comparable (different kernels win; a GPU's "device" is the whole chip, a
CPU's host device one core); on a GPU host the results go to ``results/gpu/``.

Results: ``benchmarks/results/scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from es_lottery import distributed  # noqa: E402  (imports jax, but does not start it)

MAX_DEVICES = 4


def _early_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small populations, fewer repeats (≈ 5–8 min)")
    ap.add_argument("--out", default=None, help="output directory (default: benchmarks/results[/gpu])")
    ap.add_argument("--devices", type=int, default=MAX_DEVICES, help="host devices on a CPU (default 4)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: kernels, es, ga, plain")
    return ap.parse_args(argv)


ARGS = _early_args(sys.argv[1:] if __name__ == "__main__" else [])
if __name__ == "__main__":
    distributed.configure(devices=ARGS.devices)  # before JAX starts

import _common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from es_lottery import masks as masks_lib  # noqa: E402
from es_lottery import networks as N  # noqa: E402
from es_lottery.search import es, ga_slt  # noqa: E402
from es_lottery.tasks import base as tasks_base  # noqa: E402
from es_lottery.tasks import classification  # noqa: E402

RESULT_TAG = "RESULT "


# ----------------------------------------------------------------------------------------------
# timing in rounds


def _run_once(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def time_settings(fns: dict, rounds: int, max_total_s: float | None = None) -> dict:
    """Warm each ``fns[setting]()`` once (compile), then ``rounds`` rounds that call every setting once,
    in turn. Returns per setting: median / min wall seconds, samples, CPU/wall, compile seconds."""
    out = {}
    for name, fn in fns.items():
        wall, _ = _run_once(fn)
        out[name] = {"compile_and_first_s": wall, "samples_s": [], "cpu_s": []}
    t_start = time.perf_counter()
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = _run_once(fn)
            out[name]["samples_s"].append(wall)
            out[name]["cpu_s"].append(cpu)
        if max_total_s is not None and time.perf_counter() - t_start > max_total_s:
            break
    for r in out.values():
        r["median_s"] = statistics.median(r["samples_s"])
        r["min_s"] = min(r["samples_s"])
        r["cpu_per_wall"] = sum(r["cpu_s"]) / max(sum(r["samples_s"]), 1e-12)
    return out


def settings(max_devices: int) -> dict:
    """label → devices argument of ``use_devices`` (None: unsharded)."""
    out = {"unsharded": None}
    for d in (1, 2, 4):
        if d <= max_devices:
            out[f"{d} device{'s' if d > 1 else ''}"] = d
    return out


# ----------------------------------------------------------------------------------------------
# how many cores the machine gives us right now


_SPIN = "import time\nt = time.process_time() + {s}\nwhile time.process_time() < t: pass\n"


def cores_available(seconds: float = 1.5) -> dict:
    """CPU seconds per wall second that ONE busy process and TWO concurrent busy processes get now (each
    spins for ``seconds`` of CPU time): ``pair / single`` bounds what a second host device can add under
    the current load (2.0 on an idle 2-core machine)."""

    def spin(n: int) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(s=seconds)]) for _ in range(n)]
        for p in procs:
            p.wait()
        return n * seconds / (time.perf_counter() - t0)

    single, pair = spin(1), spin(2)
    return {"single": single, "pair": pair, "pair_over_single": pair / single, "load": C.load_average()}


# ----------------------------------------------------------------------------------------------
# 1. kernel scaling


def kernel_scaling(args, log) -> list[dict]:
    pops = (64, 256, 1024) if args.quick else (64, 256, 1024, 4096)
    rounds = 2 if args.quick else 3
    n_points = 10_000 if args.quick else 50_000
    moons = classification.moons(n_train=n_points, n_test=1000)
    mlp = N.make_network("mlp", sizes=[2, 75, 2], weight_init="uniform")
    ga_params = N.init_params(jax.random.key(0), mlp)
    cnn = N.make_network("paper_cnn")
    cnn_params = N.init_params(jax.random.key(1), cnn)
    rng = np.random.default_rng(0)
    images = 64 if args.quick else 128
    x_img = rng.random((images, 28, 28, 1), np.float32)
    y_img = rng.integers(0, 10, images).astype(np.int32)
    rows = []
    for kernel in ("GA", "ES"):
        for npop in pops:
            fns = {}
            for label, devices in settings(jax.device_count()).items():
                sharding = None if devices is None else distributed.make_sharding(devices)
                if kernel == "GA":
                    task = classification.make_task(
                        mlp,
                        x_train=moons.x_train,
                        y_train=moons.y_train,
                        objective="accuracy",
                        eval_split="train",
                        sharding=sharding,
                    )
                    bits = jax.random.bernoulli(jax.random.key(npop), 0.5, (npop, ga_slt.genome_length(mlp)))
                    members = tasks_base.MaskedPopulation(ga_params, ga_slt.genomes_to_masks(mlp, bits))
                else:
                    task = classification.make_task(
                        cnn, x_train=x_img, y_train=y_img, eval_split="train", sharding=sharding
                    )
                    members = jax.tree_util.tree_map(
                        lambda p, k=npop: (
                            p[None] + 0.05 * jax.random.normal(jax.random.key(k), (k, *p.shape), p.dtype)
                        ),
                        cnn_params,
                    )
                f = jax.jit(lambda m, t: t.fitness_metrics(None, jax.random.key(0), m)[0])
                fns[label] = lambda f=f, m=members, t=task: f(m, t)
            budget = 60.0 if npop >= 1024 else None
            timing = time_settings(fns, rounds, budget)
            for label, t in timing.items():
                rows.append(
                    {
                        "kernel": kernel,
                        "workload": f"moons B [2,75,2], {n_points} points"
                        if kernel == "GA"
                        else f"paper CNN, {images} images",
                        "population": npop,
                        "setting": label,
                        "median_s": t["median_s"],
                        "us_per_member": t["median_s"] / npop * 1e6,
                        "cpu_per_wall": t["cpu_per_wall"],
                        "samples_s": t["samples_s"],
                        "first_call_s": t["compile_and_first_s"],
                    }
                )
            base = timing["unsharded"]["median_s"]
            log(
                f"  {kernel} P={npop}: "
                + ", ".join(f"{k} {v['median_s'] * 1e3:.0f} ms" for k, v in timing.items())
                + f" (load {C.load_average()})"
            )
            for r in rows[-len(timing) :]:
                r["x_unsharded"] = base / r["median_s"]
    return rows


# ----------------------------------------------------------------------------------------------
# 2. ES generation (paper CNN)


def es_generation(args, log) -> dict:
    import es_generation as esg

    ds, data_desc = esg.load_data(log)
    x_tr, y_tr, x_te, y_te = esg.arrays(ds)
    module = N.make_network("paper_cnn")
    theta0 = N.init_params(jax.random.key(0), module)
    config = es.ESConfig(algorithm="Sep_CMA_ES", population_size=128, sigma_init=0.05)
    state = es.init(jax.random.key(2), theta0, masks_lib.ones(theta0), config)
    out = {"data": data_desc, "batches": {}}
    rounds = 2 if args.quick else 4
    for batch in (1024, 256):
        fns = {}
        for label, devices in settings(min(2, jax.device_count())).items():
            with distributed.use_devices(devices):
                task = es.make_classification_task(module, x_tr, y_tr, x_te, y_te, batch_size=batch)
            fns[label] = lambda t=task: es.step(jax.random.key(3), state, t, config)
        timing = time_settings(fns, rounds)
        out["batches"][str(batch)] = timing
        log(
            f"  ES step batch {batch}: "
            + ", ".join(
                f"{k} {v['median_s']:.2f} s (CPU/wall {v['cpu_per_wall']:.2f})" for k, v in timing.items()
            )
            + f" (load {C.load_average()})"
        )
    return out


def plain_loop(args, log) -> dict:
    """The plain evosax loop at batch 256 in a child process: one device, the default compilation."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES",)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if f not in distributed.REPRODUCIBLE_XLA_FLAGS]
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    spec = {"kind": "plain", "algo": "Sep_CMA_ES", "batch": 256, "repeats": 2 if args.quick else 3}
    cmd = [sys.executable, str(HERE / "es_generation.py"), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            r = dict(json.loads(line[len(RESULT_TAG) :]), status="ok", wall_s=time.perf_counter() - t0)
            log(
                f"  plain evosax loop batch 256: {r['timing']['median_s']:.2f} s/gen, load {C.load_average()}"
            )
            return r
    return {"status": "failed", "returncode": proc.returncode, "stderr_tail": proc.stderr[-1500:]}


# ----------------------------------------------------------------------------------------------
# 3. GA generation (moons D)


def ga_generation(args, log) -> dict:
    data = classification.moons()
    module = N.make_network("mlp", sizes=[2, 50, 50, 2], weight_init="uniform")
    cfg = ga_slt.GAConfig()
    rounds = 3 if args.quick else 8
    fns = {}
    for label, devices in settings(min(2, jax.device_count())).items():
        with distributed.use_devices(devices):
            task = ga_slt.make_task(module, data.x_train, data.y_train, data.x_test, data.y_test, config=cfg)
        state = ga_slt.init(jax.random.key(0), task, cfg)
        fns[label] = lambda t=task, s=state: ga_slt.step(jax.random.key(1), s, t, cfg)
    timing = time_settings(fns, rounds)
    evals = int(fns["unsharded"]()[1]["n_evals"])
    log(
        "  GA D step: "
        + ", ".join(
            f"{k} {v['median_s'] * 1e3:.0f} ms (CPU/wall {v['cpu_per_wall']:.2f})" for k, v in timing.items()
        )
        + f" (load {C.load_average()})"
    )
    return {"timing": timing, "eval_slots": cfg.block, "new_members": evals, "population": cfg.pop_size}


# ----------------------------------------------------------------------------------------------
# report


def headline(payload: dict) -> list[dict]:
    rows = []
    es_t = payload.get("es_generation", {}).get("batches", {})
    if "1024" in es_t and "2 devices" in es_t["1024"]:
        one, two = es_t["1024"]["1 device"]["median_s"], es_t["1024"]["2 devices"]["median_s"]
        # the most a second device can add: the cores two busy processes get over what ONE device already
        # keeps busy (XLA:CPU runs the CNN's convolutions on several threads)
        pair = min(c["pair"] for c in payload.get("cores_available", [{"pair": 2.0}]))
        ceiling = pair / es_t["1024"]["1 device"]["cpu_per_wall"]
        rows.append(
            {
                "what": "ES generation, paper CNN, P 128, batch 1024: 2 devices vs 1 "
                f"(1 device already uses {es_t['1024']['1 device']['cpu_per_wall']:.2f} cores: "
                f"ceiling {ceiling:.2f}×)",
                "value": f"{two:.2f} s vs {one:.2f} s",
                "ratio": one / two,
                "goal": 1.6,
            }
        )
    plain = payload.get("plain_loop", {})
    if plain.get("status") not in (None, "ok"):
        rows.append(
            {
                "what": "ES generation, batch 256: ours vs plain evosax loop",
                "value": f"plain loop {plain['status']} (its error is in scaling.json)",
                "ratio": float("nan"),
                "goal": 12.0,
            }
        )
    if plain.get("status") == "ok" and "256" in es_t:
        best = "2 devices" if "2 devices" in es_t["256"] else "1 device"
        ours = es_t["256"][best]["median_s"]
        rows.append(
            {
                "what": f"ES generation, batch 256: ours ({best}) vs plain evosax loop",
                "value": f"{ours:.2f} s vs {plain['timing']['median_s']:.2f} s",
                "ratio": plain["timing"]["median_s"] / ours,
                "goal": 12.0,
            }
        )
    ga_t = payload.get("ga_generation", {}).get("timing", {})
    if "2 devices" in ga_t:
        one, two = ga_t["1 device"]["median_s"], ga_t["2 devices"]["median_s"]
        rows.append(
            {
                "what": "GA generation, moons D, P 100: 2 devices vs 1",
                "value": f"{two * 1e3:.0f} ms vs {one * 1e3:.0f} ms",
                "ratio": one / two,
                "goal": 1.6,
            }
        )
    for r in rows:
        r["met"] = bool(r["ratio"] >= r["goal"])  # NaN (a failed part): not met
    return rows


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        "# Scaling: populations and devices",
        "",
        f"`{payload['command']}` — {m['time']}, {m['cpu']}, {m['cpu_count']} CPU cores, {m['memory_gb']} GB, "
        f"jax {m['jax']}, backend {payload['backend']}, {len(m['devices'])} devices "
        f"({payload['device_note']}). "
        f"Load average (1/5/15 min) at start {payload['load_start']}, end {payload['load_end']}; other jobs "
        "share the cores, so medians over interleaved rounds are reported (the JSON keeps every sample). "
        f"XLA_FLAGS `{m['xla_flags']}`. Total wall time {payload['wall_s']:.0f} s.",
        "",
        "Cores this process could get (one / two concurrent busy processes, CPU s per wall s, probed at the "
        "start, after the ES part and at the end): "
        + "; ".join(
            f"{c['single']:.2f} / {c['pair']:.2f} (load {c['load'][0]})"
            for c in payload.get("cores_available", [])
        )
        + ". A second device can add at most pair / single.",
        "",
        "## Goals",
        "",
        C.md_table(
            payload["headline"],
            [
                ("what", "measured"),
                ("value", "time / generation"),
                ("ratio", "ratio"),
                ("goal", "goal"),
                ("met", "met"),
            ],
        ),
        "",
    ]
    if payload.get("kernel_rows"):
        lines += ["## Kernel scaling (time per member, µs)", ""]
        for kernel in ("GA", "ES"):
            rows = [r for r in payload["kernel_rows"] if r["kernel"] == kernel]
            if not rows:
                continue
            labels = list(dict.fromkeys(r["setting"] for r in rows))
            table = []
            for npop in sorted({r["population"] for r in rows}):
                row = {"population": npop}
                for r in rows:
                    if r["population"] == npop:
                        row[r["setting"]] = r["us_per_member"]
                        row[r["setting"] + " ×"] = r["x_unsharded"]
                table.append(row)
            cols = [("population", "population")] + [(lb, f"{lb} µs/member") for lb in labels]
            cols += [(lb + " ×", f"{lb} × unsharded") for lb in labels if lb != "unsharded"]
            lines += [f"**{kernel} kernel** — {rows[0]['workload']}", "", C.md_table(table, cols), ""]
    lines += ["## Notes", "", *payload["notes"]]
    return "\n".join(lines)


def main(args) -> int:
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    backend = jax.default_backend()
    out_dir = Path(args.out) if args.out else (C.RESULTS_DIR / "gpu" if backend == "gpu" else C.RESULTS_DIR)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    machine = C.machine_info()
    load_start = C.load_average()
    log(f"backend {backend}, {jax.device_count()} devices, load {load_start}")
    payload = {
        "benchmark": "scaling",
        "command": " ".join(["python benchmarks/scaling.py", *sys.argv[1:]]),
        "quick": args.quick,
        "backend": backend,
        "machine": machine,
        "device_note": "host devices: one core each" if backend == "cpu" else "one accelerator each",
        "load_start": load_start,
        "reproducible_compilation": distributed.reproducible_compilation(),
    }
    capacity = [cores_available()]
    log(f"cores available: {capacity[-1]}")
    notes = [
        "* Devices are host devices of ONE process (`distributed.configure(devices=4)`). XLA:CPU runs most "
        "kernels on one thread, so a second device is a second core — but not the paper CNN's convolutions, "
        "which already spread over the cores on one device (the CPU/wall column): there a second device "
        "can add at most (cores two processes get) / (CPU/wall of one device). With 2 cores, 4 devices "
        "cannot beat 2.",
        "* Sharded runs use fixed member blocks (`ceil(P/8)`; CNN: whole 4-member blocks) and are "
        "bit-identical on 1, 2 and 4 devices (tests/test_sharding_searches.py).",
        "* 'unsharded' = the task built outside `use_devices` (the whole population in one kernel call, "
        "the pinned numbers), compiled in the same process (so also without the algebraic simplifier).",
        "* The plain evosax loop runs in a child process with one device and XLA's default passes.",
        "* CPU and GPU numbers are not comparable: on a GPU host this file is written to results/gpu/.",
    ]

    def save(done: list[str], final: bool):
        """Write what is measured so far (after every part: a run stopped by a time limit keeps them)."""
        payload["cores_available"] = capacity
        payload["load_end"] = C.load_average()
        payload["headline"] = headline(payload)
        payload["parts_done"] = done
        payload["complete"] = final
        payload["notes"] = notes + (
            []
            if final
            else [f"* PARTIAL: only {', '.join(done) or 'nothing'} finished when this was written."]
        )
        payload["wall_s"] = time.perf_counter() - t_start
        md = markdown(payload)
        paths = C.write_results("scaling", payload, md, out_dir)
        return md, paths

    parts = [
        ("kernels", lambda: payload.__setitem__("kernel_rows", kernel_scaling(args, log))),
        ("es", lambda: payload.__setitem__("es_generation", es_generation(args, log))),
        ("plain", lambda: payload.__setitem__("plain_loop", plain_loop(args, log))),
        ("ga", lambda: payload.__setitem__("ga_generation", ga_generation(args, log))),
    ]
    done: list[str] = []
    for name, run in parts:
        if name in skip or (name == "plain" and backend != "cpu"):  # the plain loop: CPU only
            continue
        run()
        done.append(name)
        if name == "es":
            capacity.append(cores_available())
        save(done, final=False)
    capacity.append(cores_available())
    log(f"cores available: {capacity[-1]}")
    md, (jpath, mpath) = save(done, final=True)
    print(md)
    log(f"wrote {jpath} and {mpath}")
    if payload.get("plain_loop", {}).get("status") not in (None, "ok"):
        log(f"the plain evosax loop failed: {payload['plain_loop'].get('stderr_tail', '')[-600:]}")
        return 1  # a part that failed is a failed benchmark (the suite reports it), not a missing row
    return 0


if __name__ == "__main__":
    raise SystemExit(main(ARGS))

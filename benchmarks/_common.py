"""Shared helpers for the benchmarks in this directory.

* :func:`time_fn` — wall-clock timing with warm-up (compile), ``block_until_ready`` and the MEDIAN of
  repeats (plus min/max/all samples, so noisy machines can be judged);
* :func:`matmul_peak` — the machine's measured f32 matmul throughput (jitted square matmuls, best of
  several): the "peak" that kernels are compared against;
* :func:`memory_bandwidth` — a measured streaming bandwidth (jitted ``a * s + t`` over a large array);
* :func:`machine_info` — CPU, cores, memory, library versions, load average;
* :func:`write_results` — one JSON file (everything) and one Markdown file (tables + notes).

Benchmarks never assert timings; they report them next to a reference measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------
# timing


def block(x):
    """``jax.block_until_ready`` that also accepts plain Python / NumPy results."""
    return jax.block_until_ready(x)


def time_fn(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    min_total_s: float = 0.0,
    max_total_s: float | None = None,
) -> dict:
    """Time ``fn()`` (no arguments; close over them). Returns seconds.

    ``warmup`` calls first (compilation, caches), then at least ``repeats`` timed calls, each ending in
    ``block_until_ready``; more calls while the total is below ``min_total_s``; stop early (but after at
    least one timed call) when the timed total exceeds ``max_total_s``.
    Result: ``{"median_s", "min_s", "max_s", "n", "samples_s", "cpu_per_wall"}``; ``cpu_per_wall`` is the
    process CPU time over the wall time of the timed calls (≈ the number of cores kept busy).
    """
    for _ in range(warmup):
        block(fn())
    samples: list[float] = []
    total = 0.0
    cpu0 = time.process_time()
    while len(samples) < repeats or total < min_total_s:
        t0 = time.perf_counter()
        block(fn())
        dt = time.perf_counter() - t0
        samples.append(dt)
        total += dt
        if max_total_s is not None and total > max_total_s:
            break
    cpu = time.process_time() - cpu0
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
        "samples_s": samples,
        "cpu_per_wall": cpu / total if total > 0 else None,
    }


# ----------------------------------------------------------------------------------------------
# machine capabilities


def matmul_peak(sizes: Sequence[int] = (2048, 4096), repeats: int = 5) -> dict:
    """Measured f32 matmul throughput: a jitted ``a @ b`` per size, best of ``repeats`` (GFLOP/s)."""
    mm = jax.jit(lambda a, b: a @ b)
    per_size = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        t = time_fn(lambda a=a, b=b: mm(a, b), repeats=repeats)
        per_size[str(n)] = {
            "best_gflops": 2 * n**3 / t["min_s"] / 1e9,
            "median_gflops": 2 * n**3 / t["median_s"] / 1e9,
        }
    best = max(v["best_gflops"] for v in per_size.values())
    return {
        "gflops": best,
        "per_size": per_size,
        "how": f"jitted f32 n×n @ n×n, n in {list(sizes)}, best of {repeats}",
    }


def memory_bandwidth(mbytes: int = 256, repeats: int = 5) -> dict:
    """Measured streaming bandwidth (GB/s, read + write) of a jitted ``a * 1.0001 + 0.5`` on ``mbytes`` MB."""
    n = mbytes * 2**20 // 4
    a = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001 + 0.5)
    t = time_fn(lambda: f(a), repeats=repeats)
    return {
        "gbps": 2 * n * 4 / t["min_s"] / 1e9,
        "how": f"jitted elementwise a*s+t over {mbytes} MB (read + write), best of {repeats}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    import flax

    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _mem_gb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_1_5_15": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ----------------------------------------------------------------------------------------------
# output


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def md_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table; ``columns`` = [(key, header)]. Missing keys print as '–'."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _relative_paths(text: str) -> str:
    """Machine paths become repository-relative (``<repo>/x`` → ``x``, its parent → ``../``)."""
    repo = Path(__file__).resolve().parent.parent
    return text.replace(f"{repo}/", "").replace(f"{repo.parent}/", "../")


def write_results(
    name: str, payload: dict, markdown: str, out_dir: Path | str | None = None
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (``payload``) and ``<out_dir>/<name>.md`` (``markdown``)."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jpath.write_text(_relative_paths(json.dumps(_jsonable(payload), indent=2)) + "\n")
    mpath.write_text(_relative_paths(markdown.rstrip()) + "\n")
    return jpath, mpath

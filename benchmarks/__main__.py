"""The benchmark suite: ``python -m benchmarks`` runs every benchmark and writes one summary table.

    python -m benchmarks                 # everything, full size (≈ 1.5–2.5 h on 2 shared CPU cores)
    python -m benchmarks --quick         # smoke pass (≈ 25–40 min): every benchmark's --quick mode
    python -m benchmarks --only scaling,es_generation

Every ``benchmarks/<name>.py`` (except ``_common.py``) runs in its own child process (a crash, a kill for
memory or a device setting of one cannot touch the others) with ``--out DIR``; each writes
``DIR/<name>.{json,md}``. Then ``DIR/README.md`` gets ONE table — the headline figures of every benchmark
with the reference measured in the same run, the ratio and the goal — under the machine description
(CPU, cores, memory, load average at start and end, JAX version and backend). Full runs write to
``benchmarks/results/``, ``--quick`` to ``benchmarks/results/quick/`` (so a smoke pass never replaces the
full figures); on a GPU host ``…/gpu/`` instead, since CPU and GPU numbers are not comparable.

The exit status is non-zero only when a benchmark fails (non-zero exit, no result file, or over its time
limit) — never because of a timing: the goals are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

# the order they run in (cheap first); anything else found in the directory runs after them
# (scaling first: it holds the issue-18 goals)
ORDER = ("scaling", "population_eval", "ga_generation", "es_generation", "rollouts", "landscape", "ppo")
TIMEOUT_MIN = {"quick": 30, "full": 90}


def discover() -> list[str]:
    found = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def backend() -> str:
    """The JAX backend a child process will see (asked in a child, so this process never starts JAX)."""
    out = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True
    )
    return (out.stdout.strip().splitlines() or ["cpu"])[-1]


def run_one(name: str, out: Path, quick: bool, timeout_min: float, log) -> dict:
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    log(f"{name}: {' '.join(cmd[1:])}")
    logfile = out / "logs" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    try:
        with logfile.open("w") as fh:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_min * 60, cwd=HERE.parent
            )
        rc, status = proc.returncode, "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        rc, status = None, "timeout"
    wall = time.perf_counter() - t0
    result = out / f"{name}.json"
    if status == "ok" and (not result.is_file() or result.stat().st_mtime < time.time() - wall - 5):
        status = "no result file"
    log(f"{name}: {status} in {wall:.0f} s" + ("" if status == "ok" else f" (log: {logfile})"))
    return {"name": name, "status": status, "returncode": rc, "wall_s": wall, "log": str(logfile)}


# ----------------------------------------------------------------------------------------------
# headline rows: (workload, ours, reference, ratio, goal) per benchmark, read from its JSON


def _f(v, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}{unit}"


def _rows_population_eval(d: dict) -> list[dict]:
    out = []
    for r in d.get("rows", []):
        goal = r.get("goal")
        out.append(
            {
                "workload": r["workload"],
                "ours": _f(r.get("time_ms"), " ms"),
                "reference": f"NumPy per genome {_f(r.get('numpy_s', 0) * 1e3, ' ms')}",
                "ratio": r.get("x_numpy"),
                "goal": goal if isinstance(goal, str) else (f"≥ {goal}" if goal else "–"),
                "met": r.get("met"),
                "extra": f"{_f(r.get('pct_peak'), ' % of peak', 2)}",
            }
        )
    return out


def _rows_ga_generation(d: dict) -> list[dict]:
    return [
        {
            "workload": f"GA generation, moons {r['arch']} {r['sizes']}",
            "ours": _f(r.get("ours_gen_ms"), " ms"),
            "reference": f"NumPy GA {_f(r.get('numpy_gen_ms'), ' ms')}",
            "ratio": r.get("speedup_gen"),
            "goal": "–",
            "met": None,
            "extra": "",
        }
        for r in d.get("rows", [])
    ]


def _rows_es_generation(d: dict) -> list[dict]:
    return [
        {
            "workload": f"ES generation, paper CNN, {r['algorithm']}, P 128, batch {r['batch']}",
            "ours": _f(r.get("ours_s"), " s"),
            "reference": f"plain evosax loop {_f(r.get('plain_s'), ' s')}"
            if r.get("plain_s")
            else f"plain loop: {r.get('plain_status')}",
            "ratio": r.get("ratio"),
            "goal": "–",
            "met": None,
            "extra": "",
        }
        for r in d.get("time_rows", [])
    ]


def _rows_rollouts(d: dict) -> list[dict]:
    return [
        {
            "workload": f"rollouts {r['case']}, P {r['population']} × {r['rollouts']}",
            "ours": _f(r.get("ours_s"), " s"),
            "reference": f"evosax problem {_f(r.get('evosax_s'), ' s')}",
            "ratio": r.get("speedup"),
            "goal": f"≥ {r['goal']}" if isinstance(r.get("goal"), (int, float)) else str(r.get("goal", "–")),
            "met": r.get("met"),
            "extra": "",
        }
        for r in d.get("rows", [])
    ]


def _rows_landscape(d: dict) -> list[dict]:
    return [
        {
            "workload": f"loss landscape {r['network']}, {r['points']} points",
            "ours": _f(r.get("population_s"), " s"),
            "reference": f"per point {_f(r.get('per_point_s'), ' s')}",
            "ratio": r.get("ratio"),
            "goal": f"≥ {r['goal']}" if r.get("goal") else "–",
            "met": r.get("met"),
            "extra": "",
        }
        for r in d.get("rows", [])
    ]


def _rows_ppo(d: dict) -> list[dict]:
    return [
        {
            "workload": f"PPO {r['case']} ({r['backend']})",
            "ours": _f(r.get("ours_sps"), " steps/s"),
            "reference": f"brax PPO {_f(r.get('brax_sps'), ' steps/s')}",
            "ratio": r.get("ratio"),
            "goal": "–",
            "met": None,
            "extra": "",
        }
        for r in d.get("rows", [])
    ]


def _rows_scaling(d: dict) -> list[dict]:
    out = [
        {
            "workload": r["what"],
            "ours": r["value"],
            "reference": "same run",
            "ratio": r["ratio"],
            "goal": f"≥ {r['goal']}",
            "met": r["met"],
            "extra": "",
        }
        for r in d.get("headline", [])
    ]
    for kernel in ("GA", "ES"):
        rows = [r for r in d.get("kernel_rows", []) if r["kernel"] == kernel]
        if not rows:
            continue
        big = max(r["population"] for r in rows)
        at = {r["setting"]: r for r in rows if r["population"] == big}
        best = min(at.values(), key=lambda r: r["median_s"])
        out.append(
            {
                "workload": f"{kernel} kernel P {big} ({rows[0]['workload']})",
                "ours": f"{best['us_per_member']:.3g} µs/member ({best['setting']})",
                "reference": f"unsharded {at['unsharded']['us_per_member']:.3g} µs/member",
                "ratio": at["unsharded"]["median_s"] / best["median_s"],
                "goal": "–",
                "met": None,
                "extra": "",
            }
        )
    return out


EXTRACTORS = {
    "population_eval": _rows_population_eval,
    "ga_generation": _rows_ga_generation,
    "es_generation": _rows_es_generation,
    "rollouts": _rows_rollouts,
    "landscape": _rows_landscape,
    "ppo": _rows_ppo,
    "scaling": _rows_scaling,
}


def headline_rows(name: str, out: Path) -> list[dict]:
    path = out / f"{name}.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        rows = EXTRACTORS.get(name, lambda d: [])(data)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        return [{"workload": f"(could not read {path.name}: {type(err).__name__}: {err})"}]
    load = (
        data.get("load_start")
        or data.get("load_average_start")
        or (data.get("machine") or {}).get("load_average_1_5_15")
    )
    for r in rows:
        r["benchmark"] = f"[{name}]({name}.md)"
        r["load"] = load[0] if isinstance(load, list) and load else load
    return rows


def readme(
    out: Path, runs: list[dict], machine: dict, load: tuple, quick: bool, platform: str, wall: float
) -> str:
    # every result file in the directory (earlier `--only` calls included), in the suite's order
    names = [n for n in discover() if (out / f"{n}.json").is_file()]
    rows = [r for name in names for r in headline_rows(name, out)]
    status = [
        {"benchmark": f"[{r['name']}]({r['name']}.md)", "status": r["status"], "wall": r["wall_s"]}
        for r in runs
    ]
    lines = [
        "# Benchmark results" + (" (quick smoke pass)" if quick else ""),
        "",
        (
            f"`python -m benchmarks{' --quick' if quick else ''}` — {machine['time']}. "
            if runs
            else f"Table rebuilt from the result files on {machine['time']} (`python -m benchmarks "
            "--table-only`): each benchmark ran separately; its file gives the date and the load. "
        )
        + f"Machine: {machine['cpu']}, {machine['cpu_count']} CPU cores, {machine['memory_gb']} GB; "
        f"jax {machine['jax']} on {platform} ({len(machine['devices'])} device(s) in this process). "
        + (
            f"load average (1/5/15 min) {load[0]} at start, {load[1]} at end, total {wall / 60:.0f} min. "
            if runs
            else ""
        )
        + "The machine is shared: every benchmark reports medians and measures its reference in the same "
        "run; the load column is the 1-minute load average when its benchmark started (2 cores: above ≈ 2 "
        "other work competes for them and the timings are slower than on a quiet machine)."
        + (
            " These are GPU figures: they are not comparable with the CPU ones in the parent directory."
            if platform == "gpu"
            else " CPU figures; a GPU host writes its own table to `gpu/` (not comparable with these)."
        ),
        "",
        C.md_table(
            rows,
            [
                ("benchmark", "benchmark"),
                ("workload", "workload"),
                ("ours", "ours"),
                ("reference", "reference (same run)"),
                ("ratio", "ratio"),
                ("goal", "goal"),
                ("met", "met"),
                ("load", "load (1 min)"),
            ],
        ),
        "",
    ]
    if status:
        lines += [
            "Runs:",
            "",
            C.md_table(status, [("benchmark", "benchmark"), ("status", "status"), ("wall", "wall (s)")]),
            "",
        ]
    return "\n".join(lines)


PROJECT_README = HERE.parent / "README.md"
README_BEGIN = "<!-- benchmarks:begin -->"
README_END = "<!-- benchmarks:end -->"


def update_project_readme(out: Path, text: str, readme_path: Path | None = None) -> None:
    """Replace the lines between :data:`README_BEGIN` and :data:`README_END` of the project README with
    ``text`` (the suite's ``README.md``): its title dropped, links made relative to the project root. A
    README without both markers is an error (nothing is written)."""
    readme_path = readme_path or PROJECT_README
    current = readme_path.read_text()
    begin, end = current.find(README_BEGIN), current.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme_path} has no {README_BEGIN} … {README_END} block")
    try:
        prefix = out.resolve().relative_to(readme_path.parent.resolve()).as_posix() + "/"
    except ValueError:
        prefix = out.resolve().as_posix() + "/"
    body = [line for line in text.strip().splitlines() if not line.startswith("# ")]
    body = [re.sub(r"\]\(([\w.-]+\.md)\)", lambda m: f"]({prefix}{m.group(1)})", line) for line in body]
    body_text = "\n".join(body).strip()
    block = (
        f"{README_BEGIN}\n{body_text}\n\nFull table: [{prefix}README.md]({prefix}README.md).\n{README_END}"
    )
    readme_path.write_text(current[:begin] + block + current[end + len(README_END) :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark's smoke mode")
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument(
        "--out", default=None, help="output directory (default: benchmarks/results[/quick][/gpu])"
    )
    ap.add_argument(
        "--timeout-min", type=float, default=None, help="per benchmark (default 30 quick, 90 full)"
    )
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: rebuild the table from the result files already in the output directory",
    )
    ap.add_argument(
        "--update-readme",
        action="store_true",
        help=f"also copy the table into the project README (between {README_BEGIN} and {README_END})",
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    platform = backend()
    out = (
        Path(args.out)
        if args.out
        else C.RESULTS_DIR / ("quick" if args.quick else "") / ("gpu" if platform == "gpu" else "")
    )
    out = Path(os.path.normpath(out))
    out.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout_min or TIMEOUT_MIN["quick" if args.quick else "full"]
    load_start = C.load_average()
    if args.table_only:
        runs = []
        log(f"table of the results in {out} (nothing is run)")
    else:
        log(f"{len(names)} benchmarks on {platform} → {out} (load {load_start})")
        runs = [run_one(n, out, args.quick, timeout, log) for n in names]
    load_end = C.load_average()
    machine = C.machine_info()
    text = readme(
        out, runs, machine, (load_start, load_end), args.quick, platform, time.perf_counter() - t_start
    )
    text = re.sub(re.escape(str(HERE.parent)) + "/?", "", text)
    (out / "README.md").write_text(text)
    print(text)
    if args.update_readme:
        update_project_readme(out, text)
        log(f"updated the benchmark table in {PROJECT_README}")
    failed = [r["name"] for r in runs if r["status"] != "ok"]
    log(f"wrote {out / 'README.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

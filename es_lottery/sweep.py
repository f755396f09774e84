"""Sweeps: one job per configuration of a grid, submitted through submitit, collected into one summary.

    from es_lottery.sweep import sweep
    result = sweep("configs/slt/moons.yaml", grid={"ga.population_size": [50, 100], "seeds": [5]},
                   executor="local")                       # or "slurm", slurm={"partition": "gpu", …}
    print(result.markdown)                                 # also <out>/sweeps/<name>/summary.{json,md}

What it does, and why:

* **The experiments' own code.** Each job calls the experiment kind's public ``parse_config(mapping)`` and
  ``run_experiment(exp, out=…, console=…)`` (``slt``, ``imp``, ``nets``): a sweep job is exactly what
  ``es-lottery <kind> CONFIG`` runs, so its numbers are the same and its results land in the same store.
* **A job launcher that exists** — submitit (``pip install 'es_lottery[slurm]'``): its ``LocalExecutor`` runs
  jobs as local subprocesses, its SLURM executor submits ``sbatch`` jobs; logs and pickled results go to
  ``<out>/sweeps/<name>/submitit/``.
* **Every configuration is checked before anything is submitted** (``parse_config`` names the bad field),
  and gets its own experiment name ``<name>-<override tag>``, so its run directory (view) is its own.
  Identical configurations are run once.
* **Never two jobs in one run directory at once.** A job holds an exclusive lock
  (``<out>/sweeps/.state/<job>.lock``, ``fcntl.flock``: released by the OS if the job dies) while it runs;
  the submitter does not submit a job whose lock is held (reported as ``running``), and a job that finds the
  lock taken waits for it and then re-checks whether its work is done.
* **Finished jobs are skipped when submitted again.** A job writes ``<out>/sweeps/.state/<job>.json`` (its
  config digest and run directory) LAST, after ``run_experiment`` returned; a later ``sweep`` call with the
  same configuration finds it and submits nothing for that job. (``run_experiment`` itself also skips work
  it finds finished, so an interrupted job resumes where it stopped.)
* **One summary.** When the jobs are done (``wait=True``), every job's row — overrides, status, run
  directory, and the headline numbers of its ``summary.json`` (``test_*_mean`` and sparsity / density
  means of every job or method) — goes to ``<out>/sweeps/<name>/summary.json`` and ``summary.md``.

Devices (``devices=``): each job calls :func:`es_lottery.distributed.configure` before JAX starts and runs
inside :func:`es_lottery.distributed.use_devices` (e.g. ``devices=2`` on a 2-core CPU node, ``"all"`` on a
GPU node). A SLURM job with several tasks (``slurm={"nodes": 2, "tasks_per_node": 8, …}``) initialises
``jax.distributed`` (SLURM auto-detection) and only process 0 writes (the others write a private scratch
copy: :func:`es_lottery.distributed.process_output_dir`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

KINDS = ("slt", "imp", "nets")
EXECUTORS = ("local", "slurm")
STATE_DIR = ".state"
MAX_TAG = 80  # longer override tags are replaced by a digest
# keys of submitit's SLURM executor parameters accepted in ``slurm=`` (without the ``slurm_`` prefix)
SLURM_KEYS = (
    "partition",
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "account",
    "qos",
    "constraint",
    "exclusive",
    "array_parallelism",
    "setup",
    "additional_parameters",
)

__all__ = [
    "EXECUTORS",
    "KINDS",
    "SweepJob",
    "SweepResult",
    "expand_grid",
    "parse_grid",
    "parse_options",
    "run_job",
    "sweep",
]


# ----------------------------------------------------------------------------------------------
# configurations


def _load_mapping(config: str | Path | Mapping) -> tuple[dict, Path | None]:
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), None
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping at the top level")
    return data, path


def _kind(kind: str | None, path: Path | None) -> str:
    if kind is None and path is not None and path.parent.name in KINDS:
        kind = path.parent.name
    if kind not in KINDS:
        where = f" (from {path}: its directory is not one of them)" if kind is None and path else ""
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}{where}")
    return kind


def _set(data: dict, dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (missing mappings are created)."""
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"grid key {dotted!r} must be a dotted path like 'ga.population_size'")
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ValueError(
                f"grid key {dotted!r}: '{'.'.join(keys[: i + 1])}' is not a mapping in the config"
            )
        node = nxt
    node[keys[-1]] = copy.deepcopy(value)


def expand_grid(grid: Mapping[str, Sequence] | None) -> list[dict[str, Any]]:
    """The cartesian product of ``{"key.path": [v1, v2, …]}`` as a list of ``{"key.path": value}``
    (in the order of the keys, the last varying fastest); no grid → one empty override."""
    if not grid:
        return [{}]
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"grid[{key!r}] must be a list of values, got {values!r}")
        if not list(values):
            raise ValueError(f"grid[{key!r}] must hold at least one value")
    keys = list(grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(list(grid[k]) for k in keys))
    ]


def parse_grid(items: Iterable[str]) -> dict[str, list]:
    """CLI grid items ``KEY=V1,V2,…`` (values read as YAML: ``ga.population_size=50,100``,
    ``variants=[ga],[adaptive_ab]``) → ``{"KEY": [v1, v2, …]}``. Commas inside brackets do not split."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, rest = str(item).partition("=")
        if not sep or not key.strip() or not rest.strip():
            raise ValueError(f"--grid expects KEY=V1,V2,…, got {item!r}")
        parts, depth, cur = [], 0, ""
        for ch in rest:
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        grid[key.strip()] = [yaml.safe_load(p.strip()) for p in parts]
    return grid


def parse_options(items: Iterable[str], field: str = "--slurm") -> dict[str, Any]:
    """CLI items ``KEY=VALUE`` (values read as YAML) → ``{"KEY": value}``, e.g. ``--slurm partition=gpu
    --slurm gpus_per_node=8`` → ``{"partition": "gpu", "gpus_per_node": 8}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{field} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value.strip()) if value.strip() else ""
    return out


def _tag(overrides: Mapping[str, Any]) -> str:
    if not overrides:
        return ""
    text = "_".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items())
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "", text.replace("=", "-"))
    if len(text) > MAX_TAG:
        text = "g" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return text


def _digest(mapping: Mapping) -> str:
    blob = json.dumps(mapping, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclasses.dataclass
class SweepJob:
    """One configuration of a sweep."""

    name: str  # the experiment name the job runs under (its run directory / view)
    overrides: (
        dict  # {"key.path": value} applied to the base config (grid points with identical configs: the first)
    )
    config: dict  # the full config mapping
    digest: str  # of the config without its name: identical configurations share it
    status: str = (
        "pending"  # pending → submitted → done | failed; or skipped (done earlier), running (elsewhere)
    )
    run_dir: str | None = None
    job_id: str | None = None
    error: str | None = None
    seconds: float | None = None
    summary: dict | None = None


@dataclasses.dataclass
class SweepResult:
    name: str
    kind: str
    directory: Path  # <out>/sweeps/<name>
    jobs: list[SweepJob]
    markdown: str = ""

    @property
    def statuses(self) -> dict[str, str]:
        return {j.name: j.status for j in self.jobs}


# ----------------------------------------------------------------------------------------------
# state files: lock while running, marker when done


def _state_paths(out: Path, job_name: str) -> tuple[Path, Path]:
    state = out / "sweeps" / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    return state / f"{job_name}.lock", state / f"{job_name}.json"


@contextlib.contextmanager
def _locked(path: Path, block: bool):
    """An exclusive ``flock`` on ``path``; yields False (without waiting) when ``block`` is off and it is
    held elsewhere."""
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_marker(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# the job (runs in the submitit worker process)


def _experiment_module(kind: str):
    return importlib.import_module(f"es_lottery.experiments.{kind}")


def _num_tasks() -> int:
    """Processes of this submitit job (SLURM ``tasks_per_node × nodes``; 1 for local jobs)."""
    try:
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    except Exception:  # not inside a submitit job (run_job called directly)
        return 1


def run_job(kind: str, config: dict, out: str, job_name: str, digest: str, devices=None) -> dict:
    """What one sweep job does (module-level so that submitit can pickle it): set up devices, take the
    job's lock (waiting while another job holds it), skip if the work was done meanwhile, run the
    experiment, write the done marker. Returns the marker's content.

    With several processes (a multi-task SLURM job) every process initialises ``jax.distributed`` and runs
    the experiment on the global mesh; process 0 holds the lock and writes ``out``, the others write a
    private scratch copy (:func:`es_lottery.distributed.process_output_dir`).
    """
    from es_lottery import distributed

    multi = _num_tasks() > 1
    if devices is not None or multi:
        distributed.configure(devices=None if multi else devices)
    if multi:
        distributed.initialize()  # cluster auto-detection (SLURM)
        devices = "all"
    out_path = Path(out)
    lock, marker = _state_paths(out_path, job_name)
    primary = distributed.is_primary()
    t0 = time.time()
    with _locked(lock, block=True) if primary else contextlib.nullcontext(True):
        distributed.barrier(f"sweep-{job_name}-locked")  # every process decides after process 0 has the lock
        done = _read_marker(marker)
        if done is not None and done.get("digest") == digest and done.get("status") == "done":
            return done
        module = _experiment_module(kind)
        exp = module.parse_config(copy.deepcopy(config))
        target = distributed.process_output_dir(out_path) if multi else out_path
        from rich.console import Console

        console = Console(width=150) if primary else Console(file=io.StringIO())
        sharded = distributed.use_devices(devices) if devices is not None else contextlib.nullcontext()
        with sharded:
            run_dir = module.run_experiment(exp, out=target, console=console)
        result = {
            "status": "done",
            "job": job_name,
            "kind": kind,
            "digest": digest,
            "run_dir": str(run_dir),
            "seconds": time.time() - t0,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "devices": devices,
            "processes": distributed.process_count(),
        }
        if primary:
            _write_marker(marker, result)
        distributed.barrier(f"sweep-{job_name}-done")
    return result


# ----------------------------------------------------------------------------------------------
# executors


def _executor(kind: str, folder: Path, slurm: Mapping | None, timeout_min: int):
    try:
        import submitit
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "sweeps submit their jobs through submitit: pip install 'es_lottery[slurm]' "
            "(or pip install submitit)"
        ) from err
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=int(timeout_min))
        return ex
    params = dict(slurm or {})
    for key in params:
        if key not in SLURM_KEYS:
            raise ValueError(f"unknown key 'slurm.{key}'; allowed: {', '.join(SLURM_KEYS)}")
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    timeout = int(params.pop("timeout_min", timeout_min))
    generic = {
        k: params.pop(k)
        for k in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")
        if k in params
    }
    ex.update_parameters(timeout_min=timeout, **generic, **{f"slurm_{k}": v for k, v in params.items()})
    return ex


# ----------------------------------------------------------------------------------------------
# summary


def _headline(summary: Mapping | None) -> dict[str, float]:
    """``{"<job or method>.<metric>": value}`` for the test-score means and sparsity / density means of a
    run's ``summary.json`` (whatever the experiment kind calls its per-job table)."""
    if not isinstance(summary, Mapping):
        return {}
    out: dict[str, float] = {}
    wanted = re.compile(r"^(test_\w*_mean|sparsity_mean|density_mean|mean_test_\w+)$")
    for key, table in summary.items():
        if key in ("experiment", "config") or not isinstance(table, Mapping):
            continue
        for entry, values in table.items():
            if not isinstance(values, Mapping):
                continue
            for metric, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and wanted.match(str(metric)):
                    out[f"{entry}.{metric}"] = float(v)
    return out


def _markdown(result: SweepResult, base: str) -> str:
    lines = [
        f"# Sweep {result.name} ({result.kind}, {len(result.jobs)} configurations)",
        "",
        f"Base config: `{base}`; one row per configuration (run directories under the output directory).",
        "",
        "| job | overrides | status | run directory | headline numbers |",
        "|---|---|---|---|---|",
    ]
    for j in result.jobs:
        over = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in j.overrides.items()) or "–"
        nums = _headline(j.summary)
        head = "; ".join(f"{k} {v:.4g}" for k, v in list(nums.items())[:8]) or "–"
        status = j.status if not j.error else f"{j.status}: {j.error.splitlines()[-1][:120]}"
        lines.append(f"| {j.name} | {over} | {status} | {j.run_dir or '–'} | {head} |")
    return "\n".join(lines) + "\n"


def _collect(job: SweepJob, marker: Path) -> None:
    done = _read_marker(marker)
    if done is None or done.get("digest") != job.digest:
        return
    job.run_dir = done.get("run_dir")
    job.seconds = done.get("seconds")
    summary_path = Path(job.run_dir) / "summary.json" if job.run_dir else None
    if summary_path is not None and summary_path.is_file():
        try:
            job.summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            job.summary = None


# ----------------------------------------------------------------------------------------------
# the sweep


def sweep(
    config: str | Path | Mapping,
    grid: Mapping[str, Sequence] | None = None,
    *,
    kind: str | None = None,
    executor: str = "local",
    out: str | Path = "runs",
    name: str | None = None,
    seeds: int | None = None,
    devices: int | str | None = None,
    slurm: Mapping | None = None,
    timeout_min: int = 24 * 60,
    max_parallel: int | None = None,
    wait: bool = True,
    poll_seconds: float = 2.0,
) -> SweepResult:
    """Run ``config`` (a YAML path or a mapping) once per point of ``grid`` (``{"key.path": [values]}``,
    cartesian product) through submitit, and collect the results (see the module doc).

    ``kind``: ``slt``, ``imp`` or ``nets`` (default: the config file's directory, ``configs/<kind>/…``).
    ``executor``: ``"local"`` (subprocesses here, at most ``max_parallel`` at once, default 1) or
    ``"slurm"`` (``slurm``: partition, nodes, tasks_per_node, gpus_per_node, cpus_per_task, mem_gb,
    timeout_min, account, qos, constraint, exclusive, array_parallelism, setup, additional_parameters).
    ``seeds`` overrides every configuration's seed count; ``devices`` (int or ``"all"``) shards every job's
    populations (:mod:`es_lottery.distributed`); ``name`` names the sweep (default: the config's name).
    ``wait=False`` returns right after submitting (call again later: finished jobs are skipped and the
    summary is written). Returns a :class:`SweepResult`.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    base, path = _load_mapping(config)
    kind = _kind(kind, path)
    module = _experiment_module(kind)
    if seeds is not None:
        base["seeds"] = seeds
    base_name = str(base.get("name") or (path.stem if path else kind))
    name = name or base_name
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise ValueError(f"name must be a plain directory name (letters, digits, . _ + -), got {name!r}")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise ValueError(f"max_parallel must be a positive int, got {max_parallel!r}")
    out = Path(out)

    # every configuration, checked before anything is submitted; identical ones run once
    jobs: list[SweepJob] = []
    by_digest: dict[str, SweepJob] = {}
    for overrides in expand_grid(grid):
        cfg = copy.deepcopy(base)
        for key, value in overrides.items():
            _set(cfg, key, value)
        digest = _digest({k: v for k, v in cfg.items() if k != "name"})
        if digest in by_digest:
            continue
        tag = _tag(overrides)
        cfg["name"] = f"{base_name}-{tag}" if tag else base_name
        try:
            module.parse_config(copy.deepcopy(cfg))
        except (ValueError, TypeError) as err:
            where = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "the base config"
            cls = ValueError if isinstance(err, ValueError) else TypeError
            raise cls(f"sweep configuration {where}: {err}") from err
        job = SweepJob(name=cfg["name"], overrides=overrides, config=cfg, digest=digest)
        by_digest[digest] = job
        jobs.append(job)

    directory = out / "sweeps" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(
        json.dumps(
            {
                "name": name,
                "kind": kind,
                "base": str(path) if path else "mapping",
                "grid": {k: list(v) for k, v in (grid or {}).items()},
                "executor": executor,
                "devices": devices,
                "jobs": [{"name": j.name, "overrides": j.overrides, "digest": j.digest} for j in jobs],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )

    # skip finished jobs and jobs running elsewhere; submit the rest
    ex = _executor(executor, directory / "submitit", slurm, timeout_min)
    limit = max_parallel or (1 if executor == "local" else len(jobs))
    running: list[tuple[SweepJob, Any]] = []

    def reap(block: bool) -> None:
        while running and (block or any(h.done() for _, h in running)):
            for item in list(running):
                job, handle = item
                if handle.done():
                    running.remove(item)
                    try:
                        handle.result()
                        job.status = "done"
                    except Exception as err:  # the job's exception, re-raised by submitit
                        job.status, job.error = "failed", f"{type(err).__name__}: {err}"
            if running and block:
                time.sleep(poll_seconds)
            elif running:
                return

    for job in jobs:
        lock, marker = _state_paths(out, job.name)
        done = _read_marker(marker)
        if done is not None and done.get("digest") == job.digest and done.get("status") == "done":
            job.status = "skipped"
            continue
        with _locked(lock, block=False) as free:
            if not free:
                job.status = "running"  # another sweep's job holds this run directory
                continue
        while len(running) >= limit:
            reap(block=False)
            if len(running) >= limit:
                time.sleep(poll_seconds)
        handle = ex.submit(run_job, kind, job.config, str(out), job.name, job.digest, devices)
        job.status, job.job_id = "submitted", str(handle.job_id)
        running.append((job, handle))
        if not wait:
            continue
    if wait:
        reap(block=True)

    for job in jobs:
        _collect(job, _state_paths(out, job.name)[1])
    result = SweepResult(name=name, kind=kind, directory=directory, jobs=jobs)
    result.markdown = _markdown(result, str(path) if path else "mapping")
    (directory / "summary.md").write_text(result.markdown)
    (directory / "summary.json").write_text(
        json.dumps(
            {
                "name": name,
                "kind": kind,
                "jobs": [{**dataclasses.asdict(j), "headline": _headline(j.summary)} for j in jobs],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    return result

"""Old-layout run directories and archives, migrated into the run store (nothing computed is lost).

Before the store, every run was one directory ``<out>/<name>-<hash of the whole resolved config>`` holding
``config.yaml`` and, per experiment, ``results.jsonl`` / ``metrics.jsonl`` (slt, nets), ``tickets/`` (nets)
or ``seed_<s>/<criterion>/level_<k>/`` (imp). The strong-ticket results are also archived per seed in
``docs/results/slt/data/<name>.{run.json,results.jsonl,metrics.jsonl.gz}``. :func:`migrate` reads such a
directory (or archive), translates its config (``legacy.upgrade``; values that old configs left implicit
are made explicit: an ES field added later takes the value that reproduces the old behaviour,
``ESConfig.ADDED_FIELDS``; a config with baselines and no ``baseline_mode`` ran them as ``branch``; a nets
network without ``weight_init`` had its network's default) and writes every finished seed or level into the
store, under the job it belongs to — exactly where the current code would have written it.

* Files are hard-linked where the file system allows (copied otherwise): no extra space, and the old
  directory is left untouched (writers replace files by rename, never in place).
* Idempotent: what the store already holds is skipped, so migrating a directory that an old process is
  still writing into picks up the newly finished levels the next time; an unfinished level (no
  ``metrics.json``) is not carried over — its mid-level orbax checkpoint is not read, the level restarts.
* ``es-lottery slt|imp|nets`` migrate the old directories of their config's name automatically
  (:func:`migrate_matching`); ``es-lottery migrate [PATH …] [--out runs]`` does it explicitly.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from es_lottery.experiments.store import STORE
from es_lottery.treeio import read_json, read_jsonl, write_json, write_jsonl

OLD_DIR = re.compile(r"^(?P<name>.+)-(?P<hash>[0-9a-f]{10})$")
EDGE_POPUP_METHOD = re.compile(r"^edge_popup\[(?P<init>[a-z_]+)(?P<scaled>,scaled)?,k=(?P<k>[^,\]]+)\]$")

__all__ = ["find_old_runs", "kind_of", "migrate", "migrate_archive", "migrate_matching", "old_config"]


def kind_of(config: dict) -> str | None:
    """``slt``, ``imp`` or ``nets`` from the keys of an old config (None: not an experiment config)."""
    if "criteria" in config:
        return "imp"
    if "archs" in config or "variants" in config or "networks" in config:
        return "slt"
    if "methods" in config or "nets" in config or "final_training" in config:
        return "nets"
    return None


def find_old_runs(out: str | Path, name: str | None = None) -> list[Path]:
    """The old-layout run directories directly under ``out`` (of experiment ``name`` only, if given)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for p in sorted(out.iterdir()):
        m = OLD_DIR.match(p.name)
        if not (m and p.is_dir() and (p / "config.yaml").is_file()) or (p / "jobs.json").exists():
            continue
        if name is None or m.group("name") == name:
            found.append(p)
    return found


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _read_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def old_config(kind: str, resolved: dict, seeds: int | None = None):
    """The typed config of an old resolved config (``config.yaml`` of an old run directory)."""
    data = {k: v for k, v in resolved.items()}
    if seeds is not None:
        data["seeds"] = seeds
    if kind == "imp":
        from es_lottery.experiments import imp
        from es_lottery.search import es

        trainer = dict(data.get("trainer") or {})
        if trainer.get("type", "es") == "es":
            algorithm = trainer.get("algorithm", es.ESConfig.algorithm)
            for name, (neutral, algorithms) in es.ESConfig.ADDED_FIELDS.items():
                if name not in trainer and algorithm in algorithms:
                    trainer[name] = neutral
        data["trainer"] = trainer
        baselines = [c for c in data.get("criteria") or [] if c in imp.BASELINE_CRITERIA]
        if baselines and "baseline_mode" not in data:
            data["baseline_mode"] = "branch"  # the behaviour before the key existed
        return _quiet_load(imp.parse_config, data)
    if kind == "nets":
        from es_lottery.experiments import nets
        from es_lottery.experiments.common import default_init

        net = dict(data.get("network") or {})
        if "weight_init" not in net and "name" in net:
            net["weight_init"] = default_init(net["name"])
        data["network"] = net
        return _quiet_load(nets.parse_config, data)
    if kind == "slt":
        from es_lottery.experiments import slt

        return _quiet_load(slt.parse_config, data)
    raise ValueError(f"unknown experiment kind {kind!r}")


def _quiet_load(parse, data):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old spellings are expected here
        return parse(data)


# ----------------------------------------------------------------------------------------------
# per experiment


def _migrate_imp(run: Path, out: Path, config: dict) -> dict:
    from es_lottery.experiments import imp

    seeds = sorted(int(p.name[5:]) for p in run.glob("seed_*") if p.name[5:].isdigit())
    exp = old_config("imp", config, seeds=max(seeds, default=0) + 1)
    job = imp.trunk(exp, out).ensure()
    summary = run / "summary.json"
    if summary.exists() and not (job.path / "data.json").exists():
        data = read_json(summary).get("data")
        if data is not None:
            write_json(job.path / "data.json", data)
    dirs = imp.branch_dirs(exp)
    levels = skipped = 0
    for s in seeds:
        sdir = run / f"seed_{s}"
        if (sdir / "theta0.npz").exists():
            _link(sdir / "theta0.npz", job.path / sdir.name / "theta0.npz")
        for crit, new in dirs.items():
            cdir = sdir / crit
            if not cdir.is_dir():
                continue
            dst_c = job.path / sdir.name / new
            if not (dst_c / "branch.json").exists():
                write_json(dst_c / "branch.json", {"criterion": crit, "fields": imp.branch_fields(exp, crit)})
            for ldir in sorted(cdir.glob("level_*")):
                dst = dst_c / ldir.name
                if not (ldir / "metrics.json").is_file():
                    skipped += 1
                    continue
                if (dst / "metrics.json").is_file():
                    continue
                for f in sorted(ldir.iterdir()):
                    if f.is_file() and f.name != "metrics.json" and not f.name.startswith("."):
                        _link(f, dst / f.name)
                _link(ldir / "metrics.json", dst / "metrics.json")  # last: the "finished" marker
                levels += 1
    return {"experiment": "imp", "store": job.relpath, "levels": levels, "unfinished_levels": skipped}


def _slt_spec(method: str):
    from es_lottery.experiments import slt

    m = EDGE_POPUP_METHOD.match(method)
    if m is None:
        return None
    k = m.group("k")
    kept = k if k in slt.MATCHED else float(k)
    return slt.EdgePopupJob(
        weight_init=m.group("init"), kept_fraction=kept, scale_init=bool(m.group("scaled"))
    )


def migrate_slt_rows(config: dict, results: list[dict], metrics: list[dict], out: Path) -> dict:
    """Per-seed rows of an old strong-ticket run (or archive) into the store."""
    from es_lottery.experiments import slt

    exp = old_config("slt", config)
    extra_specs = []
    planned = {j.name for j in slt.plan(exp, out)}
    for method in sorted({r["method"] for r in results if r["job"] not in planned}):
        spec = _slt_spec(method)
        if spec is not None and spec not in exp.edge_popup:
            extra_specs.append(spec)
    jobs = {j.name: j for j in slt.plan(exp.replace(edge_popup=(*exp.edge_popup, *extra_specs)), out)}
    for j in list(jobs.values()):  # the old names left non-default epochs and batch sizes out
        if j.kind == "edge_popup":
            scaled = ",scaled" if j.spec.scale_init else ""
            jobs.setdefault(f"{j.label}/edge_popup[{j.spec.weight_init}{scaled},k={j.spec.kept_fraction}]", j)
    by_seed: dict[tuple[str, int], list[dict]] = {}
    for r in metrics:
        by_seed.setdefault((r["job"], int(r["seed"])), []).append(r)
    added = unknown = 0
    for r in results:
        job = jobs.get(r["job"])
        if job is None:
            unknown += 1
            continue
        s = int(r["seed"])
        if job.branch.done(s):
            continue
        result = {k: v for k, v in r.items() if k not in ("job", "arch", "method", "classes")}
        rows = None
        if job.kind == "ga":
            rows = sorted(by_seed.get((r["job"], s), []), key=lambda m: m["generation"])
            rows = [{k: v for k, v in m.items() if k not in ("job", "seed")} for m in rows]
        job.branch.finish_seed(s, result, rows)
        added += 1
    return {"experiment": "slt", "results": added, "rows_without_a_job": unknown}


def _migrate_slt(run: Path, out: Path, config: dict) -> dict:
    return migrate_slt_rows(config, read_jsonl(run / "results.jsonl"), read_jsonl(run / "metrics.jsonl"), out)


def _migrate_nets(run: Path, out: Path, config: dict) -> dict:
    from es_lottery.experiments import nets

    exp = old_config("nets", config)
    where = nets.branches(exp, out)
    trunk = nets.trunk(exp, out)
    summary = run / "summary.json"
    if summary.exists() and not (trunk.path / "data.json").exists():
        data = read_json(summary).get("data")
        if data:
            write_json(trunk.ensure().path / "data.json", data)
    metrics: dict[tuple[str, int], list[dict]] = {}
    for r in read_jsonl(run / "metrics.jsonl"):
        metrics.setdefault((r["job"], int(r["seed"])), []).append(
            {k: v for k, v in r.items() if k not in ("job", "seed")}
        )
    added = 0
    for r in read_jsonl(run / "results.jsonl"):
        m, s = r["method"], int(r["seed"])
        if m not in where or where[m].done(s):
            continue
        if m == "nets":
            ticket = run / "tickets" / f"nets_seed{s}.npz"
            if ticket.exists():
                where[m].ensure()
                _link(ticket, where[m].seed(s) / "ticket.npz")
        rows = metrics.get((m, s)) if m in ("nets", "imp") else None
        where[m].finish_seed(s, {k: v for k, v in r.items() if k not in ("job", "method")}, rows)
        added += 1
    return {"experiment": "nets", "results": added}


def migrate(run: str | Path, out: str | Path) -> dict:
    """Migrate one old-layout run directory into ``out``'s store; returns what was added."""
    run = Path(run)
    config = _read_config(run / "config.yaml")
    kind = kind_of(config)
    if kind is None:
        raise ValueError(f"{run}/config.yaml is not an slt, imp or nets config")
    fn = {"imp": _migrate_imp, "slt": _migrate_slt, "nets": _migrate_nets}[kind]
    report = fn(run, Path(out), config)
    _record(out, run, report)
    return report


def migrate_archive(run_json: str | Path, out: str | Path) -> dict:
    """Migrate a committed strong-ticket archive (``<name>.run.json`` with its ``.results.jsonl`` and
    ``.metrics.jsonl.gz``) into ``out``'s store."""
    run_json = Path(run_json)
    stem = run_json.name.removesuffix(".run.json")
    meta = read_json(run_json)
    if meta.get("config") is None:
        raise ValueError(f"{run_json} holds no config; it cannot be placed in the store")
    results = read_jsonl(run_json.with_name(f"{stem}.results.jsonl"))
    mpath = run_json.with_name(f"{stem}.metrics.jsonl.gz")
    metrics = []
    if mpath.exists():
        with gzip.open(mpath, "rt") as fh:
            metrics = [json.loads(line) for line in fh if line.strip()]
    report = migrate_slt_rows(meta["config"], results, metrics, Path(out))
    _record(out, run_json, report)
    return report


def _record(out: str | Path, source: Path, report: dict) -> None:
    path = Path(out) / STORE / "migrated.jsonl"
    rows = [r for r in read_jsonl(path) if r.get("source") != str(source)]
    write_jsonl(path, [*rows, {"source": str(source), **report}])


def migrate_matching(
    out: str | Path, name: str, experiment: str, console: Console | None = None
) -> list[dict]:
    """Migrate the old-layout directories ``<out>/<name>-<hash>`` of ``experiment`` (what ``es-lottery
    slt|imp|nets`` call before running a config); a line per directory that added something."""
    reports = []
    for run in find_old_runs(out, name):
        if kind_of(_read_config(run / "config.yaml")) != experiment:
            continue
        report = migrate(run, out)
        reports.append(report)
        added = report.get("levels", report.get("results", 0))
        if added and console is not None:
            console.print(f"  migrated {added} finished result(s) of the old-layout {run} into the store")
    return reports


def migrate_paths(paths: Iterable[str | Path], out: str | Path, console: Console) -> list[dict]:
    """``es-lottery migrate``: old run directories, archives (``*.run.json``) or folders holding them."""
    reports = []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(".run.json"):
            items = [p]
        elif p.is_dir() and (p / "config.yaml").is_file():
            items = [p]
        elif p.is_dir():
            items = sorted(p.glob("*.run.json")) + find_old_runs(p)
        else:
            raise FileNotFoundError(
                f"{p}: not an old run directory, an archive (*.run.json) or a folder of them"
            )
        for item in items:
            report = migrate_archive(item, out) if item.is_file() else migrate(item, out)
            console.print(f"{item}: {json.dumps(report)}")
            reports.append(report)
    return reports

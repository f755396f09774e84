"""Committed per-seed archives of experiment results (``docs/results/<experiment>/data/``).

An archive keeps, for one config name, every per-seed result row and metrics row a page is built from,
so a page rebuilds on a machine without the run store, and later sessions add to it:
``<name>.run.json`` (the config and ``jobs``: job name → its directory in the store),
``<name>.results.jsonl`` and ``<name>.metrics.jsonl.gz`` (gzip with mtime 0: unchanged rows, unchanged
bytes). :func:`merge` adds a store's rows: the store's win, and the rows of a job whose store directory
changed (its settings changed) are dropped, not mixed with the new ones. ``es-lottery migrate <data dir>``
writes an archive back into a store (``legacy_runs.migrate_archive``).
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "budget_table",
    "from_store",
    "merge",
    "merge_levels",
    "read",
    "read_jsonl",
    "read_levels",
    "write_jsonl",
]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime 0: unchanged data, unchanged bytes
            f.write(body.encode())
    else:
        tmp.write_text(body)
    tmp.replace(path)


def _paths(data: Path, name: str) -> tuple[Path, Path, Path]:
    return data / f"{name}.run.json", data / f"{name}.results.jsonl", data / f"{name}.metrics.jsonl.gz"


def read(data: Path, name: str) -> tuple[dict | None, list[dict], list[dict]]:
    """(run.json or None, result rows, metrics rows) of the archive of ``name`` in ``data``."""
    meta_path, res_path, met_path = _paths(data, name)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    return meta, read_jsonl(res_path), read_jsonl(met_path)


def merge(
    data: Path,
    name: str,
    config: dict,
    jobs: dict[str, str],
    rows: list[dict],
    metrics: list[dict],
    archived_jobs: dict[str, str] | None = None,
    metric_key: str | tuple[str, ...] = "generation",
    extra: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """The archive of ``name`` with the store's ``rows`` / ``metrics`` of ``jobs`` (job → store directory)
    merged in; written back when anything changed. ``archived_jobs``: the store directories of the archived
    rows when ``run.json`` does not record them (an archive from before the store). ``metric_key``: the
    field(s) that order a job's metrics rows within a seed (the first one a row has). ``extra``: more
    entries for ``run.json`` (e.g. the data sizes)."""
    keys = (metric_key,) if isinstance(metric_key, str) else tuple(metric_key)

    def step(r: dict):
        return next(r[k] for k in keys if k in r)

    meta, old_rows, old_metrics = read(data, name)
    before = (old_rows, old_metrics, meta)
    archived = (meta or {}).get("jobs") or archived_jobs or {}
    stale = {j for j, d in archived.items() if j in jobs and jobs[j] != d}
    keep = [r for r in old_rows if r["job"] not in stale]
    keep_m = [r for r in old_metrics if r["job"] not in stale]
    merged = {(r["job"], r["seed"]): r for r in keep}
    merged.update({(r["job"], r["seed"]): r for r in rows})
    merged_m = {(r["job"], r["seed"], step(r)): r for r in keep_m}
    merged_m.update({(r["job"], r["seed"], step(r)): r for r in metrics})
    out_rows = sorted(merged.values(), key=lambda r: (r["job"], r["seed"]))
    out_metrics = sorted(merged_m.values(), key=lambda r: (r["job"], r["seed"], step(r)))
    new_meta = {
        "config": config,
        "jobs": {**{j: d for j, d in archived.items() if j not in jobs}, **jobs},
        **(extra or {}),
    }
    if (out_rows, out_metrics, new_meta) != before:
        if stale:
            print(f"{name}: archived rows of {', '.join(sorted(stale))} replaced (their settings changed)")
        meta_path, res_path, met_path = _paths(data, name)
        data.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(new_meta, indent=1) + "\n")
        write_jsonl(res_path, out_rows)
        write_jsonl(met_path, out_metrics)
    return out_rows, out_metrics


def from_store(
    runs: Path | None,
    name: str,
    experiment: str,
    config: Path | str | None,
    load: Callable,
    collect: Callable,
) -> tuple[Any, list[dict], list[dict], dict[str, str]] | None:
    """``(config, rows, metrics rows, jobs)`` of the config at ``config`` in the run store ``runs`` (its
    old-layout run directories migrated first), or ``None`` when there is no store, no config or no
    finished row. ``load(path)`` reads the config, ``collect(config, runs)`` its rows."""
    from es_lottery.experiments import legacy_runs

    if runs is None or config is None or not Path(runs).exists() or not Path(config).exists():
        return None
    legacy_runs.migrate_matching(runs, name, experiment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # an old config spelling is the config's business
        exp = load(config)
    rows, metrics, jobs = collect(exp, runs)
    return (exp, rows, metrics, jobs) if rows else None


# ----------------------------------------------------------------------------------------------
# per-level archives of pruning runs (``<name>.levels.jsonl.gz`` + ``<name>.run.json``)

LEVELS_FILE = "{name}.levels.jsonl.gz"
RUN_FILE = "{name}.run.json"


def merge_levels(data: Path, name: str, config: dict, rows: list[dict], jobs: dict[str, str]) -> list[dict]:
    """The archived level rows of the pruning config ``name`` (one per criterion × seed × level) with the
    store's ``rows`` merged in — the store's win, archived rows the store no longer has are kept, and a
    criterion whose store directory differs from the archived one (its settings changed) has its archived
    rows dropped; written back only when anything changed (same rows, same bytes). ``jobs``: criterion →
    its store directory (below the store's root)."""
    run_path = data / RUN_FILE.format(name=name)
    lev_path = data / LEVELS_FILE.format(name=name)
    meta = json.loads(run_path.read_text()) if run_path.exists() else {}
    old = read_jsonl(lev_path)
    archived = meta.get("jobs", {})
    stale = {c for c, d in archived.items() if c in jobs and jobs[c] != d}

    def key(r: dict):
        return r["criterion"], r["seed"], r["level"]

    merged = {key(r): r for r in old if r["criterion"] not in stale}
    merged.update({key(r): r for r in rows})
    out = sorted(merged.values(), key=key)
    new_meta = {"config": config, "jobs": {**archived, **jobs}}
    if out != old or new_meta != meta:
        if stale:
            print(f"{name}: archived rows of {', '.join(sorted(stale))} replaced (their settings changed)")
        data.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(new_meta, indent=1, sort_keys=True) + "\n")
        write_jsonl(lev_path, out)
    return out


def read_levels(data: Path, name: str) -> tuple[dict | None, list[dict]]:
    """(``run.json`` or None, the level rows) of the per-level archive of ``name`` in ``data``."""
    run_path = data / RUN_FILE.format(name=name)
    meta = json.loads(run_path.read_text()) if run_path.exists() else None
    return meta, read_jsonl(data / LEVELS_FILE.format(name=name))


def budget_table(data: Path, names: list[str], score: str = "return") -> list[str]:
    """The rows of ``scripts/es_budget.py`` (stored levels retrained at other ES budgets); ``score``:
    ``return`` (control) or ``accuracy`` (classification)."""
    out = []
    fmt = (lambda v: f"{v:.1f}") if score == "return" else (lambda v: f"{v:.4f}")
    for name in names:
        rows = read_jsonl(data / f"{name}.budget.jsonl")
        if not rows:
            continue
        out += [
            f"Budget check (`python scripts/es_budget.py configs/imp/{name}.yaml`): "
            "stored levels of the run retrained from exactly their mask, start and training key at other "
            f"ES budgets (population × generations; the config's own budget must give the stored {score}).",
            "",
            "| criterion | seed | level | density | population × generations "
            f"| test {score} | stored {score} | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(
            rows,
            key=lambda r: (r["criterion"], r["seed"], r["level"], r["population_size"], r["num_generations"]),
        ):
            out.append(
                f"| {r['criterion']} | {r['seed']} | {r['level']} | {r['density']:.2%} | "
                f"{r['population_size']} × {r['num_generations']} | {fmt(r[f'test_{score}'])} | "
                f"{fmt(r[f'stored_test_{score}'])} | {r['seconds']:.0f} |"
            )
        out.append("")
    return out

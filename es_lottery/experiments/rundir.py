"""Run directories, typed configs from YAML, and JSON-lines logs shared by all experiments.

A run directory is ``<out>/<name>-<hash>``, the hash taken over the resolved config (open_lth style), so a
re-run of the same config finds its finished jobs and skips them. It holds ``config.yaml`` (resolved),
``results.jsonl`` (one line per finished job and seed), ``metrics.jsonl`` (per-generation rows),
``summary.json`` and ``plots/``; while a long job runs, ``checkpoints/`` holds its latest state
(:func:`save_tree` / :func:`load_tree`), so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def check_keys(data: dict, allowed: tuple[str, ...] | list[str], where: str) -> None:
    """``ValueError`` naming the first key of ``data`` that is not in ``allowed``."""
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown key '{where}.{key}'; allowed: {', '.join(allowed)}")


def require_fields(data: dict, fields: tuple[str, ...] | list[str], where: str) -> None:
    """``ValueError`` naming the first of ``fields`` missing from the ``where`` config."""
    for name in fields:
        if name not in data:
            raise ValueError(f"{where} config needs the field '{name}'")


def check_dataset(name: Any) -> str:
    """The ``dataset`` field: one of ``tasks.classification.DATASETS`` (checked without loading)."""
    from es_lottery.tasks import classification

    if name not in classification.DATASETS:
        raise ValueError(
            f"unknown dataset {name!r} in field 'dataset'; allowed: {', '.join(classification.DATASETS)}"
        )
    return name


def from_dict(cls, data: dict | None, where: str):
    """Build the frozen dataclass ``cls`` from ``data``, rejecting keys it does not have."""
    data = dict(data or {})
    check_keys(data, [f.name for f in dataclasses.fields(cls)], where)
    try:
        return cls(**data)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}.{err}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping at the top level")
    return data


def config_hash(resolved: dict) -> str:
    blob = json.dumps(resolved, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def to_jsonable(value: Any) -> Any:
    """NumPy / JAX scalars and arrays → plain Python (NaN → None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else value
    return value


class RunDir:
    """A run directory keyed by the config hash."""

    def __init__(self, out: str | Path, name: str, resolved: dict):
        self.resolved = resolved
        self.hash = config_hash(resolved)
        self.path = Path(out) / f"{name}-{self.hash}"
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)
        with (self.path / "config.yaml").open("w") as fh:
            yaml.safe_dump(resolved, fh, sort_keys=False)

    def append(self, filename: str, rows: list[dict]) -> None:
        with (self.path / filename).open("a") as fh:
            for row in rows:
                fh.write(json.dumps(to_jsonable(row)) + "\n")

    def read(self, filename: str) -> list[dict]:
        path = self.path / filename
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: ignore it
                    continue
        return rows

    def write_json(self, filename: str, data: Any) -> None:
        (self.path / filename).write_text(json.dumps(to_jsonable(data), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# array checkpoints of a pytree


def save_tree(path: str | Path, tree: Any, meta: dict | None = None) -> None:
    """Write the leaves of ``tree`` (host copies) and a JSON ``meta`` dict to ``path`` (``.npz``).

    The file is written next to its target and renamed into place, so a kill mid-write leaves the
    previous checkpoint intact.
    """
    import jax

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
    arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["meta"] = np.asarray(json.dumps(to_jsonable(meta or {})))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load_tree(path: str | Path, template: Any) -> tuple[Any, dict]:
    """(tree, meta) from a :func:`save_tree` file; ``template`` gives the structure, shapes and dtypes.

    A file whose leaves do not fit the template (another code version or configuration) raises a
    ``ValueError`` that names the file, so a stale checkpoint is never resumed silently.
    """
    import jax
    import jax.numpy as jnp

    path = Path(path)
    t_leaves, treedef = jax.tree_util.tree_flatten(template)
    with np.load(path, allow_pickle=False) as data:
        names = sorted(k for k in data.files if k.startswith("leaf_"))
        if len(names) != len(t_leaves):
            raise ValueError(
                f"checkpoint {path} holds {len(names)} arrays, this run's state has {len(t_leaves)}; "
                "it was written by another version or configuration — delete it to start the job afresh"
            )
        leaves = []
        for i, (name, t) in enumerate(zip(names, t_leaves, strict=True)):
            x = data[name]
            if x.shape != np.shape(t) or x.dtype != np.asarray(t).dtype:
                raise ValueError(
                    f"checkpoint {path}: array {i} is {x.dtype}{list(x.shape)}, this run expects "
                    f"{np.asarray(t).dtype}{list(np.shape(t))} — delete it to start the job afresh"
                )
            leaves.append(jnp.asarray(x))
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    return jax.tree_util.tree_unflatten(treedef, leaves), meta

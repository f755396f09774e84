"""Pytrees and named arrays to files: the one array format of the package (NumPy ``.npz``).

Results, per-level arrays and checkpoints are all written here: one ``.npz`` per file, one array per pytree
leaf named by its tree path (``dense_0/kernel``, ``es_state/mean``), plus an optional JSON mapping under
``__meta__``. Why ``.npz`` (and not orbax): it is exact in dtype and bits, readable with NumPy alone (the
analysis layer and any script need neither JAX nor this package to open a result), small for the states
here (kilobytes to a few megabytes), and one file per state is written to a temporary name and renamed
into place — a kill mid-write leaves the previous file whole. Reading back checks names, shapes and dtypes
against a template, so a file from another version or configuration is never used silently.

This module sits at the bottom of the package (NumPy, JAX and ``masks.path_name`` only): the trainers'
checkpoints (``pruning``), the analysis readers and the run store (``experiments.store``) share it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

META = "__meta__"

__all__ = [
    "META",
    "DamagedFile",
    "atomic_write",
    "load_arrays",
    "load_tree",
    "nested",
    "read_json",
    "read_jsonl",
    "save_arrays",
    "save_tree",
    "to_jsonable",
    "tree_arrays",
    "tree_from_arrays",
    "write_json",
    "write_jsonl",
]


# ----------------------------------------------------------------------------------------------
# JSON


def to_jsonable(value: Any) -> Any:
    """NumPy / JAX scalars and arrays → plain Python (NaN → None)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else value
    return value


class DamagedFile(ValueError):
    """A file that exists but cannot be read back (truncated, empty, overwritten); ``path`` names it."""

    def __init__(self, path: str | Path, err: BaseException):
        self.path = Path(path)
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        super().__init__(f"{self.path} is damaged or truncated ({detail})")


def _temporary(path: Path, mode: str):
    """A new file next to ``path`` under a name no other writer uses (pid and random suffix), opened for
    writing; created with ``O_EXCL`` and the usual permissions (0o666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, mode)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same directory and rename it into place.

    The temporary name is unique to this call, so concurrent writers of one path never share it (the last
    rename wins and every reader sees one whole file); an error or an interrupt mid-write removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fh = _temporary(path, mode)
    try:
        with fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    text = json.dumps(to_jsonable(data), indent=2) + "\n"
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def read_json(path: str | Path) -> Any:
    """The JSON value of ``path``; a file that does not parse raises :class:`DamagedFile` naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as err:
        raise DamagedFile(path, err) from None


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows)
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (none if it is absent; a line cut by a kill is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# ----------------------------------------------------------------------------------------------
# arrays


def save_arrays(path: str | Path, arrays: Mapping[str, Any], meta: Mapping | None = None) -> None:
    """Named arrays (and a JSON ``meta`` mapping) to ``path`` (``.npz``), atomically."""
    data = {k: np.asarray(v) for k, v in arrays.items()}
    if META in data:
        raise ValueError(f"{META!r} is reserved for the metadata")
    if meta is not None:
        data[META] = np.asarray(json.dumps(to_jsonable(meta)))
    atomic_write(path, lambda fh: np.savez(fh, **data))


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a :func:`save_arrays` file; one that exists but does not read back (truncated,
    empty, random bytes) raises :class:`DamagedFile` naming it."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array, not one of ours
            raise ValueError("not an .npz archive")
        with data:
            arrays = {k: data[k] for k in data.files if k != META}
            meta = json.loads(str(data[META])) if META in data.files else {}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise DamagedFile(path, err) from None
    if not isinstance(meta, dict):
        raise DamagedFile(path, ValueError("its metadata is not a mapping"))
    return arrays, meta


def _path_name(path) -> str:
    from es_lottery.masks import path_name

    return path_name(path)


def nested(arrays: Mapping[str, np.ndarray]) -> dict:
    """Arrays named ``a/b/c`` as nested dicts ``{"a": {"b": {"c": …}}}`` (a tree of dicts saved with
    :func:`save_tree`, read back without a template)."""
    out: dict = {}
    for name, x in arrays.items():
        *parents, leaf = name.split("/")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = x
    return out


def tree_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The leaves of ``tree`` as host arrays keyed by their tree path (``dense_0/kernel``)."""
    import jax

    out = {}
    for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(tree)):
        name = _path_name(p)
        if name in out:
            raise ValueError(f"two leaves share the path name {name!r}")
        out[name] = np.asarray(x)
    return out


def save_tree(path: str | Path, tree: Any, meta: Mapping | None = None) -> None:
    """A pytree's leaves by tree path (and ``meta``) to ``path`` (``.npz``), atomically."""
    save_arrays(path, tree_arrays(tree), meta)


def tree_from_arrays(
    arrays: Mapping[str, np.ndarray], like: Any, where: str = "", *, device: bool = True
) -> Any:
    """A pytree shaped like ``like`` from arrays named by tree path (``prefix``-free names); a missing
    array, or one of another shape or dtype, raises a ``ValueError`` naming ``where`` and the array."""
    import jax

    leaves = []
    for p, t in jax.tree_util.tree_leaves_with_path(like):
        name = _path_name(p)
        if name not in arrays:
            raise ValueError(
                f"{where} lacks the array {name!r} (written by another version or configuration?)"
            )
        x = arrays[name]
        dtype = np.dtype(t.dtype) if hasattr(t, "dtype") else np.asarray(t).dtype
        if tuple(x.shape) != tuple(np.shape(t)) or x.dtype != dtype:
            raise ValueError(
                f"{where}: array {name!r} is {x.dtype}{list(x.shape)}, expected {dtype}{list(np.shape(t))} "
                "(written by another version or configuration?)"
            )
        leaves.append(jax.numpy.asarray(x) if device else x)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def load_tree(path: str | Path, like: Any, *, device: bool = True) -> tuple[Any, dict]:
    """(tree, meta) of a :func:`save_tree` file; ``like`` gives the structure, names, shapes and dtypes."""
    arrays, meta = load_arrays(path)
    return tree_from_arrays(arrays, like, str(path), device=device), meta

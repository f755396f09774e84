"""Finished ES-IMP runs as in-memory data: read a run directory, write / read a compact archive.

Run directory: the view ``<out>/<name>/`` that ``es-lottery imp`` writes (``config.yaml``, ``summary.json``,
``jobs.json``, whose ``data`` entry points at the run's directory in the run store), or an old-layout run
directory ``<out>/<name>-<hash>/`` that holds its seeds itself. Below the seeds' directory (the layout of
``experiments/imp.py``'s module doc; a baseline's directory is named by ``jobs.json``'s ``branches``)::

    seed_<s>/theta0.npz                          θ₀ of the seed, unmasked
    seed_<s>/<criterion>/level_<k>/
        mask.npz          prunable entries bit-packed (masks.pack) + kept / total
        theta0.npz        the level's start θ₀ ⊙ m_k (baselines: their control init)
        final_params.npz  trained params (ES: the final search mean)
        std.npz           ES only: per-weight std of the search distribution
        curves.npz        eval / per-generation curves
        metrics.json      the level's row (seed, criterion, level, density, test_accuracy, …)

:func:`load_run` reads every seed × criterion × level the config asks for (``config.yaml``'s
``criteria`` and ``imp.num_levels``; seeds from ``summary.json``, else the ``seed_<s>`` directories present)
into a :class:`RunData` of NumPy pytrees shaped like the config's network. Anything missing or not fitting
(a file, an array, a shape, a mask count, a ``metrics.json`` that names another level) is collected, and
ONE :class:`RunDirectoryError` lists every problem by seed / criterion / level / file. Files are read with
NumPy alone (this layer does not import ``experiments``); arrays are keyed by params-tree path names
(``dense_0/kernel``), masks unpacked with ``masks.unpack``. ``next_mask.npz`` (a resume aid, equal to the
next level's mask) and ``checkpoint/`` are not read.

Archive (:func:`write_archive` / :func:`load_archive`): two files small enough to commit (like
``docs/results/slt/data/``) from which analysis documents rebuild on a fresh clone — ``<name>.json``
(config, summary, every level's metrics, how each array is stored) and ``<name>.npz``
(``numpy.savez_compressed``). Storage is EXACT (bitwise): masks are bit-packed over all entries;
params, θ₀ and std stay float32; a tree that is exactly zero (bitwise +0.0) wherever the mask prunes is
stored as its surviving entries only; a level θ₀ that equals the seed's θ₀ ⊙ m bit for bit (every IMP
level) is stored as that reference; curves keep their dtypes. ``load_archive(write_archive(load_run(d)))``
equals ``load_run(d)`` array for array.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from es_lottery import masks as masks_lib
from es_lottery import networks

PyTree = Any

LEVEL_FILES = ("mask.npz", "theta0.npz", "final_params.npz", "curves.npz", "metrics.json")
ES_LEVEL_FILES = ("std.npz",)
ARCHIVE_FORMAT = "es_lottery.analysis.run_archive"
ARCHIVE_VERSION = 1
MAX_LISTED_PROBLEMS = 40

__all__ = [
    "ARCHIVE_FORMAT",
    "LevelData",
    "RunData",
    "RunDirectoryError",
    "load_archive",
    "load_run",
    "params_like",
    "write_archive",
]


class RunDirectoryError(ValueError):
    """A run directory (or archive) that is incomplete or does not fit its config; ``problems`` lists
    every missing / mismatched item as ``"seed_<s>/<criterion>/level_<k>/<file>: what"``."""

    def __init__(self, path: Path | str, problems: Sequence[str]):
        self.path = Path(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown) + (f"\n  … and {more} more" if more > 0 else "")
        super().__init__(
            f"run directory {self.path} is incomplete or mismatched ({len(self.problems)}):\n{lines}"
        )


@dataclass(frozen=True, eq=False)
class LevelData:
    """One finished level of one seed and criterion (NumPy pytrees; ``std`` is ``None`` for GD)."""

    seed: int
    criterion: str
    level: int
    mask: PyTree
    theta0: PyTree
    final_params: PyTree
    std: PyTree | None
    metrics: dict
    curves: dict[str, np.ndarray]

    @property
    def kept(self) -> int:
        return int(self.metrics["kept"])

    @property
    def total(self) -> int:
        return int(self.metrics["total"])

    @property
    def density(self) -> float:
        """Kept / total prunable weights."""
        return self.kept / self.total

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test_accuracy")


@dataclass(frozen=True, eq=False)
class RunData:
    """A run's per-level data: ``levels[(seed, criterion, level)]`` and the seeds' unmasked ``theta0``."""

    name: str
    config: dict
    summary: dict | None
    seeds: tuple[int, ...]
    criteria: tuple[str, ...]
    level_ids: tuple[int, ...]
    theta0: dict[int, PyTree]
    levels: dict[tuple[int, str, int], LevelData] = field(repr=False)

    def level(self, seed: int, criterion: str, level: int) -> LevelData:
        try:
            return self.levels[(seed, criterion, level)]
        except KeyError:
            raise KeyError(
                f"no level ({seed=}, {criterion=}, {level=}); seeds {list(self.seeds)}, criteria "
                f"{list(self.criteria)}, levels {list(self.level_ids)}"
            ) from None

    def series(self, seed: int, criterion: str) -> list[LevelData]:
        """The levels of one seed and criterion, in level order."""
        return [self.level(seed, criterion, k) for k in self.level_ids]

    def metric(self, criterion: str, name: str = "test_accuracy") -> np.ndarray:
        """``(seeds, levels)`` float array of one ``metrics.json`` entry (None → NaN)."""
        return np.asarray(
            [
                [
                    np.nan if (v := self.level(s, criterion, k).metrics.get(name)) is None else v
                    for k in self.level_ids
                ]
                for s in self.seeds
            ],
            np.float64,
        )

    def densities(self, criterion: str) -> np.ndarray:
        """``(seeds, levels)`` kept / total prunable weights."""
        return np.asarray([[lv.density for lv in self.series(s, criterion)] for s in self.seeds])

    @property
    def score(self) -> str:
        """The name of a level's score in ``metrics.json``: ``test_accuracy`` (classification) or
        ``test_return`` (control: a config with an ``env`` section)."""
        return "test_return" if self.config.get("env") is not None else "test_accuracy"

    @property
    def trainer_type(self) -> str:
        return str(self.config.get("trainer", {}).get("type", "es"))

    def module(self):
        """The flax module of the config's network (for evaluating the stored params)."""
        return _module(self.config)


# ----------------------------------------------------------------------------------------------
# the params structure of a config


MLP_ONLY = ("sizes", "hidden_activation", "output_activation")


def _module(config: dict):
    if config.get("env") is not None:  # a control run: the policy network of its env section
        from es_lottery.tasks import control

        return control.control_task_from_config(config["env"]).module
    spec = {k: v for k, v in (config.get("network") or {}).items() if v is not None}
    name = spec.pop("name", None)
    if name is None:
        raise ValueError("the run's config has no 'network.name'")
    if name != "mlp":
        spec = {k: v for k, v in spec.items() if k not in MLP_ONLY}
    if "sizes" in spec:
        spec["sizes"] = tuple(spec["sizes"])
    return networks.make_network(name, **spec)


def params_like(config: dict) -> PyTree:
    """ShapeDtypeStructs of the params of the config's network (no weights are drawn)."""
    module = _module(config)
    return jax.eval_shape(lambda: networks.init_params(jax.random.key(0), module))


def _names(like: PyTree) -> list[str]:
    return [masks_lib.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(like)]


def _unflatten(like: PyTree, leaves: list) -> PyTree:
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def _leaves(tree: PyTree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# ----------------------------------------------------------------------------------------------
# reading a run directory


def _read_tree(path: Path, like: PyTree, where: str, problems: list[str]) -> PyTree | None:
    try:
        with np.load(path) as data:
            leaves, ok = [], True
            for name, spec in zip(_names(like), jax.tree_util.tree_leaves(like), strict=True):
                if name not in data.files:
                    problems.append(f"{where}: lacks the array {name!r}")
                    ok = False
                    continue
                arr = data[name]
                if arr.shape != tuple(spec.shape):
                    problems.append(
                        f"{where}: {name!r} has shape {arr.shape}, "
                        f"the config's network needs {tuple(spec.shape)}"
                    )
                    ok = False
                leaves.append(arr)
    except (OSError, ValueError) as err:
        problems.append(f"{where}: unreadable ({type(err).__name__}: {err})")
        return None
    return _unflatten(like, leaves) if ok else None


def _read_mask(path: Path, like: PyTree, where: str, problems: list[str]) -> PyTree | None:
    try:
        with np.load(path) as data:
            packed, kept, total = data["packed"], int(data["kept"]), int(data["total"])
    except (OSError, ValueError, KeyError) as err:
        problems.append(f"{where}: unreadable ({type(err).__name__}: {err})")
        return None
    n = masks_lib.count(masks_lib.ones(like))[1]
    if total != n or packed.size != -(-n // 8):
        problems.append(f"{where}: holds {total} prunable weights, the config's network has {n}")
        return None
    mask = jax.tree_util.tree_map(np.asarray, masks_lib.unpack(packed, like))
    got = masks_lib.count(mask)[0]
    if int(got) != kept:
        problems.append(f"{where}: the packed mask keeps {int(got)}, the file says {kept}")
        return None
    return mask


def _read_curves(path: Path, where: str, problems: list[str]) -> dict | None:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        problems.append(f"{where}: unreadable ({type(err).__name__}: {err})")
        return None


def _read_json(path: Path, where: str, problems: list[str]) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"{where}: unreadable ({type(err).__name__}: {err})")
        return None


def _select(requested, available: Sequence, what: str, path: Path) -> tuple:
    if requested is None:
        return tuple(available)
    req = list(requested)
    bad = [r for r in req if r not in available]
    if bad:
        raise ValueError(f"{path}: {what} {bad} not in the run (it has {list(available)})")
    return tuple(req)


def _expected_seeds(root: Path, summary: dict | None) -> list[int]:
    if summary is not None:
        n = summary.get("experiment", {}).get("seeds")
        if isinstance(n, int) and n > 0:
            return list(range(n))
    found = sorted(int(p.name[5:]) for p in root.glob("seed_*") if p.is_dir() and p.name[5:].isdigit())
    return found


def _layout(root: Path, criteria: Sequence[str]) -> tuple[Path, dict[str, str]]:
    """(the directory holding ``seed_<s>/``, criterion → its directory name there): an experiment view
    (``es-lottery imp``'s ``<out>/<name>/``) points into the run store with its ``jobs.json``; an old-layout
    run directory holds its seeds itself, one directory per criterion."""
    jobs = root / "jobs.json"
    if jobs.is_file():
        spec = json.loads(jobs.read_text())
        return (root / spec["data"]).resolve(), {c: spec["branches"].get(c, c) for c in criteria}
    return root, {c: c for c in criteria}


def load_run(
    path: str | Path,
    seeds: Iterable[int] | None = None,
    criteria: Iterable[str] | None = None,
    levels: Iterable[int] | None = None,
) -> RunData:
    """Read a finished ES-IMP run directory (or the chosen ``seeds`` / ``criteria`` / ``levels`` of it).

    Raises :class:`RunDirectoryError` listing everything that is missing or does not fit.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    if not (root / "config.yaml").is_file():
        raise RunDirectoryError(root, ["config.yaml: missing (not an es-lottery imp run directory?)"])
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    problems: list[str] = []
    summary = (
        _read_json(root / "summary.json", "summary.json", problems)
        if (root / "summary.json").is_file()
        else None
    )
    try:
        like = params_like(config)
    except (ValueError, TypeError) as err:
        field_name = "env" if config.get("env") is not None else "network"
        raise RunDirectoryError(
            root, [f"config.yaml: field {field_name!r} does not build a network ({err})"]
        ) from None
    all_crit = [str(c) for c in config.get("criteria") or []]
    n_levels = int((config.get("imp") or {}).get("num_levels", 20))
    data, dirs = _layout(root, all_crit)
    seed_ids = _select(seeds, _expected_seeds(data, summary), "seeds", root)
    if not seed_ids:
        raise RunDirectoryError(root, ["seed_0/: missing (no seed directory and no summary.json)"])
    crit_ids = _select(criteria, all_crit, "criteria", root)
    level_ids = _select(levels, list(range(n_levels)), "levels", root)
    es = str((config.get("trainer") or {}).get("type", "es")) == "es"
    files = LEVEL_FILES + (ES_LEVEL_FILES if es else ())

    theta0, out = {}, {}
    for s in seed_ids:
        where = f"seed_{s}/theta0.npz"
        if not (data / where).is_file():
            problems.append(f"{where}: missing")
        else:
            t = _read_tree(data / where, like, where, problems)
            if t is not None:
                theta0[s] = t
        for c in crit_ids:
            for k in level_ids:
                rel = f"seed_{s}/{dirs[c]}/level_{k}"
                ldir = data / rel
                missing = [f for f in files if not (ldir / f).is_file()]
                if not ldir.is_dir():
                    problems.append(f"{rel}/: missing (the level never finished)")
                    continue
                problems.extend(f"{rel}/{f}: missing" for f in missing)
                if missing:
                    continue
                n_before = len(problems)
                mask = _read_mask(ldir / "mask.npz", like, f"{rel}/mask.npz", problems)
                t0 = _read_tree(ldir / "theta0.npz", like, f"{rel}/theta0.npz", problems)
                fin = _read_tree(ldir / "final_params.npz", like, f"{rel}/final_params.npz", problems)
                std = _read_tree(ldir / "std.npz", like, f"{rel}/std.npz", problems) if es else None
                curves = _read_curves(ldir / "curves.npz", f"{rel}/curves.npz", problems)
                metrics = _read_json(ldir / "metrics.json", f"{rel}/metrics.json", problems)
                if metrics is not None:
                    want = {"seed": s, "criterion": c, "level": k}
                    got = {key: metrics.get(key) for key in want}
                    if got != want:
                        problems.append(f"{rel}/metrics.json: describes {got}, expected {want}")
                    for key in ("kept", "total"):
                        if not isinstance(metrics.get(key), int):
                            problems.append(f"{rel}/metrics.json: lacks the integer field {key!r}")
                if len(problems) == n_before:
                    out[(s, c, k)] = LevelData(s, c, k, mask, t0, fin, std, metrics, curves)
    if problems:
        raise RunDirectoryError(root, problems)
    return RunData(
        root.name, config, summary, tuple(seed_ids), tuple(crit_ids), tuple(level_ids), theta0, out
    )


# ----------------------------------------------------------------------------------------------
# the archive


def _bits(mask: PyTree) -> np.ndarray:
    return np.packbits(
        np.concatenate([np.ravel(np.asarray(m, bool)) for m in jax.tree_util.tree_leaves(mask)])
    )


def _unbits(packed: np.ndarray, like: PyTree) -> PyTree:
    specs = jax.tree_util.tree_leaves(like)
    n = sum(int(np.prod(s.shape, dtype=np.int64)) for s in specs)
    bits = np.unpackbits(packed, count=n).astype(bool)
    leaves, off = [], 0
    for s in specs:
        size = int(np.prod(s.shape, dtype=np.int64))
        leaves.append(bits[off : off + size].reshape(s.shape))
        off += size
    return _unflatten(like, leaves)


def _bitwise_zero(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, x.itemsize).max(axis=-1) == 0


def _encode_tree(tree: PyTree, mask: PyTree, key: str, arrays: dict, theta_ref: PyTree | None = None) -> str:
    """Store ``tree`` under ``key``; returns the encoding ("masked_reference", "active" or "dense")."""
    leaves, mleaves = _leaves(tree), _leaves(mask)
    if theta_ref is not None:
        ref = [
            np.where(m, t, np.zeros((), t.dtype)) for t, m in zip(_leaves(theta_ref), mleaves, strict=True)
        ]
        if all(a.dtype == r.dtype and a.tobytes() == r.tobytes() for a, r in zip(leaves, ref, strict=True)):
            return "masked_reference"
    dtypes = {a.dtype for a in leaves}
    if len(dtypes) == 1 and all(
        bool(np.all(_bitwise_zero(a)[~m])) for a, m in zip(leaves, mleaves, strict=True)
    ):
        arrays[key] = np.concatenate([np.ravel(a)[np.ravel(m)] for a, m in zip(leaves, mleaves, strict=True)])
        return "active"
    for name, a in zip(_names(tree), leaves, strict=True):
        arrays[f"{key}/{name}"] = a
    return "dense"


def _decode_tree(enc: str, key: str, data, like: PyTree, mask: PyTree, theta_ref: PyTree | None):
    mleaves = _leaves(mask)
    if enc == "masked_reference":
        return _unflatten(
            like,
            [np.where(m, t, np.zeros((), t.dtype)) for t, m in zip(_leaves(theta_ref), mleaves, strict=True)],
        )
    if enc == "active":
        vec = data[key]
        out, off = [], 0
        for s, m in zip(jax.tree_util.tree_leaves(like), mleaves, strict=True):
            a = np.zeros(s.shape, vec.dtype)
            n = int(m.sum())
            a[m] = vec[off : off + n]
            out.append(a)
            off += n
        return _unflatten(like, out)
    if enc == "dense":
        return _unflatten(like, [data[f"{key}/{name}"] for name in _names(like)])
    raise ValueError(f"unknown array encoding {enc!r} for {key}")


def write_archive(run: RunData | str | Path, dest: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """Write ``<dest>/<name>.json`` and ``<dest>/<name>.npz`` (default name: the run directory's name).

    ``run``: a :class:`RunData` or a run directory (read with :func:`load_run`). Exact: see the module doc.
    """
    if not isinstance(run, RunData):
        run = load_run(run)
    name = name or run.name
    if not name or "/" in name:
        raise ValueError(f"archive name must be a non-empty file name, got {name!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    encoding: dict[str, str] = {}
    for s in run.seeds:
        for leaf_name, a in zip(_names(run.theta0[s]), _leaves(run.theta0[s]), strict=True):
            arrays[f"seed_{s}/theta0/{leaf_name}"] = a
    levels = {}
    for (s, c, k), lv in sorted(run.levels.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        key = f"seed_{s}/{c}/level_{k}"
        arrays[f"{key}/mask"] = _bits(lv.mask)
        encoding[f"{key}/theta0"] = _encode_tree(
            lv.theta0, lv.mask, f"{key}/theta0", arrays, run.theta0.get(s)
        )
        encoding[f"{key}/final_params"] = _encode_tree(
            lv.final_params, lv.mask, f"{key}/final_params", arrays
        )
        if lv.std is not None:
            encoding[f"{key}/std"] = _encode_tree(lv.std, lv.mask, f"{key}/std", arrays)
        for cname, arr in lv.curves.items():
            arrays[f"{key}/curves/{cname}"] = np.asarray(arr)
        levels[key] = {"metrics": lv.metrics, "curves": sorted(lv.curves), "has_std": lv.std is not None}
    meta = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "name": name,
        "run": run.name,
        "storage": (
            "masks: numpy.packbits over all entries (leaves in tree order, row-major); params / θ₀ / std "
            "float32, exact: 'active' = the surviving entries only (the rest is +0.0), 'masked_reference' "
            "= the seed's θ₀ ⊙ mask, 'dense' = every leaf; curves with their own dtypes"
        ),
        "config": run.config,
        "summary": run.summary,
        "seeds": list(run.seeds),
        "criteria": list(run.criteria),
        "levels": list(run.level_ids),
        "encoding": encoding,
        "level_data": levels,
    }
    npz_path, json_path = dest / f"{name}.npz", dest / f"{name}.json"
    tmp = dest / f".{name}.npz.tmp"
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, **arrays)
    tmp.replace(npz_path)
    json_path.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    return json_path, npz_path


def load_archive(path: str | Path) -> RunData:
    """Read an archive written by :func:`write_archive` (``path``: its ``.json``, ``.npz`` or the stem)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".npz") else p
    json_path, npz_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
    missing = [f"{q.name}: missing" for q in (json_path, npz_path) if not q.is_file()]
    if missing:
        raise RunDirectoryError(stem.parent, missing)
    meta = json.loads(json_path.read_text())
    if meta.get("format") != ARCHIVE_FORMAT:
        raise ValueError(f"{json_path} is not an es_lottery run archive (format {meta.get('format')!r})")
    if meta.get("version") != ARCHIVE_VERSION:
        raise ValueError(
            f"{json_path}: archive version {meta.get('version')}, this code reads {ARCHIVE_VERSION}"
        )
    like = params_like(meta["config"])
    enc = meta["encoding"]
    seeds = tuple(int(s) for s in meta["seeds"])
    problems: list[str] = []
    theta0, levels = {}, {}
    with np.load(npz_path) as data:
        files = set(data.files)
        for s in seeds:
            keys = [f"seed_{s}/theta0/{n}" for n in _names(like)]
            absent = [k for k in keys if k not in files]
            if absent:
                problems.extend(f"{npz_path.name}: lacks {k}" for k in absent)
                continue
            theta0[s] = _unflatten(like, [data[k] for k in keys])
        for key, info in meta["level_data"].items():
            s_part, c, l_part = key.split("/")
            s, k = int(s_part[5:]), int(l_part[6:])
            try:
                mask = _unbits(data[f"{key}/mask"], like)
                t0 = _decode_tree(enc[f"{key}/theta0"], f"{key}/theta0", data, like, mask, theta0.get(s))
                fin = _decode_tree(enc[f"{key}/final_params"], f"{key}/final_params", data, like, mask, None)
                std = (
                    _decode_tree(enc[f"{key}/std"], f"{key}/std", data, like, mask, None)
                    if info["has_std"]
                    else None
                )
                curves = {cn: data[f"{key}/curves/{cn}"] for cn in info["curves"]}
            except KeyError as err:
                problems.append(f"{npz_path.name}: {key} lacks {err}")
                continue
            levels[(s, c, k)] = LevelData(s, c, k, mask, t0, fin, std, info["metrics"], curves)
    if problems:
        raise RunDirectoryError(stem.parent, problems)
    return RunData(
        str(meta["run"]),
        meta["config"],
        meta["summary"],
        seeds,
        tuple(meta["criteria"]),
        tuple(int(k) for k in meta["levels"]),
        theta0,
        levels,
    )

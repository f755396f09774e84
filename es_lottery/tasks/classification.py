"""Classification datasets (REFERENCE §1 "Data", NeTS XOR, MNIST family).

Every loader returns a frozen :class:`Dataset` with ``float32`` inputs and ``int32`` labels in
``0..num_classes-1``. Nothing is ever downloaded unless ``download=True`` is passed explicitly.

Image datasets (``mnist``, ``fashion_mnist``, ``kmnist``) are read, in this order, from

1. IDX directories holding the four standard files (``train-images-idx3-ubyte[.gz]``, ...):
   ``idx_dir``, ``$ES_LOTTERY_IDX_DIR`` and, for ``mnist``, :func:`default_mnist_dir`; each directory
   is tried as ``<dir>/<name>/`` first and then as ``<dir>/`` itself;
2. ``tensorflow_datasets`` random-access data sources (``tfds.data_source``, no TensorFlow needed);
3. an IDX directory that holds only the ``t10k`` files: the 10 000 test images are split
   deterministically (first ``split_train`` train, the rest test). ``test_split_only=True`` selects this
   mode directly. ``Dataset.info`` records which source and mode were used.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from es_lottery import distributed, networks, population
from es_lottery import masks as masks_lib
from es_lottery._checks import check_int
from es_lottery.tasks import base, supervised

DATASETS = ("moons", "circles", "blobs", "digits", "xor", "mnist", "fashion_mnist", "kmnist")
IMAGE_DATASETS = ("mnist", "fashion_mnist", "kmnist")
SCALE = 0.7  # min-max target range is [-SCALE, SCALE]

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split. ``x_*`` are float32 arrays, ``y_*`` int32 labels in ``0..num_classes-1``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    info: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
            f"x_train={self.x_train.shape}, x_test={self.x_test.shape}, info={self.info!r})"
        )


def _make(x_tr, y_tr, x_te, y_te, num_classes: int, name: str, **info: Any) -> Dataset:
    return Dataset(
        np.asarray(x_tr, np.float32),
        np.asarray(y_tr, np.int32),
        np.asarray(x_te, np.float32),
        np.asarray(y_te, np.int32),
        int(num_classes),
        name,
        info,
    )


def minmax_scale(x: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """Min-max scale ``x`` to ``[-scale, scale]`` with ONE global min/max over the whole array."""
    x = np.asarray(x, np.float64)
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo) * 2.0 * scale - scale).astype(np.float32)


def _split_75(x: np.ndarray, y: np.ndarray):
    """First ``int(0.75 n)`` rows train, the rest test (no shuffle)."""
    n_tr = int(0.75 * len(x))
    return x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:]


# ----------------------------------------------------------------------------- 2-D sklearn tasks


def moons(n_train: int = 50000, n_test: int = 16000, noise: float = 0.07, random_state: int = 42) -> Dataset:
    """Two moons. Train and test are separate ``make_moons`` calls with the same ``random_state``;
    each is min-max scaled to [-0.7, 0.7] with its own global min/max (all features together)."""
    from sklearn.datasets import make_moons

    n_train = check_int(n_train, "n_train", 1)
    n_test = check_int(n_test, "n_test", 1)
    x_tr, y_tr = make_moons(n_samples=n_train, noise=noise, random_state=random_state)
    x_te, y_te = make_moons(n_samples=n_test, noise=noise, random_state=random_state)
    return _make(
        minmax_scale(x_tr),
        y_tr,
        minmax_scale(x_te),
        y_te,
        2,
        "moons",
        noise=noise,
        random_state=random_state,
        normalisation="minmax[-0.7,0.7] per split",
    )


def circles(
    n_train: int = 50000, n_test: int = 16000, noise: float = 0.07, random_state: int = 42
) -> Dataset:
    """Two concentric circles (``make_circles``, default factor 0.8). Train and test are separate calls
    with the same ``random_state``; used raw, no normalisation."""
    from sklearn.datasets import make_circles

    n_train = check_int(n_train, "n_train", 1)
    n_test = check_int(n_test, "n_test", 1)
    x_tr, y_tr = make_circles(n_samples=n_train, noise=noise, random_state=random_state)
    x_te, y_te = make_circles(n_samples=n_test, noise=noise, random_state=random_state)
    return _make(
        x_tr, y_tr, x_te, y_te, 2, "circles", noise=noise, random_state=random_state, normalisation="none"
    )


def blobs(k: int = 3, random_state: int = 10) -> Dataset:
    """``k`` Gaussian blobs: ``make_blobs(5000*k, centers=k, random_state, center_box=(-20, 40))``.
    First 75 % train, last 25 % test, no shuffle; used raw, no normalisation."""
    from sklearn.datasets import make_blobs

    k = check_int(k, "k", 2)
    x, y = make_blobs(n_samples=5000 * k, centers=k, random_state=random_state, center_box=(-20, 40))
    return _make(*_split_75(x, y), k, "blobs", k=k, random_state=random_state, normalisation="none")


def _parse_classes(classes: int | Iterable[int] | None) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(10))
    if isinstance(classes, int | np.integer) and not isinstance(classes, bool):
        return tuple(range(check_int(classes, "classes", 2, 10)))
    ids = list(classes) if isinstance(classes, Iterable) and not isinstance(classes, str) else None
    if (
        ids is None
        or len(ids) < 2
        or len(set(ids)) != len(ids)
        or not all(isinstance(c, int | np.integer) and not isinstance(c, bool) and 0 <= c <= 9 for c in ids)
    ):
        raise ValueError(
            f"classes must be None, an int k in [2, 10] or >= 2 distinct ids in 0..9, got {classes!r}"
        )
    ids = [int(c) for c in ids]
    return tuple(sorted(ids))


def digits(classes: int | Iterable[int] | None = None) -> Dataset:
    """sklearn 8x8 digits (64 features). ``classes`` (``k`` -> ``0..k-1``, or explicit ids) filters the
    samples first and relabels them to ``0..len-1`` in sorted order; then first 75 % train, last 25 %
    test (no shuffle; full set 1347/450); min-max to [-0.7, 0.7] with the global min/max of the
    (filtered) array, before the split."""
    from sklearn.datasets import load_digits

    ids = _parse_classes(classes)
    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, ids)
    x, y = x[keep], np.searchsorted(np.asarray(ids), y[keep])
    return _make(
        *_split_75(minmax_scale(x), y),
        len(ids),
        "digits",
        classes=ids,
        normalisation="minmax[-0.7,0.7] global, before split",
    )


def xor(n: int = 250, noise: float = 0.0, seed: int = 0) -> Dataset:
    """XOR for 2-h-1 MLPs (NeTS): inputs in {0,1}^2, label ``x0 xor x1`` (int 0/1, 2 classes).

    Each split holds the 4 truth-table points repeated ``n`` times (default 250 -> 1000 rows), in random
    row order, plus optional N(0, noise^2) input noise. Train uses ``seed``, test ``seed + 1``. Inputs are
    not normalised (noise=0 gives exact 0/1 values)."""
    n = check_int(n, "n", 1)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    base = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)

    def split(s: int):
        rng = np.random.default_rng(s)
        x = np.tile(base, (n, 1))
        x = x[rng.permutation(len(x))]
        y = (x[:, 0] != x[:, 1]).astype(np.int32)
        return x + noise * rng.standard_normal(x.shape), y

    return _make(*split(seed), *split(seed + 1), 2, "xor", n=n, noise=noise, seed=seed, normalisation="none")


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``0 0 dtype ndim``, ``ndim`` big-endian uint32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{path} is damaged or truncated ({type(err).__name__}: {err}); download it again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX payload has {len(raw) - offset} bytes, dims {dims} need {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}.get(array.dtype)
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def _find_idx(directory: Path, key: str) -> Path | None:
    for fname in (_IDX_FILES[key] + ".gz", _IDX_FILES[key], _IDX_FILES[key].replace("-idx", ".idx")):
        if (directory / fname).is_file():
            return directory / fname
    return None


def _load_idx_pair(directory: Path, prefix: str):
    images = read_idx(_find_idx(directory, f"{prefix}_images"))
    labels = read_idx(_find_idx(directory, f"{prefix}_labels"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: {prefix} images {images.shape} / labels {labels.shape} do not match")
    return images, labels


def default_mnist_dir() -> Path | None:
    """Shared MNIST IDX directory: ``$ES_LOTTERY_MNIST_DIR``, else ``<repo_root>/../shared/data/mnist``
    (repo root = parent of the ``es_lottery`` package dir). ``None`` if neither exists."""
    env = os.environ.get("ES_LOTTERY_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist")
    return next((c for c in candidates if c.is_dir()), None)


def _idx_candidates(name: str, idx_dir) -> list[Path]:
    if idx_dir is not None:  # an explicit directory is the only place searched: never another copy
        root = Path(idx_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"idx_dir {root}: no such directory (pass a directory of IDX files)")
        return [root / name, root]
    roots = [Path(p) for p in (os.environ.get("ES_LOTTERY_IDX_DIR"),) if p]
    out = [d for r in roots for d in (r / name, r)]
    if name == "mnist" and (shared := default_mnist_dir()) is not None:
        out.append(shared)
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- tfds


def _tfds_arrays(name: str, split: str, data_dir, download: bool):
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    n = len(source)
    images = np.empty((n, 28, 28, 1), np.uint8)
    labels = np.empty(n, np.int64)
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, 4096):
        keys = list(range(start, min(start + 4096, n)))
        records = None
        if batched:
            try:  # batched reads are much faster on real ArrayRecord files
                records = source.__getitems__(keys)
            except TypeError:  # e.g. tfds.testing.mock_data only mocks per-item __getitem__ properly
                batched = False
        if records is None:
            records = [source[i] for i in keys]
        for i, rec in zip(keys, records, strict=True):
            images[i] = np.asarray(rec["image"]).reshape(28, 28, 1)
            labels[i] = rec["label"]
    return images, labels


# ----------------------------------------------------------------------------- MNIST family


def image_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
    split_train: int | None = None,
    test_split_only: bool = False,
    download: bool = False,
) -> Dataset:
    """MNIST / Fashion-MNIST / K-MNIST as float32 images in [0, 1] (uint8 / 255), shape (N, 28, 28, 1).

    Source order: full IDX directory, then ``tfds.data_source(name, data_dir=data_dir)``, then an IDX
    directory with only the t10k files, whose test set is split into the first ``split_train`` images
    (default 80 %, i.e. 8000 of 10000) for training and the rest for testing. ``test_split_only=True``
    forces that split even when train files exist. ``split_train`` is only used in test-split mode.
    ``download=True`` lets tfds download; nothing is downloaded otherwise. An explicit ``idx_dir`` (or its
    ``<name>/`` subdirectory) is the only place searched — a missing one is an error, never a fallback to
    another copy. Raises ``FileNotFoundError`` listing every location searched.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"dataset must be one of {IMAGE_DATASETS} for image_dataset, got {name!r}")
    if split_train is not None:
        split_train = check_int(split_train, "split_train", 1)
    candidates = _idx_candidates(name, idx_dir)
    has = {d: {k: _find_idx(d, k) is not None for k in _IDX_FILES} for d in candidates if d.is_dir()}

    def finish(x_tr, y_tr, x_te, y_te, **info):
        for arr in (x_tr, x_te):
            if arr.dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8 images, got {arr.dtype}")
        x_tr, x_te = (a.reshape(len(a), 28, 28, 1).astype(np.float32) / 255.0 for a in (x_tr, x_te))
        return _make(x_tr, y_tr, x_te, y_te, 10, name, normalisation="uint8/255 -> [0,1]", **info)

    if not test_split_only:
        for d, files in has.items():
            if all(files.values()):
                return finish(
                    *_load_idx_pair(d, "train"),
                    *_load_idx_pair(d, "test"),
                    source="idx",
                    path=str(d),
                    test_split_only=False,
                )
        try:
            if idx_dir is not None:
                raise FileNotFoundError(f"skipped (idx_dir={str(idx_dir)!r} given)")
            tr, te = (_tfds_arrays(name, s, data_dir, download) for s in ("train", "test"))
            return finish(
                *tr, *te, source="tfds", path=str(data_dir or "tfds default"), test_split_only=False
            )
        except Exception as err:  # tfds missing, not prepared, wrong file format, ...
            tfds_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        tfds_error = "skipped (test_split_only=True)"

    for d, files in has.items():
        if files["test_images"] and files["test_labels"]:
            x, y = _load_idx_pair(d, "test")
            n_tr = int(0.8 * len(x)) if split_train is None else split_train
            if not n_tr < len(x):
                raise ValueError(f"split_train must be < {len(x)} (size of the t10k set), got {n_tr}")
            return finish(
                x[:n_tr],
                y[:n_tr],
                x[n_tr:],
                y[n_tr:],
                source="idx",
                path=str(d),
                test_split_only=True,
                split_train=n_tr,
            )

    try:
        from tensorflow_datasets.core import constants

        tfds_dir = str(data_dir or constants.get_default_data_dir())
    except ImportError:
        tfds_dir = str(data_dir)
    searched = "\n".join(
        f"  - IDX dir {d} ({'no usable IDX files' if d.is_dir() else 'missing'})" for d in candidates
    )
    raise FileNotFoundError(
        f"no data found for dataset {name!r}. Searched:\n{searched or '  - (no IDX dir configured)'}\n"
        f"  - tfds data_dir {tfds_dir} ({tfds_error})\n"
        "Fix: pass idx_dir=<dir with train-/t10k-*-idx?-ubyte[.gz]> or set $ES_LOTTERY_IDX_DIR"
        + (" / $ES_LOTTERY_MNIST_DIR" if name == "mnist" else "")
        + f", or prepare it with tfds (data_dir=...), or pass download=True to let tfds fetch {name!r}."
    )


# ----------------------------------------------------------------------------- dispatch


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`), forwarding ``kwargs`` to its loader."""
    loaders = {"moons": moons, "circles": circles, "blobs": blobs, "digits": digits, "xor": xor}
    if name in loaders:
        return loaders[name](**kwargs)
    if name in IMAGE_DATASETS:
        return image_dataset(name, **kwargs)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


# ----------------------------------------------------------------------------- the task


OBJECTIVES = ("accuracy", "cross_entropy", "log_loss")
SPLITS = ("train", "val", "test")


def sample_batch(key, x, y, batch_size: int | None):
    """``batch_size`` distinct examples drawn uniformly with ``key`` (all of them, in order, when
    ``batch_size`` is None or ≥ the data size)."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        return x, y
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    return x[idx], y[idx]


@struct.dataclass
class ClassificationTask(base.TaskBase):
    """Classification as a task of the protocol (``tasks.base``). Build it with :func:`make_task`.

    ``data`` holds ``x_<split>`` (float32) / ``y_<split>`` (int32) for the splits it has (train, val,
    test). Fitness is computed on ``fitness_split`` — the whole split, or a FRESH random batch of
    ``batch_size`` examples per call drawn with the fitness key (the same batch for every member of a
    generation) — and is, by ``objective``:

    * ``"accuracy"`` — the fraction of correct argmax predictions (the strong-ticket GA's fitness);
    * ``"cross_entropy"`` — −mean softmax cross-entropy from the population kernels (the ES fitness);
    * ``"log_loss"`` — −mean log loss from ``tasks.supervised`` (binary cross-entropy on the logit for
      1-output networks; NeTS's loss).

    ``fitness_metrics`` also returns the metrics named in ``extra_metrics`` (e.g. the GA reads accuracy
    for its bound while maximising −cross-entropy). Members are per-member params (ES) or a
    ``MaskedPopulation`` (shared weights: the GA table path applies where it can). ``evaluate`` gives the
    accuracy and cross-entropy of ONE network on ``eval_split``; ``evaluate_members`` the ``eval_metrics``
    of a population. ``chunk_size`` is the data chunk of the population kernels (``"auto"``, an int, None);
    ``eval_widest`` overrides the layer width the "auto" rule assumes in ``evaluate_members`` (the
    strong-ticket tables were computed with 256).

    ``sharding`` (static; :mod:`es_lottery.distributed`): None evaluates a population in one kernel call;
    a :class:`~es_lottery.distributed.PopulationSharding` evaluates it in ``sharding.block_size(P)``-member
    blocks over its devices (``fitness_metrics``, ``evaluate_members`` and ``train_members``), with the
    data chunk planned for the whole population, so the results do not depend on the device count.
    """

    data: dict
    module: nn.Module = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)
    objective: str = struct.field(pytree_node=False, default="cross_entropy")
    fitness_split: str = struct.field(pytree_node=False, default="train")
    eval_split: str = struct.field(pytree_node=False, default="test")
    batch_size: int | None = struct.field(pytree_node=False, default=None)
    chunk_size: int | str | None = struct.field(pytree_node=False, default="auto")
    extra_metrics: tuple[str, ...] = struct.field(pytree_node=False, default=())
    eval_metrics: tuple[str, ...] = struct.field(pytree_node=False, default=("accuracy", "cross_entropy"))
    eval_widest: int | None = struct.field(pytree_node=False, default=None)
    score_key: str = struct.field(pytree_node=False, default="accuracy")
    sharding: distributed.PopulationSharding | None = struct.field(pytree_node=False, default=None)

    # -- data ---------------------------------------------------------------------------------

    def split(self, name: str) -> tuple[jax.Array, jax.Array]:
        """``(x, y)`` of split ``name``."""
        if f"x_{name}" not in self.data:
            raise ValueError(f"this task has no {name!r} split; it has {', '.join(self.splits)}")
        return self.data[f"x_{name}"], self.data[f"y_{name}"]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if f"x_{s}" in self.data)

    @property
    def chance_accuracy(self) -> jax.Array:
        """Accuracy of always predicting the most frequent class of the fitness split."""
        y = self.split(self.fitness_split)[1]
        return jnp.max(jnp.bincount(y, length=self.num_classes)) / y.shape[0]

    def init_params(self, key: jax.Array):
        return networks.init_params(key, self.module)

    # -- population metrics -------------------------------------------------------------------

    def _kernel_metrics(self, members, x, y, metrics, widest=None, shard=True):
        npop = base.members_size(members)
        sharding = self.sharding if shard else None
        if isinstance(members, base.MaskedPopulation) and members.shared:
            table = population.table_path_applies(self.module)
            w = population.widest_layer(members.params) if widest is None else widest
            chunk = population.plan_chunk(
                self.module, npop, x.shape[0], self.chunk_size, widest=w, table=table and widest is None
            )
            if sharding is None:
                return population.eval_masks_jit(
                    self.module, members.params, members.masks, x, y, metrics, chunk, table
                )

            def masks_block(masks, live, shared):
                params, xs, ys = shared
                out = population.eval_masks_jit(self.module, params, masks, xs, ys, metrics, chunk, table)
                return out, None

            return distributed.map_blocks(masks_block, members.masks, (members.params, x, y), sharding)[0]
        params = self._params(members)
        w = population.widest_layer(params) if widest is None else widest
        # planned for the whole population: every block (and every device count) uses the same chunk
        chunk = population.plan_chunk(self.module, npop, x.shape[0], self.chunk_size, widest=w)
        if sharding is None:
            return population.eval_params_jit(self.module, params, x, y, metrics, chunk)

        def params_block(member_params, live, shared):
            xs, ys = shared
            return population.eval_params_jit(self.module, member_params, xs, ys, metrics, chunk), None

        # blocks in whole CNN member blocks: then a sharded evaluation equals the unsharded one
        multiple = population.member_block_multiple(self.module, min(chunk, x.shape[0]))
        block = -(-sharding.block_size(npop) // multiple) * multiple
        return distributed.map_blocks(params_block, params, (x, y), sharding, block)[0]

    @staticmethod
    def _params(members):
        if isinstance(members, base.MaskedPopulation):
            if members.shared:
                return base.member_params(members)
            return masks_lib.apply(members.params, members.masks)
        return members

    def _log_loss(self, members, x, y):
        chunk = x.shape[0] if self.chunk_size in (None, "auto") else int(self.chunk_size)
        params = self._params(members)
        if self.sharding is None:
            loss, acc = supervised.population_loss(self.module, params, x, y, chunk)
        else:

            def block(member_params, live, shared):
                return supervised.population_loss(self.module, member_params, *shared, chunk), None

            (loss, acc), _ = distributed.map_blocks(block, params, (x, y), self.sharding)
        return {"log_loss": loss, "accuracy": acc}

    def fitness_metrics(self, state, key, members):
        x, y = sample_batch(key, *self.split(self.fitness_split), self.batch_size)
        if self.objective == "log_loss":
            out = self._log_loss(members, x, y)
            return -out["log_loss"], out, state
        wanted = {self.objective, *self.extra_metrics}
        out = self._kernel_metrics(members, x, y, tuple(m for m in population.METRICS if m in wanted))
        fit = out["accuracy"] if self.objective == "accuracy" else -out["cross_entropy"]
        return fit, out, state

    def evaluate(self, state, params):
        member = jax.tree_util.tree_map(lambda a: a[None], params)
        x, y = self.split(self.eval_split)
        out = self._kernel_metrics(member, x, y, ("accuracy", "cross_entropy"), shard=False)  # one network
        return {k: v[0] for k, v in out.items()}

    def evaluate_members(self, state, members):
        x, y = self.split(self.eval_split)
        if self.objective == "log_loss":
            return self._log_loss(members, x, y)
        return self._kernel_metrics(members, x, y, self.eval_metrics, self.eval_widest)

    # -- gradient training (NeTS's inner training) --------------------------------------------

    def train_members(self, key: jax.Array, members: base.MaskedPopulation, config: supervised.TrainConfig):
        """Masked SGD of every member on the train split (``supervised.train_population``): the trained
        per-member params (pruned entries exactly 0)."""
        x, y = self.split("train")
        if self.sharding is None:
            trained, _ = supervised.train_population(
                key, members.params, members.masks, x, y, self.module, config
            )
            return trained

        def block(genomes, live, shared):
            k, xs, ys = shared
            params, masks = genomes
            return supervised.train_population(k, params, masks, xs, ys, self.module, config)[0], None

        trained, _ = distributed.map_blocks(
            block, (members.params, members.masks), (key, x, y), self.sharding
        )
        return trained


def make_task(
    module: nn.Module,
    data: Dataset | dict | None = None,
    *,
    objective: str = "cross_entropy",
    fitness_split: str = "train",
    eval_split: str = "test",
    batch_size: int | None = None,
    chunk_size: int | str | None = "auto",
    extra_metrics: Iterable[str] = (),
    eval_metrics: Iterable[str] = ("accuracy", "cross_entropy"),
    eval_widest: int | None = None,
    num_classes: int | None = None,
    sharding="context",
    **arrays,
) -> ClassificationTask:
    """Validate and package a :class:`ClassificationTask` (see its doc), before anything compiles.

    The data come as a :class:`Dataset` (train/test), a mapping ``{"x_train": …, "y_train": …, …}``, or
    keyword arrays (``x_train=…, y_train=…, x_val=…, y_val=…, x_test=…, y_test=…``). Labels must be integers
    in ``0 … outputs − 1`` (a 1-output network is a binary classifier on its logit: labels 0/1).
    ``sharding``: ``"context"`` (default) takes :func:`es_lottery.distributed.use_devices`'s setting (None
    outside it), or pass None / a ``PopulationSharding``.
    """
    from es_lottery._checks import check_choice

    if isinstance(data, Dataset):
        arrays = {
            "x_train": data.x_train,
            "y_train": data.y_train,
            "x_test": data.x_test,
            "y_test": data.y_test,
            **arrays,
        }
        num_classes = num_classes or data.num_classes
    elif isinstance(data, dict):
        arrays = {**data, **arrays}
    elif data is not None:
        raise TypeError(f"data must be a Dataset, a mapping of arrays or None, got {type(data).__name__}")
    check_choice(objective, OBJECTIVES, "objective")
    check_choice(fitness_split, SPLITS, "fitness_split")
    check_choice(eval_split, SPLITS, "eval_split")
    for key in arrays:
        if not (key[:2] in ("x_", "y_") and key[2:] in SPLITS):
            raise ValueError(f"unknown data array {key!r}; allowed: x_/y_ + one of {', '.join(SPLITS)}")
    module.validate()
    n_out = population.num_outputs(module)
    # a 1-output network is a binary classifier on its logit under the log loss; the kernels' argmax needs
    # one output per class
    classes = 2 if n_out == 1 and objective == "log_loss" else n_out
    out = {}
    for split in SPLITS:
        xs, ys = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if xs is None and ys is None:
            continue
        if xs is None or ys is None:
            raise ValueError(f"split {split!r} needs both x_{split} and y_{split}")
        out[f"x_{split}"], out[f"y_{split}"] = _check_split(module, xs, ys, split, classes, n_out)
    for split, field in ((fitness_split, "fitness_split"), (eval_split, "eval_split")):
        if f"x_{split}" not in out:
            raise ValueError(f"{field} is {split!r}, but no x_{split}/y_{split} data were given")
    check_int(batch_size, "batch_size", 1, allow_none=True)
    if chunk_size not in (None, "auto"):
        check_int(chunk_size, "chunk_size", 1)
    extra = tuple(extra_metrics)
    for m in (*extra, *eval_metrics):
        check_choice(m, population.METRICS, "metrics")
    if objective == "log_loss" and extra:
        raise ValueError("extra_metrics are for the kernel objectives; 'log_loss' always reports accuracy")
    check_int(eval_widest, "eval_widest", 1, allow_none=True)
    if num_classes is None:
        num_classes = max(int(np.max(out[f"y_{s}"])) for s in SPLITS if f"y_{s}" in out) + 1
    num_classes = check_int(num_classes, "num_classes", 1)
    if num_classes > classes:
        raise ValueError(f"the data has {num_classes} classes but the network has {n_out} output(s)")
    return ClassificationTask(
        data=out,
        module=module,
        num_classes=num_classes,
        objective=objective,
        fitness_split=fitness_split,
        eval_split=eval_split,
        batch_size=None if batch_size is None else int(batch_size),
        chunk_size=chunk_size,
        extra_metrics=extra,
        eval_metrics=tuple(eval_metrics),
        eval_widest=eval_widest,
        score_key="accuracy",
        sharding=distributed.resolve_sharding(sharding),
    )


def _check_split(module: nn.Module, x, y, split: str, classes: int, n_out: int):
    """One split as arrays, validated: inputs fit the network, one integer label per input, in range."""
    in_shape = tuple(module.input_shape)
    xs, ys = np.shape(x), np.shape(y)
    if len(xs) < 2 or xs[0] < 1 or int(np.prod(xs[1:])) != int(np.prod(in_shape)):
        raise ValueError(f"x_{split} must have shape (n ≥ 1, {', '.join(map(str, in_shape))}), got {xs}")
    if ys != (xs[0],):
        raise ValueError(f"y_{split} must have shape ({xs[0]},) (one label per input), got {ys}")
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise ValueError(f"y_{split} must hold integer class labels, got dtype {np.asarray(y).dtype}")
    lo, hi = int(np.min(y)), int(np.max(y))
    if lo < 0 or hi >= classes:
        raise ValueError(
            f"y_{split} holds labels in [{lo}, {hi}], but the network's {n_out} output(s) allow the "
            f"classes 0 … {classes - 1}"
        )
    return jnp.asarray(np.asarray(x, np.float32).reshape(xs[0], *in_shape)), jnp.asarray(y, jnp.int32)

"""Dataset loaders checked against independent sklearn / numpy references."""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs, make_circles, make_moons

from es_lottery.tasks import classification as C

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _check_types(ds: C.Dataset) -> None:
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)


def _range_is(x: np.ndarray, lo: float, hi: float) -> None:
    assert abs(float(x.min()) - lo) < 1e-6 and abs(float(x.max()) - hi) < 1e-6


def test_moons_shapes_labels_and_scaling():
    ds = C.load_dataset("moons")
    _check_types(ds)
    assert ds.x_train.shape == (50000, 2) and ds.x_test.shape == (16000, 2) and ds.num_classes == 2
    assert set(np.unique(ds.y_train)) == {0, 1} and set(np.unique(ds.y_test)) == {0, 1}
    _range_is(ds.x_train, -0.7, 0.7)
    _range_is(ds.x_test, -0.7, 0.7)
    # independent reference: separate sklearn calls, each scaled with its own global min/max
    for x, y, n in ((ds.x_train, ds.y_train, 50000), (ds.x_test, ds.y_test, 16000)):
        ref_x, ref_y = make_moons(n_samples=n, noise=0.07, random_state=42)
        ref = (ref_x - ref_x.min()) / (ref_x.max() - ref_x.min()) * 1.4 - 0.7
        np.testing.assert_allclose(x, ref, atol=1e-6)
        np.testing.assert_array_equal(y, ref_y)


def test_circles_is_raw_sklearn():
    ds = C.circles(n_train=2000, n_test=500)
    _check_types(ds)
    ref_x, ref_y = make_circles(n_samples=2000, noise=0.07, random_state=42)
    np.testing.assert_array_equal(ds.x_train, ref_x.astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, ref_y)
    ref_x, ref_y = make_circles(n_samples=500, noise=0.07, random_state=42)
    np.testing.assert_array_equal(ds.x_test, ref_x.astype(np.float32))
    full = C.load_dataset("circles")
    assert full.x_train.shape == (50000, 2) and full.x_test.shape == (16000, 2)


def test_blobs_split_without_shuffle():
    ds = C.load_dataset("blobs", k=3)
    _check_types(ds)
    assert ds.x_train.shape == (11250, 2) and ds.x_test.shape == (3750, 2) and ds.num_classes == 3
    assert set(np.unique(ds.y_train)) == {0, 1, 2} and set(np.unique(ds.y_test)) == {0, 1, 2}
    x, y = make_blobs(n_samples=15000, centers=3, random_state=10, center_box=(-20, 40))
    np.testing.assert_array_equal(ds.x_train, x[:11250].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[11250:])
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="k"):
            C.blobs(bad)


def test_digits_full():
    ds = C.load_dataset("digits")
    _check_types(ds)
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64) and ds.num_classes == 10
    assert set(np.unique(ds.y_train)) == set(range(10))
    x, y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(ds.y_train, y[:1347])
    ref = (x - x.min()) / (x.max() - x.min()) * 1.4 - 0.7
    np.testing.assert_allclose(ds.x_test, ref[1347:], atol=1e-6)
    _range_is(np.concatenate([ds.x_train, ds.x_test]), -0.7, 0.7)


def test_digits_class_subsets():
    _, y = load_digits(return_X_y=True)
    ds = C.digits(classes=(7, 3))
    keep = (y == 3) | (y == 7)
    n = int(keep.sum())
    n_tr = int(0.75 * n)
    assert ds.num_classes == 2 and len(ds.y_train) == n_tr and len(ds.y_test) == n - n_tr
    ref_y = np.where(y[keep] == 3, 0, 1)  # sorted order: 3 -> 0, 7 -> 1
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_test]), ref_y)
    assert np.bincount(ds.y_train).sum() + np.bincount(ds.y_test).sum() == n
    assert set(np.unique(ds.y_train)) == {0, 1}
    _range_is(np.concatenate([ds.x_train, ds.x_test]), -0.7, 0.7)

    k4 = C.load_dataset("digits", classes=4)
    assert k4.num_classes == 4 and set(np.unique(k4.y_train)) == {0, 1, 2, 3}
    assert len(k4.y_train) + len(k4.y_test) == int(np.isin(y, range(4)).sum())
    for bad in (1, 11, (3,), (3, 3), (3, 10), (-1, 2), "ab"):
        with pytest.raises(ValueError, match="classes"):
            C.digits(classes=bad)


def test_xor():
    ds = C.load_dataset("xor", n=5)
    _check_types(ds)
    assert ds.x_train.shape == (20, 2) and ds.num_classes == 2
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]).astype(np.int32))
        assert np.bincount(y).tolist() == [10, 10]
    noisy = C.xor(n=50, noise=0.1)
    assert not np.allclose(noisy.x_train, noisy.x_test)
    np.testing.assert_array_equal(noisy.y_train, np.logical_xor(*np.round(noisy.x_train).T))
    with pytest.raises(ValueError, match="n"):
        C.xor(n=0)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="dataset") as err:
        C.load_dataset("cifar10")
    assert "moons" in str(err.value) and "kmnist" in str(err.value)


# ----------------------------------------------------------------------------- IDX / MNIST


def _write_idx_by_hand(path: Path, arr: np.ndarray, code: int) -> None:
    """Independent IDX writer (struct-based) used to test the package's parser."""
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    floats = rng.standard_normal((2, 3)).astype(np.float32)
    ints = rng.integers(-1000, 1000, size=7).astype(np.int32)
    for arr, code, name in ((images, 0x08, "a.gz"), (floats, 0x0D, "b"), (ints, 0x0C, "c.gz")):
        _write_idx_by_hand(tmp_path / name, arr, code)
        out = C.read_idx(tmp_path / name)
        assert out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
        C.write_idx(tmp_path / f"w_{name}", arr)  # package writer must agree with the hand-written bytes
        assert C.read_idx(tmp_path / f"w_{name}").tobytes() == arr.tobytes()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        C.read_idx(tmp_path / "bad")


def _fake_idx_dir(d: Path, n_train: int, n_test: int, with_train: bool = True) -> dict:
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrs = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),  # uncompressed name
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for fname, arr in arrs.items():
        if with_train or fname.startswith("t10k"):
            _write_idx_by_hand(d / fname, arr, 0x08)
    return arrs


def test_image_dataset_from_idx_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("ES_LOTTERY_IDX_DIR", raising=False)
    arrs = _fake_idx_dir(tmp_path / "kmnist", 12, 6)  # per-dataset subfolder of idx_dir
    ds = C.load_dataset("kmnist", idx_dir=tmp_path)
    _check_types(ds)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (6, 28, 28, 1)
    assert ds.info["source"] == "idx" and ds.info["test_split_only"] is False
    np.testing.assert_allclose(ds.x_train[..., 0], arrs["train-images-idx3-ubyte.gz"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_test, arrs["t10k-labels-idx1-ubyte.gz"])

    forced = C.image_dataset("kmnist", idx_dir=tmp_path, test_split_only=True, split_train=4)
    assert forced.info["test_split_only"] is True and len(forced.y_train) == 4 and len(forced.y_test) == 2
    np.testing.assert_array_equal(forced.y_train, arrs["t10k-labels-idx1-ubyte.gz"][:4])
    for bad in (0, 6, 100, -3):
        with pytest.raises(ValueError, match="split_train"):
            C.image_dataset("kmnist", idx_dir=tmp_path, test_split_only=True, split_train=bad)

    # automatic fallback: only t10k files and no tfds data -> deterministic split of the test set
    only_test = _fake_idx_dir(tmp_path / "only_test", 0, 10, with_train=False)
    auto = C.image_dataset("kmnist", idx_dir=tmp_path / "only_test", data_dir=tmp_path / "no_tfds")
    assert auto.info["test_split_only"] is True and auto.info["split_train"] == 8
    np.testing.assert_array_equal(auto.y_test, only_test["t10k-labels-idx1-ubyte.gz"][8:])

    # env var, files directly in the directory
    _fake_idx_dir(tmp_path / "env", 3, 2)
    monkeypatch.setenv("ES_LOTTERY_IDX_DIR", str(tmp_path / "env"))
    assert C.image_dataset("fashion_mnist").x_train.shape == (3, 28, 28, 1)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"shared MNIST directory missing: {SHARED_MNIST}")
def test_real_mnist_test_split(tmp_path, monkeypatch):
    monkeypatch.delenv("ES_LOTTERY_IDX_DIR", raising=False)
    monkeypatch.delenv("ES_LOTTERY_MNIST_DIR", raising=False)
    assert C.default_mnist_dir() == SHARED_MNIST
    ds = C.image_dataset("mnist", idx_dir=SHARED_MNIST, test_split_only=True, split_train=8000)
    _check_types(ds)
    assert ds.x_train.shape == (8000, 28, 28, 1) and ds.x_test.shape == (2000, 28, 28, 1)
    assert ds.info["test_split_only"] is True and ds.info["split_train"] == 8000
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10)) and set(np.unique(ds.y_test)) == set(range(10))
    auto = C.load_dataset("mnist", split_train=8000, data_dir=tmp_path / "no_tfds")  # shared dir by default
    assert auto.info["path"] == str(SHARED_MNIST) and auto.info["test_split_only"] is True
    np.testing.assert_array_equal(auto.x_test, ds.x_test)
    # independent parse of the raw bytes
    raw = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert struct.unpack(">II", raw[:8]) == (2049, 10000)
    np.testing.assert_array_equal(
        np.concatenate([ds.y_train, ds.y_test]), np.frombuffer(raw, np.uint8, offset=8)
    )


def test_tfds_data_source_mocked(tmp_path, monkeypatch):
    # tfds 4.9.10: mock_data patches DatasetBuilder.as_data_source, so tfds.data_source works under
    # MockPolicy.AUTO (falls back to USE_CODE: random uint8 images/labels, data_dir is ignored). The
    # mock only patches per-item __getitem__ properly (its __getitems__ is an unbound partial that
    # raises TypeError); the loader then falls back to per-item reads.
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv("ES_LOTTERY_IDX_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the mock's scratch dirs land in tmp_path
    with tfds.testing.mock_data(num_examples=7):
        ds = C.load_dataset("fashion_mnist", data_dir=tmp_path / "tfds")
    _check_types(ds)
    assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_test.shape == (7, 28, 28, 1)
    assert ds.info["source"] == "tfds" and ds.num_classes == 10
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.0
    assert set(np.unique(ds.y_train)) <= set(range(10))


def test_missing_data_lists_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ES_LOTTERY_IDX_DIR", str(tmp_path / "env_idx"))
    with pytest.raises(FileNotFoundError) as err:
        C.image_dataset("kmnist", data_dir=tmp_path / "tfds_dir")
    msg = str(err.value)
    for p in (tmp_path / "env_idx" / "kmnist", tmp_path / "env_idx", tmp_path / "tfds_dir"):
        assert str(p) in msg
    assert "download=True" in msg and "ES_LOTTERY_IDX_DIR" in msg
    assert not (tmp_path / "tfds_dir" / "downloads").exists()  # nothing was downloaded


def test_explicit_idx_dir_is_the_only_place_searched(tmp_path, monkeypatch):
    # another usable copy exists (the env var's): an explicit idx_dir that is missing or empty must not
    # fall back to it, nor to tfds
    _fake_idx_dir(tmp_path / "env", 3, 2)
    monkeypatch.setenv("ES_LOTTERY_IDX_DIR", str(tmp_path / "env"))
    assert C.image_dataset("kmnist").x_train.shape == (3, 28, 28, 1)  # the copy is found without idx_dir
    with pytest.raises(FileNotFoundError, match=f"idx_dir {tmp_path / 'nonexistent'}: no such directory"):
        C.load_dataset("kmnist", idx_dir=tmp_path / "nonexistent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        C.image_dataset("kmnist", idx_dir=tmp_path / "empty", data_dir=tmp_path / "tfds_dir")
    msg = str(err.value)
    assert str(tmp_path / "empty" / "kmnist") in msg and str(tmp_path / "env") not in msg
    assert "idx_dir=" in msg and "skipped" in msg  # tfds was not tried either

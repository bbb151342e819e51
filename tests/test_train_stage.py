"""The train-or-load stage, run in-process on tiny data."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import yaml
from conftest import REPO

from pipeline.stages.data import _main as data_main
from pipeline.stages.train import _main as train_main
from pipeline.workspace import file_hash


@pytest.fixture
def digits_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {
        "name": "digits",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "probe_per_class": 1,
        "limit": 400,
    }
    params["model"] = {"name": "mlp", "dense_units": [16]}
    params["train"] = {**params["train"], "epochs": 2, "batch_size": 32}
    params["paths"] = {k: str(tmp_path / v) for k, v in params["paths"].items()}
    data_main(params)
    return params


def _weights(path):
    return [w for w in keras.saving.load_model(path).get_weights()]


def test_same_config_gives_the_same_model(digits_params):
    train_main(digits_params)
    first = _weights(digits_params["paths"]["model"])
    train_main(digits_params)
    second = _weights(digits_params["paths"]["model"])
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    digits_params["seed"] = 1
    train_main(digits_params)
    third = _weights(digits_params["paths"]["model"])
    assert not np.array_equal(first[0], third[0])


def test_evaluation_file_matches_an_independent_prediction(digits_params):
    train_main(digits_params)
    paths = digits_params["paths"]
    model = keras.saving.load_model(paths["model"])
    with h5py.File(paths["dataset"]) as f:
        x, y = f["test/x"][()], f["test/y"][()]
    with h5py.File(paths["evaluation"]) as f:
        assert np.array_equal(f["test/labels"][()], y)
        assert np.allclose(f["test/probabilities"][()], model.predict(x, verbose=0), atol=1e-5)
        assert len(f["history/loss"]) == 2 and len(f["history/val_accuracy"]) == 2
    import json
    from pathlib import Path

    metrics = json.loads((Path(paths["live"]) / "metrics.json").read_text())
    expected = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert metrics["test"]["accuracy"] == pytest.approx(expected)
    assert (Path(paths["live"]) / "plots/metrics/train/loss.tsv").exists()
    # The stage's DVC metric: the same accuracy, and the loss of the saved model.
    headline = json.loads((Path(paths["metrics"]) / "train.json").read_text())
    assert headline["accuracy"] == pytest.approx(expected)
    probabilities = model.predict(x, verbose=0)
    loss = -np.mean(np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1)))
    assert headline["loss"] == pytest.approx(loss, rel=1e-3)


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_pretrained_model_is_loaded_not_trained(digits_params, tmp_path, fmt):
    user = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    path = tmp_path / ("user_model" if fmt == "savedmodel" else f"user.{fmt}")
    if fmt == "savedmodel":
        user.export(str(path), verbose=False)
    else:
        user.save(path)
    # A SavedModel runs its stored graph functions when loaded: only with safe_mode off.
    safe_mode = fmt != "savedmodel"
    digits_params["model"] = {"name": "pretrained", "path": str(path), "safe_mode": safe_mode}
    train_main(digits_params)
    paths = digits_params["paths"]
    with h5py.File(paths["dataset"]) as f:
        x = f["test/x"][()]
    with h5py.File(paths["evaluation"]) as f:
        assert f.attrs["source_model_hash"] == file_hash(path)
        assert not f.attrs["trained"]
        assert np.allclose(f["test/probabilities"][()], user.predict(x, verbose=0), atol=1e-5)

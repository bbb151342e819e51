"""Every supported model source through `dvc exp run`: Keras 2 HDF5 files written by
tf-keras (in a subprocess, `TF_USE_LEGACY_KERAS=1`), a Keras 3 `.h5`, and a trusted
SavedModel. Predictions are checked against the writing library's own."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import run
from zoo import run_experiment, zoo_repo

KERAS2_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tf_keras as keras
    out, probe = sys.argv[1], np.load(sys.argv[2])
    keras.utils.set_random_seed(0)
    seq = keras.Sequential([
        keras.layers.Conv2D(4, 3, activation="relu", input_shape=(28, 28, 1)),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    # A Keras 2 optimizer argument (lr) that Keras 3 refuses: kerascope drops compile state.
    seq.compile(optimizer=keras.optimizers.Adam(lr=0.001), loss="sparse_categorical_crossentropy")
    i = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, padding="same")(i)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    r = keras.layers.SeparableConv2D(8, 3, padding="same")(x)
    r = keras.layers.BatchNormalization()(r)
    x = keras.layers.add([x, r])
    x = keras.layers.Conv2D(10, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    o = keras.layers.Activation("softmax", name="predictions")(x)
    residual = keras.Model(i, o)
    listed = keras.Model(i, [o])  # a single output stored as a one-element list
    for name, model in (("sequential", seq), ("residual", residual), ("listed", listed)):
        model.save(f"{out}/{name}.h5")
        predicted = np.asarray(model.predict(probe, verbose=0)).reshape(len(probe), -1)
        np.save(f"{out}/{name}.npy", predicted)
    """
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return zoo_repo(tmp_path_factory.mktemp("sources") / "repo")


@pytest.fixture(scope="module")
def keras2_files(repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras2")
    with h5py.File(repo / "data" / "dataset.h5") as f:
        np.save(folder / "probe.npy", f["probe/x"][()])
    env = {"TF_USE_LEGACY_KERAS": "1"}
    run(
        [sys.executable, "-c", KERAS2_SCRIPT, str(folder), str(folder / "probe.npy")],
        folder,
        env=env,
    )
    return folder


def _probabilities(repo):
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        return f["probabilities"][()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequential", "residual", "listed"])
def test_keras2_hdf5_files_run_every_stage(repo, keras2_files, name):
    proc = run_experiment(repo, keras2_files / f"{name}.h5", "none")
    expected = np.load(keras2_files / f"{name}.npy")
    np.testing.assert_allclose(_probabilities(repo), expected, rtol=1e-4, atol=1e-5)
    assert (repo / "outputs" / "report" / "index.html").exists()
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        assert f["methods/saliency/maps"].shape == (len(expected), 28, 28)
    if name != "sequential":
        assert (
            "dropped arguments Keras 3 does not take (SeparableConv2D" in proc.stdout + proc.stderr
        )


@pytest.mark.slow
def test_keras3_h5_and_trusted_savedmodel(repo, tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    with h5py.File(repo / "data" / "dataset.h5") as f:
        probe = f["probe/x"][()]
    model.save(tmp_path / "model.h5")
    run_experiment(repo, tmp_path / "model.h5", "none")
    np.testing.assert_allclose(_probabilities(repo), model.predict(probe, verbose=0), atol=1e-5)
    model.export(str(tmp_path / "saved"), verbose=False)
    # A SavedModel runs its stored graphs when loaded: only with safe_mode off. It has no
    # inspectable layers, so gradient methods work and CAMs need a layer it does not have.
    run_experiment(
        repo,
        tmp_path / "saved",
        "none",
        "model.safe_mode=false",
        "attribute.methods=[saliency,integrated_gradients]",
        "maximize.targets=[output]",
    )
    np.testing.assert_allclose(_probabilities(repo), model.predict(probe, verbose=0), atol=1e-5)
    metrics = json.loads((repo / "outputs" / "metrics" / "attribute.json").read_text())
    assert set(metrics) == {"saliency", "integrated_gradients", "random"}
    assert os.path.exists(repo / "outputs" / "report" / "index.html")

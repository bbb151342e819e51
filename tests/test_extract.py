"""Extraction: activations equal independent computations; the HDF5 layout; health."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import write_tiny_project

from pipeline.activations import ActivationHealth, extract_activations
from pipeline.errors import KerascopeError

rng = np.random.default_rng(0)


def _x(*shape):
    return rng.random(shape).astype("float32")


def test_sequential_matches_functional_submodels():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="c1"),
            keras.layers.MaxPooling2D(2, name="p1"),
            keras.layers.Flatten(name="f"),
            keras.layers.Dense(4, activation="tanh", name="d"),
        ]
    )
    x = _x(7, 12, 12, 1)
    acts = extract_activations(model, x, "all", batch_size=3)
    for name in ("c1", "p1", "f", "d"):
        sub = keras.Model(model.inputs, model.get_layer(name).output)
        np.testing.assert_allclose(acts[name], sub.predict(x, verbose=0), atol=1e-5)


def test_nested_base_model_inner_layers_by_path():
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="block1_conv1")(inner_in)
    h = keras.layers.Conv2D(2, 3, name="block1_conv2")(h)
    base = keras.Model(inner_in, h, name="base")
    model = keras.Sequential(
        [keras.Input((10, 10, 3)), base, keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    x = _x(5, 10, 10, 3)
    acts = extract_activations(model, x, ["base/block1_conv1", "base/block1_conv2"])
    conv = base.get_layer("block1_conv1")
    manual = tf.nn.relu(tf.nn.conv2d(x, conv.kernel, 1, "VALID") + conv.bias).numpy()
    np.testing.assert_allclose(acts["base/block1_conv1"], manual, atol=1e-5)
    inner = keras.Model(base.inputs, base.get_layer("block1_conv2").output)
    np.testing.assert_allclose(acts["base/block1_conv2"], inner.predict(x, verbose=0), atol=1e-5)


def test_multi_input_multi_output_and_shared_layer():
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    shared = keras.layers.Dense(2, name="shared")
    cat = keras.layers.Concatenate(name="cat")([shared(a), shared(b)])
    out1 = keras.layers.Dense(1, name="o1")(cat)
    out2 = keras.layers.Dense(2, name="o2")(cat)
    model = keras.Model([a, b], [out1, out2])
    # Hand-set weights so the expected values are known without Keras.
    shared.set_weights(
        [np.array([[1, 0], [0, 1], [1, 1]], "float32"), np.array([0.5, -1], "float32")]
    )
    xa = np.array([[1, 2, 3]], "float32")
    xb = np.array([[0, 1, 0]], "float32")
    acts = extract_activations(model, [xa, xb], ["shared", "shared@1", "cat"])
    np.testing.assert_allclose(acts["shared"], [[4.5, 4.0]])
    np.testing.assert_allclose(acts["shared@1"], [[0.5, 0.0]])
    np.testing.assert_allclose(acts["cat"], [[4.5, 4.0, 0.5, 0.0]])


def test_recurrent_full_sequence_and_embedding_inference_layers():
    keras.utils.set_random_seed(2)
    tokens = keras.Input((6,), dtype="int32")
    e = keras.layers.Embedding(20, 4, name="emb")(tokens)
    e = keras.layers.Dropout(0.5, name="drop")(e)
    e = keras.layers.BatchNormalization(name="bn")(e)
    seq = keras.layers.LSTM(3, return_sequences=True, name="lstm")(e)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(seq))
    model = keras.Model(tokens, out)
    x = rng.integers(0, 20, (4, 6)).astype("int32")
    acts = extract_activations(model, x, ["emb", "drop", "bn", "lstm"])
    assert acts["lstm"].shape == (4, 6, 3)
    emb = model.get_layer("emb").embeddings.numpy()[x]
    np.testing.assert_allclose(acts["emb"], emb)
    np.testing.assert_allclose(acts["drop"], emb)  # Dropout is the identity at inference
    bn = model.get_layer("bn")
    expected_bn = (emb - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    np.testing.assert_allclose(
        acts["bn"], expected_bn * bn.gamma.numpy() + bn.beta.numpy(), atol=1e-5
    )
    # The LSTM's states, step by step, from its own cell: an independent unrolling.
    cell = model.get_layer("lstm").cell
    h = tf.zeros((4, 3))
    c = tf.zeros((4, 3))
    for t in range(6):
        h, (h, c) = cell(tf.constant(acts["bn"][:, t]), [h, c], training=False)
        np.testing.assert_allclose(acts["lstm"][:, t], h.numpy(), atol=1e-5)


def test_unknown_layer_lists_valid_names():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense_a")])
    with pytest.raises(KerascopeError, match="did you mean 'dense_a'"):
        extract_activations(model, _x(2, 3), ["dense_b"])


def test_health_rules_on_constructed_activations():
    health = ActivationHealth({"relu": "relu", "tanh": "tanh"})
    relu = np.zeros((100, 4))
    relu[:, 1] = 1.0  # alive, typical
    relu[:, 2] = -1.0  # dead (never above zero)
    relu[:, 3] = 1.0
    relu[::2, 0] = 0.5
    tanh = np.full((100, 2), 0.1)
    tanh[:, 1] = 0.999  # saturated
    tanh[0, 0] = np.nan
    health.update({"relu": relu[:50], "tanh": tanh[:50]})
    health.update({"relu": relu[50:], "tanh": tanh[50:]})
    report = health.summary()
    assert report["relu"]["dead_fraction"] == 0.25
    assert report["tanh"]["saturated_fraction"] == 0.5
    assert report["tanh"]["nonfinite_fraction"] == pytest.approx(1 / 200)
    assert report["relu"]["mean"] == pytest.approx(relu.mean())
    assert report["relu"]["std"] == pytest.approx(relu.std())
    # An exploding unit is flagged for an unbounded activation.
    big = np.ones((200, 30))
    big[:, 0] = 1000.0
    h2 = ActivationHealth({"x": "relu"})
    h2.update({"x": big})
    assert h2.summary()["x"]["saturated_fraction"] == pytest.approx(1 / 30)


# --- the stage, on a tiny data set and model written to tmp_path -------------------


def test_stage_writes_the_documented_layout(tmp_path, monkeypatch):
    from pipeline.stages.extract import _main

    params, x, model = write_tiny_project(tmp_path)
    params["extract"] = {"batch_size": 16, "compression": "lzf"}
    _main(params)
    with h5py.File(params["paths"]["activations"]) as f:
        assert f.attrs["kerascope_format"] == "activations/2"
        for key in (
            "model_hash",
            "data_hash",
            "config_yaml",
            "kerascope_version",
            "tensorflow_version",
        ):
            assert f.attrs[key]
        np.testing.assert_array_equal(f["inputs"][()], x)
        np.testing.assert_array_equal(f["labels"][()], np.arange(40) % 4)
        np.testing.assert_allclose(f["predictions"][()], model.predict(x, verbose=0), atol=1e-5)
        conv = f["activations/conv"]
        assert conv.shape == (40, 6, 6, 3) and conv.maxshape[0] is None and conv.chunks
        assert conv.compression == "lzf"
        assert conv.attrs["class_name"] == "Conv2D" and conv.attrs["layer_path"] == "conv"
        assert conv.attrs["activation"] == "relu" and conv.attrs["position"] == 0
        assert list(conv.attrs["output_shape"]) == [6, 6, 3]
        sub = keras.Model(model.inputs, model.get_layer("conv").output)
        np.testing.assert_allclose(conv[()], sub.predict(x, verbose=0), atol=1e-5)
    health = json.loads((tmp_path / "outputs" / "metrics" / "layer_health.json").read_text())
    assert set(health["layers"]) == {"conv", "flat", "out"}


def test_stage_selection_by_indices_and_type(tmp_path):
    from pipeline.stages.extract import _main

    params, x, model = write_tiny_project(tmp_path)
    params["extract"] = {"layers": ["Dense"], "source": "test", "indices": [3, 1]}
    _main(params)
    with h5py.File(params["paths"]["activations"]) as f:
        assert list(f["activations"]) == ["out"]
        np.testing.assert_array_equal(f["index"][()], [3, 1])
        np.testing.assert_array_equal(f["inputs"][()], x[[3, 1]])
    params["extract"] = {"indices": [99]}
    with pytest.raises(KerascopeError, match="out of range"):
        _main(params)


def test_nan_inputs_and_wrong_shapes_are_refused(tmp_path):
    from pipeline.stages.extract import _main

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d")])
    params, _, _ = write_tiny_project(tmp_path, model=model)
    params["extract"] = {}
    with pytest.raises(KerascopeError, match=r"expects inputs of shape \(5,\)"):
        _main(params)
    assert not os.path.exists(params["paths"]["activations"])


@pytest.mark.slow
def test_killed_extraction_leaves_no_final_file(tmp_path):
    big = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(64, 3, padding="same", name="wide")]
        + [keras.layers.Conv2D(64, 3, padding="same", name=f"w{i}") for i in range(6)]
    )
    params, _, _ = write_tiny_project(tmp_path, n=4000, model=big)
    params["extract"] = {"batch_size": 64, "compression": "gzip"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.extract"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "KERASCOPE_ROOT": str(tmp_path)},
    )
    out_dir = tmp_path / "outputs"
    deadline = time.time() + 120
    while time.time() < deadline and not any(out_dir.glob(".tmp-activations*")):
        time.sleep(0.05)
    time.sleep(1.0)  # well into the write
    assert proc.poll() is None, "extraction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out_dir / "activations.h5").exists()
    assert not (out_dir / "metrics" / "extract.json").exists()
    assert not (out_dir / "metrics" / "layer_health.json").exists()


def test_extraction_batches_stay_within_the_memory_budget(tmp_path, monkeypatch, capsys):
    import pipeline.budget as budget
    from pipeline.stages.extract import _main

    params, x, model = write_tiny_project(tmp_path)
    paths = ["conv", "flat", "out"]
    # Counted by hand: conv 6*6*3 = 108, flat 108, out 4 values a row; 2 batches of float32.
    per_row = 2 * 4 * (108 + 108 + 4)
    assert budget.extraction_batch_rows(model, paths, 256, budget=per_row * 7) == 7
    assert budget.extraction_batch_rows(model, paths, 5, budget=per_row * 7) == 5
    assert budget.extraction_batch_rows(model, paths, 256, budget=1) == 1
    # Through the stage: a budget of 7 rows gives 7-input batches and the same file.
    monkeypatch.setattr(budget, "DEFAULT_MEMORY_BUDGET", per_row * 7)
    params["extract"] = {"batch_size": 16}
    _main(params)
    assert "note: extract: 7 inputs per batch" in capsys.readouterr().out
    with h5py.File(params["paths"]["activations"]) as f:
        sub = keras.Model(model.inputs, model.get_layer("conv").output)
        np.testing.assert_allclose(f["activations/conv"][()], sub.predict(x, verbose=0), atol=1e-5)
        np.testing.assert_allclose(f["predictions"][()], model.predict(x, verbose=0), atol=1e-5)

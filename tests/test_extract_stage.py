"""Extract stage on tiny projects: layouts of nested and multi-output models, health
metrics against numpy, NaN handling, failed runs, and the streaming library API."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
from conftest import write_tiny_project

from pipeline.activations import ActivationHealth, extract_activations, iter_activations
from pipeline.errors import KerascopeError


def _nested_multi_output_model() -> keras.Model:
    """A base model inside a Functional model with two outputs (transfer-learning shape)."""
    keras.utils.set_random_seed(3)
    inner_in = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="block1_conv1")(inner_in)
    h = keras.layers.Conv2D(2, 3, activation="tanh", name="block1_conv2")(h)
    base = keras.Model(inner_in, h, name="base")
    x = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten(name="flat")(base(x))
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(flat)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(flat)
    return keras.Model(x, [probs, score])


def test_stage_nested_and_multi_output_layout(tmp_path):
    from pipeline.stages.extract import _main

    params, x, model = write_tiny_project(tmp_path, model=_nested_multi_output_model())
    params["extract"] = {"batch_size": 16}
    _main(params)
    base = model.get_layer("base")
    with h5py.File(params["paths"]["activations"]) as f:
        # "all" stores the inner layers, not the nested model's duplicate output.
        stored = []
        f.visititems(lambda name, obj: stored.append(obj.attrs.get("layer_path")))
        stored = [s for s in stored if s]
        assert stored == ["base/block1_conv1", "base/block1_conv2", "flat", "probs", "score"]
        inner = keras.Model(base.inputs, base.get_layer("block1_conv1").output)
        np.testing.assert_allclose(
            f["activations/base/block1_conv1"][()], inner.predict(x, verbose=0), atol=1e-5
        )
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(f["predictions/0"][()], expected[0], atol=1e-5)
        np.testing.assert_allclose(f["predictions/1"][()], expected[1], atol=1e-5)
        attrs = f["activations/base/block1_conv2"].attrs
        assert attrs["activation"] == "tanh" and attrs["config_name"] == "block1_conv2"
        # Chunks divide the batch size, so batches fill whole chunks.
        for name in ("inputs", "activations/flat", "predictions/0"):
            assert 16 % f[name].chunks[0] == 0 and f[name].maxshape[0] is None

    # Asking for the nested model itself stores its output under "_output".
    params["extract"] = {"layers": ["base", "base/block1_conv2"]}
    _main(params)
    with h5py.File(params["paths"]["activations"]) as f:
        np.testing.assert_allclose(
            f["activations/base/_output"][()], base.predict(x, verbose=0), atol=1e-5
        )
        assert f["activations/base/_output"].attrs["layer_path"] == "base"
        np.testing.assert_array_equal(
            f["activations/base/_output"][()], f["activations/base/block1_conv2"][()]
        )


def test_stage_health_metrics_match_numpy(tmp_path):
    from pipeline.stages.extract import _main

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(6, activation="tanh", name="t"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    conv = model.get_layer("conv")
    kernel, bias = conv.get_weights()
    bias[:3] = -100.0  # three channels can never fire: dead
    conv.set_weights([kernel, bias])
    tanh = model.get_layer("t")
    w, b = tanh.get_weights()
    b[:2] = [50.0, -50.0]  # two units pinned at +1 / -1: saturated
    tanh.set_weights([w, b])
    params, _, _ = write_tiny_project(tmp_path, n=37, model=model)  # 37: a ragged last batch
    params["extract"] = {"batch_size": 8}
    _main(params)
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "layer_health.json").read_text())
    overall = json.loads((tmp_path / "outputs" / "metrics" / "extract.json").read_text())
    dead_units = total_units = 0
    with h5py.File(params["paths"]["activations"]) as f:
        for path in ("conv", "flat", "t", "out"):
            a = f[f"activations/{path}"][()].astype(np.float64)
            units = a.reshape(-1, a.shape[-1])
            m = metrics["layers"][path]
            assert m["mean"] == pytest.approx(units.mean(), rel=1e-4, abs=1e-6)
            assert m["std"] == pytest.approx(units.std(), rel=1e-3, abs=1e-6)
            assert m["dead_fraction"] == pytest.approx((units.max(axis=0) <= 0).mean())
            assert m["nonfinite_fraction"] == 0.0
            dead_units += int((units.max(axis=0) <= 0).sum())
            total_units += units.shape[1]
    assert metrics["layers"]["conv"]["dead_fraction"] == pytest.approx(3 / 8)
    # The headline metric: dead units over all units of every layer (unit-weighted).
    assert set(overall) == {"dead_fraction", "saturated_fraction"}
    assert overall["dead_fraction"] == pytest.approx(dead_units / total_units)
    assert metrics["layers"]["t"]["saturated_fraction"] == pytest.approx(2 / 6)


def test_stage_nan_is_loud_and_can_fail(tmp_path, capsys):
    from pipeline.stages.extract import _main

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="flat")])
    dense = keras.layers.Dense(3, name="d")
    model.add(dense)
    w, b = dense.get_weights()
    w[0, 1] = np.nan  # unit 1 is NaN for every input
    dense.set_weights([w, b])
    params, _, _ = write_tiny_project(tmp_path, n=10, model=model)
    params["extract"] = {"fail_on_nonfinite": True}
    with pytest.raises(KerascopeError, match=r"layer 'd' produced 10 NaN/Inf values"):
        _main(params)
    assert not (tmp_path / "outputs" / "activations.h5").exists()
    assert not list((tmp_path / "outputs").glob(".tmp-*"))

    params["extract"] = {}
    _main(params)
    err = capsys.readouterr().err
    assert "WARNING: extract: layer 'd' has 33.33% NaN/Inf values" in err
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "layer_health.json").read_text())
    assert metrics["layers"]["d"]["nonfinite_fraction"] == pytest.approx(1 / 3)
    assert metrics["layers"]["flat"]["nonfinite_fraction"] == 0.0
    with h5py.File(params["paths"]["activations"]) as f:
        d = f["activations/d"][()]
        assert np.isnan(d[:, 1]).all() and np.isfinite(d[:, [0, 2]]).all()
        # The finite units' statistics leave the NaN out.
        assert metrics["layers"]["d"]["mean"] == pytest.approx(d[:, [0, 2]].mean(), rel=1e-5)


def test_error_inside_the_write_leaves_no_file_and_removes_stale(tmp_path, monkeypatch):
    from pipeline import activations
    from pipeline.stages import extract

    params, _, _ = write_tiny_project(tmp_path)
    params["extract"] = {"batch_size": 8}
    extract._main(params)  # a complete earlier run
    final = tmp_path / "outputs" / "activations.h5"
    assert final.exists()
    real = activations.iter_activations

    def failing(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise RuntimeError("disk full")
            yield batch

    monkeypatch.setattr(activations, "iter_activations", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        extract._main(params)
    # Neither the new partial file nor the old one (from another config) is left.
    assert not final.exists()
    assert not (tmp_path / "outputs" / "metrics" / "extract.json").exists()
    assert not list((tmp_path / "outputs").glob(".tmp-*"))


def test_stage_unknown_layer_is_one_line_with_valid_names(tmp_path):
    from pipeline.stages.extract import _main

    params, _, _ = write_tiny_project(tmp_path)
    params["extract"] = {"layers": ["conv9"]}
    with pytest.raises(KerascopeError) as info:
        _main(params)
    message = str(info.value)
    assert "\n" not in message and "'conv9'" in message and "conv" in message


def test_library_input_mismatch_is_one_line():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten()])
    with pytest.raises(KerascopeError, match=r"expects inputs of shape \(4, 4, 1\) but got"):
        extract_activations(model, np.zeros((2, 5, 5, 1), "float32"))
    a, b = keras.Input((2,)), keras.Input((3,))
    two = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    with pytest.raises(KerascopeError, match="takes 2 inputs but 1 were given"):
        extract_activations(two, [np.zeros((2, 2), "float32")])


def test_batchnorm_uses_moving_statistics_and_dropout_is_identity():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dropout(0.9, name="drop"),
            keras.layers.BatchNormalization(epsilon=0.0, name="bn"),
        ]
    )
    bn = model.get_layer("bn")
    # gamma, beta, moving mean, moving variance: hand-set, so the output is known.
    bn.set_weights(
        [
            np.array([1.0, 2.0, 0.5], "float32"),
            np.array([0.0, 1.0, -1.0], "float32"),
            np.array([1.0, -2.0, 4.0], "float32"),
            np.array([4.0, 1.0, 0.25], "float32"),
        ]
    )
    x = np.array([[3.0, 0.0, 4.5], [1.0, -2.0, 3.0]], "float32")
    acts = extract_activations(model, x, ["drop", "bn"])
    np.testing.assert_array_equal(acts["drop"], x)
    # (x - mean) / sqrt(var) * gamma + beta, with the batch's own statistics ignored.
    np.testing.assert_allclose(acts["bn"], [[1.0, 5.0, -0.5], [0.0, 1.0, -2.0]], atol=1e-6)


def test_streaming_from_h5py_equals_in_memory(tmp_path):
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu", name="d")]
    )
    x = np.random.default_rng(1).random((23, 5)).astype("float32")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "x.h5") as f:
        batches = list(iter_activations(model, f["x"], "d", batch_size=10))
    assert [b.start for b in batches] == [0, 10, 20]
    streamed = np.concatenate([b.activations["d"] for b in batches])
    w, b = model.get_layer("d").get_weights()
    np.testing.assert_allclose(streamed, np.maximum(x @ w + b, 0), atol=1e-6)


def test_health_std_is_accurate_for_large_means():
    rng = np.random.default_rng(2)
    values = 1e4 + rng.standard_normal((4000, 3))
    health = ActivationHealth({"x": "linear"})
    for start in range(0, 4000, 512):
        health.update({"x": values[start : start + 512]})
    report = health.summary()["x"]
    assert report["std"] == pytest.approx(values.std(), rel=1e-3)
    assert report["mean"] == pytest.approx(values.mean(), rel=1e-6)

"""The model zoo and safe loading of user models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.errors import KerascopeError
from pipeline.models import build_model, check_input_shape, load_model_file


def test_mnist_cnn_is_the_tutorial_architecture():
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    summary = [(type(layer).__name__, layer.output.shape[1:]) for layer in model.layers]
    assert summary == [
        ("Conv2D", (24, 24, 6)),
        ("MaxPooling2D", (12, 12, 6)),
        ("Conv2D", (8, 8, 10)),
        ("Flatten", (640,)),
        ("Dense", (256,)),
        ("Dense", (10,)),
    ]
    assert model.layers[0].kernel.shape == (5, 5, 1, 6)
    assert model.layers[-1].activation.__name__ == "softmax"


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("vgg_small", (32, 32, 3)),
        ("vgg_small", (28, 28, 1)),
        ("mlp", (8, 8, 1)),
        ("lstm", (28, 28, 1)),
    ],
)
def test_zoo_models_predict_probabilities(name, shape):
    model = build_model(name, shape, 10)
    out = model(np.random.default_rng(0).random((2, *shape), np.float32))
    assert out.shape == (2, 10) and np.allclose(np.sum(out, axis=1), 1.0, atol=1e-5)


def test_lstm_reads_image_rows_as_time_steps():
    model = build_model("lstm", (28, 28, 1), 10)
    assert model.get_layer("lstm1").output.shape == (None, 28, 32)


def test_unknown_model_and_bad_input_shape():
    with pytest.raises(KerascopeError, match="did you mean 'mlp'"):
        build_model("mpl", (8, 8, 1), 10)
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    with pytest.raises(
        KerascopeError, match=r"expects inputs of shape \(28, 28, 1\).*\(32, 32, 3\)"
    ):
        check_input_shape(model, (32, 32, 3))
    with pytest.raises(KerascopeError, match="cannot be built"):
        build_model("mnist_cnn", (8, 8, 1), 10)


def _tiny():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])


def test_round_trip_keras_and_h5(tmp_path):
    model = _tiny()
    x = np.ones((1, 3), np.float32)
    for name in ("m.keras", "m.h5"):
        model.save(tmp_path / name)
        loaded = load_model_file(tmp_path / name)
        assert np.allclose(loaded(x), model(x))


def test_bad_model_files_are_one_line(tmp_path):
    with pytest.raises(KerascopeError, match="does not exist"):
        load_model_file(tmp_path / "nope.keras")
    _tiny().save(tmp_path / "ok.keras")
    data = (tmp_path / "ok.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(KerascopeError, match="truncated"):
        load_model_file(tmp_path / "cut.keras")
    (tmp_path / "text.h5").write_text("not a model")
    with pytest.raises(KerascopeError) as info:
        load_model_file(tmp_path / "text.h5")
    assert "\n" not in str(info.value)
    (tmp_path / "x.pkl").write_text("")
    with pytest.raises(KerascopeError, match="unknown type"):
        load_model_file(tmp_path / "x.pkl")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_by_default(tmp_path, suffix):
    marker = tmp_path / "pwned"
    inputs = keras.Input((2,))
    # The lambda would create a file if its bytecode ran at load time.
    payload = eval(f"lambda t: t + 0 * len(open({str(marker)!r}, 'w').name)")  # noqa: S307
    outputs = keras.layers.Lambda(payload)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / f"lambda{suffix}")
    marker.unlink(missing_ok=True)
    with pytest.raises(KerascopeError, match="safe_mode=false"):
        load_model_file(tmp_path / f"lambda{suffix}")
    assert not marker.exists()
    model = load_model_file(tmp_path / f"lambda{suffix}", safe_mode=False)
    assert model is not None

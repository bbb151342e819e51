"""The model zoo and safe loading of users' models.

Builders return uncompiled Keras 3 models with named layers, so layer paths in configs
and HDF5 files are stable across runs.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras

from pipeline.errors import KerascopeError, choices_hint


def mnist_cnn(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The small convnet of the Keras/keract MNIST tutorials.

    Conv2D(6, 5x5, relu) > MaxPooling2D(2) > Conv2D(10, 5x5, relu) > Flatten >
    Dense(256, relu) > Dense(num_classes, softmax).
    """
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape), name="image"),
            keras.layers.Conv2D(6, 5, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(10, 5, activation="relu", name="conv2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(256, activation="relu", name="dense1"),
            keras.layers.Dense(num_classes, activation="softmax", name="predictions"),
        ],
        name="mnist_cnn",
    )


def vgg_small(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64),
    dense_units: Sequence[int] = (64,),
    dropout: float = 0.25,
) -> keras.Model:
    """A few VGG-style blocks (Simonyan & Zisserman 2015): two 3x3 convs and a pool each.

    Blocks whose input would shrink below 2x2 are dropped, so the model also fits 28x28
    and 8x8 inputs.
    """
    layers: list = [keras.Input(tuple(input_shape), name="image")]
    size = min(input_shape[0], input_shape[1])
    for b, width in enumerate(filters, start=1):
        if size < 2 and b > 1:
            break
        layers += [
            keras.layers.Conv2D(
                width, 3, padding="same", activation="relu", name=f"block{b}_conv1"
            ),
            keras.layers.Conv2D(
                width, 3, padding="same", activation="relu", name=f"block{b}_conv2"
            ),
            keras.layers.MaxPooling2D(2, name=f"block{b}_pool"),
        ]
        size //= 2
    layers.append(keras.layers.Flatten(name="flatten"))
    for d, units in enumerate(dense_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"fc{d}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{d}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions"))
    return keras.Sequential(layers, name="vgg_small")


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    dense_units: Sequence[int] = (128, 64),
    dropout: float = 0.0,
) -> keras.Model:
    """A multi-layer perceptron on the flattened input."""
    layers: list = [
        keras.Input(tuple(input_shape), name="image"),
        keras.layers.Flatten(name="flatten"),
    ]
    for d, units in enumerate(dense_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"dense{d}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{d}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions"))
    return keras.Sequential(layers, name="mlp")


def lstm(
    input_shape: Sequence[int], num_classes: int, recurrent_units: Sequence[int] = (32, 32)
) -> keras.Model:
    """Image rows as time steps: (H, W, C) -> (H, W*C) -> stacked LSTMs -> Dense.

    Every LSTM but the last returns its full sequence, so the recurrent states over time
    can be inspected; sequence inputs (T, F) are used as they are.
    """
    shape = tuple(input_shape)
    layers: list = [keras.Input(shape, name="image")]
    if len(shape) == 3:
        layers.append(keras.layers.Reshape((shape[0], shape[1] * shape[2]), name="rows"))
    for r, units in enumerate(recurrent_units, start=1):
        last = r == len(recurrent_units)
        layers.append(keras.layers.LSTM(units, return_sequences=not last, name=f"lstm{r}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions"))
    return keras.Sequential(layers, name="lstm")


BUILDERS = {"mnist_cnn": mnist_cnn, "vgg_small": vgg_small, "mlp": mlp, "lstm": lstm}
MODEL_NAMES = (*BUILDERS, "pretrained")


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> keras.Model:
    """Build a model of the zoo by name.

    Args:
        name: One of :data:`BUILDERS`.
        input_shape: Input shape without the batch axis.
        num_classes: Number of output classes.
        **options: Builder options (for example ``filters`` for ``vgg_small``).

    Raises:
        KerascopeError: Unknown name, or an input too small for the architecture.
    """
    if name not in BUILDERS:
        raise KerascopeError(f"unknown model '{name}'; {choices_hint(name, MODEL_NAMES)}")
    try:
        return BUILDERS[name](tuple(input_shape), num_classes, **options)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise KerascopeError(
            f"model '{name}' cannot be built for input shape {tuple(input_shape)}: {first}"
        ) from None


def load_model_file(path: str | os.PathLike, safe_mode: bool = True) -> keras.Model:
    """Load a user's model from ``.keras``, legacy ``.h5`` or a SavedModel directory.

    ``safe_mode`` stays on by default: Keras then refuses to deserialize Lambda layers,
    whose Python bytecode would otherwise run on load.

    Args:
        path: The model file or SavedModel directory.
        safe_mode: Keras' safe mode; turn off only for files you trust.

    Returns:
        The loaded model (a SavedModel is wrapped as an inference-only layer).

    Raises:
        KerascopeError: Missing, truncated or not a model, or blocked by safe mode.
    """
    path = Path(path)
    if not path.exists():
        raise KerascopeError(f"model file '{path}' does not exist")
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise KerascopeError(
                    f"'{path}' is a directory but not a SavedModel (no saved_model.pb)"
                )
            return _load_saved_model(path)
        suffix = path.suffix.lower()
        if suffix == ".keras" and not zipfile.is_zipfile(path):
            raise KerascopeError(f"model file '{path}' is truncated or not a .keras archive")
        if suffix not in (".keras", ".h5", ".hdf5"):
            raise KerascopeError(
                f"model file '{path}' has unknown type '{suffix}'; valid: .keras, .h5, "
                "or a SavedModel directory"
            )
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except KerascopeError:
        raise
    except Exception as exc:  # Keras raises many types; report them as one line.
        message = " ".join(str(exc).split())
        if "safe_mode" in message or "Lambda" in message:
            raise KerascopeError(
                f"refusing to load '{path}': it contains a Lambda layer whose code would run "
                "on load (Keras safe_mode); if you trust the file, set model.safe_mode=false"
            ) from None
        raise KerascopeError(f"cannot load model '{path}': {message[:300]}") from None


def _load_saved_model(path: Path) -> keras.Model:
    """Wrap a TensorFlow SavedModel as a Keras model (inference only, no inner layers)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise KerascopeError(f"SavedModel '{path}' has no serving_default signature")
    spec = list(signature.structured_input_signature[1].values())[0]
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default", name="saved_model")
    inputs = keras.Input(tuple(spec.shape[1:]), name="image")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        outputs = list(outputs.values())[0]
    return keras.Model(inputs, outputs, name=path.name)


def check_input_shape(model: keras.Model, input_shape: Sequence[int]) -> None:
    """Raise a one-line error unless the model accepts inputs of ``input_shape``.

    Args:
        model: The model.
        input_shape: The data's shape without the batch axis.
    """
    expected = model.inputs[0].shape[1:] if model.inputs else None
    if expected is None:
        return
    given = tuple(input_shape)
    ok = len(expected) == len(given) and all(
        e is None or e == g for e, g in zip(expected, given, strict=True)
    )
    if not ok:
        raise KerascopeError(
            f"model '{model.name}' expects inputs of shape {tuple(expected)} but the data has "
            f"shape {given}; choose matching data or model"
        )

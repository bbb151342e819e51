"""The model zoo and safe loading of users' models.

Builders return uncompiled Keras 3 models with named layers, so layer paths in configs
and HDF5 files are stable across runs. Each builder's keyword parameters are its config
options (``model.filters`` and so on): :func:`builder_options` reads them from the
signature, so no option is declared twice. Keras is imported inside the functions, so
checking a config does not import TensorFlow.
"""

from __future__ import annotations

import inspect
import os
import re
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.distribute import STRATEGIES
from pipeline.errors import KerascopeError, check_choice, check_positive, choices_hint

if TYPE_CHECKING:
    import keras


def mnist_cnn(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The small convnet of the Keras/keract MNIST tutorials.

    Conv2D(6, 5x5, relu) > MaxPooling2D(2) > Conv2D(10, 5x5, relu) > Flatten >
    Dense(256, relu) > Dense(num_classes, softmax).
    """
    import keras

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
    import keras

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
    layers += _dense_head(dense_units, dropout, num_classes, prefix="fc")
    return keras.Sequential(layers, name="vgg_small")


def _dense_head(units_per_layer, dropout: float, num_classes: int, prefix: str) -> list:
    """ReLU dense layers (``<prefix>1``, ...), each with optional dropout, then softmax."""
    import keras

    layers: list = []
    for d, units in enumerate(units_per_layer, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"{prefix}{d}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{d}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions"))
    return layers


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    dense_units: Sequence[int] = (128, 64),
    dropout: float = 0.0,
) -> keras.Model:
    """A multi-layer perceptron on the flattened input."""
    import keras

    head = _dense_head(dense_units, dropout, num_classes, prefix="dense")
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape), name="image"),
            keras.layers.Flatten(name="flatten"),
            *head,
        ],
        name="mlp",
    )


def lstm(
    input_shape: Sequence[int], num_classes: int, recurrent_units: Sequence[int] = (32, 32)
) -> keras.Model:
    """Image rows as time steps: (H, W, C) -> (H, W*C) -> stacked LSTMs -> Dense.

    Every LSTM but the last returns its full sequence, so the recurrent states over time
    can be inspected; sequence inputs (T, F) are used as they are.
    """
    import keras

    shape = tuple(input_shape)
    layers: list = [keras.Input(shape, name="image")]
    if len(shape) == 3:
        layers.append(keras.layers.Reshape((shape[0], shape[1] * shape[2]), name="rows"))
    for r, units in enumerate(recurrent_units, start=1):
        last = r == len(recurrent_units)
        layers.append(keras.layers.LSTM(units, return_sequences=not last, name=f"lstm{r}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions"))
    return keras.Sequential(layers, name="lstm")


def text_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int = 0,
    embedding_dim: int = 16,
    filters: int = 16,
    kernel_size: int = 3,
) -> keras.Model:
    """A small text classifier after Kim (2014): Embedding > Conv1D > max pool > Dense.

    Token ids (T,) -> Embedding -> Conv1D(relu) -> global max pooling -> Dense(softmax).

    ``vocab_size`` 0 means "from the data" (the train stage passes the largest token id
    + 1). The embedding keeps ``mask_zero=False``, so attribution can start at its output
    (``pipeline.attribution.text``); padding (id 0) is a token the model learns to ignore.
    """
    import keras

    if len(input_shape) != 1:
        raise ValueError(
            f"text_cnn reads token ids of shape (T,), not {tuple(input_shape)} "
            "(use data=synthetic_text, or data=npz with data.tokens=true)"
        )
    if vocab_size <= 0:
        raise ValueError("model.vocab_size must be positive (0: taken from the data)")
    # Functional, not Sequential: attribution rebuilds the model from the embedding's
    # output on (pipeline.attribution.text.split_at_embedding).
    ids = keras.Input(tuple(input_shape), dtype="int32", name="tokens")
    x = keras.layers.Embedding(int(vocab_size), int(embedding_dim), name="embedding")(ids)
    x = keras.layers.Conv1D(
        int(filters), int(kernel_size), padding="same", activation="relu", name="conv"
    )(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(ids, out, name="text_cnn")


def volume_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (8, 16),
    dense_units: Sequence[int] = (),
) -> keras.Model:
    """A small 3-D convnet for volumes (D, H, W, C), such as CT or MRI scans.

    3-D convolutions as in Ji, Xu, Yang & Yu (2013), "3D Convolutional Neural Networks
    for Human Action Recognition"; 3x3x3 blocks as in Cicek et al. (2016), "3D U-Net".

    A Conv3D(width, 3x3x3, same, relu) per entry of ``filters``, each but the last
    followed by MaxPooling3D(2) (dropped once the volume would fall below 2 per axis),
    then Flatten, optional dense layers and Dense(num_classes, softmax). Flattening
    (not global pooling) keeps *where* a feature fires, which classes defined by
    position need.
    """
    import keras

    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ValueError(f"volume_cnn needs volumes (D, H, W, C), got input shape {shape}")
    layers: list = [keras.Input(shape, name="volume")]
    size = min(shape[:3])
    for b, width in enumerate(filters, start=1):
        layers.append(
            keras.layers.Conv3D(width, 3, padding="same", activation="relu", name=f"conv{b}")
        )
        if b < len(filters) and size >= 4:
            layers.append(keras.layers.MaxPooling3D(2, name=f"pool{b}"))
            size //= 2
    layers.append(keras.layers.Flatten(name="flatten"))
    layers += _dense_head(dense_units, 0.0, num_classes, prefix="dense")
    return keras.Sequential(layers, name="volume_cnn")


def _transformer_layers():
    """The ViT's own layers (class token, position embedding, token select), defined once.

    Keras has no layer that prepends a learnable token, adds a learnable position
    table or selects one token, and a Lambda layer would be refused by safe_mode on
    load; these small layers are registered under the ``kerascope`` package, so any
    stage that imports this module loads a saved ViT without ``custom_modules``.
    """
    global _VIT_LAYERS
    if _VIT_LAYERS is not None:
        return _VIT_LAYERS
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="kerascope")
    class ClassToken(keras.layers.Layer):
        """Prepend one learnable token to a sequence (N, P, C) -> (N, 1 + P, C)."""

        def build(self, input_shape):
            self.token = self.add_weight(
                shape=(1, 1, int(input_shape[-1])), initializer="zeros", name="token"
            )

        def call(self, tokens):
            # zeros_like(first token) + token broadcasts it over a symbolic batch size.
            first = ops.zeros_like(tokens[:, :1, :]) + ops.cast(self.token, tokens.dtype)
            return ops.concatenate([first, tokens], axis=1)

        def compute_output_shape(self, input_shape):
            count = None if input_shape[1] is None else input_shape[1] + 1
            return (input_shape[0], count, input_shape[2])

    @keras.saving.register_keras_serializable(package="kerascope")
    class PositionEmbedding(keras.layers.Layer):
        """Add a learnable embedding per position (Dosovitskiy et al. 2021, eq. 1)."""

        def build(self, input_shape):
            self.positions = self.add_weight(
                shape=(1, int(input_shape[1]), int(input_shape[2])),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="positions",
            )

        def call(self, tokens):
            return tokens + ops.cast(self.positions, tokens.dtype)

        def compute_output_shape(self, input_shape):
            return tuple(input_shape)

    @keras.saving.register_keras_serializable(package="kerascope")
    class TokenSelect(keras.layers.Layer):
        """One token of a sequence (N, T, C) -> (N, C): the class token by default."""

        def __init__(self, index: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.index = int(index)

        def call(self, tokens):
            return tokens[:, self.index, :]

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[2])

        def get_config(self):
            return {**super().get_config(), "index": self.index}

    _VIT_LAYERS = (ClassToken, PositionEmbedding, TokenSelect)
    return _VIT_LAYERS


_VIT_LAYERS = None


def vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int = 4,
    dim: int = 32,
    depth: int = 2,
    heads: int = 2,
    mlp_units: int = 64,
) -> keras.Model:
    """A small Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

    Conv2D(dim, patch_size, strides=patch_size) cuts the image into patches
    (``patches``), which become tokens; a learnable class token is prepended
    (``class_token``) and learnable position embeddings added (``position``). Each of
    ``depth`` pre-norm blocks is ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``, with
    ``keras.layers.MultiHeadAttention`` (``block<b>_attention``), so attention rollout
    can read its scores. The final LayerNorm's class token feeds the softmax.

    Raises:
        ValueError: The image is smaller than one patch, or ``dim`` is not divisible
            by ``heads``.
    """
    import keras

    class_token, position_embedding, token_select = _transformer_layers()
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] < patch_size or shape[1] < patch_size:
        raise ValueError(f"a ViT needs images (H, W, C) of at least {patch_size}x{patch_size}")
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    grid = (shape[0] // patch_size, shape[1] // patch_size)
    images = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(dim, patch_size, strides=patch_size, name="patches")(images)
    x = keras.layers.Reshape((grid[0] * grid[1], dim), name="tokens")(x)
    x = class_token(name="class_token")(x)
    x = position_embedding(name="position")(x)
    for b in range(1, depth + 1):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_norm1")(x)
        y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{b}_attention")(y, y)
        x = keras.layers.Add(name=f"block{b}_add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_norm2")(x)
        y = keras.layers.Dense(mlp_units, activation="gelu", name=f"block{b}_mlp1")(y)
        y = keras.layers.Dense(dim, name=f"block{b}_mlp2")(y)
        x = keras.layers.Add(name=f"block{b}_add2")([x, y])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = token_select(0, name="class_output")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(images, outputs, name="vit")


BUILDERS = {
    "mnist_cnn": mnist_cnn,
    "vgg_small": vgg_small,
    "mlp": mlp,
    "lstm": lstm,
    "text_cnn": text_cnn,
    "volume_cnn": volume_cnn,
    "vit": vit,
}
MODEL_NAMES = (*BUILDERS, "pretrained")


@dataclass
class ModelSource:
    """Where the model comes from: the ``model`` section's common keys.

    Attributes:
        name: A zoo model of :data:`MODEL_NAMES`, or ``pretrained``.
        path: The user's model file (``pretrained``).
        safe_mode: Refuse code from model files (see :func:`load_model_file`).
        custom_modules: The user's modules that register custom layers.
        preprocessing: The model's input space (see :mod:`pipeline.inputs`).
        class_names: The model's output classes, a list or a text file with one name
            per line; None: the data's classes, in order.
        output: The output explained in a multi-output model (name or index).
    """

    name: str = "mnist_cnn"
    path: str | None = None
    safe_mode: bool = True
    custom_modules: list[str] = field(default_factory=list)
    preprocessing: object = "none"
    class_names: list[str] | str | None = None
    output: str | int | None = None

    def space(self):
        """The model's :class:`pipeline.inputs.InputSpace`."""
        from pipeline.inputs import input_space

        return input_space(self.preprocessing)

    def output_classes(self) -> list[str] | None:
        """``class_names`` as a list (read from its file if it names one).

        Raises:
            KerascopeError: A missing or empty class-name file.
        """
        if self.class_names is None or isinstance(self.class_names, list):
            return self.class_names
        path = Path(self.class_names)
        if not path.is_file():
            raise KerascopeError(
                f"model.class_names '{path}' is neither a list nor an existing text file "
                "(one class name per line)"
            )
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise KerascopeError(f"model.class_names file '{path}' holds no names")
        return names


def read_model_section(raw) -> tuple[ModelSource, dict]:
    """Split the ``model`` config section into its source and the builder's options.

    Raises:
        KerascopeError: Not a mapping, an unknown model, a wrong type, or an option the
            builder does not take.
    """
    if not isinstance(raw, dict):
        raise KerascopeError(f"config section 'model' must be a mapping, got {raw!r}")
    common = {f.name for f in fields(ModelSource)}
    source = ModelSource(**{k: v for k, v in raw.items() if k in common})
    if source.name not in MODEL_NAMES:
        raise KerascopeError(
            f"invalid model '{source.name}'; {choices_hint(source.name, MODEL_NAMES)}"
        )
    if not isinstance(source.safe_mode, bool):
        raise KerascopeError(
            f"invalid value {source.safe_mode!r} for 'model.safe_mode'; expected a bool"
        )
    if not isinstance(source.custom_modules, list) or not all(
        isinstance(m, str) for m in source.custom_modules
    ):
        raise KerascopeError(
            f"invalid value {source.custom_modules!r} for 'model.custom_modules'; expected a "
            "list of module names"
        )
    source.space()  # checks model.preprocessing
    if source.class_names is not None and not (
        isinstance(source.class_names, str)
        or isinstance(source.class_names, list)
        and all(isinstance(c, str | int) for c in source.class_names)
    ):
        raise KerascopeError(
            f"invalid value {source.class_names!r} for 'model.class_names'; expected a list "
            "of names or a text file"
        )
    if isinstance(source.class_names, list):
        source.class_names = [str(c) for c in source.class_names]
    source.output_classes()  # a class-name file must exist and hold names
    options = {k: v for k, v in raw.items() if k not in common}
    if source.name == "pretrained":
        if options:
            key = sorted(options)[0]
            raise KerascopeError(
                f"model 'pretrained' has no option '{key}'; valid: "
                + ", ".join(f"model.{k}" for k in common)
            )
        if not source.path:
            raise KerascopeError("model 'pretrained' needs model.path (.keras, .h5 or SavedModel)")
        return source, {}
    return source, check_builder_options(source.name, options)


@dataclass
class TrainOptions:
    """How the train stage fits a zoo model (the ``train`` config section).

    Attributes:
        epochs: Passes over the training split.
        batch_size: Global batch (split over the strategy's replicas).
        learning_rate: Adam's step size.
        strategy: ``tf.distribute`` strategy name (``multi_worker`` over several
            workers trains with :func:`pipeline.training.fit_distributed`).
        deterministic: Ask TensorFlow for deterministic kernels.
    """

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.002
    strategy: str = "auto"
    deterministic: bool = False

    def check(self, prefix: str = "train") -> None:
        """Raise a one-line error for an invalid value."""
        for key in ("epochs", "batch_size", "learning_rate"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        check_choice(f"{prefix}.strategy", self.strategy, STRATEGIES)


def epoch_logger(log_metric, next_step):
    """A Keras callback that logs each epoch's metrics as ``train/<m>`` and ``val/<m>``.

    Args:
        log_metric: ``(name, value)`` -> None, for example dvclive's ``Live.log_metric``.
        next_step: Called after each epoch, for example ``Live.next_step``.
    """
    import keras

    from pipeline.errors import raise_if_interrupted

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise_if_interrupted()
            for key, value in (logs or {}).items():
                if key == "learning_rate":
                    continue
                log_metric(
                    f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}", float(value)
                )
            next_step()

    return EpochLogger()


def builder_options(name: str) -> dict[str, object]:
    """A zoo builder's options and their defaults, read from its signature.

    The parameters after ``input_shape`` and ``num_classes`` are the options the
    ``model`` config section may set for that model.
    """
    parameters = list(inspect.signature(BUILDERS[name]).parameters.values())[2:]
    return {p.name: p.default for p in parameters}


def check_builder_options(name: str, options: dict) -> dict:
    """Validate ``model.*`` options against the builder's signature (no TensorFlow).

    Raises:
        KerascopeError: An option the builder does not take, or a value whose type does
            not match the default's (a list of numbers, a number).
    """
    valid = builder_options(name)
    for key, value in options.items():
        if key not in valid:
            raise KerascopeError(
                f"model '{name}' has no option '{key}'; "
                + (choices_hint(key, [f"model.{k}" for k in valid]) if valid else "it takes none")
            )
        default = valid[key]
        if isinstance(default, list | tuple):
            ok = isinstance(value, list | tuple) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            )
        elif isinstance(default, int | float) and not isinstance(default, bool):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            kind = "a list of numbers" if isinstance(default, list | tuple) else "a number"
            raise KerascopeError(f"invalid value {value!r} for 'model.{key}'; expected {kind}")
    return options


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


def _model_config(path: Path) -> dict | None:
    """The serialized model config stored in a ``.keras`` or ``.h5`` file, without loading it."""
    import json

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
        if isinstance(text, bytes):
            text = text.decode()
        return json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - an unreadable config is reported by the loader
        return None


def _serialized_objects(config, owner: str = "") -> list[tuple[str, dict]]:
    """Every serialized object in a config tree, with the name of the layer it belongs to."""
    found = []
    if isinstance(config, dict):
        if "class_name" in config:
            inner = config.get("config")
            name = inner.get("name", owner) if isinstance(inner, dict) else owner
            found.append((str(name), config))
            owner = str(name)
        for value in config.values():
            found += _serialized_objects(value, owner)
    elif isinstance(config, list):
        for value in config:
            found += _serialized_objects(value, owner)
    return found


def _is_builtin(obj: dict) -> bool:
    import keras

    module = str(obj.get("module") or "")
    class_name = str(obj.get("class_name"))
    if module == "builtins" or class_name == "function":
        return False
    if class_name.startswith("__"):
        return True  # serialization markers (__keras_tensor__, __tuple__, __numpy__)
    if module.startswith("keras"):
        return True
    # Legacy HDF5 configs name Keras classes without a module.
    return (
        not module
        and any(
            hasattr(namespace, class_name)
            for namespace in (
                keras.layers,
                keras.models,
                keras.initializers,
                keras.regularizers,
                keras.constraints,
                keras.activations,
                keras.losses,
                keras.optimizers,
                keras.metrics,
                keras.dtype_policies,
            )
        )
        or class_name in ("Functional", "DTypePolicy", "__tuple__", "__numpy__", "__lambda__")
    )


def _code_needed(config) -> tuple[str, str, str] | None:
    """The first object in a model config that needs code the file cannot supply safely.

    Returns:
        (kind, what, layer) for a Lambda layer or an unregistered custom class/function,
        or None.
    """
    import keras

    for layer, obj in _serialized_objects(config):
        class_name = str(obj.get("class_name"))
        if class_name == "Lambda":
            function = (obj.get("config") or {}).get("function")
            if isinstance(function, dict) and function.get("class_name") == "function":
                # A function referenced by name: it must be registered by the user's code.
                name = str(function.get("config"))
                if keras.saving.get_registered_object(name) is None:
                    return "function", name, layer
                continue
            return "lambda", "stored bytecode", layer
        if _is_builtin(obj):
            continue
        registered = obj.get("registered_name") or class_name
        if class_name == "function":
            registered = obj.get("config")
        if keras.saving.get_registered_object(registered) is None:
            kind = "function" if class_name == "function" else "class"
            return kind, str(registered), layer
    return None


def _refuse_code(path: Path, needed: tuple[str, str, str], safe_mode: bool) -> KerascopeError:
    kind, what, layer = needed
    if kind == "lambda":
        return KerascopeError(
            f"refusing to load '{path}': layer '{layer}' is a Lambda layer whose {what} would "
            "run on load (Keras safe_mode); if you trust the file, set model.safe_mode=false"
        )
    if kind == "function":
        return KerascopeError(
            f"refusing to load '{path}': layer '{layer}' calls function '{what}', which is not "
            "registered, and kerascope never takes code from a model file; define it in a "
            "module decorated with @keras.saving.register_keras_serializable and list the "
            "module in model.custom_modules"
        )
    return KerascopeError(
        f"refusing to load '{path}': layer '{layer}' needs the custom {kind} '{what}', "
        "which is not registered, and kerascope never takes code from a model file; put it in "
        "a module decorated with @keras.saving.register_keras_serializable and list the "
        "module in model.custom_modules"
    )


def import_custom_modules(modules: Sequence[str]) -> None:
    """Import the user's own modules that register custom layers and functions.

    This is how a user opts in to custom code: it comes from their environment, never
    from the model file.

    Raises:
        KerascopeError: A module cannot be imported.
    """
    import importlib

    for name in modules or ():
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
            reason = " ".join(str(exc).split())[:160]
            raise KerascopeError(
                f"cannot import model.custom_modules entry '{name}' ({type(exc).__name__}: "
                f"{reason})"
            ) from None


#: TensorFlow accepts only these characters in the name scopes Keras makes from layer names.
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")
_ROOT_START = re.compile(r"^[A-Za-z0-9.]")


def valid_scope_name(name: str) -> str:
    """``name`` made acceptable as a TensorFlow scope: ``α1`` becomes ``L_u3b1_1``.

    Refused characters become ``_u<hex>_``; a name must also start with a letter, digit
    or '.' to open a root scope, so such a name gets an ``L`` in front.
    """
    if _SCOPE_NAME.match(name) and _ROOT_START.match(name):
        return name
    text = "".join(c if _SCOPE_NAME.match(c) else f"_u{ord(c):x}_" for c in name)
    return text if _ROOT_START.match(text) else f"L{text}"


#: Layers renamed at loading, per model (see :func:`renamed_layers`).
_RENAMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def renamed_layers(model: keras.Model) -> dict[str, str]:
    """Old name -> new name of the layers :func:`load_model_file` renamed in ``model``."""
    return dict(_RENAMED.get(model, {}))


def rename_invalid_layers(model: keras.Model) -> dict[str, str]:
    """Rename (in memory) layers whose names TensorFlow cannot use as scope names.

    Keras 3 on TensorFlow opens a name scope per layer call, and TensorFlow refuses
    names outside ``[A-Za-z0-9_./>-]`` (``'α1' is not a valid scope name``), so such a
    model cannot even predict. The file is not touched.

    Returns:
        Old name -> new name of every renamed layer (and of the model itself).
    """
    renamed: dict[str, str] = {}
    taken = {layer.name for layer in model._flatten_layers(include_self=True, recursive=True)}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        new = valid_scope_name(layer.name)
        if new == layer.name:
            continue
        while new in taken:
            new += "_"
        taken.add(new)
        renamed[layer.name] = new
        layer.name = new
    return renamed


def load_model_file(
    path: str | os.PathLike, safe_mode: bool = True, custom_modules: Sequence[str] = ()
) -> keras.Model:
    """Load a user's model from ``.keras``, legacy ``.h5`` or a SavedModel directory.

    What ``safe_mode`` covers (on by default): no code stored in or named by the file
    runs. Lambda layers are refused (their bytecode would run on load), custom classes
    and functions are accepted only if the user's own ``custom_modules`` registered
    them, and SavedModel directories are refused altogether, because loading one runs
    the TensorFlow graph functions it contains, which can read and write files.

    Args:
        path: The model file or SavedModel directory.
        safe_mode: Refuse code from the file; turn off only for files you trust.
        custom_modules: Modules to import first; they register the custom classes the
            file names.

    Returns:
        The loaded model (a SavedModel is wrapped as an inference-only layer; a
        subclassed model becomes a Functional one, see :func:`pipeline.graph.functional_of`).

    Raises:
        KerascopeError: Missing, truncated or not a model, or code that safe mode or the
            registry refuses.
    """
    path = Path(path)
    if not path.exists():
        raise KerascopeError(f"model file '{path}' does not exist")
    import_custom_modules(custom_modules)
    _transformer_layers()  # registers the zoo ViT's layers, so a saved ViT loads
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise KerascopeError(
                f"'{path}' is a directory but not a SavedModel (no saved_model.pb)"
            )
        if safe_mode:
            raise KerascopeError(
                f"refusing to load SavedModel '{path}' under safe_mode: loading a SavedModel "
                "runs the TensorFlow graph functions stored in it, which can read and write "
                "files; if you trust it, set model.safe_mode=false"
            )
        try:
            return _load_saved_model(path)
        except KerascopeError:
            raise
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types
            message = " ".join(str(exc).split())[:200]
            raise KerascopeError(f"cannot load SavedModel '{path}': {message}") from None
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise KerascopeError(
            f"model file '{path}' has unknown type '{suffix}'; valid: .keras, .h5, "
            "or a SavedModel directory"
        )
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise KerascopeError(f"model file '{path}' is truncated or not a .keras archive")
    config = _model_config(path)
    needed = _code_needed(config) if config is not None else None
    if needed is not None and (safe_mode or needed[0] != "lambda"):
        raise _refuse_code(path, needed, safe_mode)
    model = _load_keras_file(path, safe_mode, config)
    from pipeline.graph import functional_of

    model = functional_of(model)  # a subclassed model: its call() traced into a graph
    renamed = rename_invalid_layers(model)
    _RENAMED[model] = renamed
    if renamed:
        pairs = ", ".join(f"'{a}' -> '{b}'" for a, b in renamed.items())
        print(f"note: renamed layers TensorFlow cannot use as scope names: {pairs}")
    return model


#: Arguments every Keras 3 layer takes beside its class's own (``Layer.__init__``).
_LAYER_KWARGS = {
    "activity_regularizer",
    "trainable",
    "dtype",
    "autocast",
    "name",
    "input_dim",
    "input_shape",
    "batch_input_shape",
    "batch_shape",
}


def _accepted_arguments(class_name: str) -> set[str] | None:
    """The constructor arguments a Keras 3 layer class takes (None: unknown class)."""
    import keras

    cls = getattr(keras.layers, class_name, None)
    if not isinstance(cls, type):
        return None
    accepted = set(_LAYER_KWARGS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= {
                p.name
                for p in inspect.signature(init).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            }
    return accepted


def keras3_config(config) -> tuple[object, dict[str, list[str]]]:
    """A Keras 2 model config with the layer arguments Keras 3 refuses removed.

    tf-keras writes arguments some Keras 3 layers no longer take (``SeparableConv2D``'s
    ``groups`` and ``kernel_*``, for instance); they are defaults or unused there.

    Returns:
        The fixed config and, per layer class, the arguments dropped.
    """
    dropped: dict[str, list[str]] = {}

    def fix(node):
        if isinstance(node, list):
            return [fix(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: fix(v) for k, v in node.items()}
        inner = node.get("config")
        accepted = _accepted_arguments(str(node.get("class_name")))
        if isinstance(inner, dict) and accepted is not None and "layers" not in inner:
            extra = sorted(k for k in inner if k not in accepted)
            if extra:
                dropped.setdefault(str(node["class_name"]), []).extend(
                    k for k in extra if k not in dropped.get(str(node["class_name"]), [])
                )
                node["config"] = {k: v for k, v in inner.items() if k in accepted}
        return node

    return fix(config), dropped


def _load_keras_file(path: Path, safe_mode: bool, config) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` file; a Keras 2 file Keras 3 refuses is fixed first."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises many types; report them as one line.
        message = " ".join(str(exc).split())
        first = exc
    if "safe_mode" in message or "Lambda" in message:
        raise KerascopeError(
            f"refusing to load '{path}': it contains a Lambda layer whose code would run on "
            "load (Keras safe_mode); if you trust the file, set model.safe_mode=false"
        ) from None
    fixed, dropped = keras3_config(config) if config is not None else (None, {})
    if not dropped or path.suffix.lower() == ".keras":
        raise KerascopeError(f"cannot load model '{path}': {message[:300]}") from None
    # A Keras 2 HDF5 file: load a copy whose stored config Keras 3 accepts.
    import json
    import shutil
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory(prefix="kerascope-") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "a") as handle:
            handle.attrs["model_config"] = json.dumps(fixed)
        try:
            model = keras.saving.load_model(copy, compile=False, safe_mode=safe_mode)
        except Exception:  # noqa: BLE001 - the first error is the one to report
            message = " ".join(str(first).split())
            raise KerascopeError(f"cannot load model '{path}': {message[:300]}") from None
    what = "; ".join(f"{cls}: {', '.join(args)}" for cls, args in dropped.items())
    print(f"note: Keras 2 file '{path.name}': dropped arguments Keras 3 does not take ({what})")
    return model


def select_output(model: keras.Model, output: str | int | None = None) -> keras.Model:
    """The model with one output: the chosen one, or the only one (unwrapped from a list).

    Keras 2 files often store a single output as a one-element list, so the model
    returns ``[tensor]`` where the stages expect the tensor; a multi-output model is
    explained for one output at a time. The layers are shared, not copied.

    Args:
        model: A loaded model.
        output: The output's name (its layer's) or index; None: the first.

    Raises:
        KerascopeError: An unknown output name or an index out of range.
    """
    import keras

    outputs = list(model.outputs or [])
    struct = getattr(model, "_outputs_struct", None)
    if len(outputs) <= 1 and not isinstance(struct, list | tuple | dict):
        return model
    names = [
        t._keras_history[0].name if hasattr(t, "_keras_history") else str(i)
        for i, t in enumerate(outputs)
    ]
    if output is None:
        index = 0
    elif isinstance(output, int) and not isinstance(output, bool):
        index = output
    else:
        if str(output) not in names:
            raise KerascopeError(
                f"model '{model.name}' has no output '{output}'; {choices_hint(str(output), names)}"
            )
        index = names.index(str(output))
    if not 0 <= index < len(outputs):
        raise KerascopeError(
            f"model '{model.name}' has {len(outputs)} outputs; model.output {output} is out of "
            f"range (valid: 0..{len(outputs) - 1} or {', '.join(names)})"
        )
    if len(outputs) > 1:
        print(f"note: model '{model.name}' has {len(outputs)} outputs; explaining '{names[index]}'")
    return keras.Model(model.inputs, outputs[index], name=model.name)


def _load_saved_model(path: Path) -> keras.Model:
    """Wrap a TensorFlow SavedModel as a Keras model (inference only, no inner layers)."""
    import keras
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


@dataclass
class Scores:
    """A classifier's outputs on labelled inputs, and their loss and accuracy."""

    probabilities: np.ndarray
    loss: float
    accuracy: float


def _look_like_probabilities(outputs: np.ndarray) -> bool:
    """Rows in [0, 1] summing to 1: a softmax the graph does not show (a SavedModel)."""
    return bool(
        len(outputs)
        and (outputs >= 0).all()
        and (outputs <= 1).all()
        and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3)
    )


def class_probabilities(outputs: np.ndarray, activation: str) -> np.ndarray:
    """A classifier's raw outputs as class probabilities, by its output activation.

    softmax: as they are; linear (logits): their softmax, unless they already are
    probabilities (a SavedModel hides its softmax); one sigmoid (or linear) unit:
    a binary classifier, [1 - p, p]; several sigmoid units: multi-label, each unit's
    own probability (rows need not sum to 1).
    """
    outputs = np.asarray(outputs, np.float32)
    if outputs.shape[-1] == 1:
        p = outputs[:, 0] if activation == "sigmoid" else 1.0 / (1.0 + np.exp(-outputs[:, 0]))
        return np.stack([1.0 - p, p], axis=-1).astype(np.float32)
    if activation == "linear" and not _look_like_probabilities(outputs):
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    return outputs


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Scores:
    """Predict ``x`` and score the predictions against the labels ``y``.

    The outputs become class probabilities by the model's output activation
    (:func:`class_probabilities`); the loss is their mean cross-entropy (binary per
    unit for multi-label sigmoid heads). Unlabeled data (-1) get NaN loss and accuracy.
    """
    import keras

    from pipeline.graph import output_activation

    activation = output_activation(model)
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    probabilities = class_probabilities(outputs, activation)
    labeled = y >= 0
    if not labeled.any():
        return Scores(probabilities, float("nan"), float("nan"))
    if activation == "sigmoid" and probabilities.shape[-1] > 2 and outputs.shape[-1] > 1:
        onehot = np.eye(probabilities.shape[-1], dtype=np.float32)[y[labeled]]
        loss = keras.losses.binary_crossentropy(onehot, probabilities[labeled]).numpy().mean()
    else:
        loss = keras.losses.sparse_categorical_crossentropy(y[labeled], probabilities[labeled])
        loss = loss.numpy().mean()
    accuracy = float(np.mean(np.argmax(probabilities[labeled], axis=-1) == y[labeled]))
    return Scores(probabilities, float(loss), accuracy)


def check_input_shape(model: keras.Model, input_shape: Sequence[int]) -> None:
    """Raise a one-line error unless the model accepts inputs of ``input_shape``.

    Args:
        model: The model.
        input_shape: The data's shape without the batch axis.
    """
    if model.inputs and len(model.inputs) > 1:
        raise KerascopeError(
            f"model '{model.name}' takes {len(model.inputs)} inputs; kerascope explains "
            "single-input models (wrap yours so that one input feeds it)"
        )
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

"""The model's input space: how display images (values in [0, 1]) become model inputs.

kerascope keeps data in *display space* (images in [0, 1], as the data stage stores
them and the report shows them). A model expects its own input space, described by
``model.preprocessing``:

=====================  =========================================================
``none``               the display values as they are ([0, 1] images, or your
                       own arrays as given)
``{range: [lo, hi]}``  display [0, 1] mapped linearly onto [lo, hi] (``[-1, 1]``)
``{mean: [...], std: [...]}``  ``(x - mean) / std`` per channel, on [0, 1] values
``tf``                 ``keras.applications`` "tf" mode: [-1, 1]
``torch``              "torch" mode: ImageNet mean/std on [0, 1] values
``caffe``              "caffe" mode: RGB to BGR, 0..255, ImageNet BGR mean removed
=====================  =========================================================

Every mode is a per-channel affine map (after an optional channel reversal), so it is
exactly invertible: the report draws model inputs back in display space. Inputs whose
size or channel count differ from the model's (folder images, grey MNIST into an RGB
network) are resized bilinearly and converted (grey to RGB by repetition, RGB to grey
by luminance) before the map. Nothing here imports TensorFlow except :func:`resize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import KerascopeError

MODES = ("none", "tf", "torch", "caffe")
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class InputSpace:
    """A per-channel affine map from display values to model inputs.

    Attributes:
        scale: Multiplier per channel (one value: all channels).
        offset: Added after scaling, per channel.
        reverse_channels: Reverse the channel order first (RGB to BGR, caffe mode).
        name: The configured mode, for provenance and messages.
    """

    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)
    reverse_channels: bool = False
    name: str = "none"

    @property
    def identity(self) -> bool:
        """Whether model inputs are the display values themselves."""
        return (
            not self.reverse_channels
            and all(s == 1.0 for s in self.scale)
            and all(o == 0.0 for o in self.offset)
        )

    def to_model(self, display: np.ndarray) -> np.ndarray:
        """Display values (channels last) to model inputs, float32."""
        x = np.asarray(display, np.float32)
        if self.identity:
            return x
        if self.reverse_channels:
            x = x[..., ::-1]
        return (x * np.float32(self.scale) + np.float32(self.offset)).astype(np.float32)

    def to_model_tensor(self, display):
        """:meth:`to_model` for a TensorFlow tensor (used inside compiled steps)."""
        if self.identity:
            return display
        import tensorflow as tf

        if self.reverse_channels:
            display = tf.reverse(display, axis=[-1])
        return display * tf.constant(self.scale, display.dtype) + tf.constant(
            self.offset, display.dtype
        )

    def to_display(self, model_input: np.ndarray) -> np.ndarray:
        """Model inputs back to display values (the exact inverse of :meth:`to_model`)."""
        x = np.asarray(model_input, np.float32)
        if self.identity:
            return x
        x = (x - np.float32(self.offset)) / np.float32(self.scale)
        return x[..., ::-1] if self.reverse_channels else x

    def bounds(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel model-input values of display 0 and 1 (low, high)."""
        ends = self.to_model(np.stack([np.zeros(channels), np.ones(channels)]))
        return ends.min(axis=0), ends.max(axis=0)

    def describe(self) -> dict:
        """The map as plain data (stored in the artifacts for the report)."""
        return {
            "name": self.name,
            "scale": list(self.scale),
            "offset": list(self.offset),
            "reverse_channels": self.reverse_channels,
        }

    @classmethod
    def from_description(cls, data: dict | None) -> InputSpace:
        """Invert :meth:`describe` (None: the identity)."""
        if not data:
            return cls()
        return cls(
            tuple(data["scale"]),
            tuple(data["offset"]),
            bool(data["reverse_channels"]),
            data["name"],
        )


def input_space(setting) -> InputSpace:
    """The :class:`InputSpace` of a ``model.preprocessing`` setting.

    Raises:
        KerascopeError: An unknown mode or a malformed mapping.
    """
    if setting is None or setting == "none":
        return InputSpace()
    if setting == "tf":
        return InputSpace((2.0,), (-1.0,), name="tf")
    if setting == "torch":
        scale = tuple(1.0 / s for s in _TORCH_STD)
        offset = tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True))
        return InputSpace(scale, offset, name="torch")
    if setting == "caffe":
        return InputSpace((255.0,), tuple(-m for m in _CAFFE_MEAN_BGR), True, name="caffe")
    hint = "valid: none, tf, torch, caffe, {range: [lo, hi]} or {mean: [..], std: [..]}"
    if isinstance(setting, dict) and set(setting) == {"range"}:
        low, high = _numbers(setting["range"], "model.preprocessing.range", 2)
        if not high > low:
            raise KerascopeError(f"'model.preprocessing.range' needs low < high, got {[low, high]}")
        return InputSpace((high - low,), (low,), name=f"range [{low:g}, {high:g}]")
    if isinstance(setting, dict) and set(setting) == {"mean", "std"}:
        mean = _numbers(setting["mean"], "model.preprocessing.mean")
        std = _numbers(setting["std"], "model.preprocessing.std")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise KerascopeError(
                "'model.preprocessing' mean and std need one value per channel (or one for "
                f"all), with std > 0; got mean {list(mean)}, std {list(std)}"
            )
        scale = tuple(1.0 / s for s in std)
        return InputSpace(
            scale, tuple(-m / s for m, s in zip(mean, std, strict=True)), name="mean/std"
        )
    raise KerascopeError(f"invalid model.preprocessing {setting!r}; {hint}")


def _numbers(value, name: str, count: int | None = None) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if not values or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise KerascopeError(f"'{name}' must be a list of numbers, got {value!r}")
    if count is not None and len(values) != count:
        raise KerascopeError(f"'{name}' must hold {count} numbers, got {value!r}")
    return tuple(float(v) for v in values)


def fit_images(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Resize images (N, H, W, C) and convert their channels to the model's ``shape``.

    Sequences and inputs that already fit are returned as they are.

    Raises:
        KerascopeError: Inputs that cannot be made to fit (a rank or channel mismatch
            that resizing cannot fix).
    """
    shape = tuple(shape)
    if tuple(x.shape[1:]) == shape or any(d is None for d in shape):
        return x
    if x.ndim != 4 or len(shape) != 3:
        raise KerascopeError(
            f"the model expects inputs of shape {shape} but the data have shape "
            f"{tuple(x.shape[1:])}; only images are resized"
        )
    have, want = x.shape[-1], shape[-1]
    if have != want:
        if have == 1:
            x = np.repeat(x, want, axis=-1)
        elif have == 3 and want == 1:
            x = (x @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
        else:
            raise KerascopeError(
                f"the model expects {want} channels but the images have {have}; only grey "
                "and RGB images are converted"
            )
    if tuple(x.shape[1:3]) != shape[:2]:
        x = resize(x, shape[:2])
    return x.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int], batch: int = 512) -> np.ndarray:
    """Bilinear resize of images (N, H, W, C) to ``size`` (TensorFlow's, batch by batch)."""
    import tensorflow as tf

    parts = [tf.image.resize(x[i : i + batch], size).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)

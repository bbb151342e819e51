"""Layer activations of any Keras model, one compiled forward pass per batch.

The library side of the extract stage: arrays in, arrays out. Use
:func:`iter_activations` to stream batches (memory does not grow with the number of
inputs) or :func:`extract_activations` to get everything at once in a notebook::

    acts = extract_activations(model, x, ["conv1", "base/block1_conv1"])
    acts["conv1"].shape   # (N, 24, 24, 6)

:class:`ActivationHealth` accumulates per-layer health statistics (dead units,
saturated units, mean, standard deviation, non-finite values) batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from pipeline.graph import LayerForward, compiled, layer_info, resolve_layers

#: Activation functions whose outputs are bounded, and their saturation zones.
BOUNDED = {"tanh": "tanh", "sigmoid": "sigmoid", "softmax": "sigmoid", "hard_sigmoid": "sigmoid"}

#: A bounded unit is saturated when at least this share of its values is in the zone.
SATURATION_SHARE = 0.95

#: An unbounded unit is saturated when its mean exceeds the layer's mean by this many
#: standard deviations of the layer's values ("far above the layer's typical range").
SATURATION_SIGMAS = 4.0


@dataclass
class Batch:
    """One batch of a streamed extraction.

    Attributes:
        start: Index of the first input of the batch.
        outputs: The model's outputs, as a list (one array per model output).
        activations: Layer path -> array of shape (batch, ...).
    """

    start: int
    outputs: list[np.ndarray]
    activations: dict[str, np.ndarray]


def activation_kind(model: keras.Model, path: str) -> str:
    """The name of the function that produced a layer's output (``relu``, ``tanh``...).

    Recurrent layers report ``tanh`` (their hidden state is ``o * tanh(c)``); layers
    without an activation report ``linear``.
    """
    layer = layer_info(model, path).layer
    if isinstance(layer, keras.layers.LSTM | keras.layers.GRU | keras.layers.SimpleRNN):
        return getattr(layer.cell.activation, "__name__", "tanh")
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _compiled_forward(model: keras.Model, paths: Sequence[str]):
    """LayerForward of ``paths`` wrapped in one ``tf.function``, cached per model."""

    def build():
        forward = LayerForward(model, paths)

        @tf.function(reduce_retracing=True)
        def run(x):
            outputs, taps = forward(x)
            return tf.nest.flatten(outputs), taps

        return run

    return compiled(model, ("activations", tuple(paths)), build)


def iter_activations(
    model: keras.Model,
    x: np.ndarray | Sequence[np.ndarray],
    layers: str | Sequence[str] = "all",
    batch_size: int = 256,
) -> Iterator[Batch]:
    """Stream the activations of the selected layers, one forward pass per batch.

    Args:
        model: A built Sequential or Functional model (nested models are fine).
        x: Inputs, shape (N, ...); a list of arrays for multi-input models.
        layers: ``"all"``, or names, globs (``conv*``) or class names (``Dense``); see
            :func:`pipeline.graph.resolve_layers`.
        batch_size: Inputs per forward pass.

    Yields:
        :class:`Batch` objects in input order. Layers run in inference mode (Dropout is
        the identity, BatchNormalization uses its moving statistics).
    """
    paths = resolve_layers(model, layers)
    run = _compiled_forward(model, paths)
    inputs = list(x) if isinstance(x, list | tuple) else [x]
    n = len(inputs[0])
    for start in range(0, n, batch_size):
        chunk = [tf.convert_to_tensor(a[start : start + batch_size]) for a in inputs]
        outputs, taps = run(chunk if len(chunk) > 1 else chunk[0])
        yield Batch(
            start=start,
            outputs=[o.numpy() for o in outputs],
            activations={p: t.numpy() for p, t in taps.items()},
        )


def extract_activations(
    model: keras.Model,
    x: np.ndarray | Sequence[np.ndarray],
    layers: str | Sequence[str] = "all",
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """All activations of the selected layers, concatenated over batches.

    A convenience for notebooks; for large inputs stream with :func:`iter_activations`.

    Returns:
        Layer path -> array of shape (N, ...).
    """
    parts: dict[str, list[np.ndarray]] = {}
    for batch in iter_activations(model, x, layers, batch_size):
        for path, value in batch.activations.items():
            parts.setdefault(path, []).append(value)
    return {path: np.concatenate(values) for path, values in parts.items()}


@dataclass
class _LayerAccumulator:
    kind: str
    unit_max: np.ndarray | None = None
    unit_sum: np.ndarray | None = None
    unit_saturated: np.ndarray | None = None
    unit_count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    count: int = 0
    nonfinite: int = 0
    size: int = 0


@dataclass
class ActivationHealth:
    """Streaming per-layer health statistics (memory independent of the input count).

    A *unit* is one index of the layer's last axis (a channel of a conv layer, a neuron
    of a dense layer, a hidden unit of a recurrent layer), pooled over inputs and over
    spatial or time positions.

    Rules:
        * dead: the unit's output is never above zero over all inputs and positions
          (the "dying ReLU" check);
        * saturated, bounded activations (tanh, sigmoid, softmax, recurrent states): at
          least 95% of the unit's values are in the flat zone, |a| > 0.99 for tanh,
          a < 0.01 or a > 0.99 for sigmoid-like functions;
        * saturated, unbounded activations (ReLU, linear, ...): the unit's mean is more
          than 4 standard deviations above the layer's mean, i.e. far above the
          layer's typical range;
        * non-finite: NaN or +/-Inf values, excluded from the other statistics.

    Args:
        kinds: Layer path -> activation function name (see :func:`activation_kind`).
    """

    kinds: dict[str, str]
    layers: dict[str, _LayerAccumulator] = field(default_factory=dict)

    def update(self, activations: dict[str, np.ndarray]) -> None:
        """Add one batch of activations."""
        for path, value in activations.items():
            acc = self.layers.setdefault(path, _LayerAccumulator(self.kinds.get(path, "linear")))
            value = np.asarray(value, dtype=np.float64)
            units = value.reshape(-1, value.shape[-1]) if value.ndim > 1 else value[:, None]
            finite = np.isfinite(units)
            acc.nonfinite += int(units.size - finite.sum())
            acc.size += int(units.size)
            clean = np.where(finite, units, 0.0)
            low = np.where(finite, units, -np.inf).max(axis=0)
            acc.unit_max = low if acc.unit_max is None else np.maximum(acc.unit_max, low)
            sums = clean.sum(axis=0)
            acc.unit_sum = sums if acc.unit_sum is None else acc.unit_sum + sums
            zone = BOUNDED.get(acc.kind)
            if zone == "tanh":
                sat = (np.abs(clean) > 0.99).sum(axis=0)
            elif zone == "sigmoid":
                sat = ((clean < 0.01) | (clean > 0.99)).sum(axis=0)
            else:
                sat = np.zeros(units.shape[1])
            acc.unit_saturated = sat if acc.unit_saturated is None else acc.unit_saturated + sat
            acc.unit_count += units.shape[0]
            acc.total += float(clean.sum())
            acc.total_sq += float((clean**2).sum())
            acc.count += int(finite.sum())

    def _moments(self, acc: _LayerAccumulator) -> tuple[float, float]:
        if not acc.count:
            return float("nan"), float("nan")
        mean = acc.total / acc.count
        return mean, float(np.sqrt(max(acc.total_sq / acc.count - mean**2, 0.0)))

    def per_unit(self, path: str) -> dict[str, np.ndarray]:
        """Per-unit ``max``, ``mean`` and ``dead``/``saturated`` flags of one layer."""
        acc = self.layers[path]
        unit_mean = acc.unit_sum / max(acc.unit_count, 1)
        mean, std = self._moments(acc)
        if acc.kind in BOUNDED:
            saturated = acc.unit_saturated / max(acc.unit_count, 1) >= SATURATION_SHARE
        elif std > 0:
            saturated = unit_mean > mean + SATURATION_SIGMAS * std
        else:
            saturated = np.zeros(len(unit_mean), dtype=bool)
        return {
            "max": acc.unit_max,
            "mean": unit_mean,
            "dead": acc.unit_max <= 0,
            "saturated": saturated,
        }

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-layer health: dead/saturated/non-finite fractions, mean, std, units."""
        report = {}
        for path, acc in self.layers.items():
            mean, std = self._moments(acc)
            units = self.per_unit(path)
            report[path] = {
                "dead_fraction": float(np.mean(units["dead"])),
                "saturated_fraction": float(np.mean(units["saturated"])),
                "mean": float(mean),
                "std": std,
                "nonfinite_fraction": acc.nonfinite / acc.size if acc.size else 0.0,
                "units": int(len(acc.unit_max)),
            }
        return report

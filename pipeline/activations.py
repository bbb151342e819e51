"""Layer activations of any Keras model, one compiled forward pass per batch.

The library side of the extract stage: arrays in, arrays out. Use
:func:`iter_activations` to stream batches (memory does not grow with the number of
inputs) or :func:`extract_activations` to get everything at once in a notebook::

    acts = extract_activations(model, x, ["conv1", "base/block1_conv1"])
    acts["conv1"].shape   # (N, 24, 24, 6)

:class:`ActivationHealth` accumulates per-layer health statistics (dead units,
saturated units, mean, standard deviation, non-finite values) batch by batch. The
per-batch reductions run inside the same ``tf.function`` as the forward pass, so the
statistics cost a few reductions per layer rather than a float64 copy of every tensor.

Layer addressing (``base/block1_conv1``, shared layers ``name@1``) and the one-pass
forward are :mod:`pipeline.graph`'s; this module adds batching and statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from pipeline.distribute import replicas_in_scope, run_distributed
from pipeline.errors import KerascopeError
from pipeline.graph import (
    LayerForward,
    compiled,
    layer_info,
    list_layers,
    resolve_layers,
    token_grids,
)

#: Activation functions whose outputs are bounded, and which saturation zone they use.
BOUNDED = {"tanh": "tanh", "sigmoid": "sigmoid", "softmax": "sigmoid", "hard_sigmoid": "sigmoid"}

#: A bounded unit is saturated when at least this share of its values is in the zone.
SATURATION_SHARE = 0.95

#: An unbounded unit is saturated when its mean exceeds the layer's mean by this many
#: standard deviations of the layer's values ("far above the layer's typical range").
SATURATION_SIGMAS = 4.0

#: The per-batch reductions behind :class:`ActivationHealth`, one dict per layer.
STAT_KEYS = ("unit_max", "unit_sum", "unit_saturated", "rows", "count", "mean", "m2", "size")


@dataclass
class Batch:
    """One batch of a streamed extraction.

    Attributes:
        start: Index of the first input of the batch.
        outputs: The model's outputs, as a list (one array per model output).
        activations: Layer path -> array of shape (batch, ...).
        stats: Layer path -> per-batch health reductions (see :func:`batch_stats`);
            empty unless :func:`iter_activations` was asked for them.
    """

    start: int
    outputs: list[np.ndarray]
    activations: dict[str, np.ndarray]
    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def activation_kind(model: keras.Model, path: str) -> str:
    """The name of the function that produced a layer's output (``relu``, ``tanh``...).

    Recurrent layers report their cell's activation (``tanh`` by default: the hidden
    state is ``o * tanh(c)``); layers without an activation report ``linear``.
    """
    layer = layer_info(model, path).layer
    if isinstance(layer, keras.layers.RNN):
        return getattr(getattr(layer.cell, "activation", None), "__name__", "tanh")
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.Activation | keras.layers.ReLU):
        return getattr(getattr(layer, "activation", None), "__name__", "relu")
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def batch_stats(value, kind: str = "linear") -> dict[str, np.ndarray]:
    """Per-unit and per-layer reductions of one batch of one layer's output.

    A *unit* is one index of the last axis (a conv channel, a dense neuron, a
    recurrent hidden unit), pooled over the batch and any spatial or time axes.
    Non-finite values are counted and left out of every other statistic. The layer's
    spread is kept as a batch mean and sum of squared deviations (``m2``), which
    :class:`ActivationHealth` merges with the pairwise update of Chan, Golub & LeVeque
    (1979), so the standard deviation stays accurate over many batches.

    The common case (all values finite) costs three plain reductions on the device
    (:func:`batch_sums`) and a few scalar operations on the host
    (:func:`stats_from_sums`); the masked computation runs only for a batch that holds
    NaN or Inf.

    Args:
        value: The layer's output, shape (batch, ..., units) or (batch,).
        kind: The activation function name (see :func:`activation_kind`); decides the
            saturation zone.

    Returns:
        A dict with the keys of :data:`STAT_KEYS` (NumPy values).
    """
    value = tf.convert_to_tensor(value)
    return _finish_stats(batch_sums(value, kind), value, kind)


def _finish_stats(sums: dict, value, kind: str) -> dict[str, np.ndarray]:
    """The statistics from a batch's sums, or (rare) the masked ones if it held NaN/Inf."""
    stats = stats_from_sums(sums)
    return stats if stats is not None else masked_batch_stats(value, kind)


def _units(value: tf.Tensor) -> tf.Tensor:
    """(values, units): every position of every input as a row, float32."""
    value = tf.cast(value, tf.float32)
    if value.shape.rank <= 1:
        return tf.reshape(value, (-1, 1))
    units = value.shape[-1]
    return tf.reshape(value, (-1, units if units is not None else tf.shape(value)[-1]))


def _saturated(units: tf.Tensor, kind: str, finite: tf.Tensor | None) -> tf.Tensor | None:
    """Per-unit count of values in the flat zone of a bounded activation, else None."""
    zone = BOUNDED.get(kind)
    if zone == "tanh":
        flat = tf.abs(units) > 0.99
    elif zone == "sigmoid":
        flat = (units < 0.01) | (units > 0.99)
    else:
        return None
    if finite is not None:  # NaN compares False, but Inf is > 0.99: leave it out
        flat = flat & finite
    return tf.reduce_sum(tf.cast(flat, tf.float32), axis=0)


def batch_sums(value: tf.Tensor, kind: str = "linear") -> dict[str, tf.Tensor]:
    """The device half of :func:`batch_stats`: a handful of reductions, no control flow.

    Few operations per layer, so one compiled pass computes them for hundreds of
    layers cheaply: with a ``tf.cond`` and the scalar arithmetic per layer in the
    graph, tracing and optimising a 428-layer DenseNet121's pass took 45 s.
    """
    units = _units(value)
    # Squares are taken around a value from the batch (the first row's mean), not 0,
    # so sum(x^2) - sum(x)^2/n does not cancel catastrophically when |mean| >> std.
    pivot = tf.reduce_mean(units[:1])
    sums = {
        "unit_max": tf.reduce_max(units, axis=0),
        "unit_sum": tf.reduce_sum(units, axis=0),
        "shifted_sq": tf.reduce_sum(tf.square(units - pivot)),
        "pivot": pivot,
        "rows": tf.shape(units)[0],
    }
    saturated = _saturated(units, kind, None)
    if saturated is not None:
        sums["unit_saturated"] = saturated
    return sums


def stats_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The host half of :func:`batch_stats`; None if the batch held NaN or Inf.

    NaN and Inf poison the sums, so a finite result means every value was finite.

    Args:
        sums: :func:`batch_sums`' result, as tensors or arrays.
    """
    unit_sum = np.asarray(sums["unit_sum"])
    shifted_sq = float(sums["shifted_sq"])
    if not (np.isfinite(unit_sum).all() and np.isfinite(shifted_sq)):
        return None
    rows = float(sums["rows"])
    size = rows * unit_sum.size
    total = float(unit_sum.sum(dtype=np.float64))
    shifted = total - float(sums["pivot"]) * size
    return {
        "unit_max": np.asarray(sums["unit_max"]),
        "unit_sum": unit_sum,
        "unit_saturated": np.asarray(sums.get("unit_saturated", np.zeros_like(unit_sum))),
        "rows": rows,
        "count": size,
        "mean": total / max(size, 1.0),
        "m2": max(shifted_sq - shifted * shifted / max(size, 1.0), 0.0),
        "size": size,
    }


def masked_batch_stats(value: tf.Tensor, kind: str = "linear") -> dict[str, np.ndarray]:
    """:func:`batch_stats` of a batch holding NaN or Inf: those values are left out."""
    units = _units(value)
    finite = tf.math.is_finite(units)
    weight = tf.cast(finite, tf.float32)
    clean = tf.where(finite, units, 0.0)
    count = tf.reduce_sum(weight)
    mean = tf.math.divide_no_nan(tf.reduce_sum(clean), count)
    saturated = _saturated(units, kind, finite)
    stats = {
        "unit_max": tf.reduce_max(tf.where(finite, units, -np.inf), axis=0),
        "unit_sum": tf.reduce_sum(clean, axis=0),
        "unit_saturated": saturated if saturated is not None else tf.zeros_like(units[0]),
        "rows": tf.cast(tf.shape(units)[0], tf.float32),
        "count": count,
        "mean": mean,
        "m2": tf.reduce_sum(tf.square(clean - mean) * weight),
        "size": tf.cast(tf.size(units), tf.float32),
    }
    return {k: np.asarray(v) for k, v in stats.items()}


def _compiled_forward(model: keras.Model, paths: Sequence[str], kinds: dict[str, str] | None):
    """LayerForward of ``paths`` (plus optional health reductions) in one ``tf.function``."""

    def build():
        forward = LayerForward(model, paths)

        @tf.function(reduce_retracing=True)
        def run(x):
            outputs, taps = forward(x)
            sums = {p: batch_sums(t, kinds[p]) for p, t in taps.items()} if kinds else {}
            return tf.nest.flatten(outputs), taps, sums

        return run

    key = ("activations", tuple(paths), tuple(sorted(kinds.items())) if kinds else None)
    return compiled(model, key, build)


def check_inputs(model: keras.Model, inputs: Sequence) -> None:
    """Raise a one-line error unless ``inputs`` fit the model's inputs.

    Args:
        model: The model.
        inputs: One array-like per model input, each of shape (N, ...).

    Raises:
        KerascopeError: Wrong number of inputs, differing lengths, or a shape mismatch.
    """
    expected = list(model.inputs or [])
    if expected and len(inputs) != len(expected):
        raise KerascopeError(
            f"model '{model.name}' takes {len(expected)} inputs but {len(inputs)} were given"
        )
    lengths = {len(a) for a in inputs}
    if len(lengths) > 1:
        raise KerascopeError(f"inputs have different lengths {sorted(lengths)}; give one per input")
    for i, (spec, array) in enumerate(zip(expected, inputs, strict=False)):
        want, got = tuple(spec.shape[1:]), tuple(array.shape[1:])
        ok = len(want) == len(got) and all(
            w is None or w == g for w, g in zip(want, got, strict=False)
        )
        if not ok:
            which = f" input {i}" if len(expected) > 1 else ""
            raise KerascopeError(
                f"model '{model.name}'{which} expects inputs of shape {want} but got {got}"
            )


def iter_activations(
    model: keras.Model,
    x: np.ndarray | Sequence[np.ndarray],
    layers: str | Sequence[str] = "all",
    batch_size: int = 256,
    *,
    stats: bool = False,
) -> Iterator[Batch]:
    """Stream the activations of the selected layers, one forward pass per batch.

    Every selected layer comes out of the same compiled pass (a
    :class:`pipeline.graph.LayerForward` inside one ``tf.function``), so cost is one
    forward per batch however many layers are chosen, and nested models need no
    sub-model (which Keras 3 refuses with "Graph disconnected").

    Args:
        model: A built Sequential or Functional model (nested models are fine).
        x: Inputs, shape (N, ...); a list of arrays for multi-input models. Anything
            sliceable works (an ``h5py.Dataset`` or ``np.memmap`` streams from disk).
        layers: ``"all"``, or names, globs (``conv*``) or class names (``Dense``); see
            :func:`pipeline.graph.resolve_layers`.
        batch_size: Inputs per forward pass.
        stats: Also compute the per-batch health reductions in the same pass
            (``Batch.stats``, to feed :meth:`ActivationHealth.merge`).

    Yields:
        :class:`Batch` objects in input order. Layers run in inference mode (Dropout is
        the identity, BatchNormalization uses its moving statistics). The arrays are
        read-only views of TensorFlow's output buffers; copy one to modify it.

    Raises:
        KerascopeError: Unknown layer (the message lists close matches), or inputs
            that do not fit the model.
    """
    if batch_size <= 0:
        raise KerascopeError(f"batch_size must be positive, got {batch_size}")
    paths = resolve_layers(model, layers)
    inputs = list(x) if isinstance(x, list | tuple) else [x]
    check_inputs(model, inputs)
    kinds = {p: activation_kind(model, p) for p in paths} if stats else None
    # Under a strategy with several replicas each batch is split across them; the health
    # reductions are then taken over the gathered batch (per-replica ones would not add).
    distributed = replicas_in_scope() > 1
    run = _compiled_forward(model, paths, None if distributed else kinds)
    n = len(inputs[0])
    for start in range(0, n, batch_size):
        chunk = [np.asarray(a[start : start + batch_size]) for a in inputs]
        if distributed:
            outputs, taps, _ = run_distributed(
                lambda *xs: run(list(xs) if len(xs) > 1 else xs[0]), tuple(chunk)
            )
            reductions = {p: batch_stats(t, kinds[p]) for p, t in taps.items()} if kinds else {}
        else:
            out, tapped, batch_sums_out = run(
                [tf.convert_to_tensor(c) for c in chunk]
                if len(chunk) > 1
                else tf.convert_to_tensor(chunk[0])
            )
            # np.asarray is a read-only view of TensorFlow's buffer; Tensor.numpy() would
            # copy every activation once more (a quarter of vgg_small's extraction time).
            outputs = [np.asarray(o) for o in out]
            taps = {p: np.asarray(t) for p, t in tapped.items()}
            reductions = {
                p: _finish_stats(sums, taps[p], kinds[p]) for p, sums in batch_sums_out.items()
            }
        yield Batch(start=start, outputs=list(outputs), activations=dict(taps), stats=reductions)


def default_layers(model: keras.Model, selection: Sequence[str] | None) -> list[str]:
    """Resolve a layer selection; ``all`` (the default) leaves out nested models' outputs.

    A nested model's output equals its last inner layer's, so ``all`` keeps only the
    inner one; ask for the model's path (``base``) explicitly to store it too.
    """
    selection = list(selection or ["all"])
    chosen = resolve_layers(model, selection)
    if selection == ["all"]:
        chosen = [p for p in chosen if not any(q.startswith(p + "/") for q in chosen)]
    return chosen


def layer_metas(model: keras.Model, paths: Sequence[str]):
    """What the activations file records about each layer (class, position, activation).

    A ViT's token layers also get their patch grid (see :func:`pipeline.graph.token_grids`).
    """
    from pipeline.artifacts.activations import LayerMeta

    infos = {i.path: i for i in list_layers(model)}
    grids = token_grids(model)
    return [
        LayerMeta(
            path=path,
            class_name=infos[path].class_name,
            config_name=infos[path].layer.name,
            position=infos[path].position,
            call_index=infos[path].call_index,
            activation=activation_kind(model, path),
            is_model=any(other.startswith(path + "/") for other in infos),
            token_grid=(grids[path].height, grids[path].width) if path in grids else None,
            class_token=grids[path].class_token if path in grids else False,
        )
        for path in paths
    ]


def extract_activations(
    model: keras.Model,
    x: np.ndarray | Sequence[np.ndarray],
    layers: str | Sequence[str] = "all",
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """All activations of the selected layers, for all inputs.

    A convenience for notebooks; for large inputs stream with :func:`iter_activations`.
    Warns (``RuntimeWarning``, naming the layer) when a layer outputs NaN or Inf.

    Returns:
        Layer path -> array of shape (N, ...).
    """
    n = len(x[0] if isinstance(x, list | tuple) else x)
    result: dict[str, np.ndarray] = {}
    suspect: set[str] = set()
    for batch in iter_activations(model, x, layers, batch_size):
        for path, value in batch.activations.items():
            # Each layer's array is allocated once and every batch copied in once
            # (collecting batches and concatenating them would copy everything twice).
            if path not in result:
                result[path] = np.empty((n, *value.shape[1:]), value.dtype)
            result[path][batch.start : batch.start + len(value)] = value
            # A sum is NaN/Inf if any value is (or if finite values overflow, which the
            # exact check below sorts out): one pass, no boolean copy of the batch.
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value.sum()):
                suspect.add(path)
    for path in suspect:
        finite = np.isfinite(result[path])
        if not finite.all():
            share = 1.0 - finite.mean()
            warnings.warn(f"layer '{path}' has {share:.2%} NaN/Inf values", RuntimeWarning, 2)
    return result


@dataclass
class _LayerAccumulator:
    kind: str
    unit_max: np.ndarray | None = None
    unit_sum: np.ndarray | None = None
    unit_saturated: np.ndarray | None = None
    rows: float = 0.0
    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    size: float = 0.0


@dataclass
class ActivationHealth:
    """Streaming per-layer health statistics (memory independent of the input count).

    A *unit* is one index of the layer's last axis (a channel of a conv layer, a neuron
    of a dense layer, a hidden unit of a recurrent layer), pooled over inputs and over
    spatial or time positions.

    Rules:
        * dead: the unit's output is never above zero over all inputs and positions
          (the "dying ReLU" check of Lu et al. 2019, "Dying ReLU and initialization");
        * saturated, bounded activations (tanh, sigmoid, softmax, recurrent states): at
          least 95% of the unit's values are in the flat zone, |a| > 0.99 for tanh,
          a < 0.01 or a > 0.99 for sigmoid-like functions (the saturation Glorot &
          Bengio 2010 track during training);
        * saturated, unbounded activations (ReLU, linear, ...): the unit's mean is more
          than 4 standard deviations above the layer's mean, i.e. far above the
          layer's typical range;
        * non-finite: NaN or +/-Inf values, excluded from the other statistics.

    Args:
        kinds: Layer path -> activation function name (see :func:`activation_kind`).
    """

    kinds: dict[str, str]
    layers: dict[str, _LayerAccumulator] = field(default_factory=dict)

    def update(self, activations: dict[str, np.ndarray]) -> dict[str, int]:
        """Add one batch of activations given as arrays.

        Returns:
            Layer path -> number of non-finite values in this batch.
        """
        stats = {
            path: batch_stats(value, self.kinds.get(path, "linear"))
            for path, value in activations.items()
        }
        return self.merge(stats)

    def merge(self, stats: dict[str, dict[str, np.ndarray]]) -> dict[str, int]:
        """Add one batch of reductions from :func:`batch_stats` (or ``Batch.stats``).

        Returns:
            Layer path -> number of non-finite values in this batch.
        """
        nonfinite = {}
        for path, s in stats.items():
            acc = self.layers.setdefault(path, _LayerAccumulator(self.kinds.get(path, "linear")))
            unit_max = np.asarray(s["unit_max"], np.float64)
            unit_sum = np.asarray(s["unit_sum"], np.float64)
            unit_sat = np.asarray(s["unit_saturated"], np.float64)
            if acc.unit_max is None:
                acc.unit_max, acc.unit_sum, acc.unit_saturated = unit_max, unit_sum, unit_sat
            else:
                acc.unit_max = np.maximum(acc.unit_max, unit_max)
                acc.unit_sum += unit_sum
                acc.unit_saturated += unit_sat
            count, mean, m2 = float(s["count"]), float(s["mean"]), float(s["m2"])
            total = acc.count + count
            if total:
                # Chan, Golub & LeVeque (1979): merge two (count, mean, M2) summaries.
                delta = mean - acc.mean
                acc.m2 += m2 + delta**2 * acc.count * count / total
                acc.mean += delta * count / total
            acc.count = total
            acc.rows += float(s["rows"])
            acc.size += float(s["size"])
            nonfinite[path] = int(round(float(s["size"]) - count))
        return nonfinite

    def _moments(self, acc: _LayerAccumulator) -> tuple[float, float]:
        if not acc.count:
            return float("nan"), float("nan")
        return acc.mean, float(np.sqrt(max(acc.m2 / acc.count, 0.0)))

    def per_unit(self, path: str) -> dict[str, np.ndarray]:
        """Per-unit ``max``, ``mean`` and ``dead``/``saturated`` flags of one layer."""
        acc = self.layers[path]
        unit_mean = acc.unit_sum / max(acc.rows, 1.0)
        mean, std = self._moments(acc)
        if acc.kind in BOUNDED:
            saturated = acc.unit_saturated / max(acc.rows, 1.0) >= SATURATION_SHARE
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
                "nonfinite_fraction": (acc.size - acc.count) / acc.size if acc.size else 0.0,
                "units": int(len(acc.unit_max)),
            }
        return report


def overall_health(report: dict[str, dict[str, float]]) -> dict[str, float]:
    """The whole model's dead and saturated shares, weighted by unit count.

    Non-finite values are left out: the stage warns about them loudly and the per-layer
    health keeps them (two columns in ``dvc exp show`` rather than three).

    Args:
        report: Per-layer health (:meth:`ActivationHealth.summary`).

    Returns:
        ``dead_fraction`` and ``saturated_fraction``, shares of all units.
    """
    units = np.array([max(1, r.get("units", 1)) for r in report.values()], np.float64)
    if not len(units):
        return {"dead_fraction": 0.0, "saturated_fraction": 0.0}

    def weighted(key: str) -> float:
        values = np.nan_to_num([r.get(key, 0.0) for r in report.values()])
        return float(np.average(values, weights=units))

    return {
        "dead_fraction": weighted("dead_fraction"),
        "saturated_fraction": weighted("saturated_fraction"),
    }

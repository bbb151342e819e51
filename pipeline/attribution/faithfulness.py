"""How faithful is an attribution map? Deletion/insertion and model randomisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, forward_rows, run_batched, spec
from pipeline.attribution.options import SUBSTRATES
from pipeline.attribution.result import as_maps, has_channels, spatial_sigmas
from pipeline.attribution.scoring import check_targets, forward, target_score
from pipeline.errors import KerascopeError
from pipeline.graph import layer_info, list_layers


@dataclass
class DeletionInsertion:
    """Deletion and insertion curves of a set of maps.

    Attributes:
        fractions: Share of features removed/inserted at each step, 0..1.
        deletion: (N, steps + 1) target-class softmax probability as the top-ranked
            features are replaced by the substrate.
        insertion: (N, steps + 1) the same as they are put back into the substrate.
        deletion_auc: Per input, area under the deletion curve (lower is better).
        insertion_auc: Per input, area under the insertion curve (higher is better).
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray


def check_maps(maps, x: np.ndarray) -> np.ndarray:
    """Attribution maps as float32, checked to lie over the inputs.

    Images take (N, H, W) maps, volumes (N, D, H, W); sequences (N, T, F) or (N, T)
    maps (whole time steps).

    Raises:
        KerascopeError: The maps do not fit the inputs.
    """
    maps = as_maps(maps)
    valid = [x.shape[1:-1]] if has_channels(x) else [x.shape[1:], x.shape[1:2]]
    if len(maps) != len(x) or tuple(maps.shape[1:]) not in [tuple(v) for v in valid]:
        raise KerascopeError(
            f"attribution maps of shape {maps.shape} do not fit inputs of shape {x.shape}"
        )
    return maps


def substrate(x: np.ndarray, kind: str = "blur", sigma: float = 5.0) -> np.ndarray:
    """What removed features are replaced with: zeros, a blurred copy, or the mean."""
    if kind == "zeros":
        return np.zeros_like(x)
    if kind == "mean":
        axes = tuple(range(1, x.ndim))
        return np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape).astype(x.dtype)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(x, sigma=spatial_sigmas(x.ndim, sigma), mode="nearest").astype(
            x.dtype
        )
    raise KerascopeError(f"invalid substrate '{kind}'; valid: {', '.join(SUBSTRATES)}")


def _curve_step(model: keras.Model, shape: tuple, feature_shape: tuple, steps: int):
    """Compiled ``(x, substrate, rank, targets) -> (deletion, insertion)`` curves.

    The perturbed inputs of every step are built in the graph from the feature ranks,
    so a batch of ``b`` inputs is one forward pass over ``2 b (steps + 1)`` inputs.
    """

    def build():
        fwd = forward(model, "logits")
        per_feature = len(feature_shape) < len(shape)  # images: a pixel spans its channels
        counts = np.round(np.linspace(0.0, 1.0, steps + 1) * np.prod(feature_shape))
        counts = counts.astype(np.int32)

        def step(batch, base, rank, target):
            top = rank[:, None, :] < counts[None, :, None]  # (b, steps + 1, features)
            top = tf.reshape(top, (-1, steps + 1, *feature_shape))
            if per_feature:
                top = top[..., None]
            xs, bs = batch[:, None], base[:, None]
            perturbed = tf.concat(
                [tf.where(top, bs, xs), tf.where(top, xs, bs)], axis=1
            )  # (b, 2 (steps + 1), ...): deletion then insertion
            flat = tf.reshape(perturbed, (-1, *shape))
            probs = fwd.probabilities(fwd(flat)[0])
            values = target_score(probs, tf.repeat(target, 2 * (steps + 1)))
            values = tf.reshape(values, (-1, 2, steps + 1))
            return values[:, 0], values[:, 1]

        return step

    return compile_step(
        model,
        ("deletion_insertion", shape, feature_shape, steps),
        build,
        [
            spec(shape),
            spec(shape),
            spec((int(np.prod(feature_shape)),), tf.int32),
            spec((), tf.int32),
        ],
    )


def deletion_insertion(
    model: keras.Model,
    x: np.ndarray,
    targets,
    maps: np.ndarray,
    *,
    steps: int = 20,
    substrate_kind: str = "blur",
    batch_size: int = 256,
) -> DeletionInsertion:
    """Deletion and insertion metrics (Petsiuk, Das & Saenko 2018, RISE).

    From "RISE: Randomized Input Sampling for Explanation of Black-box Models".

    Features (pixels, across channels) are ranked by attribution. Deletion replaces the
    top-ranked ones by the substrate step by step and follows the target class's softmax
    probability; insertion starts from the substrate and puts them back. The AUC is the
    mean of the curve over the fraction axis (trapezoidal), so it lies in [0, 1].

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        maps: Attributions (N, H, W) for images, (N, D, H, W) for volumes or (N, T, F)
            for sequences (an array or an :class:`Attribution`); sequence maps of shape
            (N, T) rank whole time steps.
        steps: Number of deletion/insertion steps.
        substrate_kind: ``zeros``, ``blur`` or ``mean``.
        batch_size: Perturbed inputs per forward pass (deletion and insertion of
            ``batch_size / (2 (steps + 1))`` inputs at a time, at least one).

    Returns:
        :class:`DeletionInsertion`.
    """
    targets = check_targets(model, targets, len(x), x)
    if steps <= 0:
        raise KerascopeError(f"faithfulness steps must be positive, got {steps}")
    x = np.asarray(x, np.float32)
    maps = check_maps(maps, x)
    feature_shape = tuple(maps.shape[1:])
    n_features = int(np.prod(feature_shape))
    base = substrate(x, substrate_kind)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    # rank[i, j] = position of feature j in input i's descending order.
    order = np.argsort(-maps.reshape(len(x), -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_features)[None].repeat(len(x), 0), axis=1)
    fn = _curve_step(model, x.shape[1:], feature_shape, steps)
    deletion, insertion = run_batched(
        fn,
        [x, base.astype(np.float32), rank.astype(np.int32), targets],
        max(1, forward_rows(model, x.shape[1:], batch_size) // (2 * (steps + 1))),
    )
    curves = {"deletion": deletion, "insertion": insertion}
    auc = {k: np.trapezoid(v, fractions, axis=1) for k, v in curves.items()}
    return DeletionInsertion(
        fractions, curves["deletion"], curves["insertion"], auc["deletion"], auc["insertion"]
    )


def random_maps(shape: tuple, seed: int = 0) -> np.ndarray:
    """Random attribution maps: the reference ranking for deletion/insertion."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0 where either map is constant)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomizable_layers(model: keras.Model) -> list[str]:
    """Layers with weights, top (output side) first: the cascade order of Adebayo et al."""
    seen, order = set(), []
    for info in reversed(list_layers(model)):
        layer = info.layer
        if isinstance(layer, keras.Model) or not layer.weights or id(layer) in seen:
            continue
        seen.add(id(layer))
        order.append(info.path)
    return order


class SanityUnavailable(KerascopeError):
    """The model has no layer whose weights can be redrawn."""


def randomization_sanity(
    model: keras.Model,
    x: np.ndarray,
    targets,
    method: Callable[[keras.Model, np.ndarray, np.ndarray], object],
    *,
    max_layers: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    original: np.ndarray | None = None,
) -> tuple[list[str], np.ndarray]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    From "Sanity Checks for Saliency Maps".

    Re-initialises the weights of the model from the top layer down, one more layer
    (or group of layers) at each step, recomputes the maps with ``method`` and reports
    the mean Spearman rank correlation with the original maps. A method whose maps
    stay highly correlated after the model is randomised does not depend on what the
    model learned and fails the check.

    The weights are redrawn in place and restored when the check ends, however it
    ends, so the user's model comes back unchanged. In place rather than on a copy:
    the methods' compiled steps are kept per model, and a copy would trace every one
    of them again (on a 428-layer DenseNet121, 22 of the stage's 59 s).

    On a deep network one step per layer costs a map computation per layer (150 for a
    MobileNetV2); ``steps`` groups consecutive layers instead, so the cascade takes at
    most that many steps and still ends with every layer randomised.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (kept fixed, as in the paper).
        method: ``method(model, x, targets)`` returning maps or an :class:`Attribution`.
        max_layers: Randomise at most this many layers (None: all with weights).
        steps: Cascade steps (None: one per layer); layers are split into this many
            consecutive groups, top first.
        seed: Seed of the random weights.
        original: The maps of the unmodified model, if already computed.

    Returns:
        For each step, the deepest layer randomised so far (cascade order), and the
        mean Spearman correlation after that step (same length).
    """
    targets = check_targets(model, targets, len(x), x)
    original = as_maps(method(model, x, targets) if original is None else original)
    layers = randomizable_layers(model)[: max_layers or None]
    if not layers:
        raise SanityUnavailable(f"model '{model.name}' has no layer with weights to randomise")
    chosen = [layer_info(model, path).layer for path in layers]
    saved = [(w, w.numpy()) for layer in chosen for w in layer.weights]
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.arange(len(layers)), min(steps or len(layers), len(layers)))
    correlations, reached = [], []
    try:
        for group in groups:
            for i in group:
                _randomize(chosen[i], rng)
            randomized = as_maps(method(model, x, targets))
            correlations.append(
                float(np.mean([spearman(o, r) for o, r in zip(original, randomized, strict=True)]))
            )
            reached.append(layers[group[-1]])
    finally:
        for weight, value in saved:
            weight.assign(value)
    return reached, np.asarray(correlations)


def _randomize(layer, rng: np.random.Generator) -> None:
    """Redraw a layer's learned weights: normal, at the scale of the trained ones."""
    for weight in layer.weights:
        if "moving_" in weight.path:
            continue  # running statistics (BatchNorm) are not learned parameters
        value = weight.numpy()
        # Same scale as the trained weights, so activations keep a sensible range.
        scale = float(value.std()) or 0.05
        weight.assign(rng.normal(0.0, scale, value.shape).astype(value.dtype))

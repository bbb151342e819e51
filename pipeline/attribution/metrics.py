"""More ways to judge attribution maps, beyond deletion/insertion and randomisation.

* MuFidelity (Bhatt et al. 2020): do the attributions of removed features add up to
  the score they took away?
* Average Drop and Increase in Confidence (Chattopadhay et al. 2018) and Average Gain
  (Zhang et al. 2023): how confident is the model on the input masked by the map?
* AverageStability (Bhatt et al. 2020): how much do maps move for slightly noisy inputs?
* Complexity and Sparseness (Chalasani et al. 2020): how concentrated is a map?
* The random-logit test (Sixt et al. 2020): does the map change with the class explained?

Every metric that runs the model does so in compiled batches of masked inputs (see
:mod:`pipeline.attribution.perturbation`) and returns one value per input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.attribution.faithfulness import check_maps, spearman
from pipeline.attribution.perturbation import design_scores, scores_of_masks, segments
from pipeline.attribution.result import as_maps
from pipeline.attribution.scoring import check_targets, num_classes
from pipeline.errors import KerascopeError, check_positive, check_range

#: ``method(model, x, targets)`` returning maps or an :class:`Attribution`.
Method = Callable[[keras.Model, np.ndarray, np.ndarray], object]


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (0 if constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    scale = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    return np.divide((a * b).sum(axis=1), scale, out=np.zeros(len(a)), where=scale > 0)


def mu_fidelity(
    model: keras.Model,
    x: np.ndarray,
    targets,
    maps,
    *,
    samples: int = 32,
    subset: float = 0.2,
    grid: int = 8,
    baseline: float = 0.0,
    score: str = "logits",
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """MuFidelity: correlation of removed attribution with the score it took away.

    Bhatt, Weller & Moura (2020), "Evaluating and Aggregating Feature-based Model
    Explanations". For ``samples`` random subsets S of the cells of a grid (a share
    ``subset`` of them), the Pearson correlation over S between sum_{i in S} map_i and
    score(x) - score(x with S set to ``baseline``). 1 is perfectly faithful; random maps
    score about 0. The subsets are drawn from the seed, the same for every input.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        maps: Attributions (N, H, W), or (N, T, F) / (N, T) for sequences.
        samples: Random subsets per input.
        subset: Share of the cells removed by each subset, in (0, 1].
        grid: Cells per side (images) or time windows (sequences); at most the
            number of positions along each axis is used.
        baseline: The value removed features take.
        score: ``logits`` or ``probabilities``.
        seed: Seed of the subsets.
        batch_size: Masked inputs per compiled step.

    Returns:
        MuFidelity per input.
    """
    check_positive("mu_fidelity samples", samples)
    check_range("mu_fidelity subset", subset, 0, 1)
    check_positive("mu_fidelity grid", grid)
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    maps = check_maps(maps, x)
    positions = x.shape[1:-1]
    cells, count = segments(positions, min(grid, *positions), "mu_fidelity grid")
    # Attribution per position (a sequence map's features summed), then per cell.
    per_position = maps.reshape(len(x), int(np.prod(positions)), -1).sum(axis=2)
    per_cell = per_position @ np.eye(count)[cells.ravel()]
    removed_count = max(1, round(subset * count))
    rng = np.random.default_rng(seed)
    ranks = np.argsort(np.argsort(rng.random((samples, count)), axis=1), axis=1)
    removed = (ranks < removed_count).astype(np.float32)
    design = np.concatenate([np.ones((1, count), np.float32), 1.0 - removed])
    scores = design_scores(
        model,
        x,
        targets,
        design,
        cells,
        baseline=baseline,
        score=score,
        batch_size=batch_size,
    )
    drops = scores[:, :1] - scores[:, 1:]
    return _row_correlation(per_cell @ removed.T, drops)


@dataclass
class ConfidenceChange:
    """How the target's probability changes on inputs masked by their maps, in percent.

    Attributes:
        drop: Per input, max(0, Y - O) / Y * 100 (Average Drop: lower is better).
        increase: Per input, 100 if O > Y else 0 (Increase in Confidence: its mean is
            the share of inputs, higher is better).
        gain: Per input, max(0, O - Y) / (1 - Y) * 100 (Average Gain: higher is better).
        original: Y, the target probability on each input.
        masked: O, the target probability on the masked input.
    """

    drop: np.ndarray
    increase: np.ndarray
    gain: np.ndarray
    original: np.ndarray
    masked: np.ndarray


def average_drop(
    model: keras.Model, x: np.ndarray, targets, maps, *, batch_size: int = 256
) -> ConfidenceChange:
    """Average Drop, Increase in Confidence and Average Gain of maps used as masks.

    Chattopadhay, Sarkar, Howlader & Balasubramanian (2018), "Grad-CAM++"; Average Gain
    from Zhang, Rao, Fu, Xiao, Tao & Zou (2023), "Opti-CAM: Optimizing saliency maps
    for interpretability". Each map is scaled to [0, 1] (min to max; a constant map
    masks everything out) and multiplies its input, every channel alike; Y and O are
    the target's softmax (or sigmoid) probabilities on the input and on the masked one.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        maps: Attributions (N, H, W), or (N, T, F) / (N, T) for sequences.
        batch_size: Masked inputs per compiled step.

    Returns:
        :class:`ConfidenceChange` (per-input values; their means are the metrics).
    """
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    maps = check_maps(maps, x)
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1)[:, None]
    span = flat.max(axis=1)[:, None] - low
    scaled = np.divide(flat - low, span, out=np.zeros_like(flat), where=span > 0)
    masks = np.stack([np.ones_like(maps), scaled.reshape(maps.shape)], axis=1)
    scores = scores_of_masks(
        model,
        x,
        targets,
        masks,
        base=np.zeros_like(x),
        score="probabilities",
        batch_size=batch_size,
    ).astype(np.float64)
    original, masked = scores[:, 0], scores[:, 1]
    drop = np.divide(
        np.maximum(0.0, original - masked),
        original,
        out=np.zeros_like(original),
        where=original > 0,
    )
    gain = np.divide(
        np.maximum(0.0, masked - original),
        1.0 - original,
        out=np.zeros_like(original),
        where=original < 1,
    )
    return ConfidenceChange(
        drop=100.0 * drop,
        increase=100.0 * (masked > original),
        gain=100.0 * gain,
        original=original,
        masked=masked,
    )


def average_stability(
    method: Method,
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    samples: int = 2,
    noise: float = 0.02,
    seed: int = 0,
    original=None,
) -> np.ndarray:
    """AverageStability: the relative distance of maps of slightly perturbed inputs.

    Bhatt, Weller & Moura (2020), "Evaluating and Aggregating Feature-based Model
    Explanations" (their average sensitivity). Each input gets ``samples`` copies with
    uniform noise of radius ``noise`` times its value range; the method runs on all
    copies at once (its own compiled batches) and the metric is the mean of
    ||map(x') - map(x)|| / ||map(x)|| (the plain distance where map(x) is zero). 0 is
    perfectly stable. The noise of input ``i`` comes from ``default_rng([seed, i])``.

    Args:
        method: ``method(model, x, targets)`` returning maps or an :class:`Attribution`.
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        samples: Noisy copies per input.
        noise: Noise radius as a fraction of each input's value range (max - min).
        seed: Seed of the noise.
        original: The maps of ``x``, if already computed.

    Returns:
        AverageStability per input (lower is better).
    """
    check_positive("average_stability samples", samples)
    check_range("average_stability noise", noise, 0.0, float("inf"))
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    original = as_maps(method(model, x, targets) if original is None else original)
    axes = tuple(range(1, x.ndim))
    span = x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)
    # One generator per input: its noise does not depend on the other inputs.
    uniform = np.stack(
        [
            np.random.default_rng([seed, i]).uniform(-1.0, 1.0, (samples, *x.shape[1:]))
            for i in range(len(x))
        ]
    )
    noisy = (x[:, None] + uniform * (noise * span)[:, None]).astype(np.float32)
    again = as_maps(method(model, noisy.reshape(-1, *x.shape[1:]), np.repeat(targets, samples)))
    before = original.reshape(len(x), 1, -1).astype(np.float64)
    distance = np.linalg.norm(again.reshape(len(x), samples, -1) - before, axis=2)
    norm = np.linalg.norm(before, axis=2)
    relative = np.divide(distance, norm, out=distance.copy(), where=norm > 0)
    return relative.mean(axis=1)


def _fractions(maps) -> np.ndarray:
    """|map| per input as a distribution over its entries (uniform for an all-zero map)."""
    flat = np.abs(as_maps(maps).reshape(len(maps), -1)).astype(np.float64)
    total = flat.sum(axis=1, keepdims=True)
    uniform = np.full_like(flat, 1.0 / max(flat.shape[1], 1))
    return np.divide(flat, total, out=uniform, where=total > 0)


def complexity(maps) -> np.ndarray:
    """Complexity: the entropy of each map's normalised |attribution|.

    Chalasani, Chen, Chowdhury, Wu & Jha (2020), "Concise Explanations of Neural
    Networks using Adversarial Training": -sum_i p_i log p_i with p = |a| / sum |a|.
    0 for a single feature; log(features) for a flat (or all-zero) map.

    Returns:
        Complexity per input (lower is more concise).
    """
    p = _fractions(maps)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def sparseness(maps) -> np.ndarray:
    """Sparseness: the Gini index of each map's |attribution|.

    Chalasani et al. (2020), as above: with |a| sorted ascending,
    sum_i (2 i - n - 1) a_i / (n sum a). 0 for a flat (or all-zero) map; (n - 1) / n
    for a single feature.

    Returns:
        Sparseness per input (higher is sparser).
    """
    p = np.sort(_fractions(maps), axis=1)
    n = p.shape[1]
    return ((2 * np.arange(1, n + 1) - n - 1) * p).sum(axis=1) / n


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity of two maps, each scaled to [0, 1] first.

    Wang, Bovik, Sheikh & Simoncelli (2004), with a Gaussian window of ``sigma``
    positions (as scikit-image's ``gaussian_weights=True``), over maps of any rank.
    """
    from scipy.ndimage import gaussian_filter

    def scaled(m):
        m = np.asarray(m, np.float64)
        span = np.ptp(m)
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    a, b = scaled(a), scaled(b)

    def blur(m):
        return gaussian_filter(m, sigma=sigma, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2  # the paper's constants for a data range of 1
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(index.mean())


@dataclass
class RandomLogit:
    """Maps for a random other class compared with the target's.

    Attributes:
        classes: The random other class of each input.
        ssim: Per input, SSIM between the two maps (1: the same map).
        spearman: Per input, Spearman rank correlation between the two maps.
    """

    classes: np.ndarray
    ssim: np.ndarray
    spearman: np.ndarray


def random_logit(
    method: Method, model: keras.Model, x: np.ndarray, targets, *, seed: int = 0, original=None
) -> RandomLogit:
    """The random-logit test: explain a random other class and compare the maps.

    Sixt, Granz & Landgraf (2020), "When Explanations Lie: Why Many Modified BP
    Attributions Fail". A method whose map for a random other class looks like the
    target's (high SSIM or Spearman) does not explain the class. Input ``i``'s other
    class comes from ``default_rng([seed, i])``.

    Args:
        method: ``method(model, x, targets)`` returning maps or an :class:`Attribution`.
        model: A classifier (at least two classes; a one-unit head counts as two).
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        seed: Seed of the random classes.
        original: The maps for ``targets``, if already computed.

    Returns:
        :class:`RandomLogit` (lower similarity is better).
    """
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    classes = num_classes(model)
    if classes < 2:
        raise KerascopeError("the random-logit test needs a model with at least two classes")
    original = as_maps(method(model, x, targets) if original is None else original)
    others = np.array(
        [np.random.default_rng([seed, i]).integers(classes - 1) for i in range(len(x))],
        dtype=np.int32,
    )
    others = others + (others >= targets)  # skip the target itself
    again = as_maps(method(model, x, others))
    pairs = list(zip(original, again, strict=True))
    return RandomLogit(
        classes=others,
        ssim=np.array([ssim(a, b) for a, b in pairs]),
        spearman=np.array([spearman(a, b) for a, b in pairs]),
    )

"""Black-box attribution: occlusion, RISE, LIME, Kernel SHAP, Sobol and HSIC.

Zeiler & Fergus 2014; Petsiuk et al. 2018; Ribeiro et al. 2016; Lundberg & Lee 2017;
Fel et al. 2021; Novello et al. 2022.

None of them differentiates the model: each runs it on masked copies of every input,
``baseline + (x - baseline) * mask``, and reads the target's score, so they work on
models without gradients. The masks are drawn once from the seed and shared by all
inputs, so results never depend on the batch size; a batch of inputs times a chunk of
masks goes through one compiled step, ``batch_size`` masked inputs at a time.

Occlusion works on images (N, H, W, C), on volumes (N, D, H, W, C), where it occludes
cubes, and on sequences (N, T, F), where it occludes windows of time steps. RISE, LIME,
Kernel SHAP, Sobol and HSIC need images: they refuse sequences and volumes with a
one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from math import ceil, log2

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import batches, compile_step, forward_rows, run_batched, spec
from pipeline.attribution.options import resolve
from pipeline.attribution.result import Attribution, is_image
from pipeline.attribution.scoring import check_score, check_targets, forward, target_score
from pipeline.errors import KerascopeError, check_positive

#: ``(start, stop) -> masks[start:stop]`` of a design shared by all inputs, made chunk
#: by chunk so a large design never exists at full resolution all at once.
MaskChunks = Callable[[int, int], np.ndarray]


def _masked_step(model: keras.Model, shape: tuple, mask_shape: tuple, score: str):
    """Compiled ``(batch, base, targets, masks) -> target scores (b, p)``.

    Input ``i`` is scored under each of its ``p`` masks as ``base + (x - base) * mask``.
    Masks over positions (H, W) or (T,) apply to all channels or features; masks of the
    input's own shape apply elementwise.
    """

    def build():
        fwd = forward(model, "logits")
        expand = len(mask_shape) < len(shape)

        def step(batch, base, target, masks):
            count = tf.shape(masks)[1]
            weights = masks[..., None] if expand else masks
            mixed = base[:, None] + (batch - base)[:, None] * weights  # (b, p, ...)
            outputs = fwd(tf.reshape(mixed, (-1, *shape)))[0]
            if score == "probabilities":
                # Squashed here, so models that output logits give probabilities too.
                outputs = fwd.probabilities(outputs)
            return tf.reshape(target_score(outputs, tf.repeat(target, count)), (-1, count))

        return step

    return compile_step(
        model,
        ("masked_scores", score, shape, mask_shape),
        build,
        [
            spec(shape),
            spec(shape),
            spec((), tf.int32),
            tf.TensorSpec((None, None, *mask_shape), tf.float32),
        ],
    )


def scores_of_masks(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    masks: np.ndarray,
    *,
    base: np.ndarray,
    score: str = "logits",
    batch_size: int = 256,
) -> np.ndarray:
    """Target scores of each input under its own masks.

    Args:
        model: A classifier.
        x: Inputs (N, ...).
        targets: Checked target classes (N,).
        masks: (N, P, *positions) or (N, P, *input shape), values in [0, 1].
        base: What a mask's zeros reveal, shaped as ``x``.
        score: ``logits`` or ``probabilities`` (softmax or sigmoid of the logits).
        batch_size: Masked inputs per compiled step.

    Returns:
        Scores (N, P).
    """
    check_score(score)
    x = np.asarray(x, np.float32)
    masks = np.asarray(masks, np.float32)
    fn = _masked_step(model, x.shape[1:], masks.shape[2:], score)
    per_step = max(1, forward_rows(model, x.shape[1:], batch_size) // masks.shape[1])
    return run_batched(fn, [x, np.asarray(base, np.float32), targets, masks], per_step)


def shared_mask_scores(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    chunks: MaskChunks,
    total: int,
    *,
    base: np.ndarray,
    score: str = "logits",
    batch_size: int = 256,
) -> np.ndarray:
    """Target scores of every input under each of ``total`` shared position masks.

    As :func:`scores_of_masks`, but the masks are the same for every input: ``chunks``
    makes them over the input's positions, (H, W) or (T,), a chunk at a time, and each
    compiled step scores a chunk of masks times the inputs that fit in ``batch_size``.

    Returns:
        Scores (N, total).
    """
    check_score(score)
    x = np.asarray(x, np.float32)
    base = np.asarray(base, np.float32)
    fn = _masked_step(model, x.shape[1:], x.shape[1:-1], score)
    batch_size = forward_rows(model, x.shape[1:], batch_size)
    size = max(1, min(total, batch_size))
    per_step = max(1, batch_size // size)
    parts = []
    for start, stop in batches(total, size):
        masks = np.asarray(chunks(start, stop), np.float32)

        def per_batch(a: int, b: int, masks=masks) -> tuple[np.ndarray]:
            return (np.broadcast_to(masks, (b - a, *masks.shape)),)

        parts.append(run_batched(fn, [x, base, targets], per_step, per_batch=per_batch))
    return np.concatenate(parts, axis=1)


def _weighted_masks(chunks: MaskChunks, weights: np.ndarray, total: int, size: int):
    """``sum_p weights[:, p] * masks[p]`` per input, the masks remade chunk by chunk."""
    out = 0.0
    for start, stop in batches(total, max(1, min(total, size))):
        out = out + np.tensordot(weights[:, start:stop], chunks(start, stop), axes=1)
    return np.asarray(out, np.float32)


def segments(positions: tuple, grid: int, name: str = "grid") -> tuple[np.ndarray, int]:
    """Each position's cell: a ``grid`` x ``grid`` square grid, or ``grid`` time windows.

    Args:
        positions: (H, W) of images or (T,) of sequences.
        grid: Cells per axis.
        name: The option, for the error message.

    Returns:
        (cell index per position, shaped ``positions``; number of cells).

    Raises:
        KerascopeError: More cells than positions along an axis.
    """
    check_positive(name, grid)
    if any(grid > size for size in positions):
        raise KerascopeError(
            f"'{name}' is {grid}, more cells than the input has positions "
            f"({' x '.join(map(str, positions))})"
        )
    axes = [np.arange(size) * grid // size for size in positions]
    cells = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), (grid,) * len(positions))
    return cells, grid ** len(positions)


def design_scores(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    design: np.ndarray,
    cells: np.ndarray,
    *,
    baseline: float,
    score: str,
    batch_size: int,
) -> np.ndarray:
    """Scores (N, P) of every input under each row of a cell design (P, cells).

    Cell ``c`` of row ``p`` keeps ``design[p, c]`` of the input and fills the rest with
    ``baseline``.
    """
    return shared_mask_scores(
        model,
        x,
        targets,
        lambda a, b: design[a:b][:, cells],
        len(design),
        base=np.full_like(x, baseline),
        score=score,
        batch_size=batch_size,
    )


def _prepare(method: str, model: keras.Model, x, targets, options: dict, images: bool = True):
    """Checked options, common settings, float inputs and targets of a black-box method."""
    opts, common = resolve(method, options)
    x = np.asarray(x, np.float32)
    if images and not is_image(x):
        kind = "volumes" if x.ndim == 5 else "sequences"
        # Their masks are drawn on a 2-D grid of cells (or smooth 2-D noise, RISE).
        raise KerascopeError(
            f"{method} needs images (N, H, W, C), got inputs of shape {x.shape}; gradient "
            f"and CAM methods work on {kind}, and as a black-box method use occlusion"
        )
    return opts, common, x, check_targets(model, targets, len(x), x)


def _grid_method(method: str, model: keras.Model, x, targets, options: dict, design_of):
    """Run a grid method: its options, the inputs' cells, its design and their scores.

    ``design_of(options, cells, rng)`` returns the design (P, cells) to score.
    """
    opts, common, x, targets = _prepare(method, model, x, targets, options)
    cells, count = segments(x.shape[1:3], opts.grid, f"{method}.grid")
    design = np.asarray(design_of(opts, count, np.random.default_rng(common["seed"])), np.float32)
    scores = design_scores(
        model,
        x,
        targets,
        design,
        cells,
        baseline=opts.baseline,
        score=common["score"],
        batch_size=common["batch_size"],
    )
    return opts, cells, design, scores


#: The most dimensions scipy's Sobol sequence has direction numbers for.
SOBOL_DIMENSIONS = 21201


def _sobol_points(dimension: int, count: int, seed: int, name: str) -> np.ndarray:
    """``count`` points of a scrambled Sobol sequence in [0, 1)^dimension, seeded."""
    from scipy.stats import qmc

    if dimension > SOBOL_DIMENSIONS:
        raise KerascopeError(
            f"'{name}.grid' is too fine: its design needs a Sobol sequence in {dimension} "
            f"dimensions, at most {SOBOL_DIMENSIONS} exist"
        )
    rng = np.random.default_rng(seed)
    try:
        sampler = qmc.Sobol(dimension, scramble=True, rng=rng)
    except TypeError:  # scipy < 1.15 names the generator `seed`
        sampler = qmc.Sobol(dimension, scramble=True, seed=rng)
    # A power of two keeps the sequence balanced; the first `count` points are used.
    return sampler.random_base2(max(0, ceil(log2(max(count, 1)))))[:count]


def _window_starts(size: int, patch: int, stride: int, name: str) -> np.ndarray:
    if patch > size:
        raise KerascopeError(f"'{name}.patch_size' is {patch}, larger than the input ({size})")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)  # the last window reaches the border
    return np.asarray(starts)


def occlusion(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Occlusion: how much the score drops when a patch of the input is hidden.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". A
    square patch (images), a cube (volumes) or a window of time steps (sequences) slides
    over the input with the given stride (the last patch of each axis reaching the
    border) and is set to ``baseline`` in every channel or feature; a position's
    attribution is the mean score drop of the patches covering it (0 where a stride
    longer than the patch leaves it uncovered). Gradient-free. Works on images, volumes
    and sequences.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.OcclusionOptions`
            (``patch_size``, ``stride``, ``baseline``), ``score`` (``logits``, the
            default, or ``probabilities``) and ``batch_size`` (occluded inputs per
            compiled step).

    Returns:
        :class:`Attribution` with maps (N, H, W) for images, (N, D, H, W) for volumes,
        (N, T) for sequences.
    """
    opts, common, x, targets = _prepare("occlusion", model, x, targets, options, images=False)
    positions = x.shape[1:-1]
    patch = opts.patch_size
    starts = [_window_starts(s, patch, opts.stride, "occlusion") for s in positions]
    corners = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(positions))
    # A first "patch" outside the input hides nothing: its score is the reference.
    corners = np.concatenate([np.asarray([positions]), corners])

    def covered(a: int, b: int) -> np.ndarray:
        # Per axis, which positions each patch covers; a patch covers their product.
        mask = np.ones((b - a, *positions), bool)
        for axis, (size, c) in enumerate(zip(positions, corners[a:b].T, strict=True)):
            inside = (np.arange(size) >= c[:, None]) & (np.arange(size) < c[:, None] + patch)
            shape = [b - a] + [1] * len(positions)
            shape[axis + 1] = size
            mask &= inside.reshape(shape)
        return mask.astype(np.float32)

    scores = shared_mask_scores(
        model,
        x,
        targets,
        lambda a, b: 1.0 - covered(a, b),
        len(corners),
        base=np.full_like(x, opts.baseline),
        score=common["score"],
        batch_size=common["batch_size"],
    )
    drops = scores[:, :1] - scores
    total = _weighted_masks(covered, drops, len(corners), common["batch_size"])
    count = _weighted_masks(covered, np.ones((1, len(corners)), np.float32), len(corners), 256)
    # With a stride longer than the patch, positions between patches stay at 0.
    return Attribution(np.divide(total, count, out=np.zeros_like(total), where=count > 0))


def rise(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """RISE: the score-weighted average of random smooth masks.

    Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of
    Black-box Models". Each mask is a random ``cells`` x ``cells`` binary grid (a cell
    kept with probability ``keep``), upsampled bilinearly to (cells + 1) cell sizes and
    cropped at a random shift; the map is sum_i score(x * M_i) M_i / (masks * keep).
    The paper scores probabilities (``score="probabilities"``). Gradient-free. Refuses
    sequences.

    Args:
        model: A classifier.
        x: Images (N, H, W, C).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.RiseOptions` (``masks``,
            ``cells``, ``keep``), ``score``, ``seed`` (of the masks, shared by all
            inputs) and ``batch_size`` (masked inputs per compiled step).

    Returns:
        :class:`Attribution` with maps (N, H, W).
    """
    opts, common, x, targets = _prepare("rise", model, x, targets, options)
    height, width = x.shape[1:3]
    n, cells = opts.masks, opts.cells
    rng = np.random.default_rng(common["seed"])
    grids = (rng.random((n, cells, cells)) < opts.keep).astype(np.float32)
    cell_h, cell_w = ceil(height / cells), ceil(width / cells)
    shifts = np.stack([rng.integers(0, cell_h, n), rng.integers(0, cell_w, n)], axis=1)
    size = ((cells + 1) * cell_h, (cells + 1) * cell_w)

    def masks(a: int, b: int) -> np.ndarray:
        up = tf.image.resize(grids[a:b, :, :, None], size, method="bilinear").numpy()[..., 0]
        rows = shifts[a:b, :1] + np.arange(height)  # (p, H)
        cols = shifts[a:b, 1:] + np.arange(width)  # (p, W)
        return up[np.arange(b - a)[:, None, None], rows[:, :, None], cols[:, None, :]]

    scores = shared_mask_scores(
        model,
        x,
        targets,
        masks,
        n,
        base=np.zeros_like(x),
        score=common["score"],
        batch_size=common["batch_size"],
    )
    return Attribution(_weighted_masks(masks, scores, n, common["batch_size"]) / (n * opts.keep))


def _weighted_ridge(design: np.ndarray, weights: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The linear map from scores (P,) to the coefficients of a weighted ridge fit.

    The intercept is fitted (and not penalised) by centring on the weighted means, as
    scikit-learn's ``Ridge(alpha, fit_intercept=True)`` with sample weights does; the
    same design for every input makes the fit one matrix product for all of them.

    Returns:
        (cells, P): coefficients = this @ scores.
    """
    centred = design - weights @ design / weights.sum()
    gram = centred.T @ (weights[:, None] * centred) + alpha * np.eye(design.shape[1])
    return np.linalg.solve(gram, centred.T * weights)


def lime(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """LIME: a weighted linear model of the score over cells switched on and off.

    Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?: Explaining the
    Predictions of Any Classifier", with the image explainer's defaults: every cell is
    on with probability 1/2 (the first sample keeps all), samples are weighted by
    sqrt(exp(-d^2 / kernel_width^2)) of their cosine distance d to the all-on
    sample, and a ridge regression (alpha 1) gives each cell's weight. The segments
    are the cells of a square grid. Gradient-free. Refuses sequences.

    Args:
        model: A classifier.
        x: Images (N, H, W, C).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.LimeOptions` (``samples``,
            ``grid``, ``kernel_width``, ``baseline``), ``score``, ``seed`` (of the
            samples, shared by all inputs) and ``batch_size`` (perturbed inputs per step).

    Returns:
        :class:`Attribution` with maps (N, H, W): each pixel holds its cell's weight.
    """

    def design_of(opts, count, rng):
        design = rng.integers(0, 2, (opts.samples, count)).astype(np.float32)
        design[0] = 1.0
        return design

    opts, cells, design, scores = _grid_method("lime", model, x, targets, options, design_of)
    on = design.sum(axis=1)
    # Cosine distance to the all-on sample (1 for the all-off one, as scikit-learn has it).
    similarity = np.sqrt(on / design.shape[1])
    kernel = np.sqrt(np.exp(-((1.0 - similarity) ** 2) / opts.kernel_width**2))
    coefficients = scores @ _weighted_ridge(design, kernel).T
    return Attribution(coefficients[:, cells].astype(np.float32))


def _shapley_coalitions(count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """The full and empty coalitions, then ``samples`` from the Shapley kernel, paired.

    Sizes s in 1..count-1 are drawn with probability proportional to
    (count - 1) / (s (count - s)); each coalition comes with its complement.
    """
    full, empty = np.ones((1, count)), np.zeros((1, count))
    if count == 1:
        return np.concatenate([full, empty])
    sizes = np.arange(1, count)
    weights = (count - 1) / (sizes * (count - sizes))
    draws = (samples + 1) // 2
    chosen = rng.choice(sizes, draws, p=weights / weights.sum())
    ranks = np.argsort(np.argsort(rng.random((draws, count)), axis=1), axis=1)
    coalitions = (ranks < chosen[:, None]).astype(np.float32)
    paired = np.concatenate([coalitions, 1.0 - coalitions])[:samples]
    return np.concatenate([full, empty, paired])


def kernel_shap(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Kernel SHAP: Shapley values of the grid cells by the Shapley-kernel regression.

    Lundberg & Lee (2017), "A Unified Approach to Interpreting Model Predictions".
    Coalitions are sampled from the Shapley kernel (in complementary pairs, as the shap
    library does), so the regression is unweighted; the values sum exactly to
    score(x) - score(all cells at ``baseline``), enforced by eliminating one cell.
    For a score additive over cells the values are each cell's exact contribution.
    Gradient-free. Refuses sequences.

    Args:
        model: A classifier.
        x: Images (N, H, W, C).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.KernelShapOptions`
            (``samples``, ``grid``, ``baseline``), ``score``, ``seed`` (of the
            coalitions, shared by all inputs) and ``batch_size``.

    Returns:
        :class:`Attribution` with maps (N, H, W): each pixel holds its cell's value.
    """

    def design_of(opts, count, rng):
        return _shapley_coalitions(count, opts.samples, rng)

    _, cells, design, scores = _grid_method("kernel_shap", model, x, targets, options, design_of)
    full, empty, sampled = scores[:, 0], scores[:, 1], scores[:, 2:]
    gap = full - empty
    if design.shape[1] == 1:
        return Attribution(gap[:, None][:, cells].astype(np.float32))
    coalitions = design[2:]
    # phi_last = gap - sum(other phis): substitute it and solve for the others.
    last = coalitions[:, -1]
    reduced = coalitions[:, :-1] - last[:, None]
    residual = sampled - empty[:, None] - last[None] * gap[:, None]
    head = residual @ np.linalg.pinv(reduced).T
    values = np.concatenate([head, (gap - head.sum(axis=1))[:, None]], axis=1)
    return Attribution(values[:, cells].astype(np.float32))


def sobol(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Sobol attribution: total-order Sobol indices of grid-cell masks.

    Fel, Cadène, Chalvidal, Cord, Vigouroux & Serre (2021), "Look at the Variance!
    Efficient Black-box Explanations with Sobol-based Sensitivity Analysis". Real-valued
    masks over the cells come from a scrambled Sobol sequence in the Saltelli scheme
    (matrices A and B, and for every cell A with that cell's column from B); the
    Jansen estimator gives each cell's total-order index,
    sum (f(A) - f(C_i))^2 / (2 n Var f(A)). Gradient-free. Refuses sequences.

    Args:
        model: A classifier.
        x: Images (N, H, W, C).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.SobolOptions` (``designs``,
            ``grid``, ``baseline``), ``score``, ``seed`` (of the scrambling) and
            ``batch_size``.

    Returns:
        :class:`Attribution` with maps (N, H, W): each pixel holds its cell's index.
    """

    def design_of(opts, count, rng):
        points = _sobol_points(2 * count, opts.designs, int(rng.integers(2**31)), "sobol")
        a, b = points[:, :count], points[:, count:]
        c = np.repeat(a[None], count, axis=0)  # (cells, n, cells)
        c[np.arange(count), :, np.arange(count)] = b.T
        return np.concatenate([a, b, c.reshape(-1, count)])

    _, cells, design, scores = _grid_method("sobol", model, x, targets, options, design_of)
    count = design.shape[1]
    n = len(design) // (count + 2)
    f_a = scores[:, :n]
    f_c = scores[:, 2 * n :].reshape(len(scores), count, n)
    variance = ((f_a - f_a.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / max(n - 1, 1)
    total = ((f_a[:, None] - f_c) ** 2).sum(axis=2) / (2 * n * np.maximum(variance, 1e-12))[:, None]
    return Attribution(total[:, cells].astype(np.float32))


def _hsic(design: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """HSIC between each binary cell variable and the score, per input: (N, cells).

    The input kernel is 1 + (1/2 - (x - x')^2) per cell, the output kernel a Gaussian
    whose width is the median distance between scores; with a binary design
    tr(K H L H) reduces to 2 x^T (H L H) x.
    """
    n = design.shape[0]
    upper = np.triu_indices(n, 1)
    out = []
    # Inputs per chunk: their (n, n) Gram matrices stay within ~16M entries.
    for start, stop in batches(len(scores), max(1, (1 << 24) // (n * n))):
        y = scores[start:stop].astype(np.float64)
        distance = np.abs(y[:, :, None] - y[:, None, :])
        width = np.median(distance[:, upper[0], upper[1]], axis=1)
        width = np.where(width > 0, width, 1.0)[:, None, None]
        gram = np.exp(-(distance**2) / (2 * width**2))
        centred = (
            gram
            - gram.mean(axis=1, keepdims=True)
            - gram.mean(axis=2, keepdims=True)
            + gram.mean(axis=(1, 2), keepdims=True)
        )
        out.append(2.0 * ((centred @ design) * design).sum(axis=1) / (n - 1) ** 2)
    return np.concatenate(out)


def hsic(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """HSIC attribution: how strongly the score depends on each grid cell being masked.

    Novello, Fel & Vigouroux (2022), "Making Sense of Dependence: Efficient Black-box
    Explanations Using Dependence Measure". Binary masks over the cells (a rounded
    scrambled Sobol sequence, as xplique samples them) are scored, and each cell gets
    the Hilbert-Schmidt independence criterion between its on/off variable and the
    score, tr(K H L H) / (n - 1)^2, with xplique's binary input kernel and a Gaussian
    output kernel of median-distance width. Gradient-free. Refuses sequences.

    Args and returns as :func:`sobol` (options
    :class:`~pipeline.attribution.options.HsicOptions`; each pixel holds its cell's HSIC).
    """

    def design_of(opts, count, rng):
        return np.round(_sobol_points(count, opts.designs, int(rng.integers(2**31)), "hsic"))

    _, cells, design, scores = _grid_method("hsic", model, x, targets, options, design_of)
    return Attribution(_hsic(design, scores)[:, cells].astype(np.float32))

"""Batched activation maximization: one input per unit, one compiled step for all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np
import tensorflow as tf

from pipeline.errors import KerascopeError
from pipeline.graph import compiled, list_layers
from pipeline.inputs import InputSpace
from pipeline.maximization import regularizers as reg
from pipeline.maximization.objectives import objective_forward, objective_values
from pipeline.maximization.parametrizations import initial_params, to_image
from pipeline.maximization.settings import Objective, Settings, Sum

#: Memory budget used to choose the batch size automatically.
MEMORY_BUDGET_BYTES = 1 << 30


@dataclass
class MaximizationResult:
    """Optimised images of one objective.

    Attributes:
        images: (units * copies, H, W, C) in the data's value range.
        objective: (units * copies, steps) objective value at every step.
        final: (units * copies,) objective of the final image, untransformed.
        units: (units * copies,) unit index of each image.
        copy: (units * copies,) copy index of each image.
    """

    images: np.ndarray
    objective: np.ndarray
    final: np.ndarray
    units: np.ndarray
    copy: np.ndarray


def auto_batch_size(model: keras.Model, budget: int = MEMORY_BUDGET_BYTES) -> int:
    """Images per step that fit ``budget``.

    Every activation is kept for the backward pass, with a factor of 4 for gradients,
    optimiser state and temporaries.
    """
    per_image = sum(
        int(np.prod([d for d in info.output_shape if d])) * 4
        for info in list_layers(model)
        if info.output_shape
    )
    return int(max(1, min(512, budget // max(per_image * 4, 1))))


def unit_seed(seed: int, unit: int, copy: int) -> int:
    """The stateless seed of one image: depends on the unit, never on the batch."""
    return (seed * 1_000_003 + unit * 7_919 + copy * 104_729) % (2**31 - 1)


def _images(params, settings: Settings, shape: tuple, value_range) -> tf.Tensor:
    """The images the optimised parameters stand for, in the data's value range."""
    return to_image(
        settings.parametrization, params, shape, value_range, settings.decay, settings.decorrelate
    )


def _regularized_loss(objective, forward, settings, shape, value_range, copies):
    """Per-image loss = -objective + penalties (+ diversity within each unit's copies)."""
    center = (value_range[0] + value_range[1]) / 2.0
    # Spectral parametrizations make periodic images: moving one wraps around exactly.
    periodic = settings.parametrization in ("fourier", "maco")

    def loss_fn(params, units, step_seed):
        images = _images(params, settings, shape, value_range)
        moved = reg.random_transform(
            images,
            step_seed,
            settings.jitter,
            tuple(settings.scale),
            settings.rotate,
            wrap=periodic,
        )
        acts = forward(moved)
        values = objective_values(objective, acts, units)
        loss = -values
        if settings.l2:
            loss += settings.l2 * reg.lp_norm(images, 2.0, center)
        if settings.lp:
            loss += settings.lp * reg.lp_norm(images, settings.p, center)
        if settings.tv:
            loss += settings.tv * reg.total_variation(images)
        if settings.blur:
            loss += settings.blur * reg.blur_penalty(images)
        if settings.diversity and copies > 1:
            # A Sum's tensors differ in size: images are compared by its first term's.
            first = next(iter(acts.values())) if isinstance(acts, dict) else acts
            flat = tf.reshape(first, [-1, copies, int(np.prod(first.shape[1:]))])
            flat = tf.math.l2_normalize(flat, axis=-1)
            sims = tf.einsum("gcd,gkd->gck", flat, flat)
            others = (tf.reduce_sum(sims, axis=-1) - 1.0) / (copies - 1)
            loss += settings.diversity * tf.reshape(others, [-1])
        return loss, values

    return loss_fn


def _check_model(model: keras.Model) -> tuple[int, ...]:
    """The image shape of a model maximization can optimise inputs for."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise KerascopeError(
            f"activation maximization needs a single image input (H, W, C); model "
            f"'{model.name}' has inputs {[tuple(i.shape) for i in model.inputs]}"
        )
    if not model.inputs[0].dtype.startswith("float"):
        raise KerascopeError(
            f"model '{model.name}' takes {model.inputs[0].dtype} inputs: there is no gradient "
            "path from the input to any layer"
        )
    return tuple(int(d) for d in model.inputs[0].shape[1:])


def _target_forward(model: keras.Model, objective: Objective | Sum, preactivation: bool, space):
    """``images -> the objective's tensor(s)``: logits, or layers (before their activation).

    Images are in display space; ``space`` maps them to the model's inputs first.
    """
    forward = objective_forward(model, objective, preactivation)
    return lambda images: forward(space.to_model_tensor(images))


def _adam_loop(loss_fn, settings: Settings):
    """One compiled call that runs ``count`` Adam steps on a batch of images' parameters.

    Adam (Kingma & Ba 2015) is written out so the whole loop stays inside one
    ``tf.function``. The parameters and moments go in and come out as tensors: variables
    would cost a creation and a trace-type check per call, which is most of a small
    model's fixed cost. The per-step objective values come back as (images, count).
    """
    lr = settings.learning_rate

    @tf.function(reduce_retracing=True)
    def run(params, m, v, units_t, start, count):
        curve = tf.TensorArray(tf.float32, size=count)
        for i in tf.range(count):
            step = start + i
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss, values = loss_fn(params, units_t, tf.stack([settings.seed, step]))
                total = tf.reduce_sum(loss)
            grad = tape.gradient(total, params)
            if grad is None:
                raise ValueError("no gradient")
            t = tf.cast(step + 1, tf.float32)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * tf.square(grad)
            m_hat = m / (1.0 - tf.pow(0.9, t))
            v_hat = v / (1.0 - tf.pow(0.999, t))
            params = params - lr * m_hat / (tf.sqrt(v_hat) + 1e-8)
            curve = curve.write(i, values)
        return params, m, v, tf.transpose(curve.stack())

    return run


def _run_steps(run, params, units, objective: Objective | Sum, settings: Settings, progress):
    """Every step for one batch of images, in calls of ``steps_per_call`` (for progress).

    Without ``progress`` all steps run in one call: each call returns to Python to check
    the values, which cost a small model up to a tenth of its run. The steps, and so
    the images, are the same however they are split.

    Returns:
        The optimised parameters and the (images, steps) objective values.
    """
    m, v = tf.zeros_like(params), tf.zeros_like(params)
    units_t = tf.constant(units)
    curves = []
    per_call = settings.steps_per_call if progress is not None else settings.steps
    for step0 in range(0, settings.steps, per_call):
        count = min(per_call, settings.steps - step0)
        try:
            params, m, v, values = run(
                params, m, v, units_t, tf.constant(step0), tf.constant(count)
            )
        except (ValueError, TypeError) as exc:
            if "gradient" in str(exc).lower():
                raise KerascopeError(
                    f"layer '{objective.layer}' has no differentiable path to the input"
                ) from None
            raise
        values = np.asarray(values)
        _check_finite(values, units, step0, objective.layer, settings.explode_at)
        curves.append(values)
        if progress is not None:
            progress(count * len(units))
    return params, np.concatenate(curves, axis=1)


def maximize(
    model: keras.Model,
    objective: Objective | Sum,
    units: Sequence[int],
    value_range: tuple[float, float] = (0.0, 1.0),
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
    space: InputSpace | None = None,
) -> MaximizationResult:
    """Find inputs that maximize each unit's activation, many units per compiled step.

    Olah, Mordvintsev & Schubert (2017), "Feature Visualization"; Erhan et al. (2009).
    Each image is optimised with Adam on its own parameters; images in a batch never
    interact (the per-image losses are summed), so batched and one-at-a-time runs
    agree, and the same seed gives the same images.

    Args:
        model: An image model (inputs (H, W, C), float).
        objective: What to maximize: an :class:`Objective`, or a :class:`Sum` of
            weighted ones (``a - b``, ``a + 0.5 * b``), every layer involved tapped in
            one forward pass.
        units: Unit (channel, neuron, class) indices, one image (per copy) each; an
            objective (or a sum's term) with a fixed ``unit`` ignores them.
        value_range: (lo, hi) of the data in display space; images stay inside it.
        settings: :class:`Settings`.
        progress: Called with the number of image-steps done after each compiled call.
        space: The model's input space (:mod:`pipeline.inputs`): images are optimised
            and returned in display space and mapped to the model's inputs on the way
            in, so the value bounds, the colour decorrelation and the regularisers act
            on what a person sees. None: the model takes display values.

    Returns:
        :class:`MaximizationResult`.

    Raises:
        KerascopeError: Non-image or non-float inputs (no gradient path), invalid
            settings, or NaN / exploding values (naming the unit and the step).
    """
    settings = settings or Settings()
    settings.check("settings")
    shape = _check_model(model)
    copies = max(1, int(settings.copies))
    unit_list = np.repeat(np.asarray(units, dtype=np.int32), copies)
    copy_list = np.tile(np.arange(copies, dtype=np.int32), len(units))
    space = space or InputSpace()
    settings = replace(settings)  # the compiled steps below keep this copy
    value_range = tuple(float(v) for v in value_range)

    def build():
        forward = _target_forward(model, objective, False, space)
        opt_forward = _target_forward(model, objective, settings.preactivation, space)
        loss_fn = _regularized_loss(objective, opt_forward, settings, shape, value_range, copies)

        @tf.function(reduce_retracing=True)
        def final_values(params, units_t):
            images = _images(params, settings, shape, value_range)
            return images, objective_values(objective, forward(images), units_t)

        return _adam_loop(loss_fn, settings), final_values

    # Tracing the loop costs more than a small model's whole optimisation, so the
    # compiled steps are kept per model and option set: a repeated call reuses them.
    key = ("maximize", repr(objective), repr(settings), repr(space), value_range)
    run, final_values = compiled(model, key, build)

    batch = settings.batch_size or auto_batch_size(model)
    batch = max(copies, batch - batch % copies)
    images, curves, finals = [], [], []
    for start in range(0, len(unit_list), batch):
        chunk_units = unit_list[start : start + batch]
        chunk_copies = copy_list[start : start + batch]
        seeds = [
            unit_seed(settings.seed, int(u), int(c))
            for u, c in zip(chunk_units, chunk_copies, strict=True)
        ]
        start_params = tf.constant(
            initial_params(settings.parametrization, shape, np.asarray(seeds))
        )
        params, curve = _run_steps(run, start_params, chunk_units, objective, settings, progress)
        curves.append(curve)
        image, final = final_values(params, tf.constant(chunk_units))
        images.append(np.asarray(image))
        finals.append(np.asarray(final))
    return MaximizationResult(
        images=np.concatenate(images),
        objective=np.concatenate(curves),
        final=np.concatenate(finals),
        units=unit_list,
        copy=copy_list,
    )


def _check_finite(values, units, step0, layer, limit) -> None:
    bad = ~np.isfinite(values) | (np.abs(values) > limit)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        what = (
            "NaN/Inf"
            if not np.isfinite(values[row, col])
            else f"exploding ({values[row, col]:.3g})"
        )
        raise KerascopeError(
            f"unit {int(units[row])} of layer '{layer}' became {what} at step {step0 + int(col)}; "
            "lower maximize.learning_rate or raise the regularizer weights"
        )

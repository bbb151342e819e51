"""Score heads: regression, multi-label, segmentation and registered scores as one column.

Every attribution method explains ``scores[i, targets[i]]`` of a forward pass. A score
head appended to the model makes that one column (target 0) whatever the user asked to
explain: a regression output or its negative, the sum of a set of classes, a class's
scores summed over a region of a segmentation map, or a function registered in Python.
The forward pass of :mod:`pipeline.attribution.scoring` sees through the head when it
bypasses a final softmax (so ``score: logits`` sums the logits under it), never squashes
its output, and deletion/insertion, the sanity check and the metrics follow the same
score. The user's model is not modified: :func:`with_head` returns a new model over the
same layers (same layer paths, same variables).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import batches, compile_step, spec
from pipeline.attribution.head_options import HeadOptions
from pipeline.attribution.scoring import forward
from pipeline.errors import KerascopeError, choices_hint

#: Registered score functions: name -> ``fn(outputs, inputs) -> (N,)``.
SCORE_FUNCTIONS: dict[str, Callable] = {}


def register_score(name: str) -> Callable[[Callable], Callable]:
    """Register a score function under ``name`` for ``attribute.head.kind=registered``.

    The function takes the model's output and input tensors (batch first) and returns
    one differentiable score per input, for example an autoencoder's reconstruction
    error (tf-keras-vis issue 92). Register it in a module listed in
    ``model.custom_modules``; scores are never loaded from files::

        @register_score("reconstruction_error")
        def reconstruction_error(outputs, inputs):
            return tf.reduce_sum(tf.square(outputs - inputs), axis=[1, 2, 3])

    Raises:
        KerascopeError: ``name`` is already registered to another function.
    """

    def add(fn: Callable) -> Callable:
        if SCORE_FUNCTIONS.get(name, fn) is not fn:
            raise KerascopeError(f"score '{name}' is already registered")
        SCORE_FUNCTIONS[name] = fn
        return fn

    return add


def registered_score(name: str) -> Callable:
    """The score registered as ``name``.

    Raises:
        KerascopeError: No such score, naming the registered ones.
    """
    if name not in SCORE_FUNCTIONS:
        valid = sorted(SCORE_FUNCTIONS) or ["(none registered)"]
        raise KerascopeError(f"no registered score '{name}'; {choices_hint(name, valid)}")
    return SCORE_FUNCTIONS[name]


def head_score(options: HeadOptions, outputs, inputs=None):
    """One score per input from a model's ``outputs`` (and ``inputs``): shape (N,).

    Args:
        options: What to explain (:class:`HeadOptions`; ``kind`` not ``class``).
        outputs: The model's output, (N, units) or a score map (N, ..., classes).
        inputs: The model's input (registered scores may use it).

    Returns:
        The score tensor, differentiable with respect to ``outputs`` and ``inputs``.
    """
    kind = options.kind
    if kind == "regression":
        flat = tf.reshape(outputs, (tf.shape(outputs)[0], -1))
        value = flat[:, options.output_index]
        return -value if options.direction == "decrease" else value
    if kind == "multilabel":
        return tf.reduce_sum(tf.gather(outputs, options.classes, axis=-1), axis=-1)
    if kind == "segmentation":
        per_position = outputs[..., options.class_index]  # (N, ...)
        if options.region == "predicted":
            predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
            mask = tf.cast(tf.equal(predicted, options.class_index), outputs.dtype)
            mask = tf.stop_gradient(mask)
        else:
            mask = box_mask(per_position.shape[1:], options.box)
            mask = tf.constant(mask[None], outputs.dtype)
        axes = list(range(1, per_position.shape.rank))
        return tf.reduce_sum(per_position * mask, axis=axes)
    if kind == "registered":
        return tf.reshape(registered_score(options.name)(outputs, inputs), (-1,))
    raise KerascopeError(f"head kind '{kind}' has no score; it explains attribute.target")


def box_mask(shape: tuple, box) -> np.ndarray:
    """A 0/1 mask of ``shape`` that is 1 inside ``box`` (``[start, stop]`` per axis)."""
    shape = tuple(int(s) for s in shape)
    if len(box) != 2 * len(shape):
        raise KerascopeError(
            f"attribute.head.box has {len(box) // 2} axes but the output map has "
            f"{len(shape)} spatial axes {shape}"
        )
    mask = np.zeros(shape, np.float32)
    slices = []
    for axis, (start, stop) in enumerate(zip(box[::2], box[1::2], strict=True)):
        if stop > shape[axis]:
            raise KerascopeError(
                f"attribute.head.box [{start}, {stop}] leaves the output map's axis of "
                f"size {shape[axis]}"
            )
        slices.append(slice(start, stop))
    mask[tuple(slices)] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="kerascope")
class ScoreHead(keras.layers.Layer):
    """The layer :func:`with_head` appends: ``(outputs, inputs) -> (N, 1)`` scores.

    Its ``score_head`` attribute tells :mod:`pipeline.graph` to look through it when a
    final softmax is bypassed, and tells the scoring forward not to squash its output.
    """

    score_head = True

    def __init__(self, options: dict | None = None, score: str = "logits", **kwargs):
        super().__init__(**kwargs)
        self.options = HeadOptions(**(options or {}))
        self.score = score  # what the head sums: logits (a final softmax bypassed) or not

    def call(self, tensors):
        """``[outputs, inputs]`` of the model -> its scores (N, 1)."""
        outputs, inputs = tensors
        return head_score(self.options, outputs, inputs)[:, None]

    def compute_output_shape(self, input_shape):
        """One score per input."""
        return (input_shape[0][0], 1)

    def get_config(self):
        """The head's options and score, so clones and saved models keep them."""
        from dataclasses import asdict

        return {**super().get_config(), "options": asdict(self.options), "score": self.score}


def with_head(model: keras.Model, options: HeadOptions, score: str = "logits") -> keras.Model:
    """``model`` followed by a :class:`ScoreHead`: one score column, explained as class 0.

    The new model shares the user's layers and variables (layer paths are unchanged);
    the user's model is not modified.

    Args:
        model: A built Functional or Sequential model (its first input and output).
        options: What to explain.
        score: ``logits`` (a final softmax/sigmoid under the head bypassed) or
            ``probabilities`` (the model's outputs as they are). Every method, the
            faithfulness curves and the sanity check then use this score.

    Raises:
        KerascopeError: The model has no symbolic inputs (a subclassed model that was
            never called), a box outside the output map, or an unregistered score.
    """
    if not options.active:
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise KerascopeError(
            f"model '{model.name}' has no symbolic inputs for attribute.head; save it as a "
            "Functional or Sequential model"
        )
    if options.kind == "registered":
        registered_score(options.name)  # one line now, not mid-run
    if options.kind == "segmentation" and options.region == "box":
        box_mask(tuple(outputs[0].shape[1:-1]), options.box)
    if options.kind in ("multilabel", "segmentation"):
        classes = int(outputs[0].shape[-1])
        wanted = options.classes if options.kind == "multilabel" else [options.class_index]
        bad = [c for c in wanted if c >= classes]
        if bad:
            raise KerascopeError(
                f"attribute.head class {bad[0]} is out of range; valid: 0..{classes - 1}"
            )
    if options.kind == "regression":
        units = math.prod(int(s) for s in outputs[0].shape[1:])
        if options.output_index >= units:
            raise KerascopeError(
                f"attribute.head.output_index {options.output_index} is out of range; "
                f"valid: 0..{units - 1}"
            )
    from dataclasses import asdict

    head = ScoreHead(asdict(options), score, name="kerascope_score")
    return keras.Model(inputs, head([outputs[0], inputs[0]]), name=model.name)


def explained_scores(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The score a head model explains for each input, as the methods see it: (N, 1).

    Unlike ``model.predict``, a ``score: logits`` head sums the logits under a final
    softmax, as every method, the faithfulness curves and the sanity check do.
    """

    def build():
        fwd = forward(model, "logits")  # the head's own score replaces "logits"
        return lambda batch: fwd(batch)[0]

    fn = compile_step(model, ("head_scores", x.shape[1:]), build, [spec(x.shape[1:])])
    parts = [fn(tf.constant(x[a:b], tf.float32)).numpy() for a, b in batches(len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)

"""What an attribution explains: a target's score, its gradient, and the default targets."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import batches, compile_step, spec
from pipeline.attribution.options import SCORES
from pipeline.errors import KerascopeError
from pipeline.graph import LayerForward, class_count, output_activation, score_head


def check_score(score: str) -> None:
    """Raise a one-line error unless ``score`` is ``logits`` or ``probabilities``."""
    if score not in SCORES:
        raise KerascopeError(f"invalid score '{score}'; valid: {', '.join(SCORES)}")


class ScoreForward:
    """A forward pass returning class scores (logits or probabilities) and layer taps.

    A one-unit binary head (sigmoid or a single logit z) is widened to two classes:
    logits (-z, z), whose sigmoids are (1 - sigmoid(z), sigmoid(z)), or probabilities
    (1 - p, p); so class 1 is explained by z and class 0 by -z. The model is untouched.
    A model ending in a score head (:mod:`pipeline.attribution.heads`) gives its one
    score column as it is: the head's own ``score`` (logits or probabilities under it)
    replaces ``score``, so every method and check follows the same score.
    """

    def __init__(self, model: keras.Model, score: str, layers=()) -> None:
        check_score(score)
        head = score_head(model)
        self.head = head is not None
        self.logits = (head.score if self.head else score) == "logits"
        self.binary = int(model.outputs[0].shape[-1] or 1) == 1 and not self.head
        self.squash = output_activation(model)
        self.layers = LayerForward(model, list(layers), logits=self.logits)

    def __call__(self, inputs):
        """Run the model: ``(class scores, taps)``."""
        outputs, taps = self.layers(inputs)
        if self.binary:
            if self.logits:
                outputs = tf.concat([-outputs, outputs], axis=-1)
            else:
                p = outputs if self.squash == "sigmoid" else tf.sigmoid(outputs)
                outputs = tf.concat([1.0 - p, p], axis=-1)
        return outputs, taps

    def probabilities(self, logits):
        """Class probabilities from this forward's logits.

        Softmax; each unit's sigmoid for a multi-label head or a widened binary one;
        a score head's scores unchanged.
        """
        if self.head:
            return logits
        if self.binary or self.squash == "sigmoid":
            return tf.sigmoid(logits)
        return tf.nn.softmax(logits)


def forward(model: keras.Model, score: str, layers=()) -> ScoreForward:
    """A :class:`ScoreForward` of ``model`` for ``score``, tapping ``layers``."""
    return ScoreForward(model, score, layers)


def num_classes(model: keras.Model) -> int:
    """How many classes a classifier tells apart (2 for a one-unit binary head)."""
    return class_count(model)


def check_targets(model: keras.Model, targets, n: int, x: np.ndarray | None = None) -> np.ndarray:
    """Validate one target class per input; ``None`` means each input's predicted class.

    Args:
        model: The classifier.
        targets: Class indices (one per input, or one for all), or None.
        n: Number of inputs.
        x: The inputs, needed when ``targets`` is None.

    Raises:
        KerascopeError: Wrong count or a class outside ``0..classes-1``.
    """
    if targets is None:
        if x is None:
            raise KerascopeError("targets=None (the predicted class) needs the inputs")
        return predicted_classes(model, np.asarray(x, np.float32))
    targets = np.asarray(targets, dtype=np.int32).reshape(-1)
    if len(targets) == 1 and n > 1:
        targets = np.repeat(targets, n)  # one class for every input
    classes = num_classes(model)
    if len(targets) != n:
        raise KerascopeError(f"{len(targets)} targets given for {n} inputs")
    bad = targets[(targets < 0) | (targets >= classes)]
    if len(bad):
        raise KerascopeError(f"target class {int(bad[0])} is out of range; valid: 0..{classes - 1}")
    return targets


def choose_targets(
    mode: str,
    model: keras.Model,
    x: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 256,
    predictions: np.ndarray | None = None,
) -> np.ndarray:
    """The class to explain for each input: ``predicted``, ``true`` or a fixed index.

    Args:
        mode: ``predicted``, ``true`` or a class index (as a string).
        model: The classifier.
        x: Inputs.
        labels: True classes (negative: unlabeled).
        batch_size: Inputs per forward pass.
        predictions: The model's (N, classes) outputs for ``x`` if already computed:
            ``predicted`` then takes their argmax instead of another forward pass (on a
            large model, compiling that pass costs seconds).

    Raises:
        KerascopeError: ``true`` for unlabeled inputs, or a class out of range.
    """
    if mode == "predicted" and predictions is not None:
        return np.argmax(np.asarray(predictions), axis=-1).astype(np.int32)
    if mode == "predicted":
        return predicted_classes(model, x, batch_size)
    if mode == "true":
        if (labels < 0).any():
            raise KerascopeError("attribute.target=true but the inputs have no labels")
        return check_targets(model, labels, len(x))
    return check_targets(model, np.full(len(x), int(mode)), len(x))


def predicted_classes(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's predicted class per input (the default attribution target)."""

    def build():
        fwd = forward(model, "probabilities")
        return lambda b: tf.argmax(fwd(b)[0], axis=-1, output_type=tf.int32)

    fn = compile_step(model, ("predict", x.shape[1:]), build, [spec(x.shape[1:])])
    preds = [
        fn(tf.convert_to_tensor(x[a:b], tf.float32)).numpy() for a, b in batches(len(x), batch_size)
    ]
    return np.concatenate(preds).astype(np.int32) if preds else np.zeros(0, np.int32)


def target_score(outputs, targets):
    """Pick each input's target-class score: ``outputs[i, targets[i]]``."""
    return tf.gather(outputs, targets, axis=1, batch_dims=1)


def gradient_step(model: keras.Model, shape: tuple, score: str):
    """The compiled ``(batch, targets) -> (d score / d batch, score)`` step for ``model``.

    Every gradient method (saliency, SmoothGrad, Integrated Gradients) is built on it.
    """

    def build():
        fwd = forward(model, score)

        def step(batch, target):
            with tf.GradientTape() as tape:
                tape.watch(batch)
                value = target_score(fwd(batch)[0], target)
            return tape.gradient(value, batch), value

        return step

    return compile_step(
        model, ("input_gradients", score, shape), build, [spec(shape), spec((), tf.int32)]
    )


def class_probabilities(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's class probabilities for ``x``.

    See :func:`pipeline.models.class_probabilities`.
    """
    from pipeline.models import class_probabilities as squash

    return squash(model.predict(x, batch_size=batch_size, verbose=0), output_activation(model))

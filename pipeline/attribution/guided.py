"""Guided Backpropagation (Springenberg et al. 2015) and DeconvNet (Zeiler & Fergus 2014).

Both are the input gradient with a different backward rule through every ReLU. The
rules are applied on the fly while :class:`pipeline.graph.LayerForward` interprets the
model: each ReLU (a ``ReLU`` layer, an ``Activation("relu")`` layer, or the
``activation="relu"`` of a dense or convolutional layer, computed as a linear copy
sharing the layer's weights followed by the ReLU) is wrapped in a ``tf.custom_gradient``.
The user's model, nested models included, is never modified.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, gradient_rows, run_batched, spec
from pipeline.attribution.options import resolve
from pipeline.attribution.result import Attribution, has_channels, reduce_channels
from pipeline.attribution.scoring import ScoreForward, check_targets, target_score
from pipeline.graph import LayerForward, _linear_copy, graph_of, ordered_nodes

#: Backward rules through a ReLU: ``guided`` (Springenberg et al.) passes a gradient
#: only where both the forward input and the gradient coming back are positive;
#: ``deconvnet`` (Zeiler & Fergus) passes the positive part of the gradient coming
#: back, whatever the forward input was.
RULES = ("guided", "deconvnet")

_RELU_NAMES = {"relu", "relu6"}
# Layers that apply their activation last, so a linear copy followed by the activation
# computes the same thing (not true of recurrent layers, whose activation is inside).
_LINEAR_THEN_ACTIVATION = {
    "Dense",
    "EinsumDense",
    "BaseConv",
    "BaseDepthwiseConv",
    "BaseSeparableConv",
    "BaseConvTranspose",
}


def rule_activation(rule: str, activation: Callable) -> Callable:
    """``activation`` with the backward pass of ``rule`` (one of :data:`RULES`).

    The guided rule is the activation's own local derivative applied to
    ReLU(gradient): for a ReLU, ``(x > 0) * relu(dy)``; a capped ReLU (ReLU6) keeps its
    cap. DeconvNet passes ``relu(dy)``.
    """

    @tf.custom_gradient
    def apply(x):
        y = activation(x)

        def grad(dy):
            positive = tf.nn.relu(dy)
            if rule == "deconvnet":
                return positive
            with tf.GradientTape() as tape:
                tape.watch(x)
                again = activation(x)
            return tape.gradient(again, x, output_gradients=positive)

        return y, grad

    return apply


def _is_relu(function) -> bool:
    return getattr(function, "__name__", None) in _RELU_NAMES


class RuleForward(LayerForward):
    """A :class:`LayerForward` whose ReLUs backpropagate by a modified rule.

    Args:
        model: A built Sequential or Functional model (nested models are fine).
        rule: ``guided`` or ``deconvnet``.
        logits: Bypass a final softmax/sigmoid, as :class:`LayerForward`.
    """

    def __init__(self, model: keras.Model, rule: str, *, logits: bool = False) -> None:
        super().__init__(model, logits=logits)
        self.rule = rule
        # id(op) -> (what computes the pre-activation, or None for the op's input;
        # the activation to wrap).
        self._rules: dict[int, tuple[object, Callable]] = {}
        self._nested: set[int] = set()
        self._plan(model)

    def _plan(self, model: keras.Model) -> None:
        """Find every ReLU of the graph, nested models included."""
        graph = graph_of(model)
        if graph is None:
            return
        for node in ordered_nodes(graph):
            op = node.operation
            if id(op) in self._rules or id(op) in self._replacements:
                continue
            if isinstance(op, keras.Model):
                if graph_of(op) is not None:
                    self._nested.add(id(op))
                    self._plan(op)
            elif isinstance(op, keras.layers.ReLU):
                self._rules[id(op)] = (None, op)
            elif isinstance(op, keras.layers.Activation) and _is_relu(op.activation):
                self._rules[id(op)] = (None, op.activation)
            elif _is_relu(getattr(op, "activation", None)) and _LINEAR_THEN_ACTIVATION & {
                c.__name__ for c in type(op).__mro__
            }:
                linear = _linear_copy(op, node.input_tensors[0].shape)
                self._rules[id(op)] = (linear, op.activation)

    def _call_op(self, op, args, kwargs):
        if id(op) in self._rules:
            linear, activation = self._rules[id(op)]
            pre = args[0] if linear is None else super()._call_op(linear, args, kwargs)
            return rule_activation(self.rule, activation)(pre)
        if id(op) in self._nested:
            # Interpret nested models too (LayerForward calls them whole unless it
            # needs their insides), so their ReLUs get the rule.
            return self._run(op, args[0] if len(args) == 1 else list(args), "", {})
        return super()._call_op(op, args, kwargs)


class RuleScoreForward(ScoreForward):
    """A :class:`ScoreForward` (class scores, binary heads widened) with modified ReLUs."""

    def __init__(self, model: keras.Model, score: str, rule: str) -> None:
        super().__init__(model, score)
        self.layers = RuleForward(model, rule, logits=self.logits)


def _rule_step(model: keras.Model, shape: tuple, score: str, rule: str):
    """Compiled ``(batch, targets) -> modified d score / d batch``."""

    def build():
        fwd = RuleScoreForward(model, score, rule)

        def step(batch, target):
            with tf.GradientTape() as tape:
                tape.watch(batch)
                value = target_score(fwd(batch)[0], target)
            return tape.gradient(value, batch)

        return step

    return compile_step(
        model, ("relu_rule", rule, score, shape), build, [spec(shape), spec((), tf.int32)]
    )


def _rule_gradients(method: str, rule: str, model, x, targets, options: dict) -> Attribution:
    opts, common = resolve(method, options)
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    fn = _rule_step(model, x.shape[1:], common["score"], rule)
    grads = run_batched(fn, [x, targets], gradient_rows(model, x.shape[1:], common["batch_size"]))
    maps = reduce_channels(np.abs(grads), opts.reduce, has_channels(x))
    return Attribution(maps, extras={"gradients": grads})


def guided_backprop(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Guided Backpropagation: the gradient, passed back only through positive signals.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The
    All Convolutional Net". At every ReLU the gradient goes back only where the forward
    input was positive (the ordinary ReLU gradient) and the gradient itself is
    positive. Applies to ``ReLU`` layers, ``Activation("relu")`` and the
    ``activation="relu"`` of dense and convolutional layers (ReLU6 keeps its cap);
    other activations, and the ReLUs inside recurrent cells, keep their gradient.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.GuidedBackpropOptions`
            (``reduce``: ``max`` or ``mean`` of |modified gradient| over channels),
            ``score`` and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution` with maps shaped as :func:`~pipeline.attribution.saliency`'s
        and the signed, input-shaped extra ``gradients``.
    """
    return _rule_gradients("guided_backprop", "guided", model, x, targets, options)


def deconvnet(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """DeconvNet: the gradient with every ReLU applied to the signal going back.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks".
    At every ReLU the backward signal is ReLU(gradient), whatever the forward input was
    (the deconvnet's rectification, as Springenberg et al. 2015 phrase it as a gradient
    rule). ReLUs are found as :func:`guided_backprop` finds them.

    Args and returns as :func:`guided_backprop` (options
    :class:`~pipeline.attribution.options.DeconvNetOptions`).
    """
    return _rule_gradients("deconvnet", "deconvnet", model, x, targets, options)

"""Attribution methods: which parts of the input made the model decide this?

Every method is a pure function ``method(model, x, targets, **options) -> maps``, computed
over whole batches inside compiled ``tf.function``s, and never modifies the model. Scores
are pre-softmax logits by default (a final softmax is bypassed on the fly, see
:class:`pipeline.graph.LayerForward`); pass ``score="probabilities"`` for post-softmax.

The package imports its TensorFlow modules on first use, so ``pipeline.attribution.options``
(the methods' option dataclasses) can be read without TensorFlow.
"""

from __future__ import annotations

import importlib

from pipeline.attribution.options import CAM_METHODS, METHODS

_EXPORTS = {
    "saliency": "pipeline.attribution.gradients",
    "smoothgrad": "pipeline.attribution.gradients",
    "integrated_gradients": "pipeline.attribution.integrated",
    "gradcam": "pipeline.attribution.cam",
    "gradcam_plus_plus": "pipeline.attribution.cam",
    "scorecam": "pipeline.attribution.cam",
    "gradient_x_input": "pipeline.attribution.gradients",
    "vargrad": "pipeline.attribution.gradients",
    "squaregrad": "pipeline.attribution.gradients",
    "guided_backprop": "pipeline.attribution.guided",
    "deconvnet": "pipeline.attribution.guided",
    "layercam": "pipeline.attribution.cam",
    "faster_scorecam": "pipeline.attribution.cam",
    "occlusion": "pipeline.attribution.perturbation",
    "rise": "pipeline.attribution.perturbation",
    "lime": "pipeline.attribution.perturbation",
    "kernel_shap": "pipeline.attribution.perturbation",
    "sobol": "pipeline.attribution.perturbation",
    "hsic": "pipeline.attribution.perturbation",
    "attention_rollout": "pipeline.attribution.rollout",
    "deletion_insertion": "pipeline.attribution.faithfulness",
    "randomization_sanity": "pipeline.attribution.faithfulness",
    "mu_fidelity": "pipeline.attribution.metrics",
    "average_drop": "pipeline.attribution.metrics",
    "average_stability": "pipeline.attribution.metrics",
    "complexity": "pipeline.attribution.metrics",
    "sparseness": "pipeline.attribution.metrics",
    "random_logit": "pipeline.attribution.metrics",
    "check_targets": "pipeline.attribution.scoring",
    "predicted_classes": "pipeline.attribution.scoring",
    "explain": "pipeline.attribution.suite",
    "Attribution": "pipeline.attribution.result",
}

__all__ = ["CAM_METHODS", "METHODS", "method", *_EXPORTS]


def method(name: str):
    """The attribution function called ``name`` (one of :data:`METHODS`)."""
    if name not in METHODS:
        raise KeyError(f"unknown attribution method {name!r}")
    return __getattr__(name)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.attribution' has no attribute '{name}'")

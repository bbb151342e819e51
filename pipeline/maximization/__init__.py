"""Activation maximization (feature visualization), batched over units.

Olah, Mordvintsev & Schubert (2017), "Feature Visualization", Distill; Erhan, Bengio,
Courville & Vincent (2009), "Visualizing Higher-Layer Features of a Deep Network".

The TensorFlow modules load on first use, so :mod:`pipeline.maximization.settings`
(what a config may say) is readable without TensorFlow.
"""

from __future__ import annotations

import importlib

from pipeline.maximization.settings import (
    OBJECTIVES,
    PARAMETRIZATIONS,
    Objective,
    Settings,
    objective_kind,
)

_EXPORTS = {
    "maximize": "pipeline.maximization.optimize",
    "MaximizationResult": "pipeline.maximization.optimize",
    "plan_targets": "pipeline.maximization.targets",
    "reach_ratios": "pipeline.maximization.targets",
}

__all__ = ["OBJECTIVES", "PARAMETRIZATIONS", "Objective", "Settings", "objective_kind", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.maximization' has no attribute '{name}'")

"""Activation maximization (feature visualization), batched over units.

Olah, Mordvintsev & Schubert (2017), "Feature Visualization", Distill; Erhan, Bengio,
Courville & Vincent (2009), "Visualizing Higher-Layer Features of a Deep Network".
"""

from pipeline.maximization.objectives import OBJECTIVES, Objective, objective_kind
from pipeline.maximization.optimize import MaximizationResult, Settings, maximize

__all__ = [
    "OBJECTIVES",
    "MaximizationResult",
    "Objective",
    "Settings",
    "maximize",
    "objective_kind",
]

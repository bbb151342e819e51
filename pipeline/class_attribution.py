"""Dataset-level attribution: per class, the mean attribution map and its faithfulness.

Attribution maps explain one input at a time. Averaged over every input of a class they
show what the model looks at for that class (a global explanation in the sense of
Lapuschkin et al. 2019, "Unmasking Clever Hans predictors", who cluster such maps);
the deletion and insertion AUCs of Petsiuk et al. (2018), averaged per class, show for
which classes a method's maps are faithful. Pure numpy: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import KerascopeError


def _check(maps_or_values: np.ndarray, classes_of: np.ndarray) -> np.ndarray:
    classes_of = np.asarray(classes_of).reshape(-1)
    if len(classes_of) != len(maps_or_values):
        raise KerascopeError(
            f"one class per input is needed, got {len(classes_of)} for {len(maps_or_values)} inputs"
        )
    return classes_of


def class_mean_maps(
    maps: np.ndarray, classes_of: np.ndarray, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean attribution map of each class, every map first scaled by its largest |value|.

    Scaling each map to a largest magnitude of 1 keeps one confidently explained input
    from dominating its class's mean: the mean shows where, not how much.

    Args:
        maps: (N, ...) one attribution map per input.
        classes_of: (N,) the class each map explains (its target).
        classes: The classes to average, in output order.

    Returns:
        ``(means, counts)``: (len(classes), ...) mean maps (NaN for a class without
        inputs) and (len(classes),) the number of inputs averaged.
    """
    maps = np.asarray(maps, np.float64)
    classes_of = _check(maps, classes_of)
    flat = maps.reshape(len(maps), -1)
    peak = np.abs(flat).max(axis=1, initial=0.0)
    scaled = flat / np.where(peak > 0, peak, 1.0)[:, None]
    means = np.full((len(classes), flat.shape[1]), np.nan)
    counts = np.zeros(len(classes), np.int64)
    for row, cls in enumerate(classes):
        chosen = classes_of == cls
        counts[row] = int(chosen.sum())
        if counts[row]:
            means[row] = scaled[chosen].mean(axis=0)
    return means.reshape(len(classes), *maps.shape[1:]), counts


def curve_auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under each (N, steps + 1) curve over the shares of features changed.

    The trapezoidal rule over ``fractions`` (0 to 1), as the attribute stage computes
    its deletion and insertion AUCs (Petsiuk et al. 2018).
    """
    return np.trapezoid(np.asarray(curves, np.float64), np.asarray(fractions, np.float64), axis=1)


def class_mean(values: np.ndarray, classes_of: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mean of per-input values over each class's inputs (NaN for a class without any)."""
    values = np.asarray(values, np.float64)
    classes_of = _check(values, classes_of)
    return np.asarray(
        [values[classes_of == c].mean() if np.any(classes_of == c) else np.nan for c in classes]
    )

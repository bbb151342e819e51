"""Test metrics of regression and segmentation models, from their outputs (numpy only).

The train stage reports every metric of :data:`METRICS`, ``None`` where it does not
apply to the data's task, so ``dvc exp show`` has the same columns for every model.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import KerascopeError

#: The keys of ``metrics/train.json``, in order: classification, regression, segmentation.
METRICS = ("accuracy", "loss", "mse", "mae", "r2", "pixel_accuracy", "mean_iou")


def empty_metrics() -> dict[str, float | None]:
    """Every metric of :data:`METRICS`, unset (``None``)."""
    return dict.fromkeys(METRICS)


def regression_outputs(targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and model outputs as matching (N, k) float64 arrays.

    Raises:
        KerascopeError: The model outputs a different number of values than the targets.
    """
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    outputs = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    if targets.shape != outputs.shape:
        raise KerascopeError(
            f"the regression targets have {targets.shape[1]} value(s) per input but the model "
            f"outputs {outputs.shape[1]}; give targets of shape (N, {outputs.shape[1]})"
        )
    return targets, outputs


def regression_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Mean squared error, mean absolute error and the coefficient of determination.

    R² is ``1 - SS_res / SS_tot`` per target column, averaged over the columns (the
    convention of scikit-learn's ``r2_score``); a constant column has R² NaN (no
    variance to explain), reported as ``None``.

    Args:
        targets: True values, (N,) or (N, k).
        outputs: Model outputs, (N, k) (or any shape with N * k values).

    Returns:
        ``{"mse", "mae", "r2"}``.
    """
    targets, outputs = regression_outputs(targets, outputs)
    error = outputs - targets
    total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    residual = (error**2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1.0 - residual / total, np.nan)
    return {
        "mse": float(np.mean(error**2)),
        "mae": float(np.mean(np.abs(error))),
        "r2": float(np.mean(r2)) if np.isfinite(r2).all() else None,
    }


def predicted_masks(outputs: np.ndarray, activation: str = "linear") -> np.ndarray:
    """Per-pixel class indices from a segmentation model's class-score maps.

    Args:
        outputs: (N, H, W, C) scores; with C = 1 the map is one binary class.
        activation: The output's squashing (``softmax``, ``sigmoid`` or ``linear``):
            a one-channel map is class 1 above 0.5 after a sigmoid, above 0 otherwise.

    Returns:
        (N, H, W) int64.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim != 4:
        raise KerascopeError(
            f"a segmentation model outputs one class-score map per input (N, H, W, classes); "
            f"this one outputs shape {tuple(outputs.shape)}"
        )
    if outputs.shape[-1] == 1:
        threshold = 0.5 if activation == "sigmoid" else 0.0
        return (outputs[..., 0] > threshold).astype(np.int64)
    return outputs.argmax(axis=-1).astype(np.int64)


def segmentation_metrics(masks: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Pixel accuracy and mean intersection over union (Long et al. 2015, FCN).

    The mean IoU averages ``|true ∩ predicted| / |true ∪ predicted|`` over the classes
    present in the true or the predicted masks (a class absent from both is undefined).

    Args:
        masks: True class per pixel, (N, H, W).
        predicted: Predicted class per pixel, (N, H, W) (see :func:`predicted_masks`).

    Raises:
        KerascopeError: Masks and predictions of different sizes.
    """
    masks, predicted = np.asarray(masks), np.asarray(predicted)
    if masks.shape != predicted.shape:
        raise KerascopeError(
            f"the segmentation masks are {tuple(masks.shape[1:])} but the model predicts "
            f"{tuple(predicted.shape[1:])} maps; give masks of the output's size"
        )
    ious = []
    for cls in np.union1d(np.unique(masks), np.unique(predicted)):
        truth, guess = masks == cls, predicted == cls
        ious.append(np.logical_and(truth, guess).sum() / np.logical_or(truth, guess).sum())
    return {
        "pixel_accuracy": float(np.mean(masks == predicted)),
        "mean_iou": float(np.mean(ious)) if ious else None,
    }


def majority_share(masks: np.ndarray) -> float:
    """The pixel accuracy of always predicting the most frequent class (the baseline)."""
    counts = np.bincount(np.asarray(masks, np.int64).reshape(-1))
    return float(counts.max() / counts.sum()) if counts.sum() else float("nan")

"""``outputs/evaluation.h5``: test predictions, training history and the model's structure.

Written by the train stage, which has the model in hand; the report reads the model's
layer table and data-flow edges from here, so rendering never loads the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import common

KIND, VERSION, STAGE = "evaluation", 2, "train"

LAYOUT = common.layout(
    """
    test/labels         true labels of the test split (regression: targets; segmentation: masks)
    test/probabilities  model outputs on the test split (N, classes); (N, 0) for other tasks
    test/predictions    regression: the outputs (N, k); segmentation: predicted masks (N, H, W)
    history/<metric>    per-epoch training curves (loss, accuracy, val_loss, ...)
    @class_names        class names (JSON)
    @data_hash          hash of the data set the model was evaluated on
    @model_hash         SHA-256 of the saved model file
    @source_model_hash  for a loaded model: the hash of the user's file
    @trained            whether the stage trained the model (false: loaded)
    @layers             the model's layers: path, class, output shape, parameters (JSON)
    @edges              data-flow edges between those layers, as index pairs (JSON)
    @input_space        the model's input space (JSON; see pipeline/inputs.py)
    @renamed_layers     layers renamed because TensorFlow refuses their names (JSON)
    @task               regression or segmentation (absent: classification)
    @metrics            the test metrics of metrics/train.json (JSON; other tasks only)
    """
)


@dataclass
class LayerRow:
    """One row of the model summary."""

    path: str
    class_name: str
    output_shape: str
    params: int


@dataclass
class Evaluation:
    """What the train stage recorded."""

    class_names: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    history: dict[str, np.ndarray]
    trained: bool
    model_hash: str
    data_hash: str
    source_model_hash: str = ""
    layers: list[LayerRow] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)
    renamed_layers: dict[str, str] = field(default_factory=dict)
    input_space: dict = field(default_factory=dict)
    task: str = "classification"
    predictions: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        """Whether the test split has class labels (accuracy is defined)."""
        if self.task != "classification":
            return False
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def write_evaluation(path: str | Path, evaluation: Evaluation, config_yaml: str) -> None:
    """Write an :class:`Evaluation` (to a temporary name the caller renames)."""
    from pipeline.workspace import hdf5_file

    with hdf5_file(path) as f:
        common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
        common.write_attrs(
            f,
            {
                "class_names": list(evaluation.class_names),
                "data_hash": evaluation.data_hash,
                "model_hash": evaluation.model_hash,
                "source_model_hash": evaluation.source_model_hash,
                "trained": bool(evaluation.trained),
                "layers": [vars(row) for row in evaluation.layers],
                "edges": [list(e) for e in evaluation.edges],
                "renamed_layers": dict(evaluation.renamed_layers),
                "input_space": dict(evaluation.input_space) or None,
                # Only for other tasks: a classifier's file is unchanged.
                "task": None if evaluation.task == "classification" else evaluation.task,
                "metrics": dict(evaluation.metrics) or None,
            },
        )
        f.create_dataset("test/labels", data=evaluation.labels)
        f.create_dataset(
            "test/probabilities", data=np.asarray(evaluation.probabilities, np.float32)
        )
        if evaluation.predictions is not None:
            f.create_dataset(
                "test/predictions",
                data=evaluation.predictions,
                compression="gzip" if evaluation.predictions.ndim > 2 else None,
            )
        for key, values in evaluation.history.items():
            f.create_dataset(f"history/{key}", data=np.asarray(values, np.float64))


def read_evaluation(path: str | Path) -> Evaluation:
    """Read ``outputs/evaluation.h5``."""
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        return Evaluation(
            class_names=common.read_json_attr(f, "class_names", []),
            labels=f["test/labels"][()],
            probabilities=f["test/probabilities"][()],
            history={k: f["history"][k][()] for k in f.get("history", {})},
            trained=bool(f.attrs.get("trained", True)),
            model_hash=common.text_attr(f, "model_hash"),
            data_hash=common.text_attr(f, "data_hash"),
            source_model_hash=common.text_attr(f, "source_model_hash"),
            layers=[LayerRow(**row) for row in common.read_json_attr(f, "layers", [])],
            edges=[tuple(e) for e in common.read_json_attr(f, "edges", [])],
            renamed_layers=common.read_json_attr(f, "renamed_layers", {}),
            input_space=common.read_json_attr(f, "input_space", {}),
            task=common.text_attr(f, "task") or "classification",
            predictions=f["test/predictions"][()] if "test/predictions" in f else None,
            metrics=common.read_json_attr(f, "metrics", {}),
        )

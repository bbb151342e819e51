"""``outputs/maximization.h5``: feature visualisations per target layer, with reach ratios.

Written by the maximize stage; one group per target layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import common

KIND, VERSION, STAGE = "maximization", 1, "maximize"

LAYOUT = common.layout(
    """
    <layer>/images                 (units x copies, H, W, C) optimised inputs (data's range)
    <layer>/objective              (units x copies, steps) objective at every step
    <layer>/final                  objective of each final image, untransformed
    <layer>/units                  unit (channel, neuron, class) of each image
    <layer>/copy                   copy index of each image
    <layer>/best_probe_activation  the unit's best activation on any probe input
    <layer>/reach_ratio            final / best_probe_activation (NaN where the best is 0)
    <layer>@layer_path             the target layer
    <layer>@objective              channel, neuron, unit, class_logit, direction, layer or sum
    <layer>@settings               the optimisation settings (JSON)
    @model_hash                    SHA-256 of the model file
    @data_hash                     hash of the data set
    @class_names                   class names (JSON)
    """
)


@dataclass
class TargetImages:
    """The feature visualisations of one target layer."""

    layer: str
    objective: str
    images: np.ndarray
    units: np.ndarray
    copy: np.ndarray
    final: np.ndarray
    objective_curve: np.ndarray
    best_probe_activation: np.ndarray
    reach_ratio: np.ndarray
    settings: dict = field(default_factory=dict)


@dataclass
class Maximization:
    """Every target of a maximization file."""

    targets: list[TargetImages]
    class_names: list[str]
    provenance: dict[str, str] = field(default_factory=dict)


def write_maximization(path: str | Path, result: Maximization, config_yaml: str) -> None:
    """Write a :class:`Maximization` (to a temporary name the caller renames)."""
    from pipeline.workspace import hdf5_file

    with hdf5_file(path) as f:
        common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
        common.write_attrs(f, {**result.provenance, "class_names": list(result.class_names)})
        for target in result.targets:
            group = f.create_group(common.hdf5_name(target.layer))
            group.create_dataset(
                "images", data=target.images.astype(np.float32), compression="gzip"
            )
            group.create_dataset("objective", data=target.objective_curve.astype(np.float32))
            group.create_dataset("final", data=target.final.astype(np.float32))
            group.create_dataset("units", data=target.units)
            group.create_dataset("copy", data=target.copy)
            group.create_dataset("reach_ratio", data=target.reach_ratio.astype(np.float32))
            group.create_dataset(
                "best_probe_activation", data=target.best_probe_activation.astype(np.float32)
            )
            common.write_attrs(
                group,
                {
                    "layer_path": target.layer,
                    "objective": target.objective,
                    "settings": target.settings,
                },
            )


def read_maximization(path: str | Path) -> Maximization:
    """Read every target group of a maximization file, in file order."""
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        groups = []
        f.visititems(lambda _, obj: groups.append(obj) if "layer_path" in obj.attrs else None)
        targets = [
            TargetImages(
                layer=common.text_attr(g, "layer_path"),
                objective=common.text_attr(g, "objective"),
                images=g["images"][()],
                units=g["units"][()],
                copy=g["copy"][()] if "copy" in g else np.zeros(len(g["units"]), np.int32),
                final=g["final"][()] if "final" in g else np.full(len(g["units"]), np.nan),
                objective_curve=g["objective"][()],
                best_probe_activation=g["best_probe_activation"][()]
                if "best_probe_activation" in g
                else np.full(len(g["units"]), np.nan),
                reach_ratio=g["reach_ratio"][()],
                settings=common.read_json_attr(g, "settings", {}),
            )
            for g in groups
        ]
        return Maximization(
            targets, common.read_json_attr(f, "class_names", []) or [], common.common_attrs(f)
        )

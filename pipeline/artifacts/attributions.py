"""``outputs/attributions.h5``: every method's maps, with faithfulness, sanity and metrics.

Written by the attribute stage; read by the report and by ``python -m pipeline.compare``
(from any experiment, through ``dvc.api``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.artifacts import common

KIND, VERSION, STAGE = "attributions", 1, "attribute"

LAYOUT = common.layout(
    """
    inputs                               the explained inputs
    targets                              the class explained for each input
    labels                               true labels (-1 where unknown)
    probabilities                        model outputs
    index                                indices of the inputs in their source
    tokens                               text models: token ids of the inputs (N, T)
    methods/<method>/maps                (N, H, W) for images, (N, T, F) or (N, T) for sequences
    methods/<method>/raw                 CAMs: the map at the layer's resolution
    methods/<method>/tokens              text models: (N, T) per token, summed over embedding
    methods/<method>/<extra>             per-input extras (IG: completeness_error)
    methods/<method>@options             the method's options (JSON)
    methods/<method>@score               logits or probabilities
    methods/<method>@layer               CAMs: the layer mapped
    methods/<method>@note                how the map was made (ViT: class token dropped)
    faithfulness/<method>/deletion       (N, steps + 1) target probability as features go
    faithfulness/<method>/insertion      (N, steps + 1) as they come back
    faithfulness/<method>@deletion_auc   mean area under the deletion curve
    faithfulness/<method>@insertion_auc  mean area under the insertion curve
    faithfulness@fractions               share of features changed at each step
    faithfulness@substrate               what removed features become
    sanity/<method>                      Spearman correlation after each randomised layer
    sanity/<method>@layers               the randomised layers, in cascade order (JSON)
    sanity@threshold                     a method fails at or above this |correlation|
    metrics/<method>/<metric>            (N,) a further metric per input (random: reference)
    metrics@options                      the metric settings (JSON)
    @score                               logits or probabilities
    @target_mode                         predicted, true, or a class index
    @methods                             the methods, in configured order (JSON)
    @model_hash                          SHA-256 of the model file
    @data_hash                           hash of the data set
    @source                              which inputs
    @class_names                         class names (JSON)
    @input_space                         the model's input space (JSON)
    """
)


@dataclass
class MethodMaps:
    """One method's maps and what it used."""

    maps: np.ndarray
    options: dict = field(default_factory=dict)
    score: str = "logits"
    raw: np.ndarray | None = None
    layer: str | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: np.ndarray | None = None
    note: str = ""


@dataclass
class Curves:
    """Deletion and insertion curves of one method (or of the random ranking)."""

    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


@dataclass
class Sanity:
    """The cascading randomisation of one method."""

    layers: list[str]
    correlations: np.ndarray


@dataclass
class Attributions:
    """Everything in an attributions file (maps of the first ``count`` inputs if asked)."""

    inputs: np.ndarray
    targets: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    index: np.ndarray
    methods: dict[str, MethodMaps]
    class_names: list[str] = field(default_factory=list)
    score: str = "logits"
    target_mode: str = "predicted"
    faithfulness: dict[str, Curves] = field(default_factory=dict)
    fractions: np.ndarray | None = None
    substrate: str = ""
    sanity: dict[str, Sanity] = field(default_factory=dict)
    sanity_threshold: float = 0.5
    metrics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    metric_options: dict = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    n_inputs: int = 0
    input_space: dict = field(default_factory=dict)
    tokens: np.ndarray | None = None


def write_header(f, result: Attributions, config_yaml: str) -> None:
    """The root attributes and the per-input datasets (methods come later)."""
    common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
    common.write_attrs(
        f,
        {
            **result.provenance,
            "class_names": list(result.class_names),
            "score": result.score,
            "target_mode": result.target_mode,
            "methods": list(result.methods),
            "input_space": dict(result.input_space) or None,
        },
    )
    for name in ("inputs", "targets", "labels", "probabilities", "index"):
        f.create_dataset(name, data=getattr(result, name))
    if result.tokens is not None:
        f.create_dataset("tokens", data=np.asarray(result.tokens, np.int64))


def write_results(f, result: Attributions) -> None:
    """Each method's maps, the faithfulness curves and the sanity correlations."""
    for name, method in result.methods.items():
        group = f.create_group(f"methods/{name}")
        group.create_dataset("maps", data=np.asarray(method.maps, np.float32), compression="gzip")
        if method.raw is not None:
            group.create_dataset("raw", data=np.asarray(method.raw, np.float32))
        if method.tokens is not None:
            group.create_dataset("tokens", data=np.asarray(method.tokens, np.float32))
        for extra, values in method.extras.items():
            group.create_dataset(extra, data=values)
        common.write_attrs(
            group, {"options": method.options, "score": method.score, "layer": method.layer}
        )
        if method.note:
            group.attrs["note"] = method.note
    if result.faithfulness:
        faith = f.create_group("faithfulness")
        for name, curves in result.faithfulness.items():
            group = faith.create_group(name)
            group.create_dataset("deletion", data=curves.deletion)
            group.create_dataset("insertion", data=curves.insertion)
            group.attrs["deletion_auc"] = float(curves.deletion_auc)
            group.attrs["insertion_auc"] = float(curves.insertion_auc)
        faith.attrs["fractions"] = result.fractions
        faith.attrs["substrate"] = result.substrate
    for name, sanity in result.sanity.items():
        data = f.create_dataset(f"sanity/{name}", data=sanity.correlations)
        common.write_attrs(data, {"layers": list(sanity.layers)})
    if result.sanity:
        f["sanity"].attrs["threshold"] = result.sanity_threshold
    for name, values in result.metrics.items():
        for metric, per_input in values.items():
            f.create_dataset(f"metrics/{name}/{metric}", data=np.asarray(per_input, np.float64))
    if result.metrics:
        common.write_attrs(f["metrics"], {"options": dict(result.metric_options)})


def read_attributions(source: str | Path | BinaryIO, count: int | None = None) -> Attributions:
    """Read an attributions file; maps and inputs of the first ``count`` inputs only.

    Curves and metrics are read for every input (their means summarise the whole set).
    """
    with common.open_artifact(source, KIND, VERSION, STAGE) as f:
        rows = slice(None, count)
        order = common.read_json_attr(f, "methods") or list(f["methods"])
        order += [m for m in f["methods"] if m not in order]
        methods = {}
        for name in order:
            group = f["methods"][name]
            extras = {k: group[k][rows] for k in group if k not in ("maps", "raw", "tokens")}
            methods[name] = MethodMaps(
                maps=group["maps"][rows],
                options=common.read_json_attr(group, "options", {}),
                score=common.text_attr(group, "score", "logits"),
                raw=group["raw"][rows] if "raw" in group else None,
                layer=common.text_attr(group, "layer") or None,
                extras=extras,
                tokens=group["tokens"][rows] if "tokens" in group else None,
                note=common.text_attr(group, "note", ""),
            )
        faithfulness, fractions, substrate = {}, None, ""
        if "faithfulness" in f:
            faith = f["faithfulness"]
            fractions, substrate = (
                faith.attrs["fractions"][()],
                common.text_attr(faith, "substrate"),
            )
            names = [m for m in [*order, "random"] if m in faith]
            names += [m for m in faith if m not in names]
            faithfulness = {
                m: Curves(
                    faith[m]["deletion"][()],
                    faith[m]["insertion"][()],
                    float(faith[m].attrs["deletion_auc"]),
                    float(faith[m].attrs["insertion_auc"]),
                )
                for m in names
            }
        sanity, threshold = {}, 0.5
        if "sanity" in f:
            threshold = float(f["sanity"].attrs.get("threshold", 0.5))
            names = [m for m in order if m in f["sanity"]]
            names += [m for m in f["sanity"] if m not in names]
            sanity = {
                m: Sanity(common.read_json_attr(f["sanity"][m], "layers", []), f["sanity"][m][()])
                for m in names
            }
        metrics = {}
        if "metrics" in f:
            names = [m for m in [*order, "random"] if m in f["metrics"]]
            names += [m for m in f["metrics"] if m not in names]
            metrics = {m: {k: v[()] for k, v in f["metrics"][m].items()} for m in names}
        return Attributions(
            inputs=f["inputs"][rows],
            targets=f["targets"][rows],
            labels=f["labels"][rows] if "labels" in f else np.full(0, -1),
            probabilities=f["probabilities"][rows] if "probabilities" in f else np.zeros(0),
            index=f["index"][rows] if "index" in f else np.arange(len(f["inputs"]))[rows],
            methods=methods,
            class_names=common.read_json_attr(f, "class_names", []) or [],
            score=common.text_attr(f, "score", "?"),
            target_mode=common.text_attr(f, "target_mode", "?"),
            faithfulness=faithfulness,
            fractions=fractions,
            substrate=substrate,
            sanity=sanity,
            sanity_threshold=threshold,
            metrics=metrics,
            metric_options=common.read_json_attr(f["metrics"], "options", {}) if metrics else {},
            provenance=common.common_attrs(f),
            n_inputs=len(f["inputs"]),
            input_space=common.read_json_attr(f, "input_space", {}),
            tokens=f["tokens"][rows] if "tokens" in f else None,
        )


def record_of(explanation, inputs, targets, probabilities, **attrs) -> Attributions:
    """The record of a :class:`pipeline.attribution.suite.Explanation`.

    Args:
        explanation: The suite's results.
        inputs: The explained inputs (with ``x``, ``y``, ``index``).
        targets: The explained class per input.
        probabilities: The model's outputs.
        **attrs: The remaining :class:`Attributions` fields (``score``, ``class_names``,
            ``target_mode``, ``substrate``, ``sanity_threshold``, ``metric_options``,
            ``provenance``).
    """
    methods = {
        name: MethodMaps(
            maps=result.maps,
            options=explanation.options[name],
            score=attrs.get("score", "logits"),
            raw=result.raw,
            layer=result.layer,
            # Per-input scalars only (a completeness error); input-sized extras stay out.
            extras={k: v for k, v in result.extras.items() if np.ndim(v) == 1},
            note=result.note,
        )
        for name, result in explanation.results.items()
    }
    curves = explanation.faithfulness
    return Attributions(
        inputs=inputs.x,
        targets=targets,
        labels=inputs.y,
        probabilities=probabilities,
        index=inputs.index,
        methods=methods,
        faithfulness={
            name: Curves(c.deletion, c.insertion, c.deletion_auc.mean(), c.insertion_auc.mean())
            for name, c in curves.items()
        },
        fractions=next(iter(curves.values())).fractions if curves else None,
        sanity={name: Sanity(layers, corr) for name, (layers, corr) in explanation.sanity.items()},
        metrics=explanation.evaluation,
        **attrs,
    )

"""The report's sections, in page order: each reads typed artifacts and returns a section.

Nothing here computes a tensor: figures are drawn from what the stages stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.artifacts.activations import Activations, LayerRecord
from pipeline.artifacts.attributions import Attributions
from pipeline.artifacts.dataset import Split
from pipeline.artifacts.evaluation import Evaluation
from pipeline.artifacts.maximization import Maximization
from pipeline.inputs import InputSpace
from pipeline.render import figures
from pipeline.render.options import RenderOptions, choose_view
from pipeline.render.report import FigureWriter, Section, anchor


def model_section(writer: FigureWriter, evaluation: Evaluation | None) -> Section:
    """The layer table and the architecture diagram, as the train stage recorded them."""
    sec = Section("Model", "model")
    if evaluation is None or not evaluation.layers:
        sec.text("Model: not computed (no evaluation output; run the train stage).")
        return sec
    rows = [(r.path, r.class_name, r.output_shape, r.params) for r in evaluation.layers]
    sec.table(["layer", "type", "output shape", "parameters"], [list(r) for r in rows])
    sec.figure(writer.save(figures.summary_table(rows), "model_summary"), "Model summary")
    boxes = [(r.path, r.class_name, r.output_shape) for r in evaluation.layers]
    sec.figure(
        writer.save(figures.architecture_diagram(boxes, evaluation.edges), "architecture"),
        "Architecture: layers in execution order, arrows along the data flow",
    )
    if evaluation.renamed_layers:
        pairs = ", ".join(f"{a} -> {b}" for a, b in evaluation.renamed_layers.items())
        sec.text(f"Renamed because TensorFlow refuses their names as scopes: {pairs}.")
    return sec


def training_section(
    writer: FigureWriter, evaluation: Evaluation | None, probe: Split | None, opts: RenderOptions
) -> Section:
    """Training curves, the confusion matrix and the probe set's predictions."""
    sec = Section("Training", "training")
    if evaluation is None:
        sec.text("Training: not computed (no evaluation output; run the train stage).")
        return sec
    if evaluation.history:
        sec.figure(
            writer.save(figures.training_curves(evaluation.history), "training_curves"),
            "Loss and accuracy per epoch",
        )
    else:
        sec.text("The model was loaded, not trained: no training curves.")
    classes = evaluation.class_names
    predicted = evaluation.probabilities.argmax(-1)
    if evaluation.labeled:
        sec.figure(
            writer.save(
                figures.confusion_matrix(evaluation.labels, predicted, classes), "confusion_matrix"
            ),
            "Confusion matrix on the test split",
        )
    else:
        sec.text(
            "The data are unlabeled: there is no accuracy or confusion matrix, and the "
            "attributions explain each input's predicted class."
        )
    if probe is not None and probe.index is not None and len(probe.index):
        shown = slice(None, opts.max_prediction_inputs)
        # Labels and probabilities as the model sees them (its classes), from evaluation.
        rows = probe.index[shown]
        fig = figures.prediction_grid(
            probe.x[shown], evaluation.labels[rows], evaluation.probabilities[rows], classes
        )
        sec.figure(writer.save(fig, "prediction_grid"), "Probe inputs: true and predicted labels")
    return sec


def _health_rows(acts: Activations) -> list[list]:
    keys = ("dead_fraction", "saturated_fraction", "mean", "std", "nonfinite_fraction")
    return [
        [layer.path, layer.class_name, str(layer.shape)]
        + [acts.health.get(layer.path, {}).get(k, float("nan")) for k in keys]
        for layer in acts.layers
    ]


def _conv_figures(sec, writer, layer: LayerRecord, inputs, shown, label, opts) -> None:
    values = layer.values(shown)
    for i in range(shown):
        fig = figures.feature_maps(
            values[i], f"{layer.path}, {label(i)}", opts.cmap, opts.color_scale, opts.max_channels
        )
        sec.figure(
            writer.save(fig, f"act_{layer.path}_{i}"), f"{layer.path}: feature maps of {label(i)}"
        )
    if inputs is not None and inputs.ndim == 4:
        fig = figures.heatmap_overlays(
            inputs, values, f"{layer.path}: mean activation over the input", opts.overlay_cmap
        )
        sec.figure(writer.save(fig, f"overlay_{layer.path}"), f"{layer.path}: heatmap overlay")


def _recurrent_figures(sec, writer, layer: LayerRecord, shown, label, opts) -> None:
    values = layer.values(shown)
    for i in range(shown):
        fig = figures.recurrent_activations(
            values[i], f"{layer.path}, {label(i)}", opts.diverging_cmap
        )
        sec.figure(
            writer.save(fig, f"act_{layer.path}_{i}"), f"{layer.path}: units over time, {label(i)}"
        )


def _flat_figures(sec, writer, layer: LayerRecord, view, acts, shown, label, opts) -> None:
    flat = layer.values().reshape(acts.n_inputs, -1)
    if view == "dense":
        units = flat.shape[1]
        dead = layer.dead if layer.dead is not None and len(layer.dead) == units else None
        saturated = layer.saturated if dead is not None else None
        fig = figures.dense_activations(
            flat,
            layer.path,
            dead if dead is not None else np.zeros(units, bool),
            saturated if saturated is not None else np.zeros(units, bool),
            shown,
            [label(i) for i in range(shown)],
        )
        sec.figure(
            writer.save(fig, f"act_{layer.path}"), f"{layer.path}: activations and histograms"
        )
    wide = flat.shape[1] >= opts.projection_min_units
    if (view == "projection" or wide) and len(flat) >= 3 and acts.class_names:
        fig = figures.projection(
            flat,
            acts.labels,
            acts.class_names,
            f"{layer.path}: {opts.projection.upper()} of {len(flat)} inputs",
            opts.projection,
        )
        sec.figure(
            writer.save(fig, f"proj_{layer.path}"),
            f"{layer.path}: 2-D projection coloured by class",
        )


def activations_section(
    writer: FigureWriter,
    acts: Activations | None,
    opts: RenderOptions,
    progress: Callable[[], None] = lambda: None,
) -> Section:
    """The health table, then per layer the figures its view calls for."""
    sec = Section("Activations", "activations")
    if acts is None:
        sec.text("Activations: not computed (no extract output; run the extract stage).")
        return sec
    shown = min(opts.max_inputs, acts.n_inputs)
    # Only the first few inputs are drawn: never load a whole 10,000-input layer for a
    # figure that shows three of them.
    inputs = acts.inputs(shown)
    if inputs is not None:
        inputs = InputSpace.from_description(acts.input_space).to_display(inputs)
    sec.text(
        f"{acts.n_inputs} inputs from the '{acts.source}' split; figures show the first "
        f"{shown}. Fractions are of units (dead: never above zero; saturated: see the README)."
    )
    sec.table(
        ["layer", "type", "shape", "dead", "saturated", "mean", "std", "NaN/Inf"],
        _health_rows(acts),
        "Activation health over the extracted inputs (from the extract stage)",
    )

    def label(i: int) -> str:
        y = int(acts.labels[i]) if i < len(acts.labels) else -1
        if 0 <= y < len(acts.class_names):
            return f"input {i} (true {acts.class_names[y]})"
        return f"input {i}"

    for layer in acts.layers:
        view = choose_view(opts.layer_views, layer.path, layer.class_name, layer.shape)
        progress()
        if view == "skip":
            continue
        sec.heading(layer.path, anchor("layer", layer.path))
        if view == "conv":
            _conv_figures(sec, writer, layer, inputs, shown, label, opts)
        elif view == "recurrent":
            _recurrent_figures(sec, writer, layer, shown, label, opts)
        else:
            _flat_figures(sec, writer, layer, view, acts, shown, label, opts)
    return sec


def attributions_section(
    writer: FigureWriter, result: Attributions | None, opts: RenderOptions
) -> Section:
    """The attribution grid, deletion/insertion curves and the sanity bars."""
    sec = Section("Attributions", "attributions")
    if result is None:
        sec.text("Attributions: not computed (no attribute output; run the attribute stage).")
        return sec
    classes = result.class_names or [str(i) for i in range(int(result.targets.max()) + 1)]
    layers = {m: r.layer for m, r in result.methods.items() if r.layer}
    sec.text(
        f"Scores: {result.score}; target: {result.target_mode}; CAM layers: {layers or 'none'}."
    )
    sec.heading("Maps per input", "attribution-maps")
    maps = {m: r.maps for m, r in result.methods.items()}
    shown = InputSpace.from_description(result.input_space).to_display(result.inputs)
    fig = figures.attribution_grid(shown, maps, result.targets, classes, opts.attribution_cmap)
    sec.figure(
        writer.save(fig, "attributions"), "Input, then each method's map (own scale per map)"
    )
    if result.faithfulness:
        curves = {m: (c.deletion, c.insertion) for m, c in result.faithfulness.items()}
        aucs = {m: (c.deletion_auc, c.insertion_auc) for m, c in result.faithfulness.items()}
        sec.heading("Deletion and insertion", "faithfulness")
        sec.figure(
            writer.save(
                figures.faithfulness_curves(result.fractions, curves, aucs), "faithfulness"
            ),
            f"Mean curves over {result.n_inputs} inputs; substrate: {result.substrate}; legend: "
            "mean AUC stored by the attribute stage",
        )
    if result.sanity:
        finals = {m: float(s.correlations[-1]) for m, s in result.sanity.items()}
        sec.heading("Randomisation sanity check", "sanity")
        sec.figure(
            writer.save(figures.sanity_bars(finals, result.sanity_threshold), "sanity"),
            "Spearman correlation after randomising every layer",
        )
    return sec


def maximization_section(
    writer: FigureWriter, result: Maximization | None, classes: list[str] | None
) -> Section:
    """One grid of optimised inputs per target layer, with reach ratios."""
    sec = Section("Feature visualization", "feature-visualization")
    if result is None:
        sec.text(
            "Feature visualization: not computed (no maximize output; run the maximize stage)."
        )
        return sec
    classes = classes or result.class_names
    for target in result.targets:
        labels = None
        if target.objective == "class_logit" and classes:
            labels = [
                f"class {classes[u]}" if u < len(classes) else f"class {u}" for u in target.units
            ]
        sec.heading(f"{target.layer} ({target.objective})", anchor("max", target.layer))
        fig = figures.maximization_grid(
            target.images,
            target.units,
            target.reach_ratio,
            f"{target.layer}: {target.objective}",
            labels,
        )
        sec.figure(writer.save(fig, f"max_{target.layer}"), f"{target.layer}: optimised inputs")
    return sec


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def metrics_section(files: list[Path]) -> Section:
    """Every metrics file, flattened into a table."""
    sec = Section("Metrics", "metrics")
    for file in files:
        if not file.exists():
            sec.text(f"{file}: not computed.")
            continue
        flat = _flatten(json.loads(file.read_text()))
        sec.heading(
            f"{file.parent.name}/{file.name}", anchor("metrics", file.parent.name, file.stem)
        )
        sec.table(["metric", "value"], [[k, v] for k, v in flat.items()])
    return sec


def provenance_section(
    facts: list[list[str]], artifacts: dict[str, dict[str, str] | None], config_yaml: str
) -> Section:
    """Hashes, versions and the configuration; a stale artifact is flagged.

    Args:
        facts: (item, value) rows: experiment, git revision, model and data hashes.
        artifacts: Artifact name -> its recorded provenance (None: not computed).
        config_yaml: The configuration as resolved.
    """
    sec = Section("Provenance", "provenance")
    sec.table(["item", "value"], facts)
    current = dict(facts)
    rows = []
    for name, recorded in artifacts.items():
        if recorded is None:
            rows.append([name, "not computed", "not computed", "-"])
            continue
        model = recorded.get("model_hash", "unknown")
        data = recorded.get("data_hash", "unknown")
        same = model == current.get("model hash") and data == current.get("data hash")
        rows.append([name, model, data, "yes" if same else "NO: stale artifact"])
    sec.heading("Inputs of each artifact", "provenance-artifacts")
    sec.table(
        ["artifact", "model hash", "data hash", "matches current"],
        rows,
        "Hashes each tensor artifact recorded when it was written: a mismatch means it was "
        "computed from another model or data set than the ones above.",
    )
    sec.heading("Configuration (params.yaml as resolved)", "provenance-config")
    sec.pre(config_yaml)
    return sec

"""The report's sections, in page order: each reads typed artifacts and returns a section.

Nothing here computes a tensor: figures are drawn from what the stages stored. Figures
are recorded as jobs on the :class:`FigureWriter`, which draws them all at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.artifacts.activations import Activations, LayerRecord
from pipeline.artifacts.attributions import Attributions
from pipeline.artifacts.dataset import Split
from pipeline.artifacts.evaluation import Evaluation
from pipeline.artifacts.maximization import Maximization
from pipeline.inputs import InputSpace
from pipeline.render import figures, findings, sequence_figures, tokens, volume_figures
from pipeline.render.findings import TERMS, LayerHealth
from pipeline.render.layers import group_layers, inspected
from pipeline.render.options import RenderOptions, choose_view
from pipeline.render.report import Blocks, FigureWriter, Section, anchor


def model_section(writer: FigureWriter, evaluation: Evaluation | None) -> Section:
    """The layer table and the architecture diagram, as the train stage recorded them."""
    sec = Section("Model", "model")
    if evaluation is None or not evaluation.layers:
        sec.text("Model: not computed (no evaluation output; run the train stage).")
        return sec
    rows = [[r.path, r.class_name, r.output_shape, r.params] for r in evaluation.layers]
    total = sum(int(r.params) for r in evaluation.layers)
    table = sec.group(f"Layer table: {len(rows)} layers, {total:,} parameters", "model-table")
    table.table(["layer", "type", "output shape", "parameters"], rows, sortable=True)
    boxes = [(r.path, r.class_name, r.output_shape) for r in evaluation.layers]
    diagram = sec.group("Architecture diagram", "model-diagram", open_=len(boxes) <= 30)
    diagram.figure(
        writer.add("architecture", figures.architecture_diagram, boxes, evaluation.edges),
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
            writer.add("training_curves", figures.training_curves, evaluation.history),
            "Loss and accuracy per epoch",
        )
    else:
        sec.text("The model was loaded, not trained: no training curves.")
    if evaluation.task != "classification":
        return _task_training(sec, writer, evaluation, probe, opts)
    classes = evaluation.class_names
    predicted = evaluation.probabilities.argmax(-1)
    if evaluation.probabilities.ndim != 2 or evaluation.probabilities.shape[-1] < 2:
        # A regression or a single-score model: no classes to count or grid.
        sec.text("The model has a single output: no confusion matrix or prediction grid.")
        return sec
    if evaluation.labeled:
        sec.text(findings.accuracy_finding(evaluation)[1])
        sec.figure(
            writer.add(
                "confusion_matrix",
                figures.confusion_matrix,
                evaluation.labels,
                predicted,
                classes,
            ),
            "Confusion matrix on the test split: rows are true classes, columns predicted",
        )
    else:
        sec.text(
            "The data are unlabeled: there is no accuracy or confusion matrix, and the "
            "attributions explain each input's predicted class."
        )
    volumes = probe is not None and probe.x.ndim == 5
    if volumes and probe.index is not None and len(probe.index):
        # Volumes (D, H, W, C): one row of depth slices per probe input, labelled. A row
        # is as tall as a grid tile is wide: 16 rows keep the figure readable.
        shown = slice(None, min(opts.max_prediction_inputs, 16))
        rows = probe.index[shown]
        labels, probs = evaluation.labels[rows], evaluation.probabilities[rows]
        titles, colors = [], []
        for y, p in zip(labels, probs, strict=True):
            true = classes[y] if y >= 0 else "?"
            titles.append(f"true {true}\npred {classes[p.argmax()]} {p.max():.2f}")
            colors.append("#c00000" if y >= 0 and p.argmax() != y else "black")
        src = writer.add(
            "prediction_slices",
            volume_figures.volume_grid,
            probe.x[shown],
            titles,
            count=opts.volume_slices,
            colors=colors,
        )
        sec.figure(src, "Probe volumes, evenly spaced depth slices: true and predicted labels")
    elif probe is not None and probe.x.ndim != 4:
        sec.text("The inputs are not images: no prediction grid.")
    elif probe is not None and probe.index is not None and len(probe.index):
        shown = slice(None, opts.max_prediction_inputs)
        # Labels and probabilities as the model sees them (its classes), from evaluation.
        rows = probe.index[shown]
        src = writer.add(
            "prediction_grid",
            figures.prediction_grid,
            probe.x[shown],
            evaluation.labels[rows],
            evaluation.probabilities[rows],
            classes,
        )
        sec.figure(src, "Probe inputs: true and predicted labels")
    return sec


def _task_training(
    sec: Section,
    writer: FigureWriter,
    evaluation: Evaluation,
    probe: Split | None,
    opts: RenderOptions,
) -> Section:
    """A regression or segmentation model: its test metrics and what it predicts."""
    sec.text(findings.task_finding(evaluation)[1])
    if evaluation.predictions is None:
        return sec
    if evaluation.task == "regression":
        sec.figure(
            writer.add(
                "regression_scatter",
                figures.regression_scatter,
                evaluation.labels,
                evaluation.predictions,
            ),
            "Test split: the model's outputs against the true targets",
        )
    elif probe is not None and probe.index is not None and len(probe.index):
        # Three panels per input: a dozen rows keeps the figure readable.
        rows = probe.index[: min(opts.max_prediction_inputs, 12)]
        sec.figure(
            writer.add(
                "segmentation_grid",
                figures.segmentation_grid,
                probe.x[: len(rows)],
                evaluation.labels[rows],
                evaluation.predictions[rows],
                evaluation.class_names,
            ),
            "Probe inputs with their true and predicted masks",
        )
    return sec


def layer_health(acts: Activations | None) -> list[LayerHealth]:
    """Each stored layer's health, as the extract stage recorded it."""
    if acts is None:
        return []
    rows = []
    for layer in acts.layers:
        h = acts.health.get(layer.path, {})
        rows.append(
            LayerHealth(
                layer.path,
                layer.class_name,
                int(h.get("units", 0)),
                float(h.get("dead_fraction", float("nan"))),
                float(h.get("saturated_fraction", float("nan"))),
                float(h.get("nonfinite_fraction", 0.0)),
            )
        )
    return rows


def summary_section(
    evaluation: Evaluation | None,
    attributions: Attributions | None,
    health: list[LayerHealth],
    maximization: Maximization | None,
    concepts=None,
) -> Section:
    """Findings first: what the numbers say and where the evidence is."""
    sec = Section("Summary", "summary")
    items = [findings.accuracy_finding(evaluation)]
    if attributions is None:
        items.append(("info", "Attributions: not computed (run the attribute stage).", ""))
    else:
        items += findings.faithfulness_findings(attributions)
        items += findings.sanity_findings(attributions)
    items += findings.health_findings(health)
    if maximization is None:
        items.append(("info", "Feature visualization: not computed (run maximize).", ""))
    else:
        items += findings.reach_findings(maximization)
    if concepts is not None:
        items += findings.concept_findings(concepts)
    sec.findings(items)
    terms = sec.group("What these terms mean", "terms")
    terms.terms(list(TERMS.items()))
    return sec


def _volume_figures(out: Blocks, writer, layer: LayerRecord, inputs, shown, label, opts) -> None:
    """A Conv3D output: depth slices per channel, and its mean over the input's slices."""
    values = layer.values(shown)
    for i in range(shown):
        src = writer.add(
            f"act_{layer.path}_{i}",
            volume_figures.volume_feature_maps,
            values[i],
            f"{layer.path}, {label(i)}",
            count=opts.volume_slices,
            cmap=opts.cmap,
            max_channels=min(opts.max_channels, 8),
        )
        out.figure(src, f"{layer.path}: depth slices per channel of {label(i)}")
    if inputs is not None and inputs.ndim == 5:
        src = writer.add(
            f"overlay_{layer.path}",
            volume_figures.volume_grid,
            inputs,
            [label(i) for i in range(len(inputs))],
            count=opts.volume_slices,
            overlays=values.mean(axis=-1),
            cmap=opts.overlay_cmap,
        )
        out.figure(src, f"{layer.path}: mean activation over the input's depth slices")


def _conv_figures(out: Blocks, writer, layer: LayerRecord, inputs, shown, label, opts) -> None:
    if len(layer.shape) == 4:
        _volume_figures(out, writer, layer, inputs, shown, label, opts)
        return
    if layer.token_grid is not None:
        # A ViT's patch tokens, drawn where their patches are (class token left out).
        values = layer.grid_values(shown)
        h, w = layer.token_grid
        dropped = ", class token dropped" if layer.class_token else ""
        out.text(f"Tokens on their {h}x{w} patch grid{dropped}.")
    else:
        values = layer.values(shown)
    for i in range(shown):
        src = writer.add(
            f"act_{layer.path}_{i}",
            figures.feature_maps,
            values[i],
            f"{layer.path}, {label(i)}",
            opts.cmap,
            opts.color_scale,
            opts.max_channels,
        )
        out.figure(src, f"{layer.path}: feature maps of {label(i)}")
    if inputs is not None and inputs.ndim == 4:
        src = writer.add(
            f"overlay_{layer.path}",
            figures.heatmap_overlays,
            inputs,
            values,
            f"{layer.path}: mean activation over the input",
            opts.overlay_cmap,
        )
        out.figure(src, f"{layer.path}: heatmap overlay")


def _recurrent_figures(out: Blocks, writer, layer: LayerRecord, shown, label, opts) -> None:
    values = layer.values(shown)
    for i in range(shown):
        src = writer.add(
            f"act_{layer.path}_{i}",
            figures.recurrent_activations,
            values[i],
            f"{layer.path}, {label(i)}",
            opts.diverging_cmap,
        )
        out.figure(src, f"{layer.path}: units over time, {label(i)}")


def _flat_figures(out: Blocks, writer, layer: LayerRecord, view, acts, shown, label, opts) -> None:
    flat = layer.values().reshape(acts.n_inputs, -1)
    if view == "dense":
        units = flat.shape[1]
        dead = layer.dead if layer.dead is not None and len(layer.dead) == units else None
        saturated = layer.saturated if dead is not None else None
        src = writer.add(
            f"act_{layer.path}",
            figures.dense_activations,
            flat,
            layer.path,
            dead if dead is not None else np.zeros(units, bool),
            saturated if saturated is not None else np.zeros(units, bool),
            shown,
            [label(i) for i in range(shown)],
        )
        out.figure(src, f"{layer.path}: activations and histograms")
    wide = flat.shape[1] >= opts.projection_min_units
    if (view == "projection" or wide) and len(flat) >= 3 and acts.class_names:
        src = writer.add(
            f"proj_{layer.path}",
            figures.projection,
            flat,
            acts.labels,
            acts.class_names,
            f"{layer.path}: {opts.projection.upper()} of {len(flat)} inputs",
            opts.projection,
        )
        out.figure(src, f"{layer.path}: 2-D projection coloured by class")


def _health_table_rows(acts: Activations, groups: dict[str, str]) -> list[list]:
    keys = ("dead_fraction", "saturated_fraction", "mean", "std", "nonfinite_fraction")
    return [
        [layer.path, layer.class_name, groups.get(layer.path, ""), str(layer.shape)]
        + [acts.health.get(layer.path, {}).get(k, float("nan")) for k in keys]
        for layer in acts.layers
    ]


def layers_section(
    writer: FigureWriter,
    acts: Activations | None,
    opts: RenderOptions,
    progress: Callable[[], None] = lambda: None,
) -> Section:
    """Unit health (one strip figure, a sortable table), then per block the layer figures."""
    sec = Section("Layers", "layers")
    if acts is None:
        sec.text("Activations: not computed (no extract output; run the extract stage).")
        return sec
    shown = min(opts.max_inputs, acts.n_inputs)
    # Only the first few inputs are drawn: never load a whole 10,000-input layer for a
    # figure that shows three of them.
    inputs = acts.inputs(shown)
    if inputs is not None:
        inputs = InputSpace.from_description(acts.input_space).to_display(inputs)
    paths = [layer.path for layer in acts.layers]
    groups = group_layers(paths)
    group_of = {p: g.title for g in groups for p in g.paths}
    starts = []
    for g in groups:
        starts.append((g.title, paths.index(g.paths[0])))
    health = layer_health(acts)
    sec.heading("Unit health", "layer-health")
    sec.text(
        f"{acts.n_inputs} inputs from the '{acts.source}' split. A dead unit never rose "
        "above zero; a saturated unit sits at the bound of its activation (sigmoid, "
        "tanh: 95% of its values within 1% of a bound) or, if unbounded, has a mean more "
        "than 4 standard deviations above its layer's. Both pass almost no gradient."
    )
    sec.figure(
        writer.add(
            "layer_health",
            figures.health_strip,
            paths,
            [h.dead for h in health],
            [h.saturated for h in health],
            starts,
        ),
        "Share of dead (red), saturated (orange) and healthy (green) units per layer",
    )
    table = sec.group(f"Health table: {len(paths)} layers (click a column to sort)")
    table.table(
        ["layer", "type", "block", "shape", "dead", "saturated", "mean", "std", "NaN/Inf"],
        _health_table_rows(acts, group_of),
        "Fractions are of units; mean and std over every value of the layer",
        sortable=True,
    )

    def label(i: int) -> str:
        y = int(acts.labels[i]) if i < len(acts.labels) else -1
        if 0 <= y < len(acts.class_names):
            return f"input {i} (true {acts.class_names[y]})"
        return f"input {i}"

    drawn = (
        set(paths)
        if opts.layers == "all"
        else inspected(paths, [layer.class_name for layer in acts.layers])
    )
    by_path = {layer.path: layer for layer in acts.layers}
    sec.heading("Figures per block", "layer-figures")
    sec.text(
        f"First {shown} input(s) per layer. "
        + (
            "Drawn: convolution, dense and recurrent layers and each block's output; the "
            "other layers are rows of the health table (render.layers=all draws every one)."
            if opts.layers != "all"
            else "Every layer is drawn (render.layers=all)."
        )
    )
    # A small model's groups open; a 200-layer model's stay closed until clicked, so the
    # page (and its images, which load only when shown) stays light.
    open_groups = len(paths) <= 30
    for group in groups:
        chosen = []
        for path in group.paths:
            layer = by_path[path]
            shape = layer.grid_shape or layer.shape  # a ViT's tokens: their patch grid
            view = choose_view(opts.layer_views, layer.path, layer.class_name, shape)
            progress()
            if view != "skip" and path in drawn:
                chosen.append((layer, view))
        unhealthy = [
            h.path
            for h in health[:-1]  # not the model's output (see findings.health_findings)
            if h.path in group.paths
            and (h.dead >= findings.UNHEALTHY_SHARE or h.saturated >= findings.UNHEALTHY_SHARE)
        ]
        flag = f", {len(unhealthy)} unhealthy" if unhealthy else ""
        summary = f"{group.title}: {len(group.paths)} layer(s), {len(chosen)} drawn{flag}"
        block = sec.group(summary, anchor("group", group.title), open_=open_groups)
        if not chosen:
            block.text("No layer of this block is drawn (see the health table).")
        for layer, view in chosen:
            block.heading(layer.path, anchor("layer", layer.path))
            if view == "conv":
                _conv_figures(block, writer, layer, inputs, shown, label, opts)
            elif view == "recurrent":
                _recurrent_figures(block, writer, layer, shown, label, opts)
            else:
                _flat_figures(block, writer, layer, view, acts, shown, label, opts)
    return sec


def _predicted_masks(result: Attributions, evaluation: Evaluation | None) -> np.ndarray | None:
    """A segmentation model's predicted masks of the explained inputs, where stored.

    The train stage stores them for the test split; probe and test inputs index it.
    """
    if evaluation is None or evaluation.task != "segmentation" or evaluation.predictions is None:
        return None
    if result.provenance.get("source") not in ("probe", "test"):
        return None
    index = np.asarray(result.index, np.int64)
    if len(index) and index.max() >= len(evaluation.predictions):
        return None
    return evaluation.predictions[index]


def attributions_section(
    writer: FigureWriter,
    result: Attributions | None,
    opts: RenderOptions,
    vocab: list[str] | None = None,
    evaluation: Evaluation | None = None,
) -> Section:
    """The attribution maps, deletion/insertion curves, the sanity bars and metrics.

    Maps are an image grid, series bands, or for a text model coloured tokens;
    ``vocab`` (the data set's, for token ids) names the tokens; without it ids are shown.
    With a segmentation model's ``evaluation``, each input's predicted mask is drawn
    beside its maps.
    """
    sec = Section("Attributions", "attributions")
    if result is None:
        sec.text("Attributions: not computed (no attribute output; run the attribute stage).")
        return sec
    classes = result.class_names or [str(i) for i in range(int(result.targets.max()) + 1)]
    head = result.target_mode not in ("predicted", "true") and not result.target_mode.isdigit()
    if head and int(np.max(result.targets, initial=0)) == 0:
        # A score head (README: Model kinds): target 0 is the score, not the first class.
        classes = ["score"]
    layers = {m: r.layer for m, r in result.methods.items() if r.layer}
    sec.text(
        f"Scores: {result.score}; target: {result.target_mode}; CAM layers: {layers or 'none'}."
    )
    notes = [f"{m}: {r.note}" for m, r in result.methods.items() if r.note]
    if notes:  # how a map was made where it is not the usual way (a ViT's patch tokens)
        sec.text("How the maps were made: " + "; ".join(notes) + ".")
    if result.tokens is not None:
        _token_maps(sec, result, classes, vocab)
    else:
        _image_maps(sec, writer, result, classes, opts, evaluation)
    _attribution_checks(sec, writer, result)
    return sec


def _token_maps(sec: Section, result: Attributions, classes, vocab: list[str] | None) -> None:
    """A text model: each input's tokens coloured by each method's per-token attribution."""
    sec.heading("Tokens per input", "attribution-maps")
    sec.text(
        "Each method's attribution per token (summed over the embedding axis; CAMs per "
        "position), own scale per row: red raised the target's score, blue lowered it, "
        "stronger colour is a larger share of the row's largest value; padding is hidden. "
        "Hover a token for its value."
        + ("" if vocab is not None else " The data set has no vocabulary: tokens show as #id.")
    )
    for i, ids in enumerate(result.tokens):
        target = int(result.targets[i])
        name = classes[target] if 0 <= target < len(classes) else str(target)
        label = int(result.labels[i]) if i < len(result.labels) else -1
        truth = f", label {classes[label] if 0 <= label < len(classes) else label}"
        sec.text(f"Input {i}: target {name}" + (truth if label >= 0 else ""))
        sec.tokens(
            [
                (m, tokens.token_row(ids, r.tokens[i], vocab))
                for m, r in result.methods.items()
                if r.tokens is not None
            ]
        )


def _image_maps(
    sec: Section,
    writer: FigureWriter,
    result: Attributions,
    classes,
    opts,
    evaluation: Evaluation | None = None,
) -> None:
    """Images and sequences: the input, then each method's map, as figures."""
    sec.heading("Maps per input", "attribution-maps")
    maps = {m: r.maps for m, r in result.methods.items()}
    shown = InputSpace.from_description(result.input_space).to_display(result.inputs)
    if shown.ndim == 5:
        # Volumes (D, H, W, C): each input's depth slices, a row per method over them.
        for i in range(min(len(shown), opts.max_inputs)):
            src = writer.add(
                f"attributions_{i}",
                volume_figures.volume_methods,
                shown[i],
                {m: values[i] for m, values in maps.items()},
                count=opts.volume_slices,
                title=f"input {i}, target {int(result.targets[i])}",
                cmap=opts.attribution_cmap,
            )
            sec.figure(
                src,
                f"Input {i}: evenly spaced depth slices, then each method's map over them "
                "(own scale per map over the whole volume; bright: important)",
            )
    elif shown.ndim == 3:
        # Sequences (T, F): each input's series with every method's map as a band.
        for i in range(min(len(shown), opts.max_inputs)):
            src = writer.add(
                f"attributions_{i}",
                sequence_figures.series_methods,
                shown[i],
                {m: values[i] for m, values in maps.items()},
                title=f"input {i}, target {int(result.targets[i])}",
            )
            sec.figure(src, f"Input {i} over time; shaded: each method's attribution")
    else:
        src = writer.add(
            "attributions",
            figures.attribution_grid,
            shown,
            maps,
            result.targets,
            classes,
            opts.attribution_cmap,
            masks=_predicted_masks(result, evaluation),
        )
        sec.figure(src, "Input, then each method's map (own scale per map; bright: important)")


def _attribution_checks(sec: Section, writer: FigureWriter, result: Attributions) -> None:
    """Deletion/insertion curves, the sanity bars and further metrics."""
    if result.faithfulness:
        curves = {m: (c.deletion, c.insertion) for m, c in result.faithfulness.items()}
        aucs = {m: (c.deletion_auc, c.insertion_auc) for m, c in result.faithfulness.items()}
        sec.heading("Deletion and insertion", "faithfulness")
        sec.text(f"{TERMS['deletion AUC']} {TERMS['insertion AUC']} {TERMS['random baseline']}")
        random = result.faithfulness.get("random")
        rows = []
        for m, c in result.faithfulness.items():
            verdict = ""
            if random is not None and m != "random":
                worse = (
                    c.deletion_auc > random.deletion_auc or c.insertion_auc < random.insertion_auc
                )
                verdict = "worse than random" if worse else "better than random"
            rows.append([m, float(c.deletion_auc), float(c.insertion_auc), verdict])
        sec.table(
            ["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)", ""],
            rows,
            sortable=True,
        )
        sec.figure(
            writer.add("faithfulness", figures.faithfulness_curves, result.fractions, curves, aucs),
            f"Mean curves over {result.n_inputs} inputs; substrate: {result.substrate}",
        )
    if result.sanity:
        finals = {m: float(s.correlations[-1]) for m, s in result.sanity.items()}
        sec.heading("Randomisation sanity check", "sanity")
        sec.text(TERMS["sanity check"])
        sec.figure(
            writer.add("sanity", figures.sanity_bars, finals, result.sanity_threshold),
            "Spearman correlation between each map and the map of the randomised model "
            f"(pass: |correlation| < {result.sanity_threshold})",
        )
    if result.metrics:
        names = sorted({k for values in result.metrics.values() for k in values})
        rows = [
            [m] + [float(np.mean(values[k])) if k in values else float("nan") for k in names]
            for m, values in result.metrics.items()
        ]
        sec.heading("Other faithfulness metrics", "attribution-metrics")
        sec.text("Means over the explained inputs (see the README for each metric).")
        sec.table(["method", *names], rows, sortable=True)


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
    sec.text(
        "Each image is an input optimised to excite one unit (or class). " + TERMS["reach ratio"]
    )
    classes = classes or result.class_names
    for target in result.targets:
        labels = None
        if target.objective == "class_logit" and classes:
            labels = [
                f"class {classes[u]}" if u < len(classes) else f"class {u}" for u in target.units
            ]
        sec.heading(f"{target.layer} ({target.objective})", anchor("max", target.layer))
        src = writer.add(
            f"max_{target.layer}",
            figures.maximization_grid,
            target.images,
            target.units,
            target.reach_ratio,
            f"{target.layer}: {target.objective}",
            labels,
        )
        sec.figure(src, f"{target.layer}: optimised inputs with their reach ratios")
    return sec


def provenance_section(
    facts: list[list[str]],
    artifacts: dict[str, dict[str, str] | None],
    config_yaml: str,
    metrics: dict[str, str] | None = None,
) -> Section:
    """Hashes, versions and the configuration; a stale artifact is flagged.

    Args:
        facts: (item, value) rows: experiment, git revision, model and data hashes.
        artifacts: Artifact name -> its recorded provenance (None: not computed).
        config_yaml: The configuration as resolved.
        metrics: Metrics file name -> its text (shown collapsed, as DVC reads it).
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
    for name, text in (metrics or {}).items():
        sec.group(f"{name} (as dvc exp show reads it)").pre(text)
    sec.heading("Configuration (params.yaml as resolved)", "provenance-config")
    sec.pre(config_yaml)
    return sec


def concepts_section(writer: FigureWriter, result, opts: RenderOptions) -> Section:
    """TCAV per concept and layer, the layer-by-layer CKA matrix and per-class maps.

    Args:
        writer: The figure writer.
        result: A :class:`pipeline.artifacts.concepts.Concepts`, or None.
        opts: Render options (colormaps).
    """
    from pipeline.render import concept_figures
    from pipeline.render.concept_figures import EXPLANATIONS

    sec = Section("Concepts and representations", "concepts")
    if result is None:
        sec.text("Concepts: not computed (no concepts output; run the concepts stage).")
        return sec
    classes = result.class_names or []

    def names(indices) -> list[str]:
        return [classes[int(c)] if 0 <= int(c) < len(classes) else str(c) for c in indices]

    if result.tcav:
        sec.heading("Concept tests (TCAV)", "tcav")
        sec.text(EXPLANATIONS["tcav"])
        sec.text(EXPLANATIONS["tcav_significance"])
        rows = []
        for item in result.tcav:
            src = writer.add(
                f"tcav_{item.concept}_{item.layer}",
                concept_figures.tcav_bar_chart,
                item.scores,
                item.random_scores,
                item.p_values,
                item.significant,
                names(result.classes),
                f"{item.concept} at {item.layer}",
                result.level,
            )
            sec.figure(src, f"TCAV scores of '{item.concept}' at {item.layer}, per class")
            rows.append(
                [
                    item.concept,
                    item.layer,
                    float(np.mean(item.accuracies)),
                    int(np.sum(item.significant)),
                    len(item.significant),
                ]
            )
        sec.text(EXPLANATIONS["cav_accuracy"])
        sec.table(
            ["concept", "layer", "CAV accuracy", "significant classes", "classes"],
            rows,
            sortable=True,
        )
    else:
        sec.text(
            "No concept was tested: put example images in concepts/<name>/ (see the "
            "README) and rerun; the stage then tests each against random sets."
        )
    if result.cka_layers:
        sec.heading("Representation similarity (CKA)", "cka")
        sec.text(EXPLANATIONS["cka"])
        sec.figure(
            writer.add(
                "cka",
                concept_figures.cka_heatmap,
                result.cka,
                list(result.cka_layers),
                None,
                f"Linear CKA between layers ({result.cka_inputs} inputs)",
            ),
            "Layer-by-layer linear CKA on the extracted inputs",
        )
    if result.class_attribution:
        sec.heading("What the model looks at, per class", "class-attribution")
        sec.text(EXPLANATIONS["class_attribution"])
        shown = names(result.attribution_classes if result.attribution_classes is not None else [])
        for method, per_class in result.class_attribution.items():
            sec.figure(
                writer.add(
                    f"class_attribution_{method}",
                    concept_figures.class_attribution_grid,
                    per_class.mean_maps,
                    shown,
                    result.attribution_counts,
                    per_class.deletion_auc,
                    per_class.insertion_auc,
                    f"{method}: mean map per class",
                    opts.attribution_cmap,
                ),
                f"{method}: mean attribution map of each class",
            )
    return sec

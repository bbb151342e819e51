"""Render stage: figures and one static HTML report, from the stages' outputs only.

Reads the HDF5 files of train/extract/attribute/maximize, the metrics JSON files and the
model file (for its summary); never recomputes tensors. A missing upstream output is
reported as "not computed"; a truncated or foreign one is a one-line error. Writes the
whole ``paths.report`` directory atomically: ``index.html`` and ``figures/``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import open_artifact, read_json_attr
from pipeline.config import at_most, one_of, run_stage, section, to_yaml, workspace_paths
from pipeline.errors import KerascopeError
from pipeline.render.report import Section, anchor, build_html
from pipeline.workspace import file_hash, preflight

#: Upper bounds that keep a figure's pixel buffer in memory (a dpi of 10,000 would ask
#: for gigabytes per figure).
MAX_DPI = 600
MAX_DRAWN = 4096

LAYER_VIEWS = ("auto", "conv", "dense", "recurrent", "projection", "skip")


@dataclass
class RenderConfig:
    """The ``render`` config section."""

    cmap: str = "viridis"
    attribution_cmap: str = "magma"
    overlay_cmap: str = "inferno"
    diverging_cmap: str = "RdBu_r"
    color_scale: str = "shared"
    max_inputs: int = 3
    max_channels: int = 64
    max_attribution_inputs: int = 8
    max_prediction_inputs: int = 100
    projection: str = "pca"
    projection_min_units: int = 64
    layer_views: dict[str, str] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: ["png"])
    dpi: int = 90


def _figures():
    from pipeline.render import figures

    return figures


class FigureWriter:
    """Saves figures under ``figures/`` in the configured formats; returns the PNG path."""

    def __init__(self, root: Path, formats: list[str], dpi: int) -> None:
        self.root = root
        self.formats = formats
        self.dpi = dpi
        (root / "figures").mkdir(parents=True, exist_ok=True)
        self.count = 0

    def save(self, figure, name: str) -> str:
        """Write ``figure`` in every format and return the relative path to show."""
        import matplotlib.pyplot as plt

        stem = anchor(name)
        for fmt in self.formats:
            figure.savefig(
                self.root / "figures" / f"{stem}.{fmt}", dpi=self.dpi, bbox_inches="tight"
            )
        plt.close(figure)
        self.count += 1
        first = "png" if "png" in self.formats else self.formats[0]
        return f"figures/{stem}.{first}"


def _validate(cfg: RenderConfig) -> None:
    import matplotlib

    one_of("render.color_scale", cfg.color_scale, ["shared", "per_channel"])
    one_of("render.projection", cfg.projection, ["pca", "tsne"])
    for fmt in cfg.formats:
        one_of("render format", fmt, ["png", "svg"])
    # The perceptually uniform and diverging maps first: the hint lists those, not all 170.
    suggested = ["viridis", "magma", "inferno", "plasma", "cividis", "gray", "RdBu_r", "coolwarm"]
    colormaps = suggested + sorted(set(matplotlib.colormaps) - set(suggested))
    for key in ("cmap", "attribution_cmap", "overlay_cmap", "diverging_cmap"):
        one_of(f"render.{key}", getattr(cfg, key), colormaps)
    for layer, view in cfg.layer_views.items():
        one_of(f"render.layer_views view for '{layer}'", view, LAYER_VIEWS)
    for key in ("max_inputs", "max_channels", "max_attribution_inputs", "max_prediction_inputs"):
        at_most(f"render.{key}", getattr(cfg, key), MAX_DRAWN)
    at_most("render.dpi", cfg.dpi, MAX_DPI)
    at_most("render.projection_min_units", cfg.projection_min_units, 10**9)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _experiment_name() -> str:
    # `dvc exp run` exports DVC_EXP_NAME to stage commands; plain `dvc repro` does not.
    return os.environ.get("DVC_EXP_NAME") or "workspace (dvc repro)"


def _layer_view(shape: tuple, class_name: str) -> str:
    """The automatic view of a layer from its output shape (without batch) and type."""
    if class_name in ("LSTM", "GRU", "SimpleRNN") and len(shape) == 2:
        return "recurrent"
    if len(shape) == 3:
        return "conv"
    if len(shape) == 2:
        return "projection" if class_name == "Embedding" else "recurrent"
    return "dense"


def choose_view(overrides: dict[str, str], path: str, class_name: str, shape: tuple) -> str:
    """The view of one layer: an override by exact path, then by glob, then by class name.

    Args:
        overrides: ``render.layer_views``: key = layer path, glob (``base/block*``) or
            layer class name (``Dense``); value = a view of :data:`LAYER_VIEWS`.
        path: The layer path.
        class_name: The layer's class name.
        shape: The layer's output shape without the batch axis.

    Returns:
        A view other than ``auto``.
    """
    view = overrides.get(path)
    if view is None:
        globbed = [v for k, v in overrides.items() if fnmatch.fnmatchcase(path, k)]
        view = globbed[0] if globbed else overrides.get(class_name, "auto")
    if view == "auto":
        view = _layer_view(shape, class_name)
    # A view that cannot draw this shape falls back to the generic flattened view.
    if view == "conv" and len(shape) != 3 or view == "recurrent" and len(shape) != 2:
        view = "dense"
    return view


def _edges(model, infos) -> list[tuple[int, int]]:
    """Data-flow edges between :func:`list_layers` entries, from the Keras graph.

    A nested model's box feeds its first inner layers, and its consumers are fed by
    its last inner layer, so the arrows follow the data through the nested model.
    """
    from pipeline.graph import _graph_of, _node_names

    index = {info.path: i for i, info in enumerate(infos)}
    exits = {}
    for i, info in enumerate(infos):
        inner = [j for j, other in enumerate(infos) if other.path.startswith(info.path + "/")]
        if inner:
            exits[i] = max(inner)
    edges: set[tuple[int, int]] = set()

    def visit(graph, prefix: str, owner: int | None) -> None:
        names = {id(node): f"{prefix}{local}" for node, local, _ in _node_names(graph)}
        for node, local, _ in _node_names(graph):
            here = index.get(f"{prefix}{local}")
            if here is None:
                continue
            parents = [index.get(names.get(id(p))) for p in node.parent_nodes]
            parents = [exits.get(i, i) for i in parents if i is not None]
            if not parents and owner is not None:
                parents = [owner]
            edges.update((i, here) for i in parents)
            inner = _graph_of(node.operation) if hasattr(node.operation, "layers") else None
            if inner is not None:
                visit(inner, f"{prefix}{local}/", here)

    try:
        visit(_graph_of(model), "", None)
    except Exception:  # a diagram is not worth failing the report for: draw a chain
        return [(i, i + 1) for i in range(len(infos) - 1)]
    return sorted(edges)


def _model_section(sec: Section, writer: FigureWriter, model_path: Path, job) -> str:
    if not model_path.exists():
        sec.text(f"Model: not computed ({model_path} not found; run the train stage).")
        return "not computed"
    from pipeline.graph import list_layers
    from pipeline.models import load_model_file

    model = load_model_file(model_path, job.safe_mode, job.custom_modules)
    infos = list_layers(model)
    rows = []
    for info in infos:
        params = 0 if hasattr(info.layer, "layers") else int(info.layer.count_params())
        rows.append((info.path, info.class_name, str(info.output_shape), params))
    sec.table(["layer", "type", "output shape", "parameters"], [list(r) for r in rows])
    sec.figure(writer.save(_figures().summary_table(rows), "model_summary"), "Model summary")
    boxes = [(info.path, info.class_name, str(info.output_shape)) for info in infos]
    sec.figure(
        writer.save(_figures().architecture_diagram(boxes, _edges(model, infos)), "architecture"),
        "Architecture: layers in execution order, arrows along the data flow",
    )
    return file_hash(model_path)


def _training_section(sec: Section, writer: FigureWriter, path: Path, probe) -> None:
    if not path.exists():
        sec.text("Training: not computed (no evaluation output; run the train stage).")
        return
    with open_artifact(path, "evaluation", "train") as f:
        history = {k: f["history"][k][()] for k in f.get("history", {})}
        labels = f["test/labels"][()]
        probs = f["test/probabilities"][()]
        classes = read_json_attr(f, "class_names")
    if history:
        sec.figure(
            writer.save(_figures().training_curves(history), "training_curves"),
            "Loss and accuracy per epoch",
        )
    else:
        sec.text("The model was loaded, not trained: no training curves.")
    sec.figure(
        writer.save(
            _figures().confusion_matrix(labels, probs.argmax(-1), classes), "confusion_matrix"
        ),
        "Confusion matrix on the test split",
    )
    if probe is not None:
        inputs, plabels, pprobs = probe
        sec.figure(
            writer.save(
                _figures().prediction_grid(inputs, plabels, pprobs, classes), "prediction_grid"
            ),
            "Probe inputs: true and predicted labels",
        )


def _unit_flags(data, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dead and saturated flags per unit, by the extract stage's own rules.

    Flags stored by extract (dataset attrs ``dead_units``/``saturated_units``) are used
    as they are; otherwise :class:`pipeline.activations.ActivationHealth` applies the
    same rules to the stored activations, so the figure and the health table agree.
    """
    if "dead_units" in data.attrs and "saturated_units" in data.attrs:
        dead = np.asarray(data.attrs["dead_units"], bool)
        saturated = np.asarray(data.attrs["saturated_units"], bool)
        if dead.shape == saturated.shape == flat.shape[1:]:
            return dead, saturated
    from pipeline.activations import ActivationHealth

    path = str(data.attrs["layer_path"])
    health = ActivationHealth({path: str(data.attrs.get("activation", "linear"))})
    health.update({path: flat})
    units = health.per_unit(path)
    return units["dead"], units["saturated"]


def _activation_section(
    sec: Section, writer: FigureWriter, path: Path, cfg: RenderConfig, progress
):
    if not path.exists():
        sec.text("Activations: not computed (no extract output; run the extract stage).")
        return None
    with open_artifact(path, "activations", "extract") as f:
        labels = f["labels"][()] if "labels" in f else None
        classes = read_json_attr(f, "class_names") or []
        n_inputs = len(f["index"]) if "index" in f else len(f["inputs"])
        if labels is None:
            labels = np.full(n_inputs, -1)
        shown = min(cfg.max_inputs, n_inputs)
        # Only the first few inputs are drawn: never load a whole 10,000-input layer
        # for a figure that shows three of them.
        inputs = f["inputs"][:shown] if "inputs" in f else None
        predictions = (
            f["predictions"][()]
            if "predictions" in f and hasattr(f["predictions"], "shape")
            else None
        )
        probe_inputs = (
            f["inputs"][: cfg.max_prediction_inputs]
            if "inputs" in f and predictions is not None
            else None
        )
        health = json.loads(f.attrs.get("health", "{}"))
        layers = []
        f["activations"].visititems(
            lambda name, obj: layers.append(obj) if "layer_path" in obj.attrs else None
        )
        layers.sort(key=lambda d: int(d.attrs["position"]))
        progress.reset(total=len(layers))
        rows = [
            [d.attrs["layer_path"], d.attrs["class_name"], str(tuple(d.shape[1:]))]
            + [
                health.get(d.attrs["layer_path"], {}).get(k, float("nan"))
                for k in (
                    "dead_fraction",
                    "saturated_fraction",
                    "mean",
                    "std",
                    "nonfinite_fraction",
                )
            ]
            for d in layers
        ]
        sec.text(
            f"{n_inputs} inputs from the '{f.attrs.get('source', '?')}' split; figures show "
            f"the first {shown}. Fractions are of units (dead: never above zero; saturated: "
            "see the README)."
        )
        sec.table(
            ["layer", "type", "shape", "dead", "saturated", "mean", "std", "NaN/Inf"],
            rows,
            "Activation health over the extracted inputs (from the extract stage)",
        )

        def row_label(i: int) -> str:
            if labels[i] >= 0 and labels[i] < len(classes):
                return f"input {i} (true {classes[labels[i]]})"
            return f"input {i}"

        for data in layers:
            layer = str(data.attrs["layer_path"])
            shape = tuple(data.shape[1:])
            view = choose_view(cfg.layer_views, layer, str(data.attrs["class_name"]), shape)
            progress.update(1)
            if view == "skip":
                continue
            sec.heading(layer, anchor("layer", layer))
            if view == "conv":
                acts = data[:shown]
                for i in range(shown):
                    fig = _figures().feature_maps(
                        acts[i],
                        f"{layer}, {row_label(i)}",
                        cfg.cmap,
                        cfg.color_scale,
                        cfg.max_channels,
                    )
                    sec.figure(
                        writer.save(fig, f"act_{layer}_{i}"),
                        f"{layer}: feature maps of {row_label(i)}",
                    )
                if inputs is not None and inputs.ndim == 4:
                    fig = _figures().heatmap_overlays(
                        inputs,
                        acts,
                        f"{layer}: mean activation over the input",
                        cfg.overlay_cmap,
                    )
                    sec.figure(writer.save(fig, f"overlay_{layer}"), f"{layer}: heatmap overlay")
            elif view == "recurrent":
                for i in range(shown):
                    fig = _figures().recurrent_activations(
                        data[i], f"{layer}, {row_label(i)}", cfg.diverging_cmap
                    )
                    sec.figure(
                        writer.save(fig, f"act_{layer}_{i}"),
                        f"{layer}: units over time, {row_label(i)}",
                    )
            else:
                flat = data[()].reshape(len(data), -1)
                if view == "dense":
                    dead, saturated = _unit_flags(data, flat)
                    fig = _figures().dense_activations(
                        flat, layer, dead, saturated, shown, [row_label(i) for i in range(shown)]
                    )
                    sec.figure(
                        writer.save(fig, f"act_{layer}"), f"{layer}: activations and histograms"
                    )
                if (
                    (view == "projection" or flat.shape[1] >= cfg.projection_min_units)
                    and len(flat) >= 3
                    and classes
                ):
                    fig = _figures().projection(
                        flat,
                        labels,
                        classes,
                        f"{layer}: {cfg.projection.upper()} of {len(flat)} inputs",
                        cfg.projection,
                    )
                    sec.figure(
                        writer.save(fig, f"proj_{layer}"),
                        f"{layer}: 2-D projection coloured by class",
                    )
    if predictions is None or predictions.ndim != 2 or probe_inputs is None:
        return None
    k = len(probe_inputs)
    return probe_inputs, labels[:k], predictions[:k]


def _attribution_section(sec: Section, writer: FigureWriter, path: Path, cfg: RenderConfig) -> None:
    if not path.exists():
        sec.text("Attributions: not computed (no attribute output; run the attribute stage).")
        return
    with open_artifact(path, "attributions", "attribute") as f:
        n_all = len(f["inputs"])
        n = min(cfg.max_attribution_inputs, n_all)
        inputs = f["inputs"][:n]
        targets = f["targets"][:n]
        classes = read_json_attr(f, "class_names") or [
            str(i) for i in range(int(targets.max()) + 1)
        ]
        order = read_json_attr(f, "methods") or list(f["methods"])
        maps = {m: f["methods"][m]["maps"][:n] for m in order}
        layers = {
            m: f["methods"][m].attrs.get("layer")
            for m in f["methods"]
            if "layer" in f["methods"][m].attrs
        }
        score, target = f.attrs.get("score", "?"), f.attrs.get("target_mode", "?")
        sec.text(f"Scores: {score}; target: {target}; CAM layers: {layers or 'none'}.")
        sec.heading("Maps per input", "attribution-maps")
        fig = _figures().attribution_grid(inputs, maps, targets, classes, cfg.attribution_cmap)
        sec.figure(
            writer.save(fig, "attributions"), "Input, then each method's map (own scale per map)"
        )
        if "faithfulness" in f:
            group = f["faithfulness"]
            fractions = group.attrs["fractions"]
            names = [m for m in [*order, "random"] if m in group]
            names += [m for m in group if m not in names]
            curves = {m: (group[m]["deletion"][()], group[m]["insertion"][()]) for m in names}
            aucs = {
                m: (float(group[m].attrs["deletion_auc"]), float(group[m].attrs["insertion_auc"]))
                for m in names
                if "deletion_auc" in group[m].attrs and "insertion_auc" in group[m].attrs
            }
            sec.heading("Deletion and insertion", "faithfulness")
            sec.figure(
                writer.save(
                    _figures().faithfulness_curves(fractions, curves, aucs), "faithfulness"
                ),
                f"Mean curves over {n_all} inputs; substrate: "
                f"{group.attrs.get('substrate', '?')}; legend: mean AUC stored by the attribute "
                "stage",
            )
        if "sanity" in f:
            sanity = f["sanity"]
            names = [m for m in order if m in sanity] + [m for m in sanity if m not in order]
            finals = {m: float(sanity[m][()][-1]) for m in names}
            sec.heading("Randomisation sanity check", "sanity")
            sec.figure(
                writer.save(
                    _figures().sanity_bars(finals, float(sanity.attrs.get("threshold", 0.5))),
                    "sanity",
                ),
                "Spearman correlation after randomising every layer",
            )


def _maximization_section(sec: Section, writer: FigureWriter, path: Path, classes) -> None:
    if not path.exists():
        sec.text(
            "Feature visualization: not computed (no maximize output; run the maximize stage)."
        )
        return
    with open_artifact(path, "maximization", "maximize") as f:
        classes = classes or read_json_attr(f, "class_names")
        groups = []
        f.visititems(lambda name, obj: groups.append(obj) if "layer_path" in obj.attrs else None)
        for group in groups:
            layer = str(group.attrs["layer_path"])
            kind = str(group.attrs["objective"])
            units = group["units"][()]
            labels = None
            if kind == "class_logit" and classes:
                labels = [
                    f"class {classes[u]}" if u < len(classes) else f"class {u}" for u in units
                ]
            sec.heading(f"{layer} ({kind})", anchor("max", layer))
            fig = _figures().maximization_grid(
                group["images"][()], units, group["reach_ratio"][()], f"{layer}: {kind}", labels
            )
            sec.figure(writer.save(fig, f"max_{layer}"), f"{layer}: optimised inputs")


def _metrics_section(sec: Section, metrics_dir: Path, live_dir: Path) -> None:
    files = [
        live_dir / "metrics.json",
        *(metrics_dir / f"{s}.json" for s in ("extract", "attribute", "maximize")),
    ]
    for file in files:
        if not file.exists():
            sec.text(f"{file}: not computed.")
            continue
        flat = _flatten(json.loads(file.read_text()))
        sec.heading(
            f"{file.parent.name}/{file.name}", anchor("metrics", file.parent.name, file.stem)
        )
        sec.table(["metric", "value"], [[k, v] for k, v in flat.items()])


def _artifact_hashes(paths: dict, model_hash: str, data_hash: str) -> list[list[str]]:
    rows = []
    for key, kind, stage in (
        ("activations", "activations", "extract"),
        ("attributions", "attributions", "attribute"),
        ("maximization", "maximization", "maximize"),
    ):
        if not paths[key].exists():
            rows.append([key, "not computed", "not computed", "-"])
            continue
        with open_artifact(paths[key], kind, stage) as f:
            model = str(f.attrs.get("model_hash", "unknown"))
            data = str(f.attrs.get("data_hash", "unknown"))
        same = model == model_hash and data == data_hash
        rows.append([key, model, data, "yes" if same else "NO: stale artifact"])
    return rows


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def _layout(path: Path, stage: str):
    """Turn a missing dataset or attribute of an upstream file into a one-line error."""
    try:
        yield
    except KeyError as err:
        detail = str(err).strip("'\"")
        raise KerascopeError(
            f"'{path}' does not have the expected layout ({detail}); "
            f"run `dvc repro {stage}` to rebuild it"
        ) from None


@dataclass
class RenderRun:
    """Everything the render stage needs, validated."""

    cfg: RenderConfig
    paths: dict[str, Path]
    params: dict
    safe_mode: bool
    custom_modules: list[str]


def configure(params: dict) -> RenderRun:
    """Validate the ``render`` section and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    cfg = section(params, "render", RenderConfig)
    _validate(cfg)
    safe_mode = bool(params.get("model", {}).get("safe_mode", True))
    custom_modules = list(params.get("model", {}).get("custom_modules") or [])
    preflight(paths, "report")
    return RenderRun(cfg, paths, params, safe_mode, custom_modules)


def run(job: RenderRun) -> None:
    """Draw every figure from the upstream files and write the report directory."""
    from pipeline.workspace import claim

    with claim(job.paths, "report") as out:
        _render(job, out)


def _render(job: RenderRun, out) -> None:
    cfg, paths, params = job.cfg, job.paths, job.params
    progress = tqdm(desc="render", unit="layer", disable=None, file=sys.stderr)
    with out.write("report") as tmp:
        writer = FigureWriter(tmp, cfg.formats, cfg.dpi)
        model_sec = Section("Model", "model")
        model_hash = _model_section(model_sec, writer, paths["model"], job)
        act_sec = Section("Activations", "activations")
        with _layout(paths["activations"], "extract"):
            probe = _activation_section(act_sec, writer, paths["activations"], cfg, progress)
        train_sec = Section("Training", "training")
        with _layout(paths["evaluation"], "train"):
            _training_section(train_sec, writer, paths["evaluation"], probe)
        attr_sec = Section("Attributions", "attributions")
        with _layout(paths["attributions"], "attribute"):
            _attribution_section(attr_sec, writer, paths["attributions"], cfg)
        max_sec = Section("Feature visualization", "feature-visualization")
        classes = None
        if paths["evaluation"].exists():
            with open_artifact(paths["evaluation"], "evaluation", "train") as f:
                classes = read_json_attr(f, "class_names")
        with _layout(paths["maximization"], "maximize"):
            _maximization_section(max_sec, writer, paths["maximization"], classes)
        metrics_sec = Section("Metrics", "metrics")
        _metrics_section(metrics_sec, paths["metrics"], paths["live"])
        prov = Section("Provenance", "provenance")
        data_hash = "not computed"
        if paths["dataset"].exists():
            with open_artifact(paths["dataset"], "dataset", "data") as f:
                data_hash = str(f.attrs["data_hash"])
        prov.table(
            ["item", "value"],
            [
                ["experiment", _experiment_name()],
                ["git revision", _git_revision()],
                ["model hash", model_hash],
                ["data hash", data_hash],
            ],
        )
        prov.heading("Inputs of each artifact", "provenance-artifacts")
        prov.table(
            ["artifact", "model hash", "data hash", "matches current"],
            _artifact_hashes(paths, model_hash, data_hash),
            "Hashes each tensor artifact recorded when it was written: a mismatch means "
            "it was computed from another model or data set than the ones above.",
        )
        prov.heading("Configuration (params.yaml as resolved)", "provenance-config")
        prov.pre(to_yaml(params))
        model_name = params.get("model", {}).get("name", "?")
        data_name = params.get("data", {}).get("name", "?")
        page = build_html(
            "kerascope report",
            f"model {model_name} on data {data_name}",
            [model_sec, train_sec, act_sec, attr_sec, max_sec, metrics_sec, prov],
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        count = writer.count
    progress.close()
    print(f"render: {count} figures -> {paths['report'] / 'index.html'}")


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

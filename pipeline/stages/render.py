"""Render stage: figures and one static HTML report, from the stages' outputs only.

Reads the HDF5 files of train/extract/attribute/maximize, the metrics JSON files and the
model file (for its summary); never recomputes tensors. A missing upstream output is
reported as "not computed"; a truncated or foreign one is a one-line error. Writes the
whole ``paths.report`` directory atomically: ``index.html`` and ``figures/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import open_artifact, read_json_attr
from pipeline.config import one_of, positive, run_stage, section, to_yaml
from pipeline.io import atomic_path, file_hash
from pipeline.render import figures as fig_lib
from pipeline.render.report import Section, anchor, build_html

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
    projection: str = "pca"
    projection_min_units: int = 64
    layer_views: dict[str, str] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: ["png"])
    dpi: int = 90


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
    for key in ("cmap", "attribution_cmap", "overlay_cmap", "diverging_cmap"):
        one_of(f"render.{key}", getattr(cfg, key), sorted(matplotlib.colormaps))
    for layer, view in cfg.layer_views.items():
        one_of(f"render.layer_views view for '{layer}'", view, LAYER_VIEWS)
    for key in ("max_inputs", "max_channels", "max_attribution_inputs", "dpi"):
        positive(f"render.{key}", getattr(cfg, key))


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
    if class_name in ("LSTM", "GRU", "SimpleRNN") and len(shape) == 2:
        return "recurrent"
    if len(shape) == 3:
        return "conv"
    if len(shape) == 2:
        return "projection" if class_name == "Embedding" else "recurrent"
    return "dense"


def _model_section(sec: Section, writer: FigureWriter, model_path: Path, safe_mode: bool) -> str:
    if not model_path.exists():
        sec.text(f"Model file {model_path} not found: run the train stage.")
        return "not computed"
    from pipeline.graph import list_layers
    from pipeline.models import load_model_file

    model = load_model_file(model_path, safe_mode=safe_mode)
    infos = list_layers(model)
    rows = []
    for info in infos:
        params = 0 if hasattr(info.layer, "layers") else int(info.layer.count_params())
        rows.append((info.path, info.class_name, str(info.output_shape), params))
    sec.table(["layer", "type", "output shape", "parameters"], [list(r) for r in rows])
    sec.figure(writer.save(fig_lib.summary_table(rows), "model_summary"), "Model summary")
    boxes = [(info.path, info.class_name, str(info.output_shape)) for info in infos]
    sec.figure(writer.save(fig_lib.architecture_diagram(boxes), "architecture"), "Architecture")
    return file_hash(model_path)


def _training_section(sec: Section, writer: FigureWriter, path: Path, probe) -> None:
    if not path.exists():
        sec.text("Training outputs not found: run the train stage.")
        return
    with open_artifact(path, "evaluation", "train") as f:
        history = {k: f["history"][k][()] for k in f.get("history", {})}
        labels = f["test/labels"][()]
        probs = f["test/probabilities"][()]
        classes = read_json_attr(f, "class_names")
    if history:
        sec.figure(
            writer.save(fig_lib.training_curves(history), "training_curves"),
            "Loss and accuracy per epoch",
        )
    else:
        sec.text("The model was loaded, not trained: no training curves.")
    sec.figure(
        writer.save(
            fig_lib.confusion_matrix(labels, probs.argmax(-1), classes), "confusion_matrix"
        ),
        "Confusion matrix on the test split",
    )
    if probe is not None:
        inputs, plabels, pprobs = probe
        sec.figure(
            writer.save(
                fig_lib.prediction_grid(inputs, plabels, pprobs, classes), "prediction_grid"
            ),
            "Probe inputs: true and predicted labels",
        )


def _activation_section(
    sec: Section, writer: FigureWriter, path: Path, cfg: RenderConfig, progress
):
    if not path.exists():
        sec.text("Activations not found: run the extract stage.")
        return None
    with open_artifact(path, "activations", "extract") as f:
        inputs = f["inputs"][()]
        labels = f["labels"][()]
        classes = read_json_attr(f, "class_names") or []
        predictions = (
            f["predictions"][()]
            if "predictions" in f and hasattr(f["predictions"], "shape")
            else None
        )
        health = json.loads(f.attrs.get("health", "{}"))
        layers = []
        f["activations"].visititems(
            lambda name, obj: layers.append(obj) if "layer_path" in obj.attrs else None
        )
        layers.sort(key=lambda d: int(d.attrs["position"]))
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
        sec.table(
            ["layer", "type", "shape", "dead", "saturated", "mean", "std", "NaN/Inf"],
            rows,
            "Activation health over the extracted inputs",
        )
        shown = min(cfg.max_inputs, len(inputs))
        for data in layers:
            layer = str(data.attrs["layer_path"])
            shape = tuple(data.shape[1:])
            view = cfg.layer_views.get(layer, "auto")
            if view == "auto":
                view = _layer_view(shape, str(data.attrs["class_name"]))
            if view == "skip":
                continue
            sec.heading(layer, anchor("layer", layer))
            acts = data[()]
            if view == "conv" and len(shape) == 3:
                for i in range(shown):
                    fig = fig_lib.feature_maps(
                        acts[i], f"{layer}, input {i}", cfg.cmap, cfg.color_scale, cfg.max_channels
                    )
                    sec.figure(
                        writer.save(fig, f"act_{layer}_{i}"), f"{layer}: feature maps of input {i}"
                    )
                if inputs.ndim == 4:
                    fig = fig_lib.heatmap_overlays(
                        inputs[:shown],
                        acts[:shown],
                        f"{layer}: mean activation over the input",
                        cfg.overlay_cmap,
                    )
                    sec.figure(writer.save(fig, f"overlay_{layer}"), f"{layer}: heatmap overlay")
            elif view == "recurrent" and len(shape) == 2:
                fig = fig_lib.recurrent_activations(
                    acts[0], f"{layer}, input 0", cfg.diverging_cmap
                )
                sec.figure(writer.save(fig, f"act_{layer}"), f"{layer}: units over time")
            else:
                flat = acts.reshape(len(acts), -1)
                dead = flat.max(axis=0) <= 0
                mean = flat.mean(axis=0)
                saturated = (
                    mean > flat.mean() + 4 * flat.std() if flat.std() > 0 else np.zeros_like(dead)
                )
                if view != "projection":
                    fig = fig_lib.dense_activations(flat, layer, dead, saturated, shown)
                    sec.figure(
                        writer.save(fig, f"act_{layer}"), f"{layer}: activations and histogram"
                    )
                if (
                    (view == "projection" or flat.shape[1] >= cfg.projection_min_units)
                    and len(flat) >= 3
                    and classes
                ):
                    fig = fig_lib.projection(
                        acts,
                        labels,
                        classes,
                        f"{layer}: {cfg.projection.upper()} of the probe set",
                        cfg.projection,
                    )
                    sec.figure(
                        writer.save(fig, f"proj_{layer}"),
                        f"{layer}: 2-D projection coloured by class",
                    )
            progress.update(1)
    probs = predictions if predictions is not None and predictions.ndim == 2 else None
    return (inputs, labels, probs) if probs is not None else None


def _attribution_section(sec: Section, writer: FigureWriter, path: Path, cfg: RenderConfig) -> None:
    if not path.exists():
        sec.text("Attributions not found: run the attribute stage.")
        return
    with open_artifact(path, "attributions", "attribute") as f:
        n = min(cfg.max_attribution_inputs, len(f["inputs"]))
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
        fig = fig_lib.attribution_grid(inputs, maps, targets, classes, cfg.attribution_cmap)
        sec.figure(
            writer.save(fig, "attributions"), "Input, then each method's map (own scale per map)"
        )
        if "faithfulness" in f:
            group = f["faithfulness"]
            fractions = group.attrs["fractions"]
            curves = {m: (group[m]["deletion"][()], group[m]["insertion"][()]) for m in group}
            sec.heading("Deletion and insertion", "faithfulness")
            sec.figure(
                writer.save(fig_lib.faithfulness_curves(fractions, curves), "faithfulness"),
                f"Substrate: {group.attrs.get('substrate', '?')}; legend: AUC",
            )
        if "sanity" in f:
            sanity = f["sanity"]
            finals = {m: float(sanity[m][()][-1]) for m in sanity}
            sec.heading("Randomisation sanity check", "sanity")
            sec.figure(
                writer.save(
                    fig_lib.sanity_bars(finals, float(sanity.attrs.get("threshold", 0.5))), "sanity"
                ),
                "Spearman correlation after randomising every layer",
            )


def _maximization_section(sec: Section, writer: FigureWriter, path: Path, classes) -> None:
    if not path.exists():
        sec.text("Feature visualizations not found: run the maximize stage.")
        return
    with open_artifact(path, "maximization", "maximize") as f:
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
            fig = fig_lib.maximization_grid(
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
        sec.heading(str(file), anchor("metrics", file.stem, file.parent.name))
        sec.table(["metric", "value"], [[k, v] for k, v in flat.items()])


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _main(params: dict) -> None:
    cfg = section(params, "render", RenderConfig)
    _validate(cfg)
    paths = {k: Path(v) for k, v in params["paths"].items()}
    safe_mode = params.get("model", {}).get("safe_mode", True)
    progress = tqdm(desc="render", unit="layer", disable=None, file=sys.stderr)
    with atomic_path(paths["report"], directory=True) as tmp:
        writer = FigureWriter(tmp, cfg.formats, cfg.dpi)
        model_sec = Section("Model", "model")
        model_hash = _model_section(model_sec, writer, paths["model"], safe_mode)
        act_sec = Section("Activations", "activations")
        probe = _activation_section(act_sec, writer, paths["activations"], cfg, progress)
        train_sec = Section("Training", "training")
        _training_section(train_sec, writer, paths["evaluation"], probe)
        attr_sec = Section("Attributions", "attributions")
        _attribution_section(attr_sec, writer, paths["attributions"], cfg)
        max_sec = Section("Feature visualization", "feature-visualization")
        classes = None
        if paths["evaluation"].exists():
            with open_artifact(paths["evaluation"], "evaluation", "train") as f:
                classes = read_json_attr(f, "class_names")
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


main = run_stage(_main)

if __name__ == "__main__":
    main()

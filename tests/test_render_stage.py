"""Render stage on synthetic upstream files written by hand to the documented layouts.

The arrays are made up (render never recomputes tensors, so they need not come from the
model): this pins the reader to the README's layouts, independently of the writers.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml
from conftest import REPO, write_tiny_project

from pipeline.artifacts import provenance_attrs, write_attrs
from pipeline.errors import KerascopeError
from pipeline.workspace import file_hash

RNG = np.random.default_rng(0)
CLASSES = list("abcd")
METHODS = ["saliency", "gradcam"]


def _layer(f, path, data, class_name, position, activation="relu"):
    dset = f.create_dataset(f"activations/{path}", data=data)
    units = data.reshape(-1, data.shape[-1])
    write_attrs(
        dset,
        {
            "layer_path": path,
            "class_name": class_name,
            "config_name": path.split("/")[-1],
            "output_shape": np.asarray(data.shape[1:]),
            "position": position,
            "call_index": 0,
            "activation": activation,
            "dead_units": units.max(axis=0) <= 0,
            "saturated_units": np.zeros(units.shape[1], bool),
        },
    )


def synthetic_project(root: Path, n: int = 10, channels: int = 5) -> dict:
    """dataset.h5 + model.keras (real) and every downstream file written by hand."""
    params, x, _ = write_tiny_project(root, n=n)
    paths = params["paths"]
    hashes = {"model_hash": file_hash(paths["model"]), "data_hash": "sha256:test"}
    labels = np.arange(n) % 4
    probs = RNG.dirichlet(np.ones(4), size=n).astype("float32")
    with h5py.File(paths["evaluation"], "w") as f:
        write_attrs(f, provenance_attrs("evaluation", 2))
        write_attrs(
            f,
            {
                **hashes,
                "class_names": CLASSES,
                "trained": True,
                "layers": [
                    {
                        "path": "conv",
                        "class_name": "Conv2D",
                        "output_shape": "(6, 6, 3)",
                        "params": 30,
                    },
                    {
                        "path": "flat",
                        "class_name": "Flatten",
                        "output_shape": "(108,)",
                        "params": 0,
                    },
                    {"path": "out", "class_name": "Dense", "output_shape": "(4,)", "params": 436},
                ],
                "edges": [[0, 1], [1, 2]],
            },
        )
        f["test/labels"] = labels
        f["test/probabilities"] = probs
        for key, values in (("loss", [1.0, 0.6]), ("val_loss", [1.1, 0.8])):
            f[f"history/{key}"] = values
    with h5py.File(paths["activations"], "w") as f:
        write_attrs(f, provenance_attrs("activations", 2))
        write_attrs(f, {**hashes, "source": "probe", "class_names": CLASSES})
        f["inputs"], f["labels"], f["predictions"], f["index"] = x, labels, probs, np.arange(n)
        conv = np.maximum(RNG.normal(size=(n, 6, 6, channels)), 0).astype("float32")
        _layer(f, "conv", conv, "Conv2D", 0)
        dense = np.maximum(RNG.normal(size=(n, 70)), 0).astype("float32")
        dense[:, :3] = 0  # three dead units
        _layer(f, "base/dense", dense, "Dense", 1)
        _layer(f, "lstm", RNG.normal(size=(n, 7, 4)).astype("float32"), "LSTM", 2, "tanh")
        # A normalisation layer: a row of the health table, drawn only with layers=all.
        _layer(f, "bn", RNG.normal(size=(n, 7, 4)).astype("float32"), "BatchNormalization", 3)
        _layer(f, "out", RNG.normal(size=(n, 4)).astype("float32"), "Dense", 4)
        f.attrs["health"] = json.dumps(
            {
                "conv": {"dead_fraction": 0.0, "saturated_fraction": 0.0, "units": 5},
                "base/dense": {"dead_fraction": 3 / 70, "saturated_fraction": 0.0, "units": 70},
                "lstm": {"dead_fraction": 0.0, "saturated_fraction": 0.75, "units": 4},
                "bn": {"dead_fraction": 0.0, "saturated_fraction": 0.0, "units": 4},
                "out": {"dead_fraction": 0.0, "saturated_fraction": 1.0, "units": 4},
            }
        )
    with h5py.File(paths["attributions"], "w") as f:
        write_attrs(f, provenance_attrs("attributions", 1))
        write_attrs(f, {**hashes, "class_names": CLASSES, "methods": METHODS})
        f["inputs"], f["targets"], f["labels"] = x, labels, labels
        f["probabilities"], f["index"] = probs, np.arange(n)
        for method in METHODS:
            f[f"methods/{method}/maps"] = RNG.random((n, 8, 8)).astype("float32")
        f["methods/gradcam"].attrs["layer"] = "conv"
        faith = f.create_group("faithfulness")
        faith.attrs["fractions"] = np.linspace(0, 1, 5)
        for method in [*METHODS, "random"]:
            group = faith.create_group(method)
            group["deletion"] = RNG.random((n, 5))
            group["insertion"] = RNG.random((n, 5))
            group.attrs["deletion_auc"], group.attrs["insertion_auc"] = 0.25, 0.75
        for method in METHODS:
            f[f"sanity/{method}"] = np.array([0.8, 0.2])
            write_attrs(f[f"sanity/{method}"], {"layers": ["out", "conv"]})
    with h5py.File(paths["maximization"], "w") as f:
        write_attrs(f, provenance_attrs("maximization", 1))
        write_attrs(f, {**hashes, "class_names": CLASSES})
        for layer, kind, units in (("conv", "channel", 3), ("out", "class_logit", 4)):
            group = f.create_group(layer)
            group["images"] = RNG.random((units, 8, 8, 1)).astype("float32")
            group["objective"] = RNG.random((units, 4))
            group["units"] = np.arange(units)
            group["reach_ratio"] = np.linspace(0.5, 1.5, units)
            write_attrs(group, {"layer_path": layer, "objective": kind, "settings": {}})
    metrics = Path(paths["metrics"])
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / "extract.json").write_text(json.dumps({"layers": {"conv": {"mean": 0.5}}}))
    (metrics / "attribute.json").write_text(json.dumps({"saliency": {"deletion_auc": 0.25}}))
    (metrics / "maximize.json").write_text(json.dumps({"mean_reach_ratio": 1.0}))
    params["render"] = {"max_inputs": 2, "dpi": 50}
    return params


def _render(params):
    from pipeline.stages.render import _main

    _main(params)
    report = Path(params["paths"]["report"])
    return report, (report / "index.html").read_text()


def test_every_section_and_figure_from_the_documented_layouts(tmp_path):
    params = synthetic_project(tmp_path)
    report, page = _render(params)
    names = sorted(p.name for p in (report / "figures").iterdir())
    expected = {
        "architecture.png",
        "layer_health.png",
        "training_curves.png",
        "confusion_matrix.png",
        "prediction_grid.png",
        # conv: one grid per shown input (max_inputs=2) and one overlay figure.
        "act_conv_0.png",
        "act_conv_1.png",
        "overlay_conv.png",
        # dense with 70 >= projection_min_units units: bars/histograms and a projection.
        "act_base-dense.png",
        "proj_base-dense.png",
        # recurrent: lines + heatmap per shown input.
        "act_lstm_0.png",
        "act_lstm_1.png",
        # the model's output (a Dense layer, inspected)
        "act_out.png",
        "attributions.png",
        "faithfulness.png",
        "sanity.png",
        "max_conv.png",
        "max_out.png",
    }
    assert set(names) == expected
    sections = ["Summary", "Attributions", "Training", "Layers", "Feature visualization"]
    sections += ["Model", "Provenance"]
    positions = [page.index(f"<h2>{section}</h2>") for section in sections]
    assert positions == sorted(positions)  # findings first, attributions before layers
    # Layer names are anchors inside their block's <details>; BatchNorm is only a row.
    for layer in ("conv", "base-dense", "lstm", "out"):
        assert f'id="layer-{layer}"' in page
    assert 'id="layer-bn"' not in page and "<td>bn</td>" in page
    assert '<details id="group-base"' in page  # the nested model is a group
    # The summary: the lstm (75% saturated) is flagged; the saturated softmax output is
    # not (a confident classifier's output sits at its bounds by design).
    summary = page[page.index("<h2>Summary</h2>") : page.index("<h2>Attributions</h2>")]
    assert "lstm (0% dead, 75% saturated)" in summary and "out (" not in summary
    assert 'loading="lazy"' in page and page.count("<img") == len(expected)
    # Provenance: hashes, config, and every artifact matching the current model/data.
    assert file_hash(params["paths"]["model"]) in page and "sha256:test" in page
    assert page.count("NO: stale artifact") == 0 and "max_inputs: 2" in page
    # The metrics files, as DVC reads them, are in the provenance.
    assert "metrics/maximize.json" in page and "&quot;mean_reach_ratio&quot;" in page
    assert not list(tmp_path.glob("outputs/.tmp-*"))


@pytest.mark.parametrize("missing", ["evaluation", "activations", "attributions", "maximization"])
def test_a_missing_upstream_file_is_reported_as_not_computed(tmp_path, missing):
    params = synthetic_project(tmp_path)
    Path(params["paths"][missing]).unlink()
    _, page = _render(params)
    assert page.count("not computed") >= 1
    section = {
        "evaluation": "Training: not computed",
        "activations": "Activations: not computed",
        "attributions": "Attributions: not computed",
        "maximization": "Feature visualization: not computed",
    }[missing]
    assert section in page


def test_wrong_layout_and_truncated_files_are_one_line_errors_and_keep_the_old_report(tmp_path):
    params = synthetic_project(tmp_path)
    report, first = _render(params)
    with h5py.File(params["paths"]["attributions"], "a") as f:
        del f["targets"]
    with pytest.raises(KerascopeError, match="expected layout.*dvc repro attribute"):
        _render(params)
    with h5py.File(params["paths"]["maximization"], "a") as f:
        f.attrs["kerascope_format"] = "maximization/0"
    Path(params["paths"]["attributions"]).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 16)
    with pytest.raises(KerascopeError, match="truncated or not an HDF5 file") as err:
        _render(params)
    assert "\n" not in str(err.value)
    # Like every stage, render checks its inputs before it touches its output: the failed
    # runs changed nothing and left no temporary directory behind.
    assert (report / "index.html").read_text() == first
    assert not list(tmp_path.glob("outputs/.tmp-*"))


def test_all_layers_draws_every_layer_and_a_second_render_reuses_every_figure(tmp_path):
    params = synthetic_project(tmp_path)
    params["render"]["layers"] = "all"
    report, page = _render(params)
    names = {p.name for p in (report / "figures").iterdir()}
    assert "act_bn_0.png" in names and 'id="layer-bn"' in page
    cache = report.parent / f".kerascope-cache-{report.name}"
    entries = sorted(p.name for p in cache.iterdir() if p.suffix == ".png")
    assert len(entries) == len(names)
    before = {p.name: p.read_bytes() for p in (report / "figures").iterdir()}
    # Unchanged inputs: every figure comes from the cache, byte for byte.
    from pipeline.stages.render import _main

    _main(params)
    after = {p.name: p.read_bytes() for p in (report / "figures").iterdir()}
    assert after == before
    # Back to the default: the figures of layers no longer drawn are pruned from the
    # cache; a file kerascope did not write there is kept.
    (cache / "notes.txt").write_text("mine")
    params["render"]["layers"] = "inspected"
    _main(params)
    left = {p.name for p in cache.iterdir() if p.suffix == ".png"}
    assert len(left) == len(names) - 2  # act_bn_0 and act_bn_1 (bn is not inspected)
    assert (cache / "notes.txt").read_text() == "mine"


def test_a_foreign_cache_directory_is_never_written_into(tmp_path):
    params = synthetic_project(tmp_path)
    report = Path(params["paths"]["report"])
    foreign = report.parent / f".kerascope-cache-{report.name}"
    foreign.mkdir(parents=True)
    (foreign / ("a" * 64 + ".png")).write_bytes(b"user data")
    _render(params)
    assert [p.name for p in foreign.iterdir()] == ["a" * 64 + ".png"]
    assert (foreign / ("a" * 64 + ".png")).read_bytes() == b"user data"


def test_stale_artifacts_are_flagged_in_the_provenance(tmp_path):
    params = synthetic_project(tmp_path)
    with h5py.File(params["paths"]["activations"], "a") as f:
        f.attrs["model_hash"] = "sha256:another-model"
    _, page = _render(params)
    assert page.count("NO: stale artifact") == 1 and "sha256:another-model" in page


def test_views_can_be_overridden_by_path_glob_or_class_name(tmp_path):
    params = synthetic_project(tmp_path)
    params["render"]["layer_views"] = {"conv": "skip", "base/*": "projection", "LSTM": "dense"}
    report, page = _render(params)
    names = {p.name for p in (report / "figures").iterdir()}
    assert not any(n.startswith(("act_conv", "overlay_conv")) for n in names)
    assert 'id="layer-conv"' not in page
    assert "proj_base-dense.png" in names and "act_base-dense.png" not in names
    assert "act_lstm.png" in names and "act_lstm_0.png" not in names


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"cmap": "not_a_cmap"}, "render.cmap.*viridis"),
        ({"color_scale": "global"}, "color_scale.*per_channel"),
        ({"projection": "umap"}, "projection.*tsne"),
        ({"formats": ["jpg"]}, "format.*png"),
        ({"layer_views": {"conv": "pie"}}, "layer_views.*recurrent"),
        ({"max_channels": 0}, "max_channels"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_render_config_is_a_one_line_error_before_any_output(tmp_path, override, message):
    params, _, _ = write_tiny_project(tmp_path, n=4)
    params["render"] = override
    from pipeline.stages.render import _main

    with pytest.raises(KerascopeError, match=message):
        _main(params)
    assert not Path(params["paths"]["report"]).exists()


def test_dead_and_saturated_flags_follow_the_extract_rules(tmp_path):
    """Extract stores per-unit flags by the documented rules; render draws them as stored."""
    from pipeline.activations import ActivationHealth

    acts = np.abs(RNG.normal(size=(50, 40))).astype("float32")
    acts[:, 5] = 0.0
    acts[:, 9] = -1.0
    acts[:, 12] += 100.0  # far above the layer's typical range
    # Independent computation of the documented rules (README, extract stage).
    dead = acts.max(axis=0) <= 0
    saturated = acts.mean(axis=0) > acts.mean() + 4 * acts.std()
    health = ActivationHealth({"x": "relu", "t": "tanh"})
    health.update({"x": acts[:20]})
    health.update({"x": acts[20:]})  # streamed in two batches, as extract does
    units = health.per_unit("x")
    np.testing.assert_array_equal(units["dead"], dead)
    np.testing.assert_array_equal(units["saturated"], saturated)
    assert dead.sum() == 2 and saturated.sum() == 1
    # Bounded activations: saturated = at least 95% of values in tanh's flat zone.
    tanh = np.tanh(RNG.normal(size=(40, 6))).astype("float32")
    tanh[:, 2] = 0.999
    tanh[:2, 2] = 0.0  # 95% of 40 values stay saturated
    health.update({"t": tanh})
    sat = health.per_unit("t")["saturated"]
    np.testing.assert_array_equal(sat, (np.abs(tanh) > 0.99).mean(axis=0) >= 0.95)
    assert sat.tolist() == [False, False, True, False, False, False]


def test_architecture_edges_follow_the_keras_graph():
    from pipeline.graph import layer_edges, list_layers

    inputs = keras.Input((6, 6, 1))
    a = keras.layers.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(2, 1, name="b")(a)
    c = keras.layers.Add(name="c")([a, b])
    inner = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.Flatten(name="f"), keras.layers.Dense(3, name="d")],
        name="head",
    )
    model = keras.Model(inputs, inner(c))
    infos = list_layers(model)
    paths = [i.path for i in infos]
    assert paths == ["a", "b", "c", "head", "head/f", "head/d"]
    # By hand: a->b, a->c (skip), b->c, c->head, head->head/f (enters), f->d.
    assert layer_edges(model, infos) == [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5)]


def test_render_params_invalidate_only_the_render_stage():
    """Changing a colormap reruns only render: no other stage reads `render` params."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        uses_render = any(
            p == "render" or (isinstance(p, dict) and "render" in p) or str(p).startswith("render.")
            for p in stage.get("params", [])
        )
        assert uses_render == (name == "render"), name
        if name != "render":
            assert not any("report" in str(d) for d in stage.get("deps", [])), name
    render = stages["render"]
    for dep in ("pipeline/render", "pipeline/stages/render.py", "${paths.activations}"):
        assert dep in render["deps"]


def test_the_render_command_never_imports_tensorflow(tmp_path):
    """Render only reads files and draws: no six-second TensorFlow import."""
    import yaml
    from conftest import assert_stage_skips_tensorflow

    params = synthetic_project(tmp_path)
    params["paths"] = {k: str(Path(v).relative_to(tmp_path)) for k, v in params["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert_stage_skips_tensorflow("render", tmp_path)
    assert (tmp_path / "outputs" / "report" / "index.html").exists()

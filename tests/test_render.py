"""Render: figures from the stages' outputs, the HTML report, and a real browser."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import write_tiny_project
from PIL import Image

from pipeline.render import figures as fig_lib

EVIL = "<img src=x onerror=alert(1)>"


def _image_axes(figure):
    return [ax for ax in figure.axes if ax.images]


def test_attribution_grid_and_maximization_grid_tile_counts():
    inputs = np.random.default_rng(1).random((3, 8, 8, 1))
    maps = {"saliency": np.random.random((3, 8, 8)), "gradcam": np.random.random((3, 8, 8))}
    grid = fig_lib.attribution_grid(inputs, maps, np.array([0, 1, 0]), ["a", "b"])
    assert len(_image_axes(grid)) == 3 * 3
    images = np.random.default_rng(2).random((10, 8, 8, 1))
    grid = fig_lib.maximization_grid(images, np.arange(10), np.linspace(0.5, 1.5, 10), "conv")
    titled = [ax.get_title() for ax in _image_axes(grid)]
    assert len(titled) == 10 and titled[3] == "unit 3\nreach 0.83"


def _project(tmp_path, n=12, channels=3, model=None):
    """A tiny project with every upstream output produced by the real stages."""
    from pipeline.stages.attribute import _main as attribute
    from pipeline.stages.extract import _main as extract
    from pipeline.stages.maximize import _main as maximize

    params, x, model = write_tiny_project(tmp_path, n=n, model=model)
    _evaluation(params, model, model.predict(x, verbose=0))
    params["extract"] = {}
    params["attribute"] = {
        "smoothgrad": {"samples": 2},
        "integrated_gradients": {"steps": 4},
        "faithfulness": {"steps": 4},
        "sanity": {"max_layers": 1},
    }
    params["maximize"] = {"targets": ["last_conv", "output"], "steps": 4}
    extract(params)
    attribute(params)
    maximize(params)
    return params


def _evaluation(params, model, probabilities):
    """The evaluation file as the train stage writes it (its writer, its model summary)."""
    from pipeline.artifacts.evaluation import Evaluation, LayerRow, write_evaluation
    from pipeline.graph import layer_edges, summary_rows
    from pipeline.workspace import file_hash

    evaluation = Evaluation(
        class_names=list("abcd"),
        labels=np.arange(len(probabilities)) % 4,
        probabilities=probabilities,
        history={
            "loss": [1.0, 0.5],
            "val_loss": [1.1, 0.7],
            "accuracy": [0.5, 0.8],
            "val_accuracy": [0.4, 0.7],
        },
        trained=True,
        model_hash=file_hash(params["paths"]["model"]),
        data_hash="sha256:test",
        layers=[LayerRow(*row) for row in summary_rows(model)],
        edges=layer_edges(model),
    )
    write_evaluation(params["paths"]["evaluation"], evaluation, "")


def _wide_model(channels=3):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(channels, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )


def _poison(params):
    """Hostile names where a downloaded model or a config could put them.

    TensorFlow cannot run a layer with such a name, so the tensors come from a normal
    model; the names reach the report through the model summary the train stage
    records, the HDF5 layer attributes and the config.
    """
    evil = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, name=EVIL),
            keras.layers.Flatten(name="<script>alert(1)"),
        ]
    )
    with h5py.File(params["paths"]["evaluation"]) as f:
        probabilities = f["test/probabilities"][()]
    _evaluation(params, evil, probabilities)
    with h5py.File(params["paths"]["activations"], "a") as f:
        f["activations/conv"].attrs["layer_path"] = EVIL
    params["data"] = {"name": EVIL}
    params["render"] = {"layer_views": {EVIL: "conv"}}


def test_report_has_every_section_figure_and_escapes_names(tmp_path):
    from pipeline.stages.render import _main as render

    params = _project(tmp_path)
    _poison(params)
    params["render"]["formats"] = ["png", "svg"]
    render(params)
    report = Path(params["paths"]["report"])
    page = (report / "index.html").read_text()
    for section in (
        "Summary",
        "Attributions",
        "Training",
        "Layers",
        "Feature visualization",
        "Model",
        "Provenance",
    ):
        assert f"<h2>{section}</h2>" in page
    assert EVIL not in page and "<script>alert" not in page
    assert page.count("<script") == 1  # the report's own table sorter
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    figures = sorted((report / "figures").glob("*.png"))
    names = {p.name for p in figures}
    for expected in (
        "training_curves.png",
        "confusion_matrix.png",
        "prediction_grid.png",
        "attributions.png",
        "faithfulness.png",
        "sanity.png",
        "architecture.png",
        "layer_health.png",
    ):
        assert expected in names
    assert len(list((report / "figures").glob("*.svg"))) == len(figures)
    for png in figures:
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        assert pixels.var() > 1.0, png.name
    # Every <img> in the page points at a file that exists.
    import re

    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (report / src).exists(), src


def test_missing_upstream_outputs_are_reported_not_fatal(tmp_path):
    from pipeline.stages.render import _main as render

    params, _, _ = write_tiny_project(tmp_path, n=8)
    params["render"] = {}
    render(params)
    page = (Path(params["paths"]["report"]) / "index.html").read_text()
    assert "Activations: not computed (no extract output; run the extract stage)." in page
    assert "Attributions: not computed" in page


def test_truncated_upstream_file_is_a_one_line_error(tmp_path):
    from pipeline.errors import KerascopeError
    from pipeline.stages.render import _main as render

    params, _, _ = write_tiny_project(tmp_path, n=8)
    Path(params["paths"]["activations"]).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    params["render"] = {}
    with pytest.raises(KerascopeError, match="truncated or not an HDF5 file"):
        render(params)
    assert not Path(params["paths"]["report"]).exists()


@pytest.mark.slow
def test_report_in_a_real_headless_browser(tmp_path, record_property):
    from browser import (
        blank_bands,
        chrome,
        full_page_screenshot,
        loaded_bytes,
        open_everything_and_wait,
        remote_requests,
        severe_console_messages,
        unpainted_images,
    )

    from pipeline.stages.render import _main as render

    # A 64-channel layer and 100 probe inputs: the report must stay usable.
    params = _project(tmp_path, n=100, model=_wide_model(64))
    _poison(params)
    render(params)
    index = Path(params["paths"]["report"]) / "index.html"
    with chrome(tmp_path / "chrome-profile") as driver:
        started = time.perf_counter()
        driver.get(index.as_uri())
        load_seconds = time.perf_counter() - started
        assert not severe_console_messages(driver)
        # Findings first: the summary is the first section, with a link per finding.
        first = driver.execute_script("return document.querySelector('main section').id")
        assert first == "summary"
        findings = driver.execute_script(
            "return Array.from(document.querySelectorAll('ul.findings li'))"
            ".map(li => [li.className, li.textContent])"
        )
        assert any("accuracy" in text for _, text in findings), findings
        assert any("sanity" in text.lower() for _, text in findings), findings
        # Every image is lazy; the layer groups are native <details>.
        lazy = driver.execute_script("return Array.from(document.images).map(i => i.loading)")
        assert lazy and set(lazy) == {"lazy"}
        assert driver.execute_script("return document.querySelectorAll('details').length") >= 3
        # The health table sorts when a header is clicked (the report's own script).
        column = driver.execute_script(
            "const t = document.querySelector('#layers table.sortable');"
            "t.querySelectorAll('th')[0].click(); t.querySelectorAll('th')[0].click();"
            "return Array.from(t.tBodies[0].rows).map(r => r.cells[0].textContent)"
        )
        assert column == sorted(column, reverse=True) and len(column) >= 3
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))"
        )
        assert len(links) >= 7
        missing = driver.execute_script(
            "return arguments[0]"
            ".filter(h => !document.getElementById(decodeURIComponent(h.slice(1))))",
            links,
        )
        assert not missing, missing
        # Clicking a TOC entry moves to its section.
        driver.execute_script("document.querySelector('nav a[href=\"#attributions\"]').click()")
        assert driver.execute_script("return location.hash") == "#attributions"
        assert not driver.execute_script("return window.__xss === true")
        first_screen = loaded_bytes(driver, index.parent)
        open_everything_and_wait(driver)
        images = driver.execute_script(
            "return Array.from(document.images)"
            ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        assert len(images) > 10
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, broken
        assert not remote_requests(driver)
        assert not severe_console_messages(driver)
        screenshot = full_page_screenshot(driver)
        assert not blank_bands(screenshot)
        assert not unpainted_images(driver, screenshot)
        size = sum(p.stat().st_size for p in index.parent.rglob("*") if p.is_file())
        record_property("report_bytes", size)
        record_property("report_images", len(images))
        record_property("report_load_seconds", round(load_seconds, 3))
        print(
            f"report with 64-channel layers and 100 probe inputs: {len(images)} images, "
            f"{size / 1e6:.2f} MB, first screen {first_screen / 1e6:.2f} MB, driver.get "
            f"{load_seconds:.2f} s, page {screenshot.shape[0]} px tall"
        )
        assert load_seconds < 20

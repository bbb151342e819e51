"""Helpers for the bring-your-own-model tests: real architectures nobody here designed,
run through `dvc exp run` exactly as the README tells a user, then checked against
independent computations (a sub-model for activations, a hand-written GradientTape for
saliency)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import yaml
from conftest import SHRINK, copy_repo, run

#: The shrunken config of these runs: few inputs, cheap methods, few steps.
ZOO_SHRINK = copy.deepcopy(SHRINK)
ZOO_SHRINK["attribute/default.yaml"].update(
    {
        "methods": ["saliency", "gradcam", "scorecam"],
        "scorecam": {"max_channels": 8},
        "sanity": {"enabled": True, "max_layers": 1, "threshold": 0.5},
    }
)
ZOO_SHRINK["maximize/default.yaml"].update(
    {
        "targets": [{"layer": "last_conv", "units": [0, 1]}, {"layer": "output", "units": [0]}],
        "steps": 8,
    }
)

#: keras.applications preprocessing, written out independently of pipeline/inputs.py.
MODES = {
    "none": lambda x: x,
    "tf": lambda x: 2.0 * x - 1.0,
    "torch": lambda x: (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    "caffe": lambda x: 255.0 * x[..., ::-1] - np.array([103.939, 116.779, 123.68]),
}


def zoo_repo(path: Path) -> Path:
    """A committed shrunken repository whose data stage has already run."""
    repo = copy_repo(path, ZOO_SHRINK)
    run(["dvc", "repro", "data"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "data"], repo)
    return repo


def model_inputs(display: np.ndarray, shape: tuple, mode: str) -> np.ndarray:
    """The model's inputs for display-space images, computed independently."""
    import tensorflow as tf

    x = np.asarray(display, np.float32)
    if x.shape[-1] == 1 and shape[-1] == 3:
        x = np.concatenate([x, x, x], axis=-1)
    if x.shape[1:3] != tuple(shape[:2]):
        x = tf.image.resize(x, shape[:2]).numpy()
    return MODES[mode](x).astype(np.float32)


def run_experiment(repo: Path, model_path: Path, mode: str, *extra: str):
    """`dvc exp run -S model=pretrained -S model.path=...` as the README shows."""
    args = ["dvc", "exp", "run", "-S", "model=pretrained", "-S", f"model.path={model_path}"]
    args += ["-S", f"model.preprocessing={mode}"]
    for setting in extra:
        args += ["-S", setting]
    return run(args, repo, timeout=1200)


def check_outputs(repo: Path, model, mode: str, layer: str | None = None) -> dict:
    """Every declared output exists; activations, inputs and saliency match independent
    computations on the user's model. Returns the attribute metrics."""
    import keras
    import tensorflow as tf

    outputs = repo / "outputs"
    for name in ("model.keras", "evaluation.h5", "activations.h5", "attributions.h5"):
        assert (outputs / name).exists(), name
    assert (outputs / "maximization.h5").exists() and (outputs / "report" / "index.html").exists()
    assert json.loads((outputs / "live" / "metrics.json").read_text())["test"]["accuracy"] >= 0
    with h5py.File(repo / "data" / "dataset.h5") as f:
        probe = f["probe/x"][()]
    shape = tuple(model.inputs[0].shape[1:])
    x = model_inputs(probe, shape, mode)
    with h5py.File(outputs / "activations.h5") as f:
        np.testing.assert_allclose(f["inputs"][()], x, rtol=1e-5, atol=1e-4)
        stored = {g.attrs["layer_path"]: n for n, g in f["activations"].items()}
        layer = layer or next(iter(stored))
        assert layer in stored, sorted(stored)[:10]
        sub = keras.Model(model.inputs, model.get_layer(layer).output)
        np.testing.assert_allclose(
            f[f"activations/{stored[layer]}"][()], sub(x).numpy(), rtol=1e-3, atol=1e-4
        )
    with h5py.File(outputs / "attributions.h5") as f:
        targets = f["targets"][()]
        saliency = f["methods/saliency/maps"][()]
        cam_layer = f["methods/gradcam"].attrs["layer"]
        space = yaml.safe_load(f.attrs["input_space"])
    assert space["name"] == mode
    # Hand-written saliency on the logits: the penultimate features times the last kernel.
    head = model.layers[-1]
    features = keras.Model(model.inputs, head.input)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.matmul(features(xt), head.kernel) + head.bias
        picked = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = np.abs(tape.gradient(picked, xt).numpy()).max(axis=-1)
    # float32 sums over ~50 layers: allow 0.1% of the largest gradient.
    np.testing.assert_allclose(saliency, grads, rtol=1e-2, atol=1e-3 * np.abs(grads).max())
    metrics = json.loads((outputs / "metrics" / "attribute.json").read_text())
    assert set(metrics) >= {"saliency", "gradcam", "scorecam", "random"}
    assert cam_layer  # the chosen CAM layer is recorded (and shown in the report)
    return metrics


def check_report(repo: Path, profile: Path) -> dict:
    """The report of a big model in headless Chromium: light first screen, complete page.

    Returns sizes for the test to record.
    """
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

    report = repo / "outputs" / "report"
    size = sum(p.stat().st_size for p in report.rglob("*") if p.is_file())
    assert size < 20e6, size
    with chrome(profile) as driver:
        driver.get((report / "index.html").as_uri())
        first_screen = loaded_bytes(driver, report)
        assert first_screen < 1e6, first_screen
        # Layer groups (one per block) are closed: their figures load only when opened.
        groups = driver.execute_script(
            "return Array.from(document.querySelectorAll('#layers details[id^=group-]'))"
            ".map(d => [d.open, d.querySelector('summary').textContent])"
        )
        assert len(groups) >= 10 and not any(is_open for is_open, _ in groups)
        # The page as a reader first sees it (groups closed), every image loaded.
        open_everything_and_wait(driver, open_details=False)
        screenshot = full_page_screenshot(driver)
        assert not blank_bands(screenshot), blank_bands(screenshot)
        assert not unpainted_images(driver, screenshot)
        assert not remote_requests(driver)
        assert not severe_console_messages(driver)
    return {"bytes": size, "first_screen": first_screen, "height": screenshot.shape[0]}

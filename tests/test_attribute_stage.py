"""The attribute stage end to end on a tiny project, and its failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import yaml
from conftest import run, write_tiny_project

from pipeline.attribution import gradcam, saliency
from pipeline.errors import KerascopeError
from pipeline.stages.attribute import _main

FAST = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 8},
    "faithfulness": {"steps": 5},
    "sanity": {"max_layers": 2},
}


def test_stage_writes_the_documented_layout(tmp_path):
    params, x, model = write_tiny_project(tmp_path, n=12)
    params["attribute"] = {**FAST, "target": "true"}
    _main(params)
    labels = np.arange(12) % 4
    with h5py.File(params["paths"]["attributions"]) as f:
        assert f.attrs["kerascope_format"] == "attributions/1"
        assert f.attrs["score"] == "logits"
        np.testing.assert_array_equal(f["targets"][()], labels)
        np.testing.assert_array_equal(f["inputs"][()], x)
        np.testing.assert_allclose(f["probabilities"][()], model.predict(x, verbose=0), atol=1e-5)
        assert sorted(f["methods"]) == sorted(
            [
                "saliency",
                "smoothgrad",
                "integrated_gradients",
                "gradcam",
                "gradcam_plus_plus",
                "scorecam",
            ]
        )
        np.testing.assert_allclose(
            f["methods/saliency/maps"][()], saliency(model, x, labels), atol=1e-6
        )
        cam = gradcam(model, x, labels)
        np.testing.assert_allclose(f["methods/gradcam/raw"][()], cam.raw, atol=1e-6)
        assert f["methods/gradcam"].attrs["layer"] == "conv"
        assert json.loads(f["methods/integrated_gradients"].attrs["options"])["steps"] == 8
        assert f["faithfulness/saliency/deletion"].shape == (12, 6)
        assert "random" in f["faithfulness"]
        assert f["sanity/saliency"].shape == (2,)
        assert json.loads(f["sanity/saliency"].attrs["layers"]) == ["out", "conv"]
        sanity = {m: f["sanity"][m][()] for m in f["sanity"]}
        aucs = {m: f["faithfulness"][m].attrs["deletion_auc"] for m in f["faithfulness"]}
        assert "metrics" not in f  # off by default
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "attribute.json").read_text())
    # Headline numbers only (issue 15: few `dvc exp show` columns); the rest is in the h5.
    headline = {"deletion_auc", "insertion_auc", "sanity_passed"}
    for method in ("saliency", "smoothgrad", "gradcam", "gradcam_plus_plus", "scorecam"):
        assert set(metrics[method]) == headline
    assert set(metrics["integrated_gradients"]) == headline | {"completeness_error"}
    assert set(metrics["random"]) == {"deletion_auc", "insertion_auc"}
    assert sum(len(v) for v in metrics.values()) <= 25
    for method, correlations in sanity.items():
        assert metrics[method]["sanity_passed"] == int(abs(correlations[-1]) < 0.5)
        assert metrics[method]["deletion_auc"] == pytest.approx(aucs[method])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"target": "7"}, "target class 7 is out of range; valid: 0..3"),
        ({"layer": "flat", "methods": ["gradcam"]}, "no spatial or time axis"),
        ({"layer": "conv9", "methods": ["gradcam"]}, "did you mean 'conv'"),
        (
            {"methods": ["saliency", "limes"]},
            "method 'limes'; did you mean 'lime'? valid: saliency",
        ),
        ({"rise": {"keep": 2}}, "'attribute.rise.keep'"),
        ({"metrics": {"grid": 0}}, "'attribute.metrics.grid' must be a positive number"),
        ({"smoothgrad": {"nois": 0.1}}, "unknown config key 'attribute.smoothgrad.nois'"),
        ({"batch_size": 0}, "'attribute.batch_size' must be a positive number"),
    ],
)
def test_bad_settings_fail_before_writing(tmp_path, override, fragment):
    params, _, _ = write_tiny_project(tmp_path, n=8)
    params["attribute"] = {**FAST, **override}
    with pytest.raises(KerascopeError) as info:
        _main(params)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(params["paths"]["attributions"])


@pytest.mark.slow
def test_killed_attribution_leaves_no_final_file(tmp_path):
    params, _, _ = write_tiny_project(tmp_path, n=400)
    params["attribute"] = {
        "methods": ["integrated_gradients", "smoothgrad", "scorecam"],
        "integrated_gradients": {"steps": 256},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.attribute"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "KERASCOPE_ROOT": str(tmp_path)},
    )
    out_dir = tmp_path / "outputs"
    deadline = time.time() + 120
    while time.time() < deadline and not any(out_dir.glob(".tmp-attributions*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "attribution finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out_dir / "attributions.h5").exists()
    assert not (out_dir / "metrics" / "attribute.json").exists()
    keras.backend.clear_session()


def _logit_gradients(model, x, targets):
    """d logit[target] / d x on a copy of ``model`` whose softmax is made linear."""
    import tensorflow as tf

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.layers[-1].activation = keras.activations.linear
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = copy(xt)
        picked = tf.gather(logits, targets, axis=1, batch_dims=1)
    return tape.gradient(picked, xt).numpy()


def _gini(values):
    """Gini index from its pairwise definition: sum |a_i - a_j| / (2 n^2 mean)."""
    a = np.abs(values.ravel())
    return np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size**2 * a.mean())


def test_new_methods_and_metrics_reach_the_file_and_the_json(tmp_path):
    from scipy.stats import entropy

    from pipeline.artifacts.attributions import read_attributions

    params, x, model = write_tiny_project(tmp_path, n=6)
    params["attribute"] = {
        **FAST,
        "target": "true",
        "methods": ["gradient_x_input", "layercam", "occlusion"],
        "occlusion": {"patch_size": 2, "stride": 2},
        "metrics": {"enabled": True, "fidelity_samples": 8, "grid": 4},
    }
    _main(params)
    labels = np.arange(6) % 4
    with h5py.File(params["paths"]["attributions"]) as f:
        maps = {m: f[f"methods/{m}/maps"][()] for m in f["methods"]}
        per_input = {m: {k: v[()] for k, v in f["metrics"][m].items()} for m in f["metrics"]}
        options = json.loads(f["metrics"].attrs["options"])
    assert options["grid"] == 4 and options["fidelity_samples"] == 8
    # Gradient x Input against a hand-written tape on a linear-output copy.
    expected = (_logit_gradients(model, x, labels) * x).sum(axis=-1)
    np.testing.assert_allclose(maps["gradient_x_input"], expected, rtol=1e-4, atol=1e-6)
    assert set(per_input) == {"gradient_x_input", "layercam", "occlusion", "random"}
    # Metrics that re-run the method exist for methods only, not the random ranking.
    assert "average_stability" in per_input["occlusion"]
    assert "random_logit_ssim" in per_input["layercam"]
    assert "average_stability" not in per_input["random"]
    for method in ("gradient_x_input", "layercam", "occlusion"):
        values = per_input[method]
        assert all(v.shape == (6,) for v in values.values())
        # Complexity and Sparseness from their definitions (entropy, pairwise Gini).
        np.testing.assert_allclose(
            values["complexity"], [entropy(np.abs(m).ravel()) for m in maps[method]], rtol=1e-6
        )
        np.testing.assert_allclose(
            values["sparseness"], [_gini(m) for m in maps[method]], rtol=1e-6, atol=1e-9
        )
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "attribute.json").read_text())
    for method, values in per_input.items():
        for metric, column in values.items():
            assert metrics[method][metric] == pytest.approx(column.mean())
    # The typed reader gives the report the same numbers.
    read = read_attributions(params["paths"]["attributions"])
    np.testing.assert_array_equal(
        read.metrics["occlusion"]["mu_fidelity"], per_input["occlusion"]["mu_fidelity"]
    )
    assert read.metric_options["grid"] == 4


@pytest.mark.slow
def test_exp_run_selects_the_new_methods_and_metrics(shrunk_repo):
    """A user's sweep: `dvc exp run attribute -S ...` with new methods and the metrics on."""
    methods = ["gradient_x_input", "vargrad", "layercam", "faster_scorecam", "occlusion", "rise"]
    run(
        [
            "dvc",
            "exp",
            "run",
            "attribute",
            "-S",
            f"attribute.methods=[{','.join(methods)}]",
            "-S",
            "attribute.rise.masks=64",
            "-S",
            "attribute.metrics.enabled=true",
            "-S",
            "attribute.metrics.stability=false",
        ],
        shrunk_repo,
    )
    params = yaml.safe_load((shrunk_repo / "params.yaml").read_text())
    assert params["attribute"]["methods"] == methods
    model = keras.models.load_model(shrunk_repo / "outputs" / "model.keras")
    with h5py.File(shrunk_repo / "outputs" / "attributions.h5") as f:
        assert json.loads(f.attrs["methods"]) == methods
        x, targets = f["inputs"][()], f["targets"][()]
        maps = f["methods/gradient_x_input/maps"][()]
        fidelity = {m: f[f"metrics/{m}/mu_fidelity"][()] for m in [*methods, "random"]}
        assert "average_stability" not in f["metrics/rise"]
    expected = (_logit_gradients(model, x, targets) * x).sum(axis=-1)
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-5)
    # `dvc exp show` reads the headline file: the chosen methods and metric means.
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], shrunk_repo).stdout)
    (data,) = [v["data"] for v in shown.values() if "data" in v]
    columns = data["outputs/metrics/attribute.json"]["data"]
    assert set(columns) == {*methods, "random"}
    for method, values in fidelity.items():
        assert columns[method]["mu_fidelity"] == pytest.approx(values.mean())
        assert "sanity_spearman" not in columns[method]

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
from conftest import write_tiny_project

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
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "attribute.json").read_text())
    for method in ("saliency", "gradcam", "scorecam"):
        assert 0 <= metrics[method]["deletion_auc"] <= 1
        assert "sanity_spearman" in metrics[method]
    assert set(metrics["random"]) == {"deletion_auc", "insertion_auc"}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"target": "7"}, "target class 7 is out of range; valid: 0..3"),
        ({"layer": "flat", "methods": ["gradcam"]}, "no spatial or time axis"),
        ({"layer": "conv9", "methods": ["gradcam"]}, "did you mean 'conv'"),
        ({"methods": ["lime"]}, "invalid attribution method 'lime'"),
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

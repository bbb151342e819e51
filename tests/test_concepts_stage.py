"""The concepts stage: without and with concept folders, its file against its layout and
independent computations, one-line config errors, and `dvc repro` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from conftest import REPO, SHRINK, copy_repo, run, write_tiny_project
from PIL import Image
from test_representations import _cka_unbiased

from pipeline.errors import KerascopeError


def _concept_folder(root, name, value, count=12, size=10):
    """``concepts/<name>/``: grayscale PNGs of noise around ``value`` (0..255)."""
    folder = root / "concepts" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    for i in range(count):
        pixels = np.clip(rng.normal(value, 20, (size, size)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _tiny(tmp_path, n=80):
    """A tiny project with extract and attribute run, and a small concepts config."""
    from pipeline.stages.attribute import _main as attribute
    from pipeline.stages.extract import _main as extract

    keras.utils.set_random_seed(0)
    params, x, model = write_tiny_project(tmp_path, n=n)
    params["attribute"].update(methods=["saliency", "gradcam"])
    params["attribute"]["faithfulness"].update(steps=4)
    params["attribute"]["sanity"].update(enabled=False)
    params["attribute"]["source"] = "test"
    extract(params)
    attribute(params)
    params["concepts"].update(
        random_size=8, null_size=16, runs=3, count=40, layers=["conv", "flat"], batch_size=16
    )
    return params, x, model


def test_without_concepts_the_stage_computes_cka_and_class_attribution(tmp_path):
    from pipeline.artifacts.attributions import read_attributions
    from pipeline.artifacts.concepts import read_concepts
    from pipeline.stages.concepts import _main

    params, _, _ = _tiny(tmp_path)
    _main(params)  # no concepts/ folder at all
    (tmp_path / "concepts").mkdir()
    _main(params)  # an empty one
    found = read_concepts(params["paths"]["concepts"])
    assert found.concepts == {} and found.tcav == [] and len(found.classes) == 0
    metrics = json.loads((tmp_path / "outputs/metrics/concepts.json").read_text())
    assert metrics == {"tcav_tests": 0, "significant": 0}
    # CKA of the stored layers: one batch of all 80 inputs, so the unbiased CKA of the
    # whole arrays, computed in numpy.
    with h5py.File(params["paths"]["activations"]) as f:
        acts = {name: f["activations"][name][()] for name in ("conv", "flat", "out")}
    assert found.cka_layers == ["conv", "flat", "out"] and found.cka_inputs == 80
    assert found.cka[0, 1] == pytest.approx(1.0, abs=1e-6)  # flat is conv, reshaped
    assert found.cka[0, 2] == pytest.approx(_cka_unbiased(acts["conv"], acts["out"]), rel=1e-5)
    np.testing.assert_allclose(found.cka, found.cka.T)
    # Per-class attribution: the mean of max-scaled maps of each target class, by hand.
    attributions = read_attributions(params["paths"]["attributions"])
    targets = attributions.targets
    np.testing.assert_array_equal(found.attribution_classes, np.unique(targets))
    maps = attributions.methods["saliency"].maps.astype(np.float64)
    first = found.attribution_classes[0]
    chosen = maps[targets == first]
    expected = (chosen / np.abs(chosen).max(axis=(1, 2), keepdims=True)).mean(axis=0)
    summary = found.class_attribution["saliency"]
    np.testing.assert_allclose(summary.mean_maps[0], expected, rtol=1e-5, atol=1e-6)
    curves = attributions.faithfulness["saliency"]
    auc = np.trapezoid(curves.insertion[targets == first], attributions.fractions, axis=1)
    assert summary.insertion_auc[0] == pytest.approx(auc.mean())
    assert found.attribution_counts.sum() == len(targets)


def test_concept_folders_give_tcav_per_layer_and_class(tmp_path):
    from test_artifacts import _check_documented

    from pipeline.artifacts.concepts import read_concepts
    from pipeline.stages.concepts import _main

    params, _, _ = _tiny(tmp_path)
    _concept_folder(tmp_path, "bright", 220)
    _concept_folder(tmp_path, "dark", 30, count=9)
    _main(params)
    found = read_concepts(params["paths"]["concepts"])
    _check_documented("concepts", params["paths"]["concepts"])
    assert found.concepts == {"bright": 12, "dark": 9}
    assert [(r.concept, r.layer) for r in found.tcav] == [
        ("bright", "conv"),
        ("bright", "flat"),
        ("dark", "conv"),
        ("dark", "flat"),
    ]
    classes = found.classes
    assert set(classes) <= {0, 1, 2, 3} and len(classes) >= 2
    for result in found.tcav:
        assert result.scores.shape == result.random_scores.shape == (len(classes), 3)
        assert result.accuracies.shape == (3,) and result.p_values.shape == (len(classes),)
        assert ((result.scores >= 0) & (result.scores <= 1)).all()
    # A bright concept is trivially told from the data's noise: accurate CAVs.
    assert found.result("bright", "conv").accuracies.min() >= 0.75
    metrics = json.loads((tmp_path / "outputs/metrics/concepts.json").read_text())
    assert len(found.concepts) == 2 and metrics["tcav_tests"] == 4 * len(classes)
    assert metrics["significant"] == sum(int(r.significant.sum()) for r in found.tcav)
    # Only the concepts asked for; Bonferroni divides the level by layers x classes.
    params["concepts"].update(names=["dark"], bonferroni=True)
    _main(params)
    found = read_concepts(params["paths"]["concepts"])
    assert list(found.concepts) == ["dark"]
    assert found.level == pytest.approx(0.05 / (2 * len(found.classes)))
    for result in found.tcav:
        np.testing.assert_array_equal(result.significant, result.p_values < found.level)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"runs": 1}, "'concepts.runs' must be in"),
        ({"alpha": 1.5}, "'concepts.alpha' must be in"),
        ({"target": "best"}, "invalid concepts.target 'best'"),
        ({"names": ["stripy"]}, "no concept folder .*stripes"),
        ({"cka": {"batch_size": 0}}, "'concepts.cka.batch_size' must be a positive"),
        ({"colour": 1}, "unknown config key 'concepts.colour'"),
    ],
)
def test_bad_config_is_one_line_before_tensorflow(tmp_path, edit, message):
    from pipeline.stages.concepts import configure

    params, _, _ = write_tiny_project(tmp_path, n=8)
    _concept_folder(tmp_path, "stripes", 100, count=2)
    params["concepts"] = {**params["concepts"], **edit}
    with pytest.raises(KerascopeError, match=message):
        configure(params)


def test_errors_at_run_are_one_line(tmp_path):
    from pipeline.stages.concepts import _main

    params, _, _ = _tiny(tmp_path, n=40)
    (tmp_path / "concepts" / "empty").mkdir(parents=True)
    with pytest.raises(KerascopeError, match="holds no images"):
        _main(params)
    (tmp_path / "concepts" / "empty").rmdir()
    _concept_folder(tmp_path, "bright", 220)
    params["concepts"]["layers"] = ["cnv"]
    with pytest.raises(KerascopeError, match="no layer matches 'cnv'"):
        _main(params)
    params["concepts"].update(layers=["conv"], cka={"layers": ["dense*"]})
    with pytest.raises(KerascopeError, match="no stored activations match layer 'dense\\*'"):
        _main(params)


def test_command_line_error_is_one_line(tmp_path):
    params, _, _ = write_tiny_project(tmp_path, n=8)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.concepts", "concepts.runs=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: concepts: 'concepts.runs' must be in [2, inf], got 1"
    ]


@pytest.mark.slow
def test_dvc_repro_with_and_without_a_concept_folder(tmp_path):
    shrink = {**SHRINK, "concepts/default.yaml": {"count": 60, "runs": 3, "random_size": 20}}
    repo = copy_repo(tmp_path / "repo", shrink)
    first = run(["dvc", "repro", "concepts"], repo)
    assert "Running stage 'concepts'" in first.stdout
    assert "concepts: none; CKA of" in first.stdout
    metrics = json.loads((repo / "outputs/metrics/concepts.json").read_text())
    assert metrics == {"tcav_tests": 0, "significant": 0}
    # A new concept folder reruns the concepts stage only.
    _concept_folder(repo, "bright", 230, count=20, size=28)
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}")
    assert "concepts" in status and not {"data", "train", "extract", "attribute"} & set(status)
    second = run(["dvc", "repro", "concepts"], repo)
    assert "Running stage 'concepts'" in second.stdout
    assert "Running stage 'extract'" not in second.stdout
    with h5py.File(repo / "outputs/concepts.h5") as f:
        assert json.loads(f.attrs["concepts"]) == ["bright"]
        assert f["tcav/bright"].attrs["examples"] == 20
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "tcav_tests" in shown and "significant" in shown

"""Every artifact kind: its writer and reader round-trip, the files hold exactly what
the module's LAYOUT documents, and the README's tables say the same."""

from __future__ import annotations

import fnmatch
import importlib
import re
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import REPO

from pipeline.errors import KerascopeError

KINDS = ("dataset", "evaluation", "activations", "attributions", "maximization", "concepts")
RNG = np.random.default_rng(0)


def _module(kind):
    return importlib.import_module(f"pipeline.artifacts.{kind}")


def _readme_table(kind: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    module = _module(kind)
    heading = f"(kind `{module.KIND}`, version {module.VERSION},"
    assert heading in text, f"README has no layout table for {kind} (version {module.VERSION})"
    after = text.split(heading, 1)[1]
    table = re.search(r"\n\| name \| content \|\n\|---\|---\|\n((?:\|.*\|\n)+)", after)
    return re.findall(r"^\| `([^`]+)` \|", table.group(1), flags=re.M)


@pytest.mark.parametrize("kind", KINDS)
def test_readme_layout_tables_match_the_code(kind):
    assert _readme_table(kind) == list(_module(kind).LAYOUT)


def _names(path) -> set[str]:
    """Every dataset and attribute of a file, as LAYOUT writes them."""
    found: set[str] = set()

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.add(name)
        found.update(f"{name}@{key}" for key in obj.attrs)

    with h5py.File(path) as f:
        found.update(f"@{key}" for key in f.attrs)
        f.visititems(visit)
    return found


PROVENANCE = {"@kerascope_format", "@kerascope_version", "@tensorflow_version"}
PROVENANCE |= {"@keras_version", "@config_yaml"}


def _check_documented(kind, path):
    """Every name in the file matches a LAYOUT entry (``<...>`` stands for any name)."""
    patterns = [re.sub(r"<[^>]+>", "*", name) for name in _module(kind).LAYOUT]
    for name in _names(path) - PROVENANCE:
        # An entry's placeholder may stand for a nested path (layer paths have slashes).
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), f"{kind}: {name} undocumented"


def test_dataset_round_trip(tmp_path):
    from pipeline.artifacts.dataset import (
        DatasetInfo,
        read_dataset_info,
        read_split,
        write_dataset,
    )

    splits = {
        s: (RNG.random((5, 4, 4, 1), np.float32), np.arange(5) % 2)
        for s in ("train", "val", "test")
    }
    splits["probe"] = (splits["test"][0][:2], splits["test"][1][:2])
    info = DatasetInfo("npz", ["a", "b"], (4, 4, 1), (0.0, 1.0), "sha256:x", "my.npz", ["bad.png"])
    path = tmp_path / "dataset.h5"
    write_dataset(path, splits, np.array([0, 1]), info, "seed: 0\n")
    assert read_dataset_info(path) == info
    for name, (x, y) in splits.items():
        split = read_split(path, name)
        np.testing.assert_array_equal(split.x, x)
        np.testing.assert_array_equal(split.y, y)
    np.testing.assert_array_equal(read_split(path, "probe").index, [0, 1])
    _check_documented("dataset", path)


def test_evaluation_round_trip(tmp_path):
    from pipeline.artifacts.evaluation import (
        Evaluation,
        LayerRow,
        read_evaluation,
        write_evaluation,
    )

    written = Evaluation(
        class_names=["a", "b", "c"],
        labels=np.array([0, 2, 1]),
        probabilities=RNG.dirichlet(np.ones(3), 3).astype(np.float32),
        history={"loss": np.array([1.0, 0.5]), "val_loss": np.array([1.2, 0.9])},
        trained=False,
        model_hash="sha256:m",
        data_hash="sha256:d",
        source_model_hash="sha256:s",
        layers=[LayerRow("conv", "Conv2D", "(6, 6, 3)", 30), LayerRow("out", "Dense", "(3,)", 9)],
        edges=[(0, 1)],
        renamed_layers={"α1": "L_u3b1_1"},
    )
    path = tmp_path / "evaluation.h5"
    write_evaluation(path, written, "")
    read = read_evaluation(path)
    for field in ("class_names", "trained", "model_hash", "data_hash", "source_model_hash"):
        assert getattr(read, field) == getattr(written, field), field
    assert read.layers == written.layers and read.edges == written.edges
    assert read.renamed_layers == written.renamed_layers
    np.testing.assert_array_equal(read.probabilities, written.probabilities)
    assert read.history.keys() == written.history.keys()
    _check_documented("evaluation", path)


class _Health:
    """A stand-in for ActivationHealth with fixed flags (the writer only calls these)."""

    def merge(self, stats):
        return {}

    def summary(self):
        return {"conv": {"dead_fraction": 0.5}, ".": {"dead_fraction": 0.0}}

    def per_unit(self, path):
        units = 2 if path == "conv" else 8
        return {"dead": np.arange(units) % 2 == 0, "saturated": np.zeros(units, bool)}


def test_activations_round_trip_streams_batches(tmp_path):
    from pipeline.artifacts.activations import (
        LayerMeta,
        open_activations,
        write_activations,
        write_header,
    )

    x = RNG.random((7, 4, 4, 1)).astype(np.float32)
    conv = RNG.random((7, 2, 2, 2)).astype(np.float32)
    flat = conv.reshape(7, 8)
    batches = [
        SimpleNamespace(
            start=a,
            outputs=[flat[a : a + 3, :3]],
            activations={"conv": conv[a : a + 3], ".": flat[a : a + 3]},
            stats={},
        )
        for a in range(0, 7, 3)
    ]
    metas = [
        LayerMeta("conv", "Conv2D", "conv", 0, 0, "relu"),
        LayerMeta(".", "Flatten", ".", 1, 0, "linear"),
    ]
    path = tmp_path / "activations.h5"
    with h5py.File(path, "w") as f:
        write_header(f, "", {"model_hash": "m", "source": "probe"}, np.arange(7) % 2, np.arange(7))
        write_activations(f, batches, [x], metas, _Health(), batch_size=3)
    with open_activations(path) as acts:
        assert [layer.path for layer in acts.layers] == ["conv", "."]
        np.testing.assert_array_equal(acts.layers[0].values(), conv)
        np.testing.assert_array_equal(acts.layers[1].values(2), flat[:2])
        np.testing.assert_array_equal(acts.layers[0].dead, [True, False])
        np.testing.assert_array_equal(acts.inputs(), x)
        assert acts.n_inputs == 7 and acts.health["conv"]["dead_fraction"] == 0.5
        assert acts.provenance["model_hash"] == "m" and acts.source == "probe"
    _check_documented("activations", path)


def test_attributions_round_trip(tmp_path):
    from pipeline.artifacts.attributions import (
        Attributions,
        Curves,
        MethodMaps,
        Sanity,
        read_attributions,
        write_header,
        write_results,
    )

    n = 4
    written = Attributions(
        inputs=RNG.random((n, 5, 5, 1)).astype(np.float32),
        targets=np.array([0, 1, 1, 0]),
        labels=np.array([0, 1, -1, 0]),
        probabilities=RNG.random((n, 2)).astype(np.float32),
        index=np.arange(n),
        methods={
            "integrated_gradients": MethodMaps(
                RNG.random((n, 5, 5)).astype(np.float32),
                {"steps": 8},
                extras={"completeness_error": np.zeros(n)},
            ),
            "gradcam": MethodMaps(
                RNG.random((n, 5, 5)).astype(np.float32),
                {},
                raw=RNG.random((n, 3, 3)).astype(np.float32),
                layer="conv",
            ),
        },
        class_names=["a", "b"],
        faithfulness={
            m: Curves(RNG.random((n, 3)), RNG.random((n, 3)), 0.2, 0.8)
            for m in ("integrated_gradients", "gradcam", "random")
        },
        fractions=np.linspace(0, 1, 3),
        substrate="blur",
        sanity={"gradcam": Sanity(["out", "conv"], np.array([0.9, 0.1]))},
        sanity_threshold=0.4,
        metrics={
            "gradcam": {"mu_fidelity": RNG.random(n), "complexity": RNG.random(n)},
            "random": {"mu_fidelity": RNG.random(n)},
        },
        metric_options={"grid": 4},
        provenance={"model_hash": "m", "data_hash": "d", "source": "probe"},
    )
    path = tmp_path / "attributions.h5"
    with h5py.File(path, "w") as f:
        write_header(f, written, "")
        write_results(f, written)
    read = read_attributions(path)
    assert list(read.methods) == ["integrated_gradients", "gradcam"]
    np.testing.assert_array_equal(read.methods["gradcam"].raw, written.methods["gradcam"].raw)
    assert read.methods["gradcam"].layer == "conv"
    assert read.methods["integrated_gradients"].options == {"steps": 8}
    assert list(read.faithfulness) == ["integrated_gradients", "gradcam", "random"]
    assert read.faithfulness["random"].insertion_auc == 0.8
    assert read.sanity["gradcam"].layers == ["out", "conv"] and read.sanity_threshold == 0.4
    assert read.provenance["data_hash"] == "d" and read.n_inputs == n
    assert list(read.metrics) == ["gradcam", "random"] and read.metric_options == {"grid": 4}
    np.testing.assert_array_equal(
        read.metrics["gradcam"]["complexity"], written.metrics["gradcam"]["complexity"]
    )
    limited = read_attributions(path, count=2)
    assert limited.methods["gradcam"].maps.shape == (2, 5, 5) and limited.n_inputs == n
    _check_documented("attributions", path)


def test_maximization_round_trip(tmp_path):
    from pipeline.artifacts.maximization import (
        Maximization,
        TargetImages,
        read_maximization,
        write_maximization,
    )

    target = TargetImages(
        layer="block/.",
        objective="channel",
        images=RNG.random((3, 4, 4, 1)).astype(np.float32),
        units=np.array([0, 2, 5]),
        copy=np.zeros(3, np.int32),
        final=np.array([1.0, 2.0, 3.0], np.float32),
        objective_curve=RNG.random((3, 6)).astype(np.float32),
        best_probe_activation=np.array([1.0, 0.0, 1.5], np.float32),
        reach_ratio=np.array([1.0, np.nan, 2.0], np.float32),
        settings={"steps": 6},
    )
    path = tmp_path / "maximization.h5"
    write_maximization(path, Maximization([target], ["a"], {"model_hash": "m"}), "")
    read = read_maximization(path)
    assert [t.layer for t in read.targets] == ["block/."]
    got = read.targets[0]
    np.testing.assert_array_equal(got.images, target.images)
    np.testing.assert_array_equal(got.reach_ratio, target.reach_ratio)
    assert got.settings == {"steps": 6} and read.provenance["model_hash"] == "m"
    _check_documented("maximization", path)


@pytest.mark.parametrize("kind", KINDS)
def test_readers_refuse_another_version(tmp_path, kind):
    module = _module(kind)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["kerascope_format"] = f"{module.KIND}/{module.VERSION + 1}"
    reader = {
        "dataset": module.read_dataset_info if kind == "dataset" else None,
        "evaluation": getattr(module, "read_evaluation", None),
        "activations": lambda p: module.open_activations(p).__enter__(),
        "attributions": getattr(module, "read_attributions", None),
        "maximization": getattr(module, "read_maximization", None),
        "concepts": getattr(module, "read_concepts", None),
    }[kind]
    with pytest.raises(KerascopeError, match=f"expected {module.KIND}/{module.VERSION}"):
        reader(path)

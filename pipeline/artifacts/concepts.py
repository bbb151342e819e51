"""``outputs/concepts.h5``: TCAV per concept, layer and class; CKA; per-class attribution.

Written by the concepts stage. Every ``(classes, ...)`` dataset has one row per class
of its group's ``classes`` (class indices into ``@class_names``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.artifacts import common

KIND, VERSION, STAGE = "concepts", 1, "concepts"

LAYOUT = common.layout(
    """
    tcav/<concept>/<layer>/scores               (classes, runs) TCAV score of each CAV
    tcav/<concept>/<layer>/random_scores        (classes, runs) scores of random-vs-random CAVs
    tcav/<concept>/<layer>/accuracies           (runs,) held-out accuracy of each CAV
    tcav/<concept>/<layer>/p_values             (classes,) two-sided t-test of the two
    tcav/<concept>/<layer>/significant          (classes,) p below the level (bool)
    tcav/<concept>/<layer>@layer_path           the layer
    tcav/<concept>@concept                      the concept (its folder's name)
    tcav/<concept>@examples                     number of the concept's example images
    tcav@classes                                the tested classes (rows of the TCAV arrays)
    tcav@layers                                 the TCAV layers (JSON)
    tcav@runs                                   random counter-example sets per test
    tcav@alpha                                  significance level before any correction
    tcav@level                                  the level p is compared with (Bonferroni)
    tcav@random_size                            inputs per random counter-example set
    cka/matrix                                  (layers, layers) linear CKA between layers
    cka@layers                                  the layers, rows and columns (JSON)
    cka@batch_size                              inputs per minibatch of the estimator
    cka@inputs                                  inputs the estimate used
    class_attribution/classes                   the classes (rows of the arrays below)
    class_attribution/counts                    (classes,) inputs explained per class
    class_attribution/<method>/mean_maps        (classes, ...) mean of max-scaled maps
    class_attribution/<method>/deletion_auc     (classes,) mean deletion AUC (lower: better)
    class_attribution/<method>/insertion_auc    (classes,) mean insertion AUC (higher: better)
    class_attribution@source                    which inputs the attribute stage explained
    @concepts                                   the concepts (JSON; [] without concept folders)
    @model_hash                                 SHA-256 of the model file
    @data_hash                                  hash of the data set
    @source                                     inputs whose classes TCAV tested
    @class_names                                class names (JSON)
    """
)


@dataclass
class ConceptLayer:
    """The TCAV test of one concept at one layer, for every tested class.

    Attributes:
        concept: The concept.
        layer: The layer path.
        scores: (classes, runs) TCAV score of the CAV against each random set.
        random_scores: (classes, runs) TCAV scores of the random-versus-random CAVs.
        accuracies: (runs,) held-out accuracy of each CAV.
        p_values: (classes,) two-sided t-test of ``scores`` against ``random_scores``.
        significant: (classes,) ``p_values`` below the file's ``level``.
    """

    concept: str
    layer: str
    scores: np.ndarray
    random_scores: np.ndarray
    accuracies: np.ndarray
    p_values: np.ndarray
    significant: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """(classes,) mean TCAV score over the random sets."""
        return self.scores.mean(axis=1)

    @classmethod
    def table(cls, concept: str, results, classes) -> list[ConceptLayer]:
        """Group per-(layer, class) results into one record per layer, rows by ``classes``.

        Args:
            concept: The concept.
            results: :class:`pipeline.concepts.TCAVResult` items (``layer``, ``target``,
                ``scores``, ``random_scores``, ``accuracies``, ``p_value``,
                ``significant``), as :func:`pipeline.concepts.tcav` returns them.
            classes: The class of each row.
        """
        layers = list(dict.fromkeys(r.layer for r in results))
        table = []
        for layer in layers:
            by_class = {int(r.target): r for r in results if r.layer == layer}
            rows = [by_class[int(c)] for c in classes]
            table.append(
                cls(
                    concept=concept,
                    layer=layer,
                    scores=np.stack([r.scores for r in rows]),
                    random_scores=np.stack([r.random_scores for r in rows]),
                    accuracies=np.asarray(rows[0].accuracies),
                    p_values=np.asarray([r.p_value for r in rows], np.float64),
                    significant=np.asarray([r.significant for r in rows], bool),
                )
            )
        return table


@dataclass
class ClassAttribution:
    """One attribution method, summarised per class."""

    mean_maps: np.ndarray
    deletion_auc: np.ndarray | None = None
    insertion_auc: np.ndarray | None = None


@dataclass
class Concepts:
    """Everything in a concepts file."""

    concepts: dict[str, int]
    classes: np.ndarray
    tcav: list[ConceptLayer]
    tcav_layers: list[str]
    runs: int
    alpha: float
    level: float
    random_size: int
    cka_layers: list[str]
    cka: np.ndarray
    cka_batch_size: int
    cka_inputs: int
    class_names: list[str] = field(default_factory=list)
    attribution_classes: np.ndarray | None = None
    attribution_counts: np.ndarray | None = None
    class_attribution: dict[str, ClassAttribution] = field(default_factory=dict)
    attribution_source: str = ""
    provenance: dict[str, str] = field(default_factory=dict)

    def result(self, concept: str, layer: str) -> ConceptLayer:
        """The TCAV test of one concept at one layer (KeyError if absent)."""
        for item in self.tcav:
            if item.concept == concept and item.layer == layer:
                return item
        raise KeyError(f"{concept} at {layer}")


def write_concepts(path: str | Path, result: Concepts, config_yaml: str) -> None:
    """Write a :class:`Concepts` (to a temporary name the caller renames)."""
    from pipeline.workspace import hdf5_file

    with hdf5_file(path) as f:
        common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
        common.write_attrs(
            f,
            {
                **result.provenance,
                "concepts": list(result.concepts),
                "class_names": list(result.class_names),
            },
        )
        tcav = f.create_group("tcav")
        tcav.attrs["classes"] = np.asarray(result.classes, np.int64)
        common.write_attrs(
            tcav,
            {
                "layers": list(result.tcav_layers),
                "runs": int(result.runs),
                "alpha": float(result.alpha),
                "level": float(result.level),
                "random_size": int(result.random_size),
            },
        )
        for name, examples in result.concepts.items():
            group = tcav.create_group(common.hdf5_name(name))
            common.write_attrs(group, {"concept": name, "examples": int(examples)})
        for item in result.tcav:
            group = tcav[common.hdf5_name(item.concept)].create_group(common.hdf5_name(item.layer))
            group.create_dataset("scores", data=np.asarray(item.scores, np.float32))
            group.create_dataset("random_scores", data=np.asarray(item.random_scores, np.float32))
            group.create_dataset("accuracies", data=np.asarray(item.accuracies, np.float32))
            group.create_dataset("p_values", data=np.asarray(item.p_values, np.float64))
            group.create_dataset("significant", data=np.asarray(item.significant, bool))
            common.write_attrs(group, {"layer_path": item.layer})
        cka = f.create_group("cka")
        cka.create_dataset("matrix", data=np.asarray(result.cka, np.float64))
        common.write_attrs(
            cka,
            {
                "layers": list(result.cka_layers),
                "batch_size": int(result.cka_batch_size),
                "inputs": int(result.cka_inputs),
            },
        )
        if result.class_attribution:
            group = f.create_group("class_attribution")
            group.create_dataset("classes", data=np.asarray(result.attribution_classes, np.int64))
            group.create_dataset("counts", data=np.asarray(result.attribution_counts, np.int64))
            common.write_attrs(group, {"source": result.attribution_source})
            for method, summary in result.class_attribution.items():
                sub = group.create_group(method)
                sub.create_dataset(
                    "mean_maps", data=summary.mean_maps.astype(np.float32), compression="gzip"
                )
                for key in ("deletion_auc", "insertion_auc"):
                    value = getattr(summary, key)
                    if value is not None:
                        sub.create_dataset(key, data=np.asarray(value, np.float64))


def _collect(found: list):
    """A ``visititems`` callback adding every layer group to ``found``."""
    return lambda _, obj: found.append(obj) if "layer_path" in obj.attrs else None


def read_concepts(source: str | Path | BinaryIO) -> Concepts:
    """Read a concepts file (TCAV results in file order: concept by concept)."""
    with common.open_artifact(source, KIND, VERSION, STAGE) as f:
        tcav = f["tcav"]
        concepts, results = {}, []
        for key in tcav:
            group = tcav[key]
            if "concept" not in group.attrs:
                continue
            name = common.text_attr(group, "concept")
            concepts[name] = int(group.attrs["examples"])
            layers: list = []
            group.visititems(_collect(layers))
            results += [
                ConceptLayer(
                    concept=name,
                    layer=common.text_attr(g, "layer_path"),
                    scores=g["scores"][()],
                    random_scores=g["random_scores"][()],
                    accuracies=g["accuracies"][()],
                    p_values=g["p_values"][()],
                    significant=g["significant"][()],
                )
                for g in layers
            ]
        order = common.read_json_attr(f, "concepts", []) or []
        concepts = {name: concepts[name] for name in order if name in concepts}
        layer_order = common.read_json_attr(tcav, "layers", []) or []
        results.sort(
            key=lambda r: (
                order.index(r.concept),
                layer_order.index(r.layer) if r.layer in layer_order else len(layer_order),
            )
        )
        cka = f["cka"]
        attribution, classes, counts, source = {}, None, None, ""
        if "class_attribution" in f:
            group = f["class_attribution"]
            classes, counts = group["classes"][()], group["counts"][()]
            source = common.text_attr(group, "source")
            attribution = {
                method: ClassAttribution(
                    sub["mean_maps"][()],
                    sub["deletion_auc"][()] if "deletion_auc" in sub else None,
                    sub["insertion_auc"][()] if "insertion_auc" in sub else None,
                )
                for method, sub in group.items()
                if method not in ("classes", "counts")
            }
        return Concepts(
            concepts=concepts,
            classes=np.asarray(tcav.attrs["classes"], np.int64),
            tcav=results,
            tcav_layers=layer_order,
            runs=int(tcav.attrs["runs"]),
            alpha=float(tcav.attrs["alpha"]),
            level=float(tcav.attrs["level"]),
            random_size=int(tcav.attrs["random_size"]),
            cka_layers=common.read_json_attr(cka, "layers", []) or [],
            cka=cka["matrix"][()],
            cka_batch_size=int(cka.attrs["batch_size"]),
            cka_inputs=int(cka.attrs["inputs"]),
            class_names=common.read_json_attr(f, "class_names", []) or [],
            attribution_classes=classes,
            attribution_counts=counts,
            class_attribution=attribution,
            attribution_source=source,
            provenance=common.common_attrs(f),
        )

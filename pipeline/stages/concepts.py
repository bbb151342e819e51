"""Concepts stage: TCAV per concept folder, layer-by-layer CKA, per-class attribution.

Writes ``paths.concepts`` (see :mod:`pipeline.artifacts.concepts`) and
``<paths.metrics>/concepts.json``. Without concept folders (``concepts/<name>/``) it
still computes the CKA matrix from ``paths.activations`` and lists no concepts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts.dataset import InputOptions
from pipeline.concept_sets import find_concepts
from pipeline.config import Job, make_job, repo_root, run_stage
from pipeline.errors import check_choice, check_positive, check_range


@dataclass
class CKAOptions:
    """``concepts.cka``: which stored layers, and the minibatch size of the estimator."""

    layers: list[str] | None = None
    batch_size: int = 256


@dataclass
class ConceptOptions(InputOptions):
    """The ``concepts`` config section (``source``/``count``: the inputs tested)."""

    source: str = "test"
    count: int | None = 500
    path: str = "concepts"
    names: list[str] | None = None
    layers: list[str] = field(default_factory=lambda: ["last_conv", "last_hidden"])
    target: str = "true"
    random_source: str = "train"
    random_size: int = 50
    null_size: int = 150
    runs: int = 10
    alpha: float = 0.05
    bonferroni: bool = False
    batch_size: int = 64
    class_attribution: bool = True
    cka: CKAOptions = field(default_factory=CKAOptions)

    def check(self, prefix: str = "concepts") -> None:
        """Raise a one-line error for an invalid value."""
        for key in ("random_size", "null_size", "batch_size"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        check_positive(f"{prefix}.cka.batch_size", self.cka.batch_size)
        check_range(f"{prefix}.runs", self.runs, 2, float("inf"))
        check_range(f"{prefix}.alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_choice(f"{prefix}.target", self.target, ("true", "predicted"))
        check_choice(f"{prefix}.random_source", self.random_source, ("train", "val", "test"))

    def folder(self) -> Path:
        """The folder of concept folders, relative to the workspace."""
        return repo_root() / self.path


def configure(params: dict) -> Job[ConceptOptions]:
    """Validate the ``concepts`` section, the concept folders and the paths (no TensorFlow)."""
    job = make_job(params, "concepts", ConceptOptions, loads_model=True)
    find_concepts(job.cfg.folder(), job.cfg.names)
    return job


def run(job: Job[ConceptOptions]) -> None:
    """Test every concept, compare the stored layers, summarise attribution per class."""
    from pipeline.artifacts.activations import open_activations
    from pipeline.artifacts.concepts import Concepts, write_concepts
    from pipeline.representations import cka_matrix, select_layers
    from pipeline.stages.common import prepare
    from pipeline.workspace import file_hash

    cfg, paths = job.cfg, job.paths
    started = time.perf_counter()
    work = prepare(job, cfg)
    concepts = find_concepts(cfg.folder(), cfg.names)
    layers, tested, examples, results = _test_concepts(job, work, concepts)
    with open_activations(paths["activations"]) as acts:
        sources = {record.path: record.dataset for record in acts.layers}
        cka_layers = select_layers(list(sources), cfg.cka.layers)
        batch = max(4, min(cfg.cka.batch_size, acts.n_inputs))
        cka, cka_inputs = cka_matrix(sources, cka_layers, batch_size=batch), acts.n_inputs
    summary = _class_attribution(paths["attributions"]) if cfg.class_attribution else {}
    level = cfg.alpha / max(1, len(layers) * len(tested)) if cfg.bonferroni else cfg.alpha
    provenance = {
        "model_hash": file_hash(paths["model"]),
        "data_hash": work.info.data_hash,
        "source": work.inputs.source,
    }
    record = Concepts(
        examples, tested, results, layers, cfg.runs, cfg.alpha, level, cfg.random_size,
        cka_layers, cka, batch, cka_inputs, work.classes.class_names, **summary,
        provenance=provenance,
    )  # fmt: skip
    # Two headline columns for `dvc exp show`; everything else is in the concepts file.
    metrics = {
        "tcav_tests": sum(len(r.p_values) for r in results),
        "significant": sum(int(r.significant.sum()) for r in results),
    }
    with job.claim() as out:
        with out.write("concepts") as tmp:
            write_concepts(tmp, record, job.config_yaml)
        with out.write("metrics/concepts.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    names = ", ".join(concepts) or "none"
    elapsed = time.perf_counter() - started
    print(f"concepts: {names}; CKA of {len(cka_layers)} layers; {elapsed:.1f} s")


def _test_concepts(job: Job[ConceptOptions], work, concepts: dict) -> tuple:
    """TCAV of every concept folder: ``(layers, tested classes, examples, records)``."""
    import numpy as np

    from pipeline.artifacts.concepts import ConceptLayer
    from pipeline.artifacts.dataset import read_rows, split_size
    from pipeline.attribution.scoring import choose_targets
    from pipeline.concept_sets import random_sets, read_concept
    from pipeline.concepts import resolve_concept_layers, tcav_concepts
    from pipeline.errors import KerascopeError
    from pipeline.stages.common import to_model_space

    if not concepts:
        return [], np.zeros(0, np.int64), {}, []
    cfg, model, space, dataset = job.cfg, work.model, work.space, job.paths["dataset"]
    layers = resolve_concept_layers(model, cfg.layers)
    x, labels = work.inputs.x, work.inputs.y
    if cfg.target == "true" and (labels < 0).any():
        raise KerascopeError("concepts.target=true but the inputs have no labels")
    targets = choose_targets(cfg.target, model, x, labels, cfg.batch_size)
    pool = split_size(dataset, cfg.random_source)
    sets = random_sets(pool, cfg.runs + 1, cfg.random_size, cfg.null_size, job.seed)
    drawn = to_model_space(
        read_rows(dataset, cfg.random_source, np.concatenate(sets)), model, space
    )
    randoms = np.split(drawn, np.cumsum([len(s) for s in sets])[:-1])
    images = {}
    for name, files in concepts.items():
        examples = read_concept(files, work.info.input_shape, work.info.value_range)
        images[name] = to_model_space(examples, model, space)
    found = tcav_concepts(
        model, layers, images, randoms, x, targets, cfg.runs, job.seed, alpha=cfg.alpha,
        bonferroni=cfg.bonferroni, batch_size=cfg.batch_size,
    )  # fmt: skip
    tested, results = np.unique(targets), []
    for name, tests in found.items():
        results += ConceptLayer.table(name, tests, tested)
        significant = sum(int(t.significant) for t in tests)
        print(f"concepts: '{name}': {significant} of {len(tests)} tests significant")
    return layers, tested, {name: len(c) for name, c in images.items()}, results


def _class_attribution(path) -> dict:
    """Per-class mean maps and faithfulness of every method in an attributions file."""
    import numpy as np

    from pipeline.artifacts.attributions import read_attributions
    from pipeline.artifacts.concepts import ClassAttribution
    from pipeline.class_attribution import class_mean, class_mean_maps, curve_auc

    found = read_attributions(path)
    classes = np.unique(found.targets)
    summary = {}
    for method, result in found.methods.items():
        means, counts = class_mean_maps(result.maps, found.targets, classes)
        curves = found.faithfulness.get(method)
        aucs = [
            class_mean(curve_auc(c, found.fractions), found.targets, classes) if curves else None
            for c in ((curves.deletion, curves.insertion) if curves else (None, None))
        ]
        summary[method] = ClassAttribution(means, *aucs)
    return {
        "attribution_classes": classes,
        "attribution_counts": counts if summary else np.zeros(0, int),
        "class_attribution": summary,
        "attribution_source": found.provenance.get("source", ""),
    }


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

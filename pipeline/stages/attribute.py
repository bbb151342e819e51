"""Attribute stage: attribution maps for every probe input, with faithfulness metrics.

Writes ``paths.attributions`` (kind ``attributions``; layout in the README) and
``<paths.metrics>/attribute.json`` with deletion/insertion AUC and the randomisation
sanity check per method, plus the random-ranking baseline.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import provenance_attrs, write_attrs
from pipeline.attribution.options import (
    CAM_METHODS,
    METHODS,
    SCORES,
    FaithfulnessOptions,
    IntegratedGradientsOptions,
    SaliencyOptions,
    SanityOptions,
    ScoreCamOptions,
    SmoothGradOptions,
)
from pipeline.config import one_of, positive, run_stage, section, to_yaml, workspace_paths
from pipeline.distribute import STRATEGIES
from pipeline.errors import KerascopeError
from pipeline.workspace import hdf5_file, preflight


@dataclass
class AttributeConfig:
    """The ``attribute`` config section."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    target: str = "predicted"
    score: str = "logits"
    layer: str | None = None
    source: str = "probe"
    count: int | None = None
    indices: list[int] | None = None
    npz_path: str | None = None
    npz_key: str = "x"
    batch_size: int = 64
    strategy: str = "auto"
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    smoothgrad: SmoothGradOptions = field(default_factory=SmoothGradOptions)
    integrated_gradients: IntegratedGradientsOptions = field(
        default_factory=IntegratedGradientsOptions
    )
    scorecam: ScoreCamOptions = field(default_factory=ScoreCamOptions)
    faithfulness: FaithfulnessOptions = field(default_factory=FaithfulnessOptions)
    sanity: SanityOptions = field(default_factory=SanityOptions)


def _validate(cfg: AttributeConfig) -> None:
    if not cfg.methods:
        raise KerascopeError(f"attribute.methods is empty; valid: {', '.join(METHODS)}")
    for method in cfg.methods:
        one_of("attribution method", method, list(METHODS))
    one_of("attribute.score", cfg.score, SCORES)
    one_of("attribute.strategy", cfg.strategy, STRATEGIES)
    positive("attribute.batch_size", cfg.batch_size)
    for name in ("saliency", "smoothgrad", "integrated_gradients", "scorecam"):
        getattr(cfg, name).check(f"attribute.{name}")
    cfg.faithfulness.check("attribute.faithfulness")
    cfg.sanity.check("attribute.sanity")
    if cfg.target not in ("predicted", "true") and not str(cfg.target).lstrip("-").isdigit():
        raise KerascopeError(
            f"invalid attribute.target '{cfg.target}'; valid: predicted, true, or a class index"
        )


def method_options(cfg: AttributeConfig, method: str, seed: int = 0) -> dict:
    """Keyword options of one method from the config (``seed``: the noisy methods')."""
    common = {"batch_size": cfg.batch_size}
    if method == "saliency":
        return {**common, "score": cfg.score, "reduce": cfg.saliency.reduce}
    if method == "smoothgrad":
        sg = cfg.smoothgrad
        return {
            **common,
            "score": cfg.score,
            "noise": sg.noise,
            "samples": sg.samples,
            "reduce": sg.reduce,
            "seed": seed,
        }
    if method == "integrated_gradients":
        ig = cfg.integrated_gradients
        return {
            **common,
            "score": cfg.score,
            "baseline": ig.baseline,
            "steps": ig.steps,
            "seed": seed,
        }
    if method in ("gradcam", "gradcam_plus_plus"):
        return {**common, "score": cfg.score, "layer": cfg.layer}
    return {**common, "layer": cfg.layer, "max_channels": cfg.scorecam.max_channels}


def _maps_fn(method: str, options: dict):
    """``(model, x, targets) -> maps`` for one method, as the sanity check needs."""
    from pipeline.attribution import method as attribution_method

    def run(model, x, targets):
        result = attribution_method(method)(model, x, targets, **options)
        return result if isinstance(result, np.ndarray) else result.maps

    return run


def _targets(cfg: AttributeConfig, model, x, labels) -> np.ndarray:
    from pipeline.attribution import check_targets, predicted_classes

    if cfg.target == "predicted":
        return predicted_classes(model, x, cfg.batch_size)
    if cfg.target == "true":
        if (labels < 0).any():
            raise KerascopeError("attribute.target=true but the inputs have no labels")
        return check_targets(model, labels, len(x))
    return check_targets(model, np.full(len(x), int(cfg.target)), len(x))


@dataclass
class AttributeRun:
    """Everything the attribute stage needs, validated."""

    cfg: AttributeConfig
    seed: int
    paths: dict[str, Path]
    params: dict
    safe_mode: bool
    custom_modules: list[str]


def configure(params: dict) -> AttributeRun:
    """Validate the ``attribute`` section and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    cfg = section(params, "attribute", AttributeConfig)
    _validate(cfg)
    safe_mode = bool(params.get("model", {}).get("safe_mode", True))
    custom_modules = list(params.get("model", {}).get("custom_modules") or [])
    preflight(paths, "attributions", metrics=["attribute.json"])
    return AttributeRun(cfg, int(params.get("seed", 0)), paths, params, safe_mode, custom_modules)


def run(job: AttributeRun) -> None:
    """Compute every configured method, its faithfulness and sanity, and write them."""
    from pipeline.distribute import make_strategy

    # Batches are split across the replicas of the configured strategy (several GPUs);
    # the model is loaded inside its scope so each replica has its copy of the weights.
    with make_strategy(job.cfg.strategy).scope():
        _attribute(job)


def _attribute(job: AttributeRun) -> None:
    from pipeline.artifacts import read_dataset_info, select_inputs
    from pipeline.attribution import method as attribution_method
    from pipeline.attribution.cam import cam_layer
    from pipeline.attribution.faithfulness import (
        deletion_insertion,
        random_maps,
        randomization_sanity,
    )
    from pipeline.models import check_input_shape, load_model_file
    from pipeline.workspace import claim, file_hash

    cfg, seed, paths, params = job.cfg, job.seed, job.paths, job.params
    info = read_dataset_info(paths["dataset"])
    inputs = select_inputs(
        paths["dataset"], cfg.source, cfg.count, cfg.indices, cfg.npz_path, cfg.npz_key
    )
    model = load_model_file(paths["model"], job.safe_mode, job.custom_modules)
    check_input_shape(model, inputs.x.shape[1:])
    x = inputs.x.astype(np.float32)
    if any(m in CAM_METHODS for m in cfg.methods):
        cam_layer(model, cfg.layer)  # fail early, before any work, on a bad layer
    targets = _targets(cfg, model, x, inputs.y)
    import keras

    keras.utils.set_random_seed(seed)
    probabilities = np.asarray(model.predict(x, batch_size=cfg.batch_size, verbose=0), np.float32)
    # Every input is checked (above) before any output is touched.
    with claim(paths, "attributions", metrics=["attribute.json"]) as out:
        metrics: dict[str, dict] = {}
        started = time.perf_counter()
        steps = len(cfg.methods) * (1 + cfg.faithfulness.enabled + cfg.sanity.enabled)
        progress = tqdm(total=steps, desc="attribute", unit="step", disable=None, file=sys.stderr)
        with out.write("attributions") as tmp, hdf5_file(tmp) as f:
            write_attrs(f, provenance_attrs("attributions", to_yaml(params)))
            write_attrs(
                f,
                {
                    "model_hash": file_hash(paths["model"]),
                    "data_hash": info.data_hash,
                    "source": inputs.source,
                    "class_names": info.class_names,
                    "score": cfg.score,
                    "target_mode": str(cfg.target),
                    "methods": list(cfg.methods),
                },
            )
            for name, value in (
                ("inputs", x),
                ("targets", targets),
                ("labels", inputs.y),
                ("probabilities", probabilities),
                ("index", inputs.index),
            ):
                f.create_dataset(name, data=value)
            faith = f.create_group("faithfulness")
            all_maps = {}
            for method in cfg.methods:
                options = method_options(cfg, method, seed)
                progress.set_postfix_str(method)
                result = attribution_method(method)(model, x, targets, **options)
                group = f.create_group(f"methods/{method}")
                maps = result if isinstance(result, np.ndarray) else result.maps
                all_maps[method] = maps
                group.create_dataset("maps", data=np.asarray(maps, np.float32), compression="gzip")
                attrs = {
                    "options": {k: v for k, v in options.items() if k != "batch_size"},
                    "score": cfg.score,
                }
                if hasattr(result, "raw"):
                    group.create_dataset("raw", data=np.asarray(result.raw, np.float32))
                    attrs["layer"] = result.layer
                metrics[method] = {}
                if method == "integrated_gradients":
                    group.create_dataset("completeness_error", data=result.completeness_error)
                    metrics[method]["completeness_error"] = float(
                        np.abs(result.completeness_error).mean()
                    )
                write_attrs(group, attrs)
                progress.update(1)
            if cfg.faithfulness.enabled:
                shape = next(iter(all_maps.values())).shape
                reference = {"random": random_maps(shape, seed)}
                for method, maps in {**all_maps, **reference}.items():
                    curves = deletion_insertion(
                        model,
                        x,
                        targets,
                        maps,
                        steps=cfg.faithfulness.steps,
                        substrate_kind=cfg.faithfulness.substrate,
                        batch_size=max(cfg.batch_size, 256),
                    )
                    group = faith.create_group(method)
                    group.create_dataset("deletion", data=curves.deletion)
                    group.create_dataset("insertion", data=curves.insertion)
                    group.attrs["deletion_auc"] = float(curves.deletion_auc.mean())
                    group.attrs["insertion_auc"] = float(curves.insertion_auc.mean())
                    metrics.setdefault(method, {})
                    metrics[method]["deletion_auc"] = float(curves.deletion_auc.mean())
                    metrics[method]["insertion_auc"] = float(curves.insertion_auc.mean())
                    if method != "random":
                        progress.update(1)
                faith.attrs["fractions"] = curves.fractions
                faith.attrs["substrate"] = cfg.faithfulness.substrate
            if cfg.sanity.enabled:
                for method in cfg.methods:
                    layers, corr = randomization_sanity(
                        model,
                        x,
                        targets,
                        _maps_fn(method, method_options(cfg, method, seed)),
                        max_layers=cfg.sanity.max_layers,
                        seed=seed,
                        original=all_maps[method],
                    )
                    data = f.create_dataset(f"sanity/{method}", data=corr)
                    write_attrs(data, {"layers": layers})
                    final = float(corr[-1])
                    metrics[method]["sanity_spearman"] = final
                    metrics[method]["sanity_passed"] = int(abs(final) < cfg.sanity.threshold)
                    progress.update(1)
                f["sanity"].attrs["threshold"] = cfg.sanity.threshold
        progress.close()
        with out.write("metrics/attribute.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    elapsed = time.perf_counter() - started
    print(f"attribute: {len(cfg.methods)} methods x {len(x)} inputs in {elapsed:.1f} s")


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

"""Maximize stage: feature visualizations for the configured layers and units.

Writes ``paths.maximization`` (kind ``maximization``; layout in the README) and
``<paths.metrics>/maximize.json`` with, per layer, the mean ratio of the activation the
optimised images reach to the best activation of any probe-set input.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import hdf5_name, provenance_attrs, write_attrs
from pipeline.config import one_of, positive, run_stage, section, to_yaml, workspace_paths
from pipeline.errors import KerascopeError
from pipeline.workspace import hdf5_file, preflight

#: Objective kinds and parametrizations (the library's names; kept here so that checking
#: the config does not import TensorFlow).
OBJECTIVES = ("channel", "neuron", "unit", "class_logit", "direction")
PARAMETRIZATIONS = ("pixel", "fourier")


@dataclass
class MaximizeConfig:
    """The ``maximize`` config section."""

    targets: list[Any] = field(default_factory=list)
    steps: int = 128
    learning_rate: float = 0.05
    parametrization: str = "fourier"
    decay: float = 1.0
    decorrelate: bool = True
    l2: float = 0.0
    lp: float = 0.0
    p: float = 6.0
    tv: float = 0.0
    blur: float = 0.0
    jitter: int = 1
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    rotate: float = 0.0
    copies: int = 1
    diversity: float = 0.0
    batch_size: int | None = None
    preactivation: bool = True


#: Layer keywords that adapt the default targets to any architecture.
KEYWORDS = ("output", "last_conv", "last_hidden")


def keyword_layer(model, keyword: str) -> str | None:
    """Resolve ``output``, ``last_conv`` or ``last_hidden`` to a layer path (or None).

    ``last_conv`` is the last convolution; ``last_hidden`` the last layer with weights
    and a flat (units,) output before the output layer.
    """
    from pipeline.graph import list_layers

    infos = [i for i in list_layers(model) if not hasattr(i.layer, "layers")]
    output = infos[-1]
    if keyword == "output":
        return output.path
    if keyword == "last_conv":
        convs = [i for i in infos if "Conv" in i.class_name]
        return convs[-1].path if convs else None
    hidden = [
        i
        for i in infos[:-1]
        if i.layer.weights and i.output_shape is not None and len(i.output_shape) == 1
    ]
    return hidden[-1].path if hidden else None


def _probe_objective(model, objective, n_units: int, probe_x: np.ndarray):
    """Objective value of every unit on every probe input: (inputs, units)."""
    import tensorflow as tf

    from pipeline.graph import LayerForward
    from pipeline.maximization.objectives import objective_values

    is_logit = objective.kind == "class_logit"
    forward = LayerForward(model, [] if is_logit else [objective.layer], logits=is_logit)
    values = []
    for start in range(0, len(probe_x), 256):
        outputs, taps = forward(tf.convert_to_tensor(probe_x[start : start + 256]))
        acts = outputs if is_logit else taps[objective.layer]
        rows = []
        for unit in range(n_units):
            units = tf.fill([tf.shape(acts)[0]], unit)
            rows.append(objective_values(objective, acts, units).numpy())
        values.append(np.stack(rows, axis=1))
    return np.concatenate(values)


def _resolve_target(model, target):
    from pipeline.graph import layer_info
    from pipeline.maximization import Objective, objective_kind

    if isinstance(target, str):
        target = {"layer": target}
    if not isinstance(target, dict) or "layer" not in target:
        raise KerascopeError(
            f"invalid maximize target {target!r}; use {{layer: NAME, units: all | [..] | "
            "{top_k: K}, objective: channel | neuron | unit | class_logit | direction}"
        )
    unknown = set(target) - {"layer", "units", "objective", "position", "direction"}
    if unknown:
        raise KerascopeError(
            f"unknown key '{sorted(unknown)[0]}' in maximize target; valid: layer, units, "
            "objective, position, direction"
        )
    layer = target["layer"]
    if layer in KEYWORDS:
        layer = keyword_layer(model, layer)
        if layer is None:
            return None, None
    info = layer_info(model, layer)
    is_output = info.path == keyword_layer(model, "output")
    kind = target.get("objective") or objective_kind(info.output_shape or (), is_output)
    one_of("maximize objective", kind, OBJECTIVES)
    position = tuple(target["position"]) if target.get("position") is not None else None
    direction = tuple(target["direction"]) if target.get("direction") is not None else None
    if kind == "direction" and direction is None:
        raise KerascopeError(
            f"objective 'direction' for layer '{info.path}' needs a direction vector"
        )
    return Objective(info.path, kind, position, direction), target.get("units", "all")


def _choose_units(spec, probe_values: np.ndarray, layer: str) -> np.ndarray:
    from pipeline.maximization.objectives import check_units

    n_units = probe_values.shape[1]
    if spec == "all" or spec is None:
        return np.arange(n_units, dtype=np.int32)
    if isinstance(spec, dict):
        if set(spec) != {"top_k"}:
            raise KerascopeError(
                f"invalid units {spec!r} for layer '{layer}'; valid: all, a list, {{top_k: K}}"
            )
        positive(f"top_k of layer '{layer}'", spec["top_k"])
        order = np.argsort(-probe_values.mean(axis=0), kind="stable")
        return np.sort(order[: int(spec["top_k"])]).astype(np.int32)
    if isinstance(spec, int):
        spec = [spec]
    return check_units(list(spec), n_units, layer)


@dataclass
class MaximizeRun:
    """Everything the maximize stage needs, validated."""

    cfg: MaximizeConfig
    seed: int
    paths: dict[str, Path]
    params: dict
    safe_mode: bool
    custom_modules: list[str]


def configure(params: dict) -> MaximizeRun:
    """Validate the ``maximize`` section and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    cfg = section(params, "maximize", MaximizeConfig)
    positive("maximize.steps", cfg.steps)
    positive("maximize.learning_rate", cfg.learning_rate)
    one_of("maximize.parametrization", cfg.parametrization, PARAMETRIZATIONS)
    if cfg.batch_size is not None:
        positive("maximize.batch_size", cfg.batch_size)
    if not cfg.targets:
        raise KerascopeError("maximize.targets is empty; list layers such as [conv2, dense1]")
    safe_mode = bool(params.get("model", {}).get("safe_mode", True))
    custom_modules = list(params.get("model", {}).get("custom_modules") or [])
    preflight(paths, "maximization", metrics=["maximize.json"])
    return MaximizeRun(cfg, int(params.get("seed", 0)), paths, params, safe_mode, custom_modules)


def run(job: MaximizeRun) -> None:
    """Optimise an image per unit of every target and write them with reach ratios."""
    _maximize(job)


def _maximize(job: MaximizeRun) -> None:
    from pipeline.artifacts import read_dataset_info, read_split
    from pipeline.graph import layer_info
    from pipeline.maximization import Settings, maximize
    from pipeline.models import load_model_file
    from pipeline.workspace import claim, file_hash

    cfg, seed, paths, params = job.cfg, job.seed, job.paths, job.params
    info = read_dataset_info(paths["dataset"])
    probe = read_split(paths["dataset"], "probe")
    model = load_model_file(paths["model"], job.safe_mode, job.custom_modules)
    settings_dict = {k: v for k, v in asdict(cfg).items() if k != "targets"}
    settings = Settings(**{**settings_dict, "scale": tuple(cfg.scale), "seed": seed})
    plan = []
    for target in cfg.targets:
        objective, spec = _resolve_target(model, target)
        if objective is None:
            print(f"maximize: model '{model.name}' has no {target['layer']} layer; skipped")
            continue
        n_units = (
            int(model.outputs[0].shape[-1])
            if objective.kind == "class_logit"
            else int((layer_info(model, objective.layer).output_shape or (1,))[-1])
        )
        probe_values = _probe_objective(model, objective, n_units, probe.x)
        units = _choose_units(spec, probe_values, objective.layer)
        plan.append((objective, units, probe_values))
    # Every target is resolved (above) before any output is touched.
    with claim(paths, "maximization", metrics=["maximize.json"]) as out:
        total = sum(len(u) for _, u, _ in plan) * max(1, cfg.copies) * cfg.steps
        progress = tqdm(total=total, desc="maximize", unit="step", disable=None, file=sys.stderr)
        started = time.perf_counter()
        metrics: dict[str, dict] = {}
        with out.write("maximization") as tmp, hdf5_file(tmp) as f:
            write_attrs(f, provenance_attrs("maximization", to_yaml(params)))
            write_attrs(
                f,
                {
                    "model_hash": file_hash(paths["model"]),
                    "data_hash": info.data_hash,
                    "class_names": info.class_names,
                },
            )
            for objective, units, probe_values in plan:
                progress.set_postfix_str(objective.layer)
                result = maximize(
                    model, objective, units, info.value_range, settings, progress=progress.update
                )
                best = probe_values.max(axis=0)[result.units]
                reach = np.where(
                    np.abs(best) > 1e-8, result.final / np.where(best == 0, 1, best), np.nan
                )
                group = f.create_group(hdf5_name(objective.layer))
                group.create_dataset(
                    "images", data=result.images.astype(np.float32), compression="gzip"
                )
                group.create_dataset("objective", data=result.objective.astype(np.float32))
                group.create_dataset("final", data=result.final.astype(np.float32))
                group.create_dataset("units", data=result.units)
                group.create_dataset("copy", data=result.copy)
                group.create_dataset("reach_ratio", data=reach.astype(np.float32))
                group.create_dataset("best_probe_activation", data=best.astype(np.float32))
                write_attrs(
                    group,
                    {
                        "layer_path": objective.layer,
                        "objective": objective.kind,
                        "settings": {**settings_dict, "seed": seed},
                    },
                )
                finite = reach[np.isfinite(reach)]
                metrics[objective.layer] = {
                    "mean_reach_ratio": float(finite.mean()) if len(finite) else float("nan"),
                    "units": int(len(units)),
                }
        progress.close()
        with out.write("metrics/maximize.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    summary = ", ".join(f"{k}: {v['mean_reach_ratio']:.2f}" for k, v in metrics.items())
    print(f"maximize: {time.perf_counter() - started:.1f} s; mean reach ratio {summary}")


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

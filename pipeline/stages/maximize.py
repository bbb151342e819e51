"""Maximize stage: feature visualizations for the configured layers and units.

Writes ``paths.maximization`` (see :mod:`pipeline.artifacts.maximization`) and
``<paths.metrics>/maximize.json`` with the mean reach ratio over every target: the
activation the optimised images reach over the best activation of any probe-set input
(per layer and per unit in the maximization file).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from pipeline.config import Job, make_job, run_stage
from pipeline.maximization.settings import MaximizeOptions, Settings


def configure(params: dict) -> Job[MaximizeOptions]:
    """Validate the ``maximize`` section and the paths (no TensorFlow)."""
    return make_job(
        params,
        "maximize",
        MaximizeOptions,
        loads_model=True,
        exclude=["seed"],  # the top-level seed
    )


def run(job: Job[MaximizeOptions]) -> None:
    """Optimise an image per unit of every target and write them with reach ratios."""
    import numpy as np
    from tqdm import tqdm

    from pipeline.artifacts.dataset import InputOptions
    from pipeline.artifacts.maximization import Maximization, TargetImages, write_maximization
    from pipeline.maximization.optimize import maximize
    from pipeline.maximization.targets import plan_targets, reach_ratios, target_labels
    from pipeline.stages.common import prepare
    from pipeline.workspace import file_hash

    paths = job.paths
    options = {k: v for k, v in asdict(job.cfg).items() if k != "targets"}
    settings = Settings(**{**options, "scale": tuple(job.cfg.scale), "seed": job.seed})
    # The probe inputs (in the model's space) are the reach ratio's reference. Every
    # target is resolved before any output is touched.
    work = prepare(job, InputOptions(source="probe"))
    info, model = work.info, work.model
    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else ()
    if len(shape) != 3:  # sequences, token ids, volumes: one line, then an empty file
        print(f"maximize: inputs of shape {shape} are not images (H, W, C); skipped")
        plans, skipped = [], []
    else:
        plans, skipped = plan_targets(model, job.cfg.targets, work.inputs.x)
    for keyword in skipped:
        print(f"maximize: model '{model.name}' has no {keyword} layer; skipped")
    total = sum(len(p.units) for p in plans) * max(1, settings.copies) * settings.steps
    bar = tqdm(total=total, desc="maximize", unit="step", disable=None, file=sys.stderr)
    started = time.perf_counter()
    targets, metrics = [], {}
    labels = target_labels([plan.objective for plan in plans])
    with job.claim() as out:
        for number, (plan, label) in enumerate(zip(plans, labels, strict=True), start=1):
            bar.set_postfix_str(f"target {number}/{len(plans)}: {label}")
            began = time.perf_counter()
            result = maximize(
                model,
                plan.objective,
                plan.units,
                info.value_range,
                settings,
                # No bar (stderr not a terminal, as under a logged `dvc repro`): every
                # step in one compiled call.
                progress=None if bar.disable else bar.update,
                space=work.space,
            )
            best = plan.probe_values.max(axis=0)[result.units]
            reach = reach_ratios(result.final, best)
            finite = reach[np.isfinite(reach)]
            metrics[label] = {
                "mean_reach_ratio": float(finite.mean()) if len(finite) else float("nan"),
                "units": len(plan.units),
            }
            bar.write(
                f"maximize: target {number}/{len(plans)} {label}: {len(result.images)} image(s) "
                f"in {time.perf_counter() - began:.1f} s, mean reach ratio "
                f"{metrics[label]['mean_reach_ratio']:.2f}",
                file=sys.stderr,
            )
            targets.append(
                TargetImages(
                    layer=label,
                    objective=plan.objective.kind,
                    images=result.images,
                    units=result.units,
                    copy=result.copy,
                    final=result.final,
                    objective_curve=result.objective,
                    best_probe_activation=best,
                    reach_ratio=reach,
                    settings={**options, "seed": job.seed},
                )
            )
        record = Maximization(
            targets,
            work.classes.class_names,
            {"model_hash": file_hash(paths["model"]), "data_hash": info.data_hash},
        )
        with out.write("maximization") as tmp:
            write_maximization(tmp, record, job.config_yaml)
        # Headline only (one column in `dvc exp show`): the mean over every target's
        # units; per-layer and per-unit ratios are in the maximization file.
        ratios = np.concatenate([t.reach_ratio for t in targets]) if targets else np.zeros(0)
        finite = ratios[np.isfinite(ratios)]
        headline = {"mean_reach_ratio": float(finite.mean()) if len(finite) else None}
        with out.write("metrics/maximize.json") as tmp:
            tmp.write_text(json.dumps(headline, indent=2))
    bar.close()
    summary = ", ".join(f"{k}: {v['mean_reach_ratio']:.2f}" for k, v in metrics.items())
    print(f"maximize: {time.perf_counter() - started:.1f} s; mean reach ratio {summary}")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

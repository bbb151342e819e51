"""Maximize stage: feature visualizations for the configured layers and units.

Writes ``paths.maximization`` (see :mod:`pipeline.artifacts.maximization`) and
``<paths.metrics>/maximize.json`` with, per layer, the mean ratio of the activation the
optimised images reach to the best activation of any probe-set input.
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
    from pipeline.maximization.targets import plan_targets, reach_ratios
    from pipeline.stages.common import prepare
    from pipeline.workspace import file_hash

    paths = job.paths
    options = {k: v for k, v in asdict(job.cfg).items() if k != "targets"}
    settings = Settings(**{**options, "scale": tuple(job.cfg.scale), "seed": job.seed})
    # The probe inputs (in the model's space) are the reach ratio's reference. Every
    # target is resolved before any output is touched.
    work = prepare(job, InputOptions(source="probe"))
    info, model = work.info, work.model
    plans, skipped = plan_targets(model, job.cfg.targets, work.inputs.x)
    for keyword in skipped:
        print(f"maximize: model '{model.name}' has no {keyword} layer; skipped")
    total = sum(len(p.units) for p in plans) * max(1, settings.copies) * settings.steps
    bar = tqdm(total=total, desc="maximize", unit="step", disable=None, file=sys.stderr)
    started = time.perf_counter()
    targets, metrics = [], {}
    with job.claim() as out:
        for plan in plans:
            bar.set_postfix_str(plan.objective.layer)
            result = maximize(
                model,
                plan.objective,
                plan.units,
                info.value_range,
                settings,
                progress=bar.update,
                space=work.space,
            )
            best = plan.probe_values.max(axis=0)[result.units]
            reach = reach_ratios(result.final, best)
            finite = reach[np.isfinite(reach)]
            metrics[plan.objective.layer] = {
                "mean_reach_ratio": float(finite.mean()) if len(finite) else float("nan"),
                "units": len(plan.units),
            }
            targets.append(
                TargetImages(
                    layer=plan.objective.layer,
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
        with out.write("metrics/maximize.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    bar.close()
    summary = ", ".join(f"{k}: {v['mean_reach_ratio']:.2f}" for k, v in metrics.items())
    print(f"maximize: {time.perf_counter() - started:.1f} s; mean reach ratio {summary}")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

"""Attribute stage: attribution maps for the chosen inputs, with faithfulness and sanity.

Writes ``paths.attributions`` (see :mod:`pipeline.artifacts.attributions`) and
``<paths.metrics>/attribute.json`` with deletion/insertion AUC and the randomisation
sanity check per method, plus the random-ranking reference.
"""

from __future__ import annotations

import json
import sys
import time

from pipeline.attribution.options import AttributeOptions
from pipeline.config import Job, make_job, run_stage


def configure(params: dict) -> Job[AttributeOptions]:
    """Validate the ``attribute`` section and the paths (no TensorFlow)."""
    return make_job(params, "attribute", AttributeOptions, loads_model=True)


def run(job: Job[AttributeOptions]) -> None:
    """Compute every configured method, its faithfulness and sanity, and write them."""
    import keras
    from tqdm import tqdm

    from pipeline.artifacts.attributions import Attributions, record_of, write_header, write_results
    from pipeline.attribution.cam import cam_layer
    from pipeline.attribution.options import CAM_METHODS
    from pipeline.attribution.scoring import choose_targets, class_probabilities
    from pipeline.attribution.suite import explain
    from pipeline.stages.common import tensor_work
    from pipeline.workspace import file_hash, hdf5_file

    cfg, paths = job.cfg, job.paths
    # Every input is checked before any output is touched.
    with tensor_work(job, cfg) as work:
        model, inputs = work.model, work.inputs
        x = inputs.x
        if any(m in CAM_METHODS for m in cfg.methods):
            cam_layer(model, cfg.layer)
        targets = choose_targets(str(cfg.target), model, x, inputs.y, cfg.batch_size)
        keras.utils.set_random_seed(job.seed)
        probabilities = class_probabilities(model, x, cfg.batch_size)
        steps = len(cfg.methods) * (1 + cfg.faithfulness.enabled + cfg.sanity.enabled)
        bar = tqdm(total=steps, desc="attribute", unit="step", disable=None, file=sys.stderr)
        started = time.perf_counter()
        attrs = {
            "class_names": work.classes.class_names,
            "score": cfg.score,
            "target_mode": str(cfg.target),
            "substrate": cfg.faithfulness.substrate,
            "sanity_threshold": cfg.sanity.threshold,
            "input_space": work.space.describe(),
            "provenance": {
                "model_hash": file_hash(paths["model"]),
                "data_hash": work.info.data_hash,
                "source": inputs.source,
            },
        }
        header = Attributions(x, targets, inputs.y, probabilities, inputs.index, {}, **attrs)
        header.methods = dict.fromkeys(cfg.methods)
        with (
            job.claim() as out,
            out.write("attributions") as tmp,
            hdf5_file(tmp) as f,
        ):
            # The inputs go to the file first; a killed run leaves only this temporary.
            write_header(f, header, job.config_yaml)
            explanation = explain(
                model,
                x,
                targets,
                cfg.method_options(),
                score=cfg.score,
                layer=cfg.layer,
                seed=job.seed,
                batch_size=cfg.batch_size,
                faithfulness=cfg.faithfulness,
                sanity=cfg.sanity,
                progress=lambda label: (bar.set_postfix_str(label), bar.update(1)),
            )
            if explanation.sanity_skipped:
                print(f"note: randomisation sanity check skipped: {explanation.sanity_skipped}")
            write_results(f, record_of(explanation, inputs, targets, probabilities, **attrs))
            with out.write("metrics/attribute.json") as metrics:
                metrics.write_text(json.dumps(explanation.metrics(cfg.sanity.threshold), indent=2))
        bar.close()
    elapsed = time.perf_counter() - started
    print(f"attribute: {len(cfg.methods)} methods x {len(x)} inputs in {elapsed:.1f} s")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

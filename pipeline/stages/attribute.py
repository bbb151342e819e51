"""Attribute stage: attribution maps for the chosen inputs, with faithfulness and sanity.

Writes ``paths.attributions`` (see :mod:`pipeline.artifacts.attributions`) and
``<paths.metrics>/attribute.json`` with the headline numbers per method (deletion and
insertion AUC, whether the randomisation sanity check passed, IG's completeness error,
the mean of each further metric switched on), plus the random-ranking reference. The
full curves, sanity correlations and per-input metrics are in the attributions file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from pipeline.attribution.options import AttributeOptions
from pipeline.config import Job, make_job, run_stage
from pipeline.errors import KerascopeError


def configure(params: dict) -> Job[AttributeOptions]:
    """Validate the ``attribute`` section and the paths (no TensorFlow)."""
    return make_job(params, "attribute", AttributeOptions, loads_model=True)


def run(job: Job[AttributeOptions]) -> None:
    """Compute every configured method, its faithfulness and sanity, and write them."""
    import keras
    from tqdm import tqdm

    from pipeline.artifacts.attributions import Attributions, record_of, write_header, write_results
    from pipeline.attribution.batching import batch_progress
    from pipeline.attribution.cam import cam_layer
    from pipeline.attribution.heads import explained_scores, with_head
    from pipeline.attribution.options import CAM_METHODS
    from pipeline.attribution.rollout import check_attention
    from pipeline.attribution.scoring import choose_targets, class_probabilities
    from pipeline.attribution.suite import explain
    from pipeline.attribution.text import (
        embed,
        embedding_layer,
        per_token,
        split_at_embedding,
        token_ids,
    )
    from pipeline.stages.common import tensor_work
    from pipeline.workspace import file_hash, hdf5_file

    cfg, paths = job.cfg, job.paths
    # Every input is checked before any output is touched.
    with tensor_work(job, cfg) as work:
        model, inputs = work.model, work.inputs
        task = work.info.task
        if task != "classification" and not cfg.head.active:
            # A class target would silently explain output unit 0 (or a pixel's scores).
            raise KerascopeError(
                f"the data are data.task={task}, which has no classes to explain: set "
                f"attribute.head.kind={task} (or registered); valid kinds: regression, "
                "multilabel, segmentation, registered"
            )
        x, ids = inputs.x, None
        if embedding_layer(model):  # token ids: attribution starts at the embedding output
            embedding, model = split_at_embedding(model)
            ids = token_ids(x)  # kept for the report's coloured tokens
            x = embed(embedding, x)
            print(f"note: token ids: attributing at the output of Embedding '{embedding.name}'")
        if "attention_rollout" in cfg.methods:  # refused before any method runs
            check_attention(model)
        layer = cfg.layer
        if any(m in CAM_METHODS for m in cfg.methods):
            # Resolved before a score head: a segmentation map stays a class-score map.
            layer = cam_layer(model, cfg.layer)
        if cfg.head.active:  # one score column, explained as class 0 (README: Model kinds)
            model = with_head(model, cfg.head, cfg.score)
        target = "0" if cfg.head.active else str(cfg.target)
        if cfg.head.active:  # the explained score itself, (N, 1)
            probabilities = explained_scores(model, x, cfg.batch_size or 256)
            targets = choose_targets(target, model, x, inputs.y, cfg.batch_size or 256)
        else:  # one forward pass gives both the probabilities and the predicted classes
            probabilities = class_probabilities(model, x, cfg.batch_size or 256)
            targets = choose_targets(
                target, model, x, inputs.y, cfg.batch_size or 256, predictions=probabilities
            )
        keras.utils.set_random_seed(job.seed)
        bars = _progress_bars(cfg, tqdm)
        started = time.perf_counter()
        attrs = {
            "class_names": work.classes.class_names,
            "score": cfg.score,
            "target_mode": cfg.head.describe() if cfg.head.active else str(cfg.target),
            "substrate": cfg.faithfulness.substrate,
            "sanity_threshold": cfg.sanity.threshold,
            "metric_options": asdict(cfg.metrics),
            "input_space": work.space.describe(),
            "provenance": {
                "model_hash": file_hash(paths["model"]),
                "data_hash": work.info.data_hash,
                "source": inputs.source,
            },
        }
        header = Attributions(x, targets, inputs.y, probabilities, inputs.index, {}, **attrs)
        header.methods = dict.fromkeys(cfg.methods)
        header.tokens = ids
        with (
            job.claim() as out,
            out.write("attributions") as tmp,
            hdf5_file(tmp) as f,
        ):
            # The inputs go to the file first; a killed run leaves only this temporary.
            write_header(f, header, job.config_yaml)
            with batch_progress(bars.batch):
                explanation = explain(
                    model,
                    x,
                    targets,
                    cfg.method_options(),
                    score=cfg.score,
                    layer=layer,
                    seed=job.seed,
                    batch_size=cfg.batch_size,
                    faithfulness=cfg.faithfulness,
                    sanity=cfg.sanity,
                    metrics=cfg.metrics,
                    progress=bars.step,
                )
            if explanation.sanity_skipped:
                print(f"note: randomisation sanity check skipped: {explanation.sanity_skipped}")
            record = record_of(explanation, inputs, targets, probabilities, **attrs)
            if ids is not None:  # one value per token, for the report
                for method in record.methods.values():
                    method.tokens = per_token(method.maps, ids.shape[1])
            write_results(f, record)
            with out.write("metrics/attribute.json") as metrics:
                metrics.write_text(json.dumps(explanation.metrics(cfg.sanity.threshold), indent=2))
        bars.close()
    elapsed = time.perf_counter() - started
    print(f"attribute: {len(cfg.methods)} methods x {len(x)} inputs in {elapsed:.1f} s")


class _Bars:
    """Two progress bars on stderr: suite steps, and the batches of the run under way.

    A suite step is a method, its deletion/insertion curves, its sanity check or its
    metrics; a run is one compiled method, curve or metric over all of its rows.
    """

    def __init__(self, steps: int, tqdm):
        shown = {"disable": None, "file": sys.stderr}  # hidden when stderr is no terminal
        self.outer = tqdm(total=steps, desc="attribute", unit="step", **shown)
        self.inner = tqdm(desc="  batches", unit="input", leave=False, **shown)

    def step(self, label: str) -> None:
        """A suite step finished."""
        self.outer.set_postfix_str(label)
        self.outer.update(1)

    def batch(self, done: int, total: int) -> None:
        """A batch of a compiled run finished (a run restarts from 0)."""
        if self.inner.total != total or done <= self.inner.n:
            self.inner.reset(total=total)
        self.inner.update(done - self.inner.n)

    def close(self) -> None:
        self.inner.close()
        self.outer.close()


def _progress_bars(cfg: AttributeOptions, tqdm) -> _Bars:
    """Bars sized for the suite: each method, then its curves, sanity check and metrics."""
    per_method = 1 + cfg.faithfulness.enabled + cfg.sanity.enabled + cfg.metrics.enabled
    return _Bars(len(cfg.methods) * per_method, tqdm)


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

"""Render stage: figures and one static HTML report, from the stages' outputs only.

Reads the artifacts of data/train/extract/attribute/maximize and the metrics files;
never loads the model nor recomputes a tensor (it imports no TensorFlow). A missing
upstream output is reported as "not computed"; a truncated or foreign one is a one-line
error. Writes the whole ``paths.report`` directory atomically: ``index.html`` and
``figures/``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import Job, make_job, run_stage
from pipeline.render.options import RenderOptions


def configure(params: dict) -> Job[RenderOptions]:
    """Validate the ``render`` section and the paths."""
    return make_job(params, "render", RenderOptions)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _experiment_name() -> str:
    # `dvc exp run` exports DVC_EXP_NAME to stage commands; plain `dvc repro` does not.
    return os.environ.get("DVC_EXP_NAME") or "workspace (dvc repro)"


def _read(reader, path: Path):
    """``reader(path)``, or None where the upstream stage has not run."""
    return reader(path) if path.exists() else None


def _cache_dir(report: Path) -> Path:
    """Where reusable figures live: beside the report, git-ignored (see .gitignore)."""
    return report.parent / f".kerascope-cache-{report.name}"


def run(job: Job[RenderOptions]) -> None:
    """Draw every figure from the upstream files and write the report directory."""
    from tqdm import tqdm

    from pipeline.artifacts.activations import open_activations
    from pipeline.artifacts.attributions import read_attributions
    from pipeline.artifacts.concepts import read_concepts
    from pipeline.artifacts.dataset import read_dataset_info, read_split
    from pipeline.artifacts.evaluation import read_evaluation
    from pipeline.artifacts.maximization import read_maximization
    from pipeline.render import sections
    from pipeline.render.plots import BUNDLE_NAME, write_vega_bundle
    from pipeline.render.report import FigureWriter, build_html

    cfg, paths = job.cfg, job.paths
    started = time.perf_counter()
    evaluation = _read(read_evaluation, paths["evaluation"])
    dataset = _read(read_dataset_info, paths["dataset"])
    probe = _read(lambda p: read_split(p, "probe"), paths["dataset"])
    attributions = _read(
        lambda p: read_attributions(p, cfg.max_attribution_inputs), paths["attributions"]
    )
    maximization = _read(read_maximization, paths["maximization"])
    concepts = _read(read_concepts, paths["concepts"])
    activations = open_activations(paths["activations"]) if paths["activations"].exists() else None
    with (
        activations or contextlib.nullcontext() as acts,
        job.claim() as out,
        out.write("report") as tmp,
    ):
        cache = _cache_dir(paths["report"]) if cfg.cache else None
        writer = FigureWriter(tmp, cfg.formats, cfg.dpi, cache)
        model_hash = evaluation.model_hash if evaluation else "not computed"
        data_hash = dataset.data_hash if dataset else "not computed"
        facts = [
            ["experiment", _experiment_name()],
            ["git revision", _git_revision()],
            ["model hash", model_hash],
            ["data hash", data_hash],
        ]
        recorded = {
            "activations": acts.provenance if acts else None,
            "attributions": attributions.provenance if attributions else None,
            "maximization": maximization.provenance if maximization else None,
            "concepts": concepts.provenance if concepts else None,
        }
        metrics = {
            f"metrics/{name}.json": (paths["metrics"] / f"{name}.json").read_text()
            for name in ("train", "extract", "attribute", "maximize", "concepts")
            if (paths["metrics"] / f"{name}.json").is_file()
        }
        model_name = job.params.get("model", {}).get("name", "?")
        data_name = job.params.get("data", {}).get("name", "?")
        health = sections.layer_health(acts)
        page = build_html(
            "kerascope report",
            f"model {model_name} on data {data_name}",
            [
                sections.summary_section(evaluation, attributions, health, maximization, concepts),
                sections.attributions_section(
                    writer,
                    attributions,
                    cfg,
                    vocab=dataset.vocab if dataset else None,
                    evaluation=evaluation,
                ),
                sections.training_section(writer, evaluation, probe, cfg),
                sections.layers_section(writer, acts, cfg),
                sections.maximization_section(
                    writer, maximization, evaluation.class_names if evaluation else None
                ),
                sections.concepts_section(writer, concepts, cfg),
                sections.model_section(writer, evaluation),
                sections.provenance_section(facts, recorded, job.config_yaml, metrics),
            ],
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        write_vega_bundle(tmp / BUNDLE_NAME, cache)
        bar = tqdm(total=writer.count, desc="render", unit="figure", disable=None, file=sys.stderr)
        stats = writer.run(cfg.worker_count(), lambda: bar.update(1))
        bar.close()
    elapsed = time.perf_counter() - started
    print(
        f"render: {writer.count} figures ({stats.drawn} drawn by {stats.workers} process(es), "
        f"{stats.reused} reused) in {elapsed:.1f} s -> {paths['report'] / 'index.html'}"
    )


# Render reads arrays from files and draws them: it never imports TensorFlow.
main = run_stage(configure, run, __name__, tensorflow=False)
_main = main.apply

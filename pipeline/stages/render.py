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


def run(job: Job[RenderOptions]) -> None:
    """Draw every figure from the upstream files and write the report directory."""
    from tqdm import tqdm

    from pipeline.artifacts.activations import open_activations
    from pipeline.artifacts.attributions import read_attributions
    from pipeline.artifacts.dataset import read_dataset_info, read_split
    from pipeline.artifacts.evaluation import read_evaluation
    from pipeline.artifacts.maximization import read_maximization
    from pipeline.render import sections
    from pipeline.render.report import FigureWriter, build_html

    cfg, paths = job.cfg, job.paths
    evaluation = _read(read_evaluation, paths["evaluation"])
    dataset = _read(read_dataset_info, paths["dataset"])
    probe = _read(lambda p: read_split(p, "probe"), paths["dataset"])
    attributions = _read(
        lambda p: read_attributions(p, cfg.max_attribution_inputs), paths["attributions"]
    )
    maximization = _read(read_maximization, paths["maximization"])
    activations = open_activations(paths["activations"]) if paths["activations"].exists() else None
    bar = tqdm(desc="render", unit="layer", disable=None, file=sys.stderr)
    with (
        activations or contextlib.nullcontext() as acts,
        job.claim() as out,
        out.write("report") as tmp,
    ):
        bar.reset(total=len(acts.layers) if acts else 0)
        writer = FigureWriter(tmp, cfg.formats, cfg.dpi)
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
        }
        metrics = [paths["live"] / "metrics.json"]
        metrics += [paths["metrics"] / f"{s}.json" for s in ("extract", "attribute", "maximize")]
        model_name = job.params.get("model", {}).get("name", "?")
        data_name = job.params.get("data", {}).get("name", "?")
        page = build_html(
            "kerascope report",
            f"model {model_name} on data {data_name}",
            [
                sections.model_section(writer, evaluation),
                sections.training_section(writer, evaluation, probe, cfg),
                sections.activations_section(writer, acts, cfg, lambda: bar.update(1)),
                sections.attributions_section(writer, attributions, cfg),
                sections.maximization_section(
                    writer, maximization, evaluation.class_names if evaluation else None
                ),
                sections.metrics_section(metrics),
                sections.provenance_section(facts, recorded, job.config_yaml),
            ],
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        count = writer.count
    bar.close()
    print(f"render: {count} figures -> {paths['report'] / 'index.html'}")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

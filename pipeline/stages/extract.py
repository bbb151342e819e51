"""Extract stage: stream the chosen layers' activations to one HDF5 file.

Writes ``paths.activations`` (see :mod:`pipeline.artifacts.activations`) batch by batch
inside a temporary file renamed on success; the whole model's dead and saturated shares
to ``<paths.metrics>/extract.json`` (a DVC metric: a few columns in ``dvc exp show``) and
the per-layer health to ``<paths.metrics>/layer_health.json`` (read by the report and
``python -m pipeline.compare``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from pipeline.artifacts.activations import COMPRESSIONS
from pipeline.artifacts.dataset import InputOptions
from pipeline.config import Job, make_job, run_stage
from pipeline.distribute import STRATEGIES
from pipeline.errors import check_choice, check_positive


@dataclass
class ExtractOptions(InputOptions):
    """The ``extract`` config section: which inputs, which layers, how to write them."""

    layers: list[str] | None = None
    batch_size: int = 256
    compression: str = "none"
    fail_on_nonfinite: bool = False
    strategy: str = "auto"

    def check(self, prefix: str = "extract") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.batch_size", self.batch_size)
        check_choice(f"{prefix}.compression", self.compression, COMPRESSIONS)
        check_choice(f"{prefix}.strategy", self.strategy, STRATEGIES)


def configure(params: dict) -> Job[ExtractOptions]:
    """Validate the ``extract`` section and the paths (no TensorFlow)."""
    return make_job(params, "extract", ExtractOptions, loads_model=True)


def run(job: Job[ExtractOptions]) -> None:
    """Stream the chosen layers' activations of the chosen inputs into HDF5."""
    from tqdm import tqdm

    from pipeline.activations import (
        ActivationHealth,
        default_layers,
        iter_activations,
        layer_metas,
        overall_health,
    )
    from pipeline.artifacts.activations import write_activations, write_header
    from pipeline.budget import extraction_batch_rows
    from pipeline.stages.common import tensor_work
    from pipeline.workspace import file_hash, hdf5_file

    cfg, paths = job.cfg, job.paths
    # Every input is checked before any output is touched.
    with tensor_work(job, cfg, one_output=False) as work:
        chosen = default_layers(work.model, cfg.layers)
        metas = layer_metas(work.model, chosen)
        rows = extraction_batch_rows(work.model, chosen, cfg.batch_size)
        if rows < cfg.batch_size:
            print(f"note: extract: {rows} inputs per batch, to keep a batch's activations in 1 GiB")
        started = time.perf_counter()
        x = work.inputs.x
        bar = tqdm(total=len(x), desc="extract", unit="input", disable=None, file=sys.stderr)
        with job.claim() as out:
            with out.write("activations") as tmp, hdf5_file(tmp) as f:
                attrs = {
                    "model_hash": file_hash(paths["model"]),
                    "data_hash": work.info.data_hash,
                    "source": work.inputs.source,
                    "class_names": work.classes.class_names,
                    "input_space": work.space.describe(),
                }
                write_header(f, job.config_yaml, attrs, work.inputs.y, work.inputs.index)
                report = write_activations(
                    f,
                    iter_activations(work.model, x, chosen, rows, stats=True),
                    [x],
                    metas,
                    ActivationHealth({m.path: m.activation for m in metas}),
                    batch_size=rows,
                    compression=None if cfg.compression == "none" else cfg.compression,
                    fail_on_nonfinite=cfg.fail_on_nonfinite,
                    progress=bar.update,
                )
            with out.write("metrics/extract.json") as tmp:
                tmp.write_text(json.dumps(overall_health(report), indent=2))
            with out.write("metrics/layer_health.json") as tmp:
                tmp.write_text(json.dumps({"layers": report}, indent=2))
        bar.close()
    elapsed = time.perf_counter() - started
    where = paths["activations"]
    print(f"extract: {len(chosen)} layers x {len(x)} inputs in {elapsed:.1f} s -> {where}")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

"""Data stage: load a source, split it deterministically, pick the probe set.

Writes ``paths.dataset`` (see :mod:`pipeline.artifacts.dataset`). Imports TensorFlow
only for the ``keras.datasets`` sources.
"""

from __future__ import annotations

from dataclasses import asdict

from pipeline import data as data_lib
from pipeline.artifacts.dataset import DatasetInfo, write_dataset
from pipeline.config import Job, make_job, quiet_tensorflow_import, run_stage, to_yaml
from pipeline.data import DataOptions


def configure(params: dict) -> Job[DataOptions]:
    """Validate the ``data`` section and the paths."""
    return make_job(params, "data", DataOptions)


def run(job: Job[DataOptions]) -> None:
    """Load, split and write the data set."""
    cfg = job.cfg
    if cfg.name in data_lib.KERAS_SOURCES:
        quiet_tensorflow_import()  # keras.datasets; every other source is NumPy alone
    # Loading checks the user's data; nothing is written (or locked) until it succeeds.
    raw = data_lib.load_source(cfg.name, asdict(cfg))
    splits = data_lib.make_splits(
        raw,
        seed=job.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        probe_per_class=cfg.probe_per_class,
        limit=cfg.limit,
    )
    xte, yte = splits.test
    arrays = {
        "train": splits.train,
        "val": splits.val,
        "test": splits.test,
        "probe": (xte[splits.probe_index], yte[splits.probe_index]),
    }
    all_x = [x for x, _ in arrays.values() if x.size]
    info = DatasetInfo(
        name=cfg.name,
        class_names=list(raw.class_names),
        input_shape=tuple(raw.x.shape[1:]),
        value_range=(min(float(x.min()) for x in all_x), max(float(x.max()) for x in all_x)),
        data_hash=data_lib.data_hash(*(a for pair in arrays.values() for a in pair)),
        source=raw.source,
        skipped_files=list(raw.skipped),
        vocab=raw.vocab,
        task=raw.task,
    )
    config_yaml = to_yaml({"seed": job.params.get("seed"), "data": job.params["data"]})
    with job.claim() as out, out.write("dataset") as tmp:
        write_dataset(tmp, arrays, splits.probe_index, info, config_yaml)
    sizes = ", ".join(f"{k}={len(v[1])}" for k, v in arrays.items())
    if raw.task == "regression":
        kind = f"regression, {raw.y.reshape(len(raw.y), -1).shape[1]} target(s)"
    elif raw.task == "segmentation":
        kind = f"segmentation masks {raw.y.shape[1:]}, {len(raw.class_names)} classes"
    else:
        kind = f"{len(raw.class_names)} classes"
    print(f"data: {cfg.name} {info.input_shape}, {kind}: {sizes}")


# The data stage imports TensorFlow only for the keras.datasets sources (see run).
main = run_stage(configure, run, __name__, tensorflow=False)
_main = main.apply

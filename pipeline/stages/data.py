"""Data stage: load a source, split it deterministically, pick the probe set.

Writes ``paths.dataset`` (HDF5, kind ``dataset``): groups ``train``, ``val``, ``test``
and ``probe`` with ``x`` and ``y`` (``probe/index`` points into ``test``), and root
attributes ``name``, ``class_names``, ``input_shape``, ``value_range``, ``data_hash``.
Needs no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import data as data_lib
from pipeline.artifacts import provenance_attrs, write_attrs
from pipeline.config import at_most, one_of, positive, run_stage, section, to_yaml, workspace_paths
from pipeline.errors import KerascopeError
from pipeline.workspace import claim, hdf5_file, preflight


@dataclass
class DataConfig:
    """The ``data`` config section (one schema for every source; unused keys are ignored)."""

    name: str = "mnist_sample"
    val_fraction: float = 0.15
    test_fraction: float | None = 0.15
    probe_per_class: int = 2
    limit: int | None = None
    path: str | None = None
    x_key: str = "x"
    y_key: str | None = "y"
    class_names: list[str] | None = None
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    color_mode: str = "rgb"
    skip_bad: bool = False
    allow_download: bool = True


@dataclass
class DataRun:
    """Everything the data stage needs, validated."""

    cfg: DataConfig
    seed: int
    paths: dict[str, Path]
    params: dict


def configure(params: dict) -> DataRun:
    """Validate the ``data`` section and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    cfg = section(params, "data", DataConfig)
    one_of("data source", cfg.name, data_lib.SOURCES)
    positive("data.probe_per_class", cfg.probe_per_class)
    if cfg.limit is not None:
        positive("data.limit", cfg.limit)
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg, key)
        if value is not None and not 0 <= value < 1:
            raise KerascopeError(f"'data.{key}' must be in [0, 1), got {value}")
    if cfg.test_fraction == 0:
        raise KerascopeError(
            "'data.test_fraction' = 0 leaves no test split, but evaluation and the probe set "
            "come from it; use a fraction in (0, 1), or null for the source's official split"
        )
    if len(cfg.image_size) != 2:
        raise KerascopeError(
            f"'data.image_size' must be [height, width], got {list(cfg.image_size)}"
        )
    for side in cfg.image_size:
        at_most("data.image_size", side, 4096)
    one_of("data.color_mode", cfg.color_mode, ["rgb", "grayscale"])
    if cfg.name in ("npz", "image_folder") and not cfg.path:
        raise KerascopeError(f"data source '{cfg.name}' needs data.path")
    preflight(paths, "dataset")
    return DataRun(cfg, int(params.get("seed", 0)), paths, params)


def run(job: DataRun) -> None:
    """Load, split and write the data set."""
    cfg = job.cfg
    # Loading checks the user's data; nothing is written (or locked) until it succeeds.
    raw = data_lib.load_source(cfg.name, vars(cfg))
    splits = data_lib.make_splits(
        raw,
        seed=job.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        probe_per_class=cfg.probe_per_class,
        limit=cfg.limit,
    )
    with claim(job.paths, "dataset") as out:
        xte, yte = splits.test
        probe = (xte[splits.probe_index], yte[splits.probe_index])
        arrays = {"train": splits.train, "val": splits.val, "test": splits.test, "probe": probe}
        all_x = [a[0] for a in arrays.values()]
        digest = data_lib.data_hash(*(a for pair in arrays.values() for a in pair))
        with out.write("dataset") as tmp, hdf5_file(tmp) as f:
            for split, (x, y) in arrays.items():
                group = f.create_group(split)
                group.create_dataset("x", data=x, compression="gzip", compression_opts=4)
                group.create_dataset("y", data=y)
            f["probe"].create_dataset("index", data=splits.probe_index)
            write_attrs(
                f,
                provenance_attrs(
                    "dataset", to_yaml({"seed": job.seed, "data": job.params["data"]})
                ),
            )
            write_attrs(
                f,
                {
                    "name": cfg.name,
                    "source": raw.source,
                    "class_names": list(raw.class_names),
                    "input_shape": np.asarray(raw.x.shape[1:], dtype=np.int64),
                    "value_range": np.asarray(
                        [
                            min(float(x.min()) for x in all_x if x.size),
                            max(float(x.max()) for x in all_x if x.size),
                        ]
                    ),
                    "data_hash": digest,
                    "skipped_files": raw.skipped or None,
                },
            )
    sizes = ", ".join(f"{k}={len(v[1])}" for k, v in arrays.items())
    print(f"data: {cfg.name} {tuple(raw.x.shape[1:])}, {len(raw.class_names)} classes: {sizes}")


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

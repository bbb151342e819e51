"""Data stage: load a source, split it deterministically, pick the probe set.

Writes ``paths.dataset`` (HDF5, kind ``dataset``): groups ``train``, ``val``, ``test``
and ``probe`` with ``x`` and ``y`` (``probe/index`` points into ``test``), and root
attributes ``name``, ``class_names``, ``input_shape``, ``value_range``, ``data_hash``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from pipeline import data as data_lib
from pipeline.artifacts import provenance_attrs, write_attrs
from pipeline.config import one_of, positive, run_stage, section, to_yaml
from pipeline.errors import KerascopeError
from pipeline.io import atomic_path


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
    allow_download: bool = True


def _validate(cfg: DataConfig) -> None:
    one_of("data source", cfg.name, data_lib.SOURCES)
    positive("data.probe_per_class", cfg.probe_per_class)
    if cfg.limit is not None:
        positive("data.limit", cfg.limit)
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg, key)
        if value is not None and not 0 <= value < 1:
            raise KerascopeError(f"'data.{key}' must be in [0, 1), got {value}")
    if cfg.name in ("npz", "image_folder") and not cfg.path:
        raise KerascopeError(f"data source '{cfg.name}' needs data.path")


def _main(params: dict) -> None:
    cfg = section(params, "data", DataConfig)
    _validate(cfg)
    raw = data_lib.load_source(cfg.name, vars(cfg))
    splits = data_lib.make_splits(
        raw,
        seed=int(params.get("seed", 0)),
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        probe_per_class=cfg.probe_per_class,
        limit=cfg.limit,
    )
    xte, yte = splits.test
    probe = (xte[splits.probe_index], yte[splits.probe_index])
    arrays = {"train": splits.train, "val": splits.val, "test": splits.test, "probe": probe}
    all_x = [a[0] for a in arrays.values()]
    digest = data_lib.data_hash(*(a for pair in arrays.values() for a in pair))
    with atomic_path(params["paths"]["dataset"]) as tmp, h5py.File(tmp, "w") as f:
        for split, (x, y) in arrays.items():
            group = f.create_group(split)
            group.create_dataset("x", data=x, compression="gzip", compression_opts=4)
            group.create_dataset("y", data=y)
        f["probe"].create_dataset("index", data=splits.probe_index)
        write_attrs(
            f,
            provenance_attrs(
                "dataset", to_yaml({"seed": params.get("seed"), "data": params["data"]})
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
            },
        )
    sizes = ", ".join(f"{k}={len(v[1])}" for k, v in arrays.items())
    print(f"data: {cfg.name} {tuple(raw.x.shape[1:])}, {len(raw.class_names)} classes: {sizes}")


main = run_stage(_main)

if __name__ == "__main__":
    main()

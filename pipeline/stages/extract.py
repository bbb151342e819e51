"""Extract stage: stream the chosen layers' activations to one HDF5 file.

Writes ``paths.activations`` (kind ``activations``; layout in the README) batch by batch
into resizable chunked datasets, inside a temporary file renamed on success, and the
per-layer health metrics to ``<paths.metrics>/extract.json``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.activations import ActivationHealth, activation_kind, iter_activations
from pipeline.artifacts import (
    provenance_attrs,
    read_dataset_info,
    select_inputs,
    write_attrs,
)
from pipeline.config import one_of, positive, run_stage, section, to_yaml
from pipeline.errors import KerascopeError
from pipeline.graph import list_layers, resolve_layers
from pipeline.io import atomic_path, file_hash
from pipeline.models import check_input_shape, load_model_file

COMPRESSIONS = ("none", "lzf", "gzip")


@dataclass
class ExtractConfig:
    """The ``extract`` config section."""

    layers: list[str] | None = None
    source: str = "probe"
    count: int | None = None
    indices: list[int] | None = None
    npz_path: str | None = None
    npz_key: str = "x"
    batch_size: int = 256
    compression: str = "none"
    fail_on_nonfinite: bool = False


def _dataset_name(path: str, model_paths: set[str]) -> str:
    """HDF5 name of a layer path; a nested model's own output goes to ``<path>/_output``."""
    if any(other.startswith(path + "/") for other in model_paths):
        return f"activations/{path}/_output"
    return f"activations/{path}"


def _main(params: dict) -> None:
    cfg = section(params, "extract", ExtractConfig)
    positive("extract.batch_size", cfg.batch_size)
    one_of("extract.compression", cfg.compression, COMPRESSIONS)
    paths = params["paths"]
    info = read_dataset_info(paths["dataset"])
    inputs = select_inputs(
        paths["dataset"], cfg.source, cfg.count, cfg.indices, cfg.npz_path, cfg.npz_key
    )
    model = load_model_file(
        paths["model"], safe_mode=params.get("model", {}).get("safe_mode", True)
    )
    check_input_shape(model, inputs.x.shape[1:])
    infos = {i.path: i for i in list_layers(model)}
    selection = cfg.layers or ["all"]
    chosen = resolve_layers(model, selection)
    if selection == ["all"]:
        # A nested model's output equals its last inner layer's: keep only the inner one.
        chosen = [p for p in chosen if not any(q.startswith(p + "/") for q in chosen)]
    all_paths = set(infos)
    kinds = {p: activation_kind(model, p) for p in chosen}
    health = ActivationHealth(kinds)
    compression = None if cfg.compression == "none" else cfg.compression
    n = len(inputs.x)
    metrics_path = Path(paths["metrics"]) / "extract.json"
    started = time.perf_counter()
    with atomic_path(paths["activations"]) as tmp, h5py.File(tmp, "w") as f:
        write_attrs(f, provenance_attrs("activations", to_yaml(params)))
        write_attrs(
            f,
            {
                "model_hash": file_hash(paths["model"]),
                "data_hash": info.data_hash,
                "source": inputs.source,
                "class_names": info.class_names,
            },
        )
        f.create_dataset("inputs", data=inputs.x, compression=compression)
        f.create_dataset("labels", data=inputs.y)
        f.create_dataset("index", data=inputs.index)
        datasets: dict[str, h5py.Dataset] = {}
        progress = tqdm(
            total=n, desc="extract", unit="input", disable=None, file=sys.stderr, leave=False
        )
        for batch in iter_activations(model, inputs.x, chosen, cfg.batch_size):
            size = len(batch.outputs[0])
            if not datasets:
                datasets = _create(f, batch, chosen, infos, kinds, all_paths, n, compression)
            for name, value in _arrays(batch, chosen, all_paths).items():
                datasets[name][batch.start : batch.start + size] = value
            health.update(batch.activations)
            progress.update(size)
        progress.close()
        report = health.summary()
        bad = {p: r["nonfinite_fraction"] for p, r in report.items() if r["nonfinite_fraction"]}
        for path, share in bad.items():
            print(
                f"WARNING: extract: layer '{path}' has {share:.2%} NaN/Inf values", file=sys.stderr
            )
        if bad and cfg.fail_on_nonfinite:
            first = next(iter(bad))
            raise KerascopeError(
                f"layer '{first}' produced NaN/Inf values ({bad[first]:.2%}); "
                "set extract.fail_on_nonfinite=false to record them anyway"
            )
        f.attrs["health"] = json.dumps(report)
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps({"layers": report}, indent=2))
    elapsed = time.perf_counter() - started
    print(
        f"extract: {len(chosen)} layers x {n} inputs in {elapsed:.1f} s -> {paths['activations']}"
    )


def _arrays(batch, chosen, all_paths) -> dict[str, np.ndarray]:
    arrays = {_dataset_name(p, all_paths): batch.activations[p] for p in chosen}
    outputs = batch.outputs
    if len(outputs) == 1:
        arrays["predictions"] = outputs[0]
    else:
        arrays.update({f"predictions/{i}": out for i, out in enumerate(outputs)})
    return arrays


def _create(f, batch, chosen, infos, kinds, all_paths, n, compression):
    """Create one resizable, chunked dataset per array, sized for all ``n`` inputs."""
    datasets = {}
    for name, value in _arrays(batch, chosen, all_paths).items():
        # Chunks hold one batch of inputs, capped near 1 MiB so readers of a few inputs
        # (figures, HDFView) do not decompress whole layers.
        per_item = max(int(np.prod(value.shape[1:])) * value.dtype.itemsize, 1)
        rows = int(max(1, min(len(value), (1 << 20) // per_item)))
        datasets[name] = f.create_dataset(
            name,
            shape=(n, *value.shape[1:]),
            maxshape=(None, *value.shape[1:]),
            chunks=(rows, *value.shape[1:]),
            dtype=value.dtype,
            compression=compression,
        )
    for path in chosen:
        info = infos[path]
        write_attrs(
            datasets[_dataset_name(path, all_paths)],
            {
                "layer_path": path,
                "class_name": info.class_name,
                "config_name": info.layer.name,
                "output_shape": np.asarray(batch.activations[path].shape[1:], dtype=np.int64),
                "position": info.position,
                "call_index": info.call_index,
                "activation": kinds[path],
            },
        )
    return datasets


main = run_stage(_main)

if __name__ == "__main__":
    main()

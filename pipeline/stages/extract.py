"""Extract stage: stream the chosen layers' activations to one HDF5 file.

Writes ``paths.activations`` (kind ``activations``; layout in the README) batch by batch
into resizable chunked datasets, inside a temporary file renamed on success, and the
per-layer health metrics to ``<paths.metrics>/extract.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.artifacts import hdf5_name, provenance_attrs, write_attrs
from pipeline.config import one_of, positive, run_stage, section, to_yaml, workspace_paths
from pipeline.distribute import STRATEGIES
from pipeline.errors import KerascopeError
from pipeline.workspace import check_free_space, disk_full, hdf5_file, out_of_space, preflight

if TYPE_CHECKING:
    import keras

COMPRESSIONS = ("none", "lzf", "gzip")

#: Target size of one HDF5 chunk: big enough for fast batch writes, small enough that
#: reading a few inputs (figures, HDFView) does not decompress a whole layer.
CHUNK_BYTES = 1 << 20


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
    strategy: str = "auto"


def dataset_name(path: str, model_paths: set[str]) -> str:
    """HDF5 name of a layer path; a nested model's own output goes to ``<path>/_output``.

    Path components HDF5 cannot hold as names (``.``, ``..``) are escaped; the
    dataset's ``layer_path`` attribute keeps the real path.
    """
    if any(other.startswith(path + "/") for other in model_paths):
        return f"activations/{hdf5_name(path)}/_output"
    return f"activations/{hdf5_name(path)}"


def default_layers(model: keras.Model, selection: Sequence[str] | None) -> list[str]:
    """Resolve the config's layer selection; ``all`` leaves out nested models' outputs.

    A nested model's output equals its last inner layer's, so ``all`` keeps only the
    inner one; ask for the model's path (``base``) explicitly to store it too.
    """
    from pipeline.graph import resolve_layers

    selection = list(selection or ["all"])
    chosen = resolve_layers(model, selection)
    if selection == ["all"]:
        chosen = [p for p in chosen if not any(q.startswith(p + "/") for q in chosen)]
    return chosen


def write_extraction(
    f: h5py.File,
    model: keras.Model,
    x,
    layers: Sequence[str],
    *,
    batch_size: int = 256,
    compression: str | None = None,
    fail_on_nonfinite: bool = False,
) -> dict[str, dict[str, float]]:
    """Stream ``/inputs``, ``/predictions`` and ``/activations/...`` into an open file.

    Every array goes into a dataset created at its final size, chunked along the input
    axis and written one batch at a time, so memory holds one batch of every layer.

    Args:
        f: An HDF5 file open for writing.
        model: The model.
        x: Inputs, shape (N, ...); any sliceable array (an ``h5py.Dataset`` streams).
        layers: Resolved layer paths.
        batch_size: Inputs per forward pass.
        compression: ``None``, ``"lzf"`` or ``"gzip"``.
        fail_on_nonfinite: Raise at the first NaN/Inf instead of warning.

    Returns:
        The per-layer health summary (:meth:`ActivationHealth.summary`).

    Raises:
        KerascopeError: A layer output NaN/Inf and ``fail_on_nonfinite`` is set, or the
            file does not fit on its device.
    """
    from pipeline.activations import ActivationHealth, activation_kind, iter_activations
    from pipeline.graph import list_layers

    infos = {i.path: i for i in list_layers(model)}
    kinds = {p: activation_kind(model, p) for p in layers}
    health = ActivationHealth(kinds)
    n = len(x)
    datasets: dict[str, h5py.Dataset] = {}
    warned: set[str] = set()
    progress = tqdm(
        total=n, desc="extract", unit="input", disable=None, file=sys.stderr, leave=False
    )
    with _BackgroundWriter() as writer:
        for batch in iter_activations(model, x, layers, batch_size, stats=True):
            size = len(batch.outputs[0])
            rows = slice(batch.start, batch.start + size)
            arrays = _arrays(batch, layers, infos, np.asarray(x[rows]))
            if not datasets:
                if compression is None and f.filename:
                    # Refuse now rather than after minutes of work on a full disk.
                    per_input = sum(v.nbytes // max(len(v), 1) for v in arrays.values())
                    check_free_space(Path(f.filename), per_input * n)
                datasets = {
                    name: _create(f, name, value, n, batch_size, compression)
                    for name, value in arrays.items()
                }
                _layer_attrs(datasets, batch, layers, infos, kinds)
            writer.put([(datasets[name], rows, value) for name, value in arrays.items()])
            for path, bad in health.merge(batch.stats).items():
                if bad and path not in warned:
                    warned.add(path)
                    where = f"inputs {batch.start}..{batch.start + size - 1}"
                    if fail_on_nonfinite:
                        raise KerascopeError(
                            f"layer '{path}' produced {bad} NaN/Inf values in {where}; set "
                            "extract.fail_on_nonfinite=false to record them anyway"
                        )
                    print(
                        f"WARNING: extract: layer '{path}' produced NaN/Inf in {where}",
                        file=sys.stderr,
                    )
            progress.update(size)
    progress.close()
    report = health.summary()
    for path in warned:
        share = report[path]["nonfinite_fraction"]
        print(f"WARNING: extract: layer '{path}' has {share:.2%} NaN/Inf values", file=sys.stderr)
    return report


def _arrays(batch, layers, infos, inputs) -> dict[str, np.ndarray]:
    arrays = {"inputs": inputs}
    arrays.update({dataset_name(p, set(infos)): batch.activations[p] for p in layers})
    if len(batch.outputs) == 1:
        arrays["predictions"] = batch.outputs[0]
    else:
        arrays.update({f"predictions/{i}": out for i, out in enumerate(batch.outputs)})
    return arrays


def _create(f, name: str, value: np.ndarray, n: int, batch_size: int, compression):
    """A dataset sized for all ``n`` inputs, resizable and chunked along the input axis.

    Chunks hold a divisor of the batch size in rows (up to :data:`CHUNK_BYTES`), so
    every batch fills whole chunks and HDF5 never reads a chunk back to complete it.
    """
    per_item = max(int(np.prod(value.shape[1:])) * value.dtype.itemsize, 1)
    limit = max(1, CHUNK_BYTES // per_item)
    rows = max(d for d in range(1, min(batch_size, limit) + 1) if batch_size % d == 0)
    return f.create_dataset(
        name,
        shape=(n, *value.shape[1:]),
        maxshape=(None, *value.shape[1:]),
        chunks=(min(rows, n), *value.shape[1:]),
        dtype=value.dtype,
        compression=compression,
    )


class _BackgroundWriter:
    """Write batches to HDF5 in a thread while the next forward pass runs.

    TensorFlow releases the GIL while it computes, so the copy into the file overlaps
    with the model instead of adding to it. The queue holds at most two batches, which
    keeps memory bounded; an error in the thread is raised in the caller.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)

    def __enter__(self) -> _BackgroundWriter:
        self._thread.start()
        return self

    def put(self, writes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(writes)

    def _fail(self, exc: BaseException, dataset) -> BaseException:
        if disk_full(exc):
            # Free the file's blocks at once, so the flushes HDF5 still has to do while
            # the error travels up (and when the file closes) find room and succeed.
            filename = Path(dataset.file.filename)
            free = out_of_space(filename)
            with contextlib.suppress(OSError):
                os.truncate(filename, 0)
            return KerascopeError(free)
        return exc

    def _work(self) -> None:
        while (writes := self._queue.get()) is not None:
            try:
                if self._error is None:
                    for dataset, rows, value in writes:
                        dataset[rows] = value
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = self._fail(exc, dataset)

    def __exit__(self, *exc_info) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


def _layer_attrs(datasets, batch, layers, infos, kinds) -> None:
    for path in layers:
        info = infos[path]
        write_attrs(
            datasets[dataset_name(path, set(infos))],
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


@dataclass
class ExtractRun:
    """Everything the extract stage needs, validated."""

    cfg: ExtractConfig
    paths: dict[str, Path]
    params: dict
    safe_mode: bool
    custom_modules: list[str]


def configure(params: dict) -> ExtractRun:
    """Validate the ``extract`` section and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    cfg = section(params, "extract", ExtractConfig)
    positive("extract.batch_size", cfg.batch_size)
    one_of("extract.compression", cfg.compression, COMPRESSIONS)
    one_of("extract.strategy", cfg.strategy, STRATEGIES)
    safe_mode = bool(params.get("model", {}).get("safe_mode", True))
    custom_modules = list(params.get("model", {}).get("custom_modules") or [])
    preflight(paths, "activations", metrics=["extract.json"])
    return ExtractRun(cfg, paths, params, safe_mode, custom_modules)


def run(job: ExtractRun) -> None:
    """Stream the chosen layers' activations of the chosen inputs into HDF5."""
    from pipeline.distribute import make_strategy

    # Batches are split across the replicas of the configured strategy (several GPUs);
    # the model is loaded inside its scope so each replica has its copy of the weights.
    with make_strategy(job.cfg.strategy).scope():
        _extract(job)


def _extract(job: ExtractRun) -> None:
    from pipeline.artifacts import read_dataset_info, select_inputs
    from pipeline.models import check_input_shape, load_model_file
    from pipeline.workspace import claim, file_hash

    cfg, paths = job.cfg, job.paths
    # Every input is checked before any output is touched.
    info = read_dataset_info(paths["dataset"])
    inputs = select_inputs(
        paths["dataset"], cfg.source, cfg.count, cfg.indices, cfg.npz_path, cfg.npz_key
    )
    model = load_model_file(paths["model"], job.safe_mode, job.custom_modules)
    check_input_shape(model, inputs.x.shape[1:])
    chosen = default_layers(model, cfg.layers)
    with claim(paths, "activations", metrics=["extract.json"]) as out:
        started = time.perf_counter()
        with out.write("activations") as tmp, hdf5_file(tmp) as f:
            write_attrs(f, provenance_attrs("activations", to_yaml(job.params)))
            write_attrs(
                f,
                {
                    "model_hash": file_hash(paths["model"]),
                    "data_hash": info.data_hash,
                    "source": inputs.source,
                    "class_names": info.class_names,
                },
            )
            f.create_dataset("labels", data=inputs.y)
            f.create_dataset("index", data=inputs.index)
            report = write_extraction(
                f,
                model,
                inputs.x,
                chosen,
                batch_size=cfg.batch_size,
                compression=None if cfg.compression == "none" else cfg.compression,
                fail_on_nonfinite=cfg.fail_on_nonfinite,
            )
            f.attrs["health"] = json.dumps(report)
        with out.write("metrics/extract.json") as tmp:
            tmp.write_text(json.dumps({"layers": report}, indent=2))
    elapsed = time.perf_counter() - started
    print(
        f"extract: {len(chosen)} layers x {len(inputs.x)} inputs in {elapsed:.1f} s "
        f"-> {paths['activations']}"
    )


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

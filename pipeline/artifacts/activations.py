"""``outputs/activations.h5``: every chosen layer's activations, streamed batch by batch.

Written by the extract stage. Each activation dataset is created at its final size,
chunked along the input axis and filled one batch at a time from a background thread,
so memory holds one batch of every layer and the copy overlaps the next forward pass.
After the last batch each layer gets its per-unit health flags, so readers (the report)
never recompute them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.artifacts import common
from pipeline.errors import KerascopeError

KIND, VERSION, STAGE = "activations", 2, "extract"
COMPRESSIONS = ("none", "lzf", "gzip")

#: Target size of one HDF5 chunk: big enough for fast batch writes, small enough that
#: reading a few inputs (figures, HDFView) does not decompress a whole layer.
CHUNK_BYTES = 1 << 20

LAYOUT = common.layout(
    """
    inputs                                    the model's inputs (inputs/<i> for several)
    labels                                    true labels where known (-1 elsewhere)
    index                                     indices of the inputs in their source
    predictions                               model outputs (predictions/<i> for several outputs)
    activations/<layer path>                  one dataset per layer, (N, ...)
    activations/<layer path>@layer_path       the real layer path
    activations/<layer path>@class_name       the layer's class
    activations/<layer path>@config_name      the layer's name in its model
    activations/<layer path>@output_shape     output shape without the batch axis
    activations/<layer path>@position         topological position
    activations/<layer path>@call_index       which call of a shared layer
    activations/<layer path>@activation       the activation function (decides saturation)
    activations/<layer path>@dead_units       per unit: never above zero (bool)
    activations/<layer path>@saturated_units  per unit: saturated (bool)
    activations/<layer path>@token_grid       ViT token layers: the patch grid (h, w)
    activations/<layer path>@class_token      ViT token layers: token 0 is a class token
    @health                                   per-layer health (JSON), as in extract.json
    @model_hash                               SHA-256 of the model file
    @data_hash                                hash of the data set
    @source                                   which inputs (probe, test, npz:<path>, ...)
    @class_names                              class names (JSON)
    @input_space                              the model's input space (JSON)
    """
)


@dataclass
class LayerMeta:
    """What the writer records about one layer (from :func:`pipeline.graph.list_layers`)."""

    path: str
    class_name: str
    config_name: str
    position: int
    call_index: int
    activation: str
    is_model: bool = False
    token_grid: tuple[int, int] | None = None
    class_token: bool = False


def dataset_name(meta: LayerMeta) -> str:
    """HDF5 name of a layer; a nested model's own output goes to ``<path>/_output``.

    Path components HDF5 cannot hold as names (``.``, ``..``) are escaped; the
    dataset's ``layer_path`` attribute keeps the real path.
    """
    suffix = "/_output" if meta.is_model else ""
    return f"activations/{common.hdf5_name(meta.path)}{suffix}"


def _create(f: h5py.File, name: str, value: np.ndarray, n: int, batch_size: int, compression):
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

    @staticmethod
    def _fail(exc: BaseException, dataset) -> BaseException:
        from pipeline.workspace import disk_full, out_of_space

        if disk_full(exc):
            # Free the file's blocks at once, so the flushes HDF5 still has to do while
            # the error travels up (and when the file closes) find room and succeed.
            filename = Path(dataset.file.filename)
            message = out_of_space(filename)
            with contextlib.suppress(OSError):
                os.truncate(filename, 0)
            return KerascopeError(message)
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


def _arrays(batch, layers: list[LayerMeta], inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    arrays = (
        {"inputs": inputs[0]}
        if len(inputs) == 1
        else {f"inputs/{i}": value for i, value in enumerate(inputs)}
    )
    arrays.update({dataset_name(m): batch.activations[m.path] for m in layers})
    if len(batch.outputs) == 1:
        arrays["predictions"] = batch.outputs[0]
    else:
        arrays.update({f"predictions/{i}": out for i, out in enumerate(batch.outputs)})
    return arrays


def write_activations(
    f: h5py.File,
    batches: Iterable,
    inputs: list,
    layers: list[LayerMeta],
    health,
    *,
    batch_size: int,
    compression: str | None = None,
    fail_on_nonfinite: bool = False,
    progress=None,
) -> dict[str, dict[str, float]]:
    """Stream ``inputs``, ``predictions`` and ``activations/...`` into an open file.

    Args:
        f: An HDF5 file open for writing.
        batches: :class:`pipeline.activations.Batch` objects with health reductions
            (``iter_activations(..., stats=True)``).
        inputs: One sliceable array per model input (the arrays the batches came from).
        layers: The extracted layers, in the order of ``batches``' activations.
        health: A :class:`pipeline.activations.ActivationHealth` that merges each batch.
        batch_size: Inputs per batch (decides the chunk size).
        compression: ``None``, ``"lzf"`` or ``"gzip"``.
        fail_on_nonfinite: Raise at the first NaN/Inf instead of warning.
        progress: Called with the number of inputs of each written batch.

    Returns:
        The per-layer health summary (:meth:`ActivationHealth.summary`).

    Raises:
        KerascopeError: A layer output NaN/Inf and ``fail_on_nonfinite`` is set, or the
            file does not fit on its device.
    """
    from pipeline.workspace import check_free_space

    n = len(inputs[0])
    datasets: dict[str, h5py.Dataset] = {}
    warned: set[str] = set()
    with _BackgroundWriter() as writer:
        for batch in batches:
            size = len(batch.outputs[0])
            rows = slice(batch.start, batch.start + size)
            arrays = _arrays(batch, layers, [np.asarray(a[rows]) for a in inputs])
            if not datasets:
                if compression is None and f.filename:
                    # Refuse now rather than after minutes of work on a full disk.
                    per_input = sum(v.nbytes // max(len(v), 1) for v in arrays.values())
                    check_free_space(Path(f.filename), per_input * n)
                datasets = {
                    name: _create(f, name, value, n, batch_size, compression)
                    for name, value in arrays.items()
                }
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
            if progress is not None:
                progress(size)
    report = health.summary()
    for meta in layers:
        units = health.per_unit(meta.path)
        common.write_attrs(
            datasets[dataset_name(meta)],
            {
                "layer_path": meta.path,
                "class_name": meta.class_name,
                "config_name": meta.config_name,
                "output_shape": np.asarray(datasets[dataset_name(meta)].shape[1:], np.int64),
                "position": meta.position,
                "call_index": meta.call_index,
                "activation": meta.activation,
                "dead_units": np.asarray(units["dead"], bool),
                "saturated_units": np.asarray(units["saturated"], bool),
            },
        )
        if meta.token_grid is not None:  # a ViT's tokens: how they lie over the image
            common.write_attrs(
                datasets[dataset_name(meta)],
                {
                    "token_grid": np.asarray(meta.token_grid, np.int64),
                    "class_token": bool(meta.class_token),
                },
            )
    f.attrs["health"] = json.dumps(report)
    for path in sorted(warned):
        share = report[path]["nonfinite_fraction"]
        print(f"WARNING: extract: layer '{path}' has {share:.2%} NaN/Inf values", file=sys.stderr)
    return report


def write_header(f: h5py.File, config_yaml: str, attrs: dict, labels, index) -> None:
    """The root attributes, labels and indices of an activations file."""
    common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
    common.write_attrs(f, attrs)
    f.create_dataset("labels", data=labels)
    f.create_dataset("index", data=index)


@dataclass
class LayerRecord:
    """One stored layer: its description, health flags and (lazily read) values."""

    path: str
    class_name: str
    shape: tuple[int, ...]
    position: int
    activation: str
    dead: np.ndarray | None
    saturated: np.ndarray | None
    dataset: h5py.Dataset = field(repr=False)
    token_grid: tuple[int, int] | None = None
    class_token: bool = False

    def values(self, count: int | None = None) -> np.ndarray:
        """The activations of the first ``count`` inputs (all by default)."""
        return self.dataset[:count] if count is not None else self.dataset[()]

    @property
    def grid_shape(self) -> tuple[int, ...] | None:
        """A token layer's shape on its patch grid (h, w, C); None for other layers."""
        if self.token_grid is None:
            return None
        return (*self.token_grid, self.shape[-1])

    def grid_values(self, count: int | None = None) -> np.ndarray:
        """A token layer's activations on its patch grid (N, h, w, C), class token dropped."""
        if self.token_grid is None:
            raise KerascopeError(f"layer '{self.path}' holds no patch tokens")
        tokens = self.values(count)
        patches = tokens[:, 1:] if self.class_token else tokens
        return patches.reshape(len(tokens), *self.grid_shape)


@dataclass
class Activations:
    """An open activations file (use :func:`open_activations`)."""

    source: str
    class_names: list[str]
    health: dict[str, dict[str, float]]
    labels: np.ndarray
    index: np.ndarray
    layers: list[LayerRecord]
    provenance: dict[str, str]
    handle: h5py.File = field(repr=False)
    input_space: dict = field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        """Number of extracted inputs."""
        return len(self.index)

    def inputs(self, count: int | None = None) -> np.ndarray | None:
        """The first ``count`` inputs of a single-input model (None for several)."""
        data = self.handle.get("inputs")
        return data[:count] if isinstance(data, h5py.Dataset) else None

    def predictions(self, count: int | None = None) -> np.ndarray | None:
        """The first ``count`` outputs of a single-output model (None for several)."""
        data = self.handle.get("predictions")
        return data[:count] if isinstance(data, h5py.Dataset) else None


@contextlib.contextmanager
def open_activations(path: str | Path) -> Iterator[Activations]:
    """Open ``outputs/activations.h5``; layers are listed in execution order."""
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        found: list[h5py.Dataset] = []
        f["activations"].visititems(
            lambda _, obj: found.append(obj) if "layer_path" in obj.attrs else None
        )
        layers = [
            LayerRecord(
                path=common.text_attr(d, "layer_path"),
                class_name=common.text_attr(d, "class_name"),
                shape=tuple(int(v) for v in d.shape[1:]),
                position=int(d.attrs["position"]),
                activation=common.text_attr(d, "activation", "linear"),
                dead=np.asarray(d.attrs["dead_units"], bool) if "dead_units" in d.attrs else None,
                saturated=np.asarray(d.attrs["saturated_units"], bool)
                if "saturated_units" in d.attrs
                else None,
                dataset=d,
                token_grid=tuple(int(v) for v in d.attrs["token_grid"])
                if "token_grid" in d.attrs
                else None,
                class_token=bool(d.attrs.get("class_token", False)),
            )
            for d in found
        ]
        layers.sort(key=lambda record: record.position)
        labels = f["labels"][()] if "labels" in f else np.full(len(f["index"]), -1)
        yield Activations(
            source=common.text_attr(f, "source", "?"),
            class_names=common.read_json_attr(f, "class_names", []) or [],
            health=json.loads(common.text_attr(f, "health", "{}")),
            labels=labels,
            index=f["index"][()],
            layers=layers,
            provenance=common.common_attrs(f),
            handle=f,
            input_space=common.read_json_attr(f, "input_space", {}),
        )

"""HDF5 artifact layouts shared by the stages: names, provenance attributes and checks.

Every HDF5 file kerascope writes carries root attributes::

    kerascope_format   "<kind>/<version>", for example "activations/1"
    kerascope_version  package version that wrote it
    tensorflow_version, keras_version
    config_yaml        the resolved configuration (YAML) that produced it

Readers call :func:`open_artifact`, which checks the kind and version and turns a
missing, truncated or foreign file into a one-line :class:`KerascopeError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

import pipeline
from pipeline.errors import KerascopeError

#: Current layout version of each artifact kind. Bump when a layout changes shape.
FORMAT_VERSIONS = {
    "dataset": 1,
    "evaluation": 1,
    "activations": 1,
    "attributions": 1,
    "maximization": 1,
}

SPLITS = ("train", "val", "test", "probe")


def provenance_attrs(kind: str, config_yaml: str = "") -> dict[str, str]:
    """Root attributes that identify an artifact and what produced it.

    Versions come from the installed distributions, so writing them never imports
    TensorFlow (the data stage does not need it).
    """
    return {
        "kerascope_format": f"{kind}/{FORMAT_VERSIONS[kind]}",
        "kerascope_version": pipeline.__version__,
        "tensorflow_version": _installed("tensorflow"),
        "keras_version": _installed("keras"),
        "config_yaml": config_yaml,
    }


def _installed(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def write_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Write attributes, storing dicts and lists of strings as JSON text."""
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list | tuple) and any(isinstance(v, str | dict) for v in value)
        ):
            value = json.dumps(value)
        obj.attrs[key] = value


@contextmanager
def open_artifact(path: str | Path, kind: str, stage: str = "") -> Iterator[h5py.File]:
    """Open an HDF5 artifact for reading after checking it is complete and current.

    Args:
        path: The file.
        kind: The expected kind (a key of :data:`FORMAT_VERSIONS`).
        stage: The stage that writes it, for the hint in error messages.

    Yields:
        The open ``h5py.File``.

    Raises:
        KerascopeError: Missing, truncated/unreadable, wrong kind, or wrong version.
    """
    path = Path(path)
    hint = f"; run `dvc repro {stage}` to rebuild it" if stage else ""
    if not path.exists():
        raise KerascopeError(f"{kind} file '{path}' does not exist{hint}")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise KerascopeError(
            f"{kind} file '{path}' is truncated or not an HDF5 file{hint}"
        ) from None
    with handle:
        found = handle.attrs.get("kerascope_format")
        if isinstance(found, bytes):
            found = found.decode()
        expected = f"{kind}/{FORMAT_VERSIONS[kind]}"
        if found != expected:
            raise KerascopeError(
                f"'{path}' has layout {found or 'unknown (not written by kerascope)'}, "
                f"expected {expected}{hint}"
            )
        yield handle


def hdf5_name(path: str) -> str:
    """A layer path as an HDF5 object name: ``.`` and ``..`` components are escaped.

    HDF5 cannot name an object ``.`` or ``..`` (a layer may well be called that);
    ``%`` is escaped too, so the mapping is reversible (:func:`layer_path_of`).
    """
    parts = []
    for part in path.split("/"):
        part = part.replace("%", "%25")
        if part in (".", ".."):
            part = part.replace(".", "%2E")
        parts.append(part)
    return "/".join(parts)


def layer_path_of(name: str) -> str:
    """Invert :func:`hdf5_name`."""
    return "/".join(p.replace("%2E", ".").replace("%25", "%") for p in name.split("/"))


def read_json_attr(obj: h5py.HLObject, key: str, default=None):
    """Read an attribute written by :func:`write_attrs` as JSON text."""
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value)


@dataclass
class Split:
    """One split of the prepared data set.

    Attributes:
        x: Inputs, float32, shape (N, H, W, C) for images or (N, T, F) for sequences.
        y: Integer class labels, shape (N,).
        index: For the probe split, the indices of the examples in the test split.
    """

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray | None = None


@dataclass
class DatasetInfo:
    """What the data stage recorded about the prepared data set."""

    name: str
    class_names: list[str]
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]
    data_hash: str


def read_dataset_info(path: str | Path) -> DatasetInfo:
    """Read the data set's description (no arrays) from ``data/dataset.h5``."""
    with open_artifact(path, "dataset", "data") as f:
        return DatasetInfo(
            name=str(f.attrs["name"]),
            class_names=read_json_attr(f, "class_names"),
            input_shape=tuple(int(v) for v in f.attrs["input_shape"]),
            value_range=tuple(float(v) for v in f.attrs["value_range"]),
            data_hash=str(f.attrs["data_hash"]),
        )


def read_split(path: str | Path, split: str) -> Split:
    """Read one split (``train``, ``val``, ``test`` or ``probe``) of ``data/dataset.h5``."""
    if split not in SPLITS:
        raise KerascopeError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    with open_artifact(path, "dataset", "data") as f:
        group = f[split]
        index = group["index"][()] if "index" in group else None
        return Split(x=group["x"][()], y=group["y"][()], index=index)


@dataclass
class InputSelection:
    """The inputs a tensor stage explains: arrays plus where they came from."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray
    source: str


def select_inputs(
    dataset_path: str | Path,
    source: str = "probe",
    count: int | None = None,
    indices: list[int] | None = None,
    npz_path: str | None = None,
    npz_key: str = "x",
) -> InputSelection:
    """Choose the inputs of a tensor stage.

    Args:
        dataset_path: ``data/dataset.h5``.
        source: ``probe`` (default), ``train``, ``val``, ``test``, or ``npz``.
        count: Keep only the first ``count`` inputs of the source.
        indices: Explicit indices into the source (applied before ``count``).
        npz_path: The ``.npz`` file when ``source`` is ``npz``.
        npz_key: The array inside it.

    Returns:
        The selection; ``y`` is -1 where labels are unknown, ``index`` points into the
        source (into ``test`` for the probe set).

    Raises:
        KerascopeError: Unknown source, out-of-range indices, empty or non-finite data.
    """
    valid = (*SPLITS, "npz")
    if source not in valid:
        raise KerascopeError(f"unknown input source '{source}'; valid: {', '.join(valid)}")
    if source == "npz":
        if not npz_path or not Path(npz_path).exists():
            raise KerascopeError(f"input file '{npz_path}' does not exist; set npz_path")
        with np.load(npz_path, allow_pickle=False) as archive:
            if npz_key not in archive:
                raise KerascopeError(
                    f"'{npz_path}' has no array '{npz_key}'; valid: {', '.join(archive.keys())}"
                )
            x = archive[npz_key].astype(np.float32)
        y = np.full(len(x), -1, dtype=np.int64)
        index = np.arange(len(x))
    else:
        split = read_split(dataset_path, source)
        x, y = split.x, split.y
        index = split.index if split.index is not None else np.arange(len(x))
    if indices is not None:
        chosen = np.asarray(indices, dtype=np.int64)
        bad = chosen[(chosen < 0) | (chosen >= len(x))]
        if len(bad):
            raise KerascopeError(
                f"input index {int(bad[0])} is out of range for '{source}' (valid: 0..{len(x) - 1})"
            )
        x, y, index = x[chosen], y[chosen], index[chosen]
    if count is not None:
        if count <= 0:
            raise KerascopeError(f"input count must be positive, got {count}")
        x, y, index = x[:count], y[:count], index[:count]
    if len(x) == 0:
        raise KerascopeError(f"no inputs selected from '{source}'")
    if not np.isfinite(x).all():
        raise KerascopeError(f"inputs from '{source}' contain NaN or Inf values")
    return InputSelection(x=x, y=y, index=index, source=source)

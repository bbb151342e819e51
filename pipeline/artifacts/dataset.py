"""``data/dataset.h5``: the prepared splits and the probe set (written by the data stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.artifacts import common
from pipeline.errors import KerascopeError

KIND, VERSION, STAGE = "dataset", 1, "data"
SPLITS = ("train", "val", "test", "probe")

#: Datasets and root attributes (beside the provenance ones), as documented.
LAYOUT = common.layout(
    """
    train/x         inputs, float32
    train/y         labels, int64 (-1: unlabeled); float32 targets or int64 masks by data.task
    val/x           inputs
    val/y           labels
    test/x          inputs
    test/y          labels
    probe/x         inputs of the probe set
    probe/y         labels of the probe set
    probe/index     indices of the probe inputs in test
    vocab           text data: the token string of each id (absent: ids shown)
    @name           the data source
    @source         where it came from (a path or package)
    @class_names    one name per class (JSON)
    @input_shape    shape of one input
    @value_range    smallest and largest input value
    @data_hash      SHA-256 of every split
    @skipped_files  unreadable images skipped with data.skip_bad (JSON)
    @task           classification, regression or segmentation (absent: classification)
    """
)


@dataclass
class Split:
    """One split of the prepared data set.

    Attributes:
        x: Inputs, float32, shape (N, H, W, C) for images or (N, T, F) for sequences.
        y: Integer class labels, shape (N,), -1 where unknown; for regression float32
            targets (N,) or (N, k); for segmentation integer masks (N, H, W).
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
    source: str = ""
    skipped_files: list[str] = field(default_factory=list)
    vocab: list[str] | None = None
    task: str = "classification"


def write_dataset(
    path: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    probe_index: np.ndarray,
    info: DatasetInfo,
    config_yaml: str,
) -> None:
    """Write the four splits and their description.

    Args:
        path: The file to create (a temporary name; the caller renames it).
        splits: ``train``, ``val``, ``test``, ``probe`` -> (x, y).
        probe_index: Indices of the probe inputs in the test split.
        info: The description (its ``value_range`` and ``input_shape`` are recorded).
        config_yaml: The configuration that produced the file.
    """
    from pipeline.workspace import hdf5_file

    with hdf5_file(path) as f:
        for split in SPLITS:
            x, y = splits[split]
            group = f.create_group(split)
            group.create_dataset("x", data=x, compression="gzip", compression_opts=4)
            # Masks are images too: compressed like the inputs (labels stay as they were).
            compressed = {"compression": "gzip", "compression_opts": 4} if y.ndim > 1 else {}
            group.create_dataset("y", data=y, **compressed)
        f["probe"].create_dataset("index", data=probe_index)
        if info.vocab is not None:
            # A dataset, not an attribute: a real vocabulary outgrows HDF5's 64 KiB limit.
            words = np.asarray(info.vocab, dtype=object)
            f.create_dataset("vocab", data=words, dtype=h5py.string_dtype())
        common.write_attrs(f, common.provenance_attrs(KIND, VERSION, config_yaml))
        common.write_attrs(
            f,
            {
                "name": info.name,
                "source": info.source,
                "class_names": list(info.class_names),
                "input_shape": np.asarray(info.input_shape, dtype=np.int64),
                "value_range": np.asarray(info.value_range, dtype=np.float64),
                "data_hash": info.data_hash,
                "skipped_files": list(info.skipped_files) or None,
                # Written for regression and segmentation only: a classification data
                # set stays byte-identical to one written before tasks existed.
                "task": None if info.task == "classification" else info.task,
            },
        )


def read_dataset_info(path: str | Path) -> DatasetInfo:
    """Read the data set's description (no arrays)."""
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        return DatasetInfo(
            name=common.text_attr(f, "name"),
            class_names=common.read_json_attr(f, "class_names"),
            input_shape=tuple(int(v) for v in f.attrs["input_shape"]),
            value_range=tuple(float(v) for v in f.attrs["value_range"]),
            data_hash=common.text_attr(f, "data_hash"),
            source=common.text_attr(f, "source"),
            skipped_files=common.read_json_attr(f, "skipped_files", []),
            vocab=[w.decode() for w in f["vocab"][()]] if "vocab" in f else None,
            task=common.text_attr(f, "task") or "classification",
        )


def read_split(path: str | Path, split: str) -> Split:
    """Read one split (``train``, ``val``, ``test`` or ``probe``)."""
    if split not in SPLITS:
        raise KerascopeError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        group = f[split]
        index = group["index"][()] if "index" in group else None
        return Split(x=group["x"][()], y=group["y"][()], index=index)


def split_size(path: str | Path, split: str) -> int:
    """Number of inputs in one split (``train``, ``val``, ``test`` or ``probe``)."""
    if split not in SPLITS:
        raise KerascopeError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        return len(f[split]["x"])


def read_rows(path: str | Path, split: str, rows) -> np.ndarray:
    """Some inputs of one split, read without loading the rest (any order, repeats allowed)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    unique, where = np.unique(rows, return_inverse=True)
    with common.open_artifact(path, KIND, VERSION, STAGE) as f:
        data = f[split]["x"]
        if len(unique) and (unique[0] < 0 or unique[-1] >= len(data)):
            raise KerascopeError(f"row {int(unique[-1])} is out of range for split '{split}'")
        return data[unique][where] if len(unique) else data[:0]


@dataclass
class InputOptions:
    """Which inputs a tensor stage explains (the keys shared by extract and attribute).

    Attributes:
        source: ``probe`` (default), ``train``, ``val``, ``test``, or ``npz``.
        count: Keep only the first ``count`` inputs of the source.
        indices: Explicit indices into the source (applied before ``count``).
        npz_path: The ``.npz`` file when ``source`` is ``npz``.
        npz_key: The array inside it.
    """

    source: str = "probe"
    count: int | None = None
    indices: list[int] | None = None
    npz_path: str | None = None
    npz_key: str = "x"

    def select(self, dataset_path: str | Path) -> InputSelection:
        """The chosen inputs (see :func:`select_inputs`)."""
        return select_inputs(
            dataset_path, self.source, self.count, self.indices, self.npz_path, self.npz_key
        )


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
        if not npz_path or not Path(npz_path).is_file():
            raise KerascopeError(f"input file '{npz_path}' does not exist; set npz_path")
        try:
            with np.load(npz_path, allow_pickle=False) as archive:
                if npz_key not in archive:
                    raise KerascopeError(
                        f"'{npz_path}' has no array '{npz_key}'; valid: {', '.join(archive)}"
                    )
                x = archive[npz_key].astype(np.float32)
        except (ValueError, OSError, AttributeError):
            raise KerascopeError(f"'{npz_path}' is not a readable .npz of numbers") from None
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

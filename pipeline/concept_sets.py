"""Concept example sets and random counter-example sets for TCAV, without TensorFlow.

A concept is a folder of example images, ``concepts/<name>/`` (Kim et al. 2018, "striped"
or "dotted" textures, say). Its images go through the data's own preprocessing: they
are read like an ``image_folder`` data set (resized to the data's input size, converted
to its channels, scaled to [0, 1]) and mapped to the data's value range; the stage then
puts them in the model's input space like every other input.

Random counter-example sets are drawn from the data (the train split by default): one
per TCAV run, plus set 0, the random "concept" of the null hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data import IMAGE_SUFFIXES, read_image
from pipeline.errors import KerascopeError, choices_hint


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def find_concepts(path: str | Path, names: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """The concept folders under ``path`` and their image files, by name.

    Args:
        path: The folder of concept folders (``concepts/``). A missing folder, or one
            without sub-folders, means no concepts (the stage then computes CKA only).
        names: The concepts to use; None: every sub-folder.

    Returns:
        Concept name -> its image files (sorted), in name order (or the order asked).

    Raises:
        KerascopeError: A named concept that does not exist, or a concept folder
            without images.
    """
    path = Path(path)
    found = {p.name: p for p in _visible(path) if p.is_dir()} if path.is_dir() else {}
    if names is not None:
        missing = [name for name in names if name not in found]
        if missing:
            raise KerascopeError(
                f"no concept folder '{path / missing[0]}'; {choices_hint(missing[0], found)}"
            )
        found = {name: found[name] for name in names}
    concepts = {}
    for name, folder in found.items():
        files = [f for f in _visible(folder) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise KerascopeError(
                f"concept folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        concepts[name] = files
    return concepts


def read_concept(
    files: Sequence[Path], input_shape: Sequence[int], value_range: Sequence[float] = (0.0, 1.0)
) -> np.ndarray:
    """A concept's images as the data's inputs: (n, H, W, C) float32 in the data's range.

    Args:
        files: Image files.
        input_shape: The data's (H, W, C); C must be 1 (grayscale) or 3 (RGB).
        value_range: The data's (lo, hi); images in [0, 1] are mapped onto it.

    Raises:
        KerascopeError: Data that are not images, or an unreadable file.
    """
    if len(input_shape) != 3 or int(input_shape[-1]) not in (1, 3):
        raise KerascopeError(
            f"concept images need image data (H, W, 1 or 3), but the data's inputs are "
            f"{tuple(input_shape)}"
        )
    height, width, channels = (int(d) for d in input_shape)
    mode = "rgb" if channels == 3 else "grayscale"
    images = []
    for file in files:
        try:
            images.append(read_image(file, (height, width), mode))
        except ValueError as exc:
            raise KerascopeError(f"cannot read concept image '{file}' ({exc})") from None
    lo, hi = (float(v) for v in value_range)
    return (lo + (hi - lo) * np.stack(images)).astype(np.float32)


def random_sets(pool: int, count: int, size: int, first_size: int, seed: int) -> list[np.ndarray]:
    """Indices of ``count`` random sets drawn from ``pool`` inputs (Kim et al. 2018).

    Set 0 (the null hypothesis's random concept) has ``first_size`` inputs, the others
    ``size``. The sets are disjoint when the pool is large enough, else each is drawn
    on its own (without repeats inside a set).

    Raises:
        KerascopeError: A pool smaller than one set.
    """
    if pool < max(size, first_size):
        raise KerascopeError(
            f"random counter-example sets of {max(size, first_size)} inputs need as many "
            f"data inputs, the pool has {pool}; lower concepts.random_size or null_size"
        )
    rng = np.random.default_rng(seed)
    sizes = [first_size] + [size] * (count - 1)
    if sum(sizes) <= pool:
        order = rng.permutation(pool)
        stops = np.cumsum(sizes)
        return [np.sort(order[stop - n : stop]) for n, stop in zip(sizes, stops, strict=True)]
    return [np.sort(rng.choice(pool, n, replace=False)) for n in sizes]

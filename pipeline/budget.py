"""How many rows of a batch fit a memory budget, from a model's layer output shapes.

Apart from :mod:`pipeline.attribution` so that stages which only run forward passes
(train's evaluation, extraction, maximize's reference pass) depend on this file alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from pipeline.errors import KerascopeError
from pipeline.graph import list_layers

#: Activations one forward or gradient step may hold, in bytes.
DEFAULT_MEMORY_BUDGET = 1 << 30


def output_sizes(model: keras.Model, sample_shape: Sequence[int]) -> list[int]:
    """Values each layer call outputs for one input, the input first.

    An unknown axis (a sequence of any length) counts as the input's first axis; a model
    with no inspectable graph counts as its input ten times over.
    """
    size = int(np.prod(sample_shape))
    unknown = int(sample_shape[0]) if len(sample_shape) else 1
    try:
        infos = list_layers(model)
    except KerascopeError:
        return [size] * 10
    return [size, *(_row_values(info.output_shape, unknown) for info in infos)]


def forward_batch_rows(
    model: keras.Model, sample_shape: Sequence[int], rows: int, budget: int | None = None
) -> int:
    """At most ``rows`` rows per forward pass, fewer if they would pass ``budget``.

    A forward pass frees each output once the next layers have used it: about three of
    the largest layer outputs are alive at once (a layer's input, its output and a
    temporary), in float32.

    Args:
        model: The model.
        sample_shape: One input's shape (no batch axis).
        rows: The configured batch size.
        budget: Bytes (default :data:`DEFAULT_MEMORY_BUDGET`, read at call time).
    """
    budget = DEFAULT_MEMORY_BUDGET if budget is None else budget
    per_row = 3 * 4 * max(output_sizes(model, sample_shape))
    return max(1, min(int(rows), budget // max(1, per_row)))


def extraction_batch_rows(
    model: keras.Model, paths: Sequence[str], rows: int, budget: int | None = None
) -> int:
    """At most ``rows`` inputs per extraction batch, fewer if their activations pass ``budget``.

    Every chosen layer's output is kept for every row, and twice: the batch being
    written and the next one being computed. Without this bound a MobileNetV2 at
    224x224 (155 layers, 100 inputs in one 256-input batch) peaked at 17.6 GB.

    Args:
        model: The model.
        paths: The layers extracted.
        rows: The configured batch size.
        budget: Bytes (default :data:`DEFAULT_MEMORY_BUDGET`, read at call time).

    Returns:
        The batch size to use; the file's contents do not depend on it.
    """
    budget = DEFAULT_MEMORY_BUDGET if budget is None else budget
    shapes = {i.path: i.output_shape for i in list_layers(model)}
    per_row = 2 * 4 * sum(_row_values(shapes.get(p), 1) for p in paths)
    return max(1, min(int(rows), budget // max(1, per_row)))


def _row_values(shape, unknown: int) -> int:
    """Values in one row of a layer output.

    Several outputs add up, an unknown axis counts ``unknown``, an unknown shape 0.
    """
    if shape is None:
        return 0
    if any(isinstance(d, tuple | list) for d in shape):  # several outputs
        return sum(_row_values(s, unknown) for s in shape)
    return int(np.prod([unknown if d is None else int(d) for d in shape]))

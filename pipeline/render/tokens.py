"""Text models in the report: tokens coloured by their attribution, as HTML spans.

Drawn from the attributions file only (its ``tokens`` ids and each method's
``methods/<method>/tokens`` values) and the data set's vocabulary. Every token string is
escaped where the block is written (:func:`pipeline.render.report.esc`): a vocabulary
entry ``<script>`` is shown as text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data import PAD_ID

#: Diverging colours (ColorBrewer RdBu ends): red raised the explained score, blue
#: lowered it; the opacity is the value's share of the row's largest magnitude.
POSITIVE = (178, 24, 43)
NEGATIVE = (33, 102, 172)
#: The strongest token stays below full opacity, so black text on it remains readable.
MAX_ALPHA = 0.85


def token_text(token_id: int, vocab: Sequence[str] | None) -> str:
    """The string of a token id: its vocabulary entry, or ``#<id>`` without one."""
    if vocab is not None and 0 <= token_id < len(vocab):
        return str(vocab[token_id])
    return f"#{token_id}"


def token_colour(value: float, scale: float) -> str:
    """A CSS ``rgba`` background for a signed attribution on a row scaled to ``scale``."""
    if not np.isfinite(value) or scale <= 0 or not np.isfinite(scale):
        return "rgba(0,0,0,0)"
    r, g, b = POSITIVE if value >= 0 else NEGATIVE
    alpha = MAX_ALPHA * min(1.0, abs(float(value)) / scale)
    return f"rgba({r},{g},{b},{alpha:.3f})"


def token_row(
    ids: np.ndarray, values: np.ndarray, vocab: Sequence[str] | None, pad_id: int = PAD_ID
) -> list[tuple[str, float, str]]:
    """One input's tokens with their attribution and colour, padding left out.

    Args:
        ids: The input's token ids (L,).
        values: One attribution per token (L,).
        vocab: The token string of each id, or None (ids are shown as ``#id``).
        pad_id: The padding id (Keras's convention: 0), whose tokens are hidden.

    Returns:
        ``(token string, value, CSS colour)`` per shown token; the colour scale is the
        largest magnitude among the shown tokens (each row has its own scale, as each
        image map in the attribution grid does).
    """
    ids = np.asarray(ids).astype(np.int64).reshape(-1)
    values = np.asarray(values, np.float64).reshape(-1)
    keep = ids != pad_id
    shown = values[keep]
    finite = shown[np.isfinite(shown)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    return [
        (token_text(int(i), vocab), float(v), token_colour(float(v), scale))
        for i, v in zip(ids[keep], shown, strict=True)
    ]

"""Which layers the report draws, and how it groups them into blocks.

A 200-layer ``keras.applications`` model has a dozen kinds of layers per block; a reader
inspects the convolutions, dense and recurrent layers and each block's output, and wants
the normalisation, activation and merge layers only as rows of the health table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Layer classes whose outputs a reader inspects: they hold the learned features.
INSPECTED_CLASSES = frozenset(
    {
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "SeparableConv1D",
        "SeparableConv2D",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "Dense",
        "EinsumDense",
        "LSTM",
        "GRU",
        "SimpleRNN",
        "Bidirectional",
        "ConvLSTM1D",
        "ConvLSTM2D",
        "ConvLSTM3D",
        "MultiHeadAttention",
    }
)
#: The ``render.layers`` choices.
LAYER_SELECTIONS = ("inspected", "all")

# The block token of keras.applications names: conv2_block1_out (ResNet, DenseNet),
# block_3_expand (MobileNetV2), block2a_expand_conv (EfficientNet), block1_conv1 (VGG,
# Xception). The key is the name up to and including that token.
_BLOCK = re.compile(r"^(.*?block_?\d+[a-z]?)(?=_|$)")


def block_key(path: str) -> str | None:
    """The block a layer belongs to, from its path, or None.

    Nested models give their path prefix (``base/...``); inside it, or at top level, a
    ``keras.applications``-style name gives the name up to its ``block`` token.

    Args:
        path: The layer path (``/`` separates nested models).

    Returns:
        ``prefix/blockN`` style key, or None for a top-level layer outside any block.
    """
    *outer, name = path.split("/")
    match = _BLOCK.match(name)
    if match:
        return "/".join([*outer, match.group(1)])
    return "/".join(outer) or None


@dataclass
class LayerGroup:
    """Consecutive layers of one block (or of no block)."""

    title: str
    paths: list[str]
    keyed: bool


def group_layers(paths: Sequence[str]) -> list[LayerGroup]:
    """Group layer paths (in execution order) by block; unkeyed runs form one group each.

    Args:
        paths: Layer paths in model order.

    Returns:
        Groups in order; a block split by other layers appears once per run.
    """
    groups: list[LayerGroup] = []
    last_key: object = object()
    for path in paths:
        key = block_key(path)
        if groups and key == last_key:
            groups[-1].paths.append(path)
        else:
            groups.append(LayerGroup(key or path, [path], key is not None))
        last_key = key
    # A block split by one stray layer (ResNet's unnamed pooling inside conv2_block3)
    # stays one block: A, stray, A becomes A.
    merged: list[LayerGroup] = []
    for group in groups:
        if (
            len(merged) >= 2
            and group.keyed
            and not merged[-1].keyed
            and merged[-2].keyed
            and merged[-2].title == group.title
        ):
            stray = merged.pop()
            merged[-1].paths += stray.paths + group.paths
        else:
            merged.append(group)
    groups = merged
    for group in groups:
        if not group.keyed and len(group.paths) > 1:
            group.title = f"{group.paths[0]} … {group.paths[-1]}"
    return groups


def inspected(paths: Sequence[str], class_names: Sequence[str]) -> set[str]:
    """The layers drawn by default: learned-feature layers and each block's output.

    Args:
        paths: Layer paths in model order.
        class_names: Each layer's class name.

    Returns:
        The subset of ``paths`` to draw.
    """
    chosen = {p for p, c in zip(paths, class_names, strict=True) if c in INSPECTED_CLASSES}
    for group in group_layers(paths):
        if group.keyed:
            chosen.add(group.paths[-1])
    if paths:
        chosen.add(paths[-1])  # the model's output
    return chosen

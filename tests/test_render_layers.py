"""Which layers the report draws, and the blocks it groups them by, on real architectures."""

from __future__ import annotations

import keras
import pytest

from pipeline.render.layers import block_key, group_layers, inspected


def _layers(model):
    return [layer.name for layer in model.layers], [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize(
    ("build", "blocks"),
    [
        # Blocks per architecture, from their papers: ResNet-50 has 3 + 4 + 6 + 3
        # bottleneck blocks; MobileNetV2 16 inverted residual blocks after the first
        # (named block_1 ... block_16); EfficientNet-B0 16 MBConv blocks (1a ... 7a).
        (lambda: keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3)), 16),
        (lambda: keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3)), 16),
        (lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3)), 16),
    ],
)
def test_keras_applications_blocks_are_found_by_name(build, blocks):
    paths, classes = _layers(build())
    groups = group_layers(paths)
    keyed = [g for g in groups if g.keyed]
    assert len(keyed) == blocks, [g.title for g in keyed]
    # Every layer is in exactly one group, in model order.
    assert [p for g in groups for p in g.paths] == paths
    chosen = inspected(paths, classes)
    # Every convolution is drawn, every block's last layer too, and no normalisation.
    convs = {p for p, c in zip(paths, classes, strict=True) if "Conv" in c}
    assert convs <= chosen
    assert {g.paths[-1] for g in keyed} <= chosen
    outputs = {g.paths[-1] for g in keyed}
    drawn_norms = [
        p for p, c in zip(paths, classes, strict=True) if p in chosen - outputs and "Norm" in c
    ]
    assert not drawn_norms
    # The page stays light: most of a 150-200 layer model is only a table row.
    assert len(chosen) < 0.6 * len(paths)


def test_block_keys_of_nested_models_and_plain_names():
    assert block_key("conv2_block1_out") == "conv2_block1"
    assert block_key("block_3_expand_relu") == "block_3"
    assert block_key("block2a_expand_conv") == "block2a"
    assert block_key("block1_conv1") == "block1"
    assert block_key("base/block1_conv1") == "base/block1"
    assert block_key("base/dense") == "base"
    assert block_key("dense") is None
    assert block_key("blocker") is None  # "block" must be followed by a number
    groups = group_layers(["conv", "pool", "base/a", "base/b", "dense", "out"])
    assert [(g.title, g.paths) for g in groups] == [
        ("conv … pool", ["conv", "pool"]),
        ("base", ["base/a", "base/b"]),
        ("dense … out", ["dense", "out"]),
    ]

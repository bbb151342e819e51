"""conf/ is the single source: params.yaml must be its exact composition."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from pipeline.config import apply_overrides, compose, section
from pipeline.errors import KerascopeError
from pipeline.stages.train import TrainOptions


def test_params_yaml_is_the_composition_of_conf():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert compose(conf_dir=REPO / "conf") == committed, (
        "params.yaml drifted from conf/; regenerate it with "
        "`python -m pipeline.config` (see README)"
    )


def test_conf_has_no_interpolation():
    # DVC writes the composition unresolved, so ${...} would reach stages verbatim.
    for path in (REPO / "conf").rglob("*.yaml"):
        text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert "${" not in text, path


@pytest.mark.parametrize(
    "group", ["data", "model", "train", "extract", "attribute", "maximize", "concepts", "render"]
)
def test_every_group_option_composes(group):
    for option in sorted((REPO / "conf" / group).glob("*.yaml")):
        cfg = compose([f"{group}={option.stem}"], conf_dir=REPO / "conf")
        assert isinstance(cfg[group], dict)


def test_overrides_swap_groups_and_set_keys():
    params = compose(conf_dir=REPO / "conf")
    out = apply_overrides(params, ["model=mlp", "train.epochs=3"], REPO / "conf")
    assert out["model"]["name"] == "mlp" and out["model"]["dense_units"] == [128, 64]
    assert out["train"]["epochs"] == 3
    assert params["train"]["epochs"] != 3  # the input is not modified


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model=resnet", "valid: lstm, mlp, mnist_cnn, pretrained, text_cnn, vgg_small"),
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("train.epochs", "key=value"),
    ],
)
def test_bad_overrides_are_one_line(override, fragment):
    params = compose(conf_dir=REPO / "conf")
    with pytest.raises(KerascopeError) as info:
        apply_overrides(params, [override], REPO / "conf")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_type_is_one_line():
    params = compose(["train.epochs=abc"], conf_dir=REPO / "conf")
    with pytest.raises(KerascopeError) as info:
        section(params, "train", TrainOptions)
    assert "train.epochs" in str(info.value) and "abc" in str(info.value)
    assert "\n" not in str(info.value)

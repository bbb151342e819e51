"""Bad input to the foundation stages: one line on stderr, exit 2, no new outputs."""

from __future__ import annotations

import pytest
from conftest import REPO, python_cmd, run


@pytest.mark.parametrize(
    ("stage", "args", "expected"),
    [
        ("train", ["model=nope"], "valid: lstm, mlp, mnist_cnn, pretrained, text_cnn, vgg_small"),
        ("train", ["train.epochs=abc"], "invalid value 'abc' for 'train.epochs'"),
        ("train", ["train.batch_size=0"], "'train.batch_size' must be a positive number"),
        ("train", ["train.batch_size=-4"], "'train.batch_size' must be a positive number"),
        ("train", ["train.strategy=tpu"], "valid: auto, mirrored, one_device, multi_worker"),
        ("train", ["trian.epochs=1"], "unknown config key 'trian.epochs'"),
        ("train", ["model=pretrained", "model.path=/no/such/model.keras"], "does not exist"),
        ("data", ["data=npz", "data.path=/no/such/file.npz"], "does not exist"),
        ("data", ["data=image_folder", "data.path=/no/such/dir"], "does not exist"),
        ("data", ["data.name=imagenet"], "invalid data source 'imagenet'"),
    ],
)
def test_bad_input_is_one_line(tmp_path, stage, args, expected):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "conf").symlink_to(REPO / "conf")
    proc = run(
        python_cmd("-m", f"pipeline.stages.{stage}", *args),
        tmp_path,
        check=False,
        env={"KERASCOPE_ROOT": str(tmp_path)},
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {stage}: ") and expected in lines[0]
    # Nothing was written beside the inputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "params.yaml"]


def test_model_with_wrong_input_shape_is_rejected(tmp_path):
    """A pretrained model whose input does not fit the data fails before any output.

    Images are resized and their channels converted to fit a model (8x8 digits into a
    28x28 net work); inputs of another rank cannot be made to fit."""
    import keras

    from pipeline.stages.data import _main as data_main

    (tmp_path / "conf").symlink_to(REPO / "conf")
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {
        "name": "digits",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "probe_per_class": 1,
    }
    params["paths"] = {k: str(tmp_path / v) for k, v in params["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    data_main(params)
    model = keras.Sequential([keras.Input((28, 5)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(tmp_path / "user.keras")
    proc = run(
        python_cmd(
            "-m",
            "pipeline.stages.train",
            "model=pretrained",
            f"model.path={tmp_path / 'user.keras'}",
        ),
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "expects inputs of shape (28, 5) but the data have shape (8, 8, 1)" in proc.stderr
    assert not (tmp_path / "outputs" / "model.keras").exists()

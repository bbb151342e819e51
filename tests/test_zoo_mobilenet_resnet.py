"""MobileNetV2 and ResNet50V2 (keras.applications, weights=None) through `dvc exp run`."""

from __future__ import annotations

import pytest
from zoo import check_outputs, check_report, run_experiment, zoo_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return zoo_repo(tmp_path_factory.mktemp("zoo") / "repo")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "mode", "layer"),
    [("MobileNetV2", "tf", "block_3_expand"), ("ResNet50V2", "torch", "conv2_block1_out")],
)
def test_application_model_runs_every_stage(repo, tmp_path, name, mode, layer):
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    # MNIST digits are 28x28 grey: kerascope resizes them and repeats the channel.
    run_experiment(repo, path, mode)
    check_outputs(repo, model, mode, layer)
    if name == "ResNet50V2":
        # About 190 layers: the report must stay light and render completely.
        sizes = check_report(repo, tmp_path / "chrome-profile")
        print(f"ResNet50V2 report: {sizes}")

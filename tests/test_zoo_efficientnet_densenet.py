"""EfficientNetB0 and DenseNet121 (keras.applications, weights=None) through `dvc exp run`."""

from __future__ import annotations

import pytest
from zoo import check_outputs, run_experiment, zoo_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return zoo_repo(tmp_path_factory.mktemp("zoo") / "repo")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "mode", "layer"),
    [
        ("EfficientNetB0", "none", "block2a_expand_conv"),
        ("DenseNet121", "caffe", "conv2_block1_concat"),
    ],
)
def test_application_model_runs_every_stage(repo, tmp_path, name, mode, layer):
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    run_experiment(repo, path, mode)
    check_outputs(repo, model, mode, layer)

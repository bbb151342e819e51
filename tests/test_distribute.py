"""tf.distribute: per-replica batches on two logical CPU devices (a real MirroredStrategy)."""

from __future__ import annotations

import textwrap

import pytest
from conftest import python_cmd, run

from pipeline.distribute import make_strategy, per_replica_batch, split_for_replicas
from pipeline.errors import KerascopeError


def test_split_for_replicas_keeps_every_example_in_order():
    import numpy as np

    batch = np.arange(7)
    chunks = split_for_replicas(batch, 2)
    assert [len(c) for c in chunks] == [4, 3]
    assert np.array_equal(np.concatenate(chunks), batch)


def test_default_strategy_and_bad_names():
    strategy = make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert per_replica_batch(64, strategy) == 64
    with pytest.raises(KerascopeError, match="valid: auto, mirrored"):
        make_strategy("tpu")


SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pipeline.distribute import make_strategy, per_replica_batch, run_distributed
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    assert per_replica_batch(64, strategy) == 32
    try:
        per_replica_batch(63, strategy)
        raise SystemExit("uneven batch accepted")
    except Exception as exc:
        assert "multiple of 2" in str(exc)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(0).random((7, 3)).astype("float32")
    seen = []
    @tf.function
    def fn(batch):
        return {"y": model(batch), "n": tf.shape(batch)[:1] + 0 * tf.shape(batch)[:1]}
    out = run_distributed(fn, x, strategy)
    expected = x @ model.layers[0].kernel.numpy() + model.layers[0].bias.numpy()
    assert np.allclose(out["y"], expected, atol=1e-6), (out["y"], expected)
    assert out["n"].tolist() == [4, 3], out["n"]
    with strategy.scope():
        model.compile("sgd", "mse")
    model.fit(x, np.zeros((7, 2)), batch_size=4, epochs=1, verbose=0)
    print("OK")
    """
)


def test_mirrored_strategy_splits_global_batches(tmp_path):
    proc = run(python_cmd("-c", SCRIPT), tmp_path)
    assert proc.stdout.strip().endswith("OK")


TENSOR_STAGES_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pipeline.activations import extract_activations, iter_activations
    from pipeline.attribution import gradcam, integrated_gradients, saliency, scorecam
    from pipeline.distribute import replicas_in_scope
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    x = np.random.default_rng(0).random((7, 8, 8, 1)).astype("float32")  # 7: uneven split
    t = np.array([0, 1, 2, 0, 1, 2, 0])
    def everything(m):
        return {
            "acts": extract_activations(m, x, "all", 4),
            "stats": [b.stats for b in iter_activations(m, x, "all", 4, stats=True)],
            "saliency": saliency(m, x, t, batch_size=4),
            "gradcam": gradcam(m, x, t, batch_size=4).raw,
            "ig": integrated_gradients(m, x, t, steps=4, batch_size=10).attributions,
            "scorecam": scorecam(m, x, t, batch_size=8).raw,
        }
    single = everything(model)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        assert replicas_in_scope() == 2
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        mirrored = everything(clone)
    for layer in single["acts"]:
        assert np.allclose(single["acts"][layer], mirrored["acts"][layer], atol=1e-6), layer
    for a, b in zip(single["stats"], mirrored["stats"]):
        for layer in a:
            for key in a[layer]:
                assert np.allclose(a[layer][key], b[layer][key], atol=1e-5), (layer, key)
    for key in ("saliency", "gradcam", "ig", "scorecam"):
        assert single[key].shape == mirrored[key].shape, key
        assert np.allclose(single[key], mirrored[key], atol=1e-5), key
    print("OK")
    """
)


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_tensor_stages_split_batches_across_two_replicas(tmp_path, onednn):
    """Extract and attribute under a two-replica MirroredStrategy equal one device.

    Batches of one input (Score-CAM: 8 masked inputs of 4 channels per step, 7 inputs)
    used to leave a replica empty, which oneDNN's ReluGrad refuses on AVX-512 CPUs;
    the suite runs with oneDNN on and off.
    """
    env = {"TF_ENABLE_ONEDNN_OPTS": onednn}
    proc = run(python_cmd("-c", TENSOR_STAGES_SCRIPT), tmp_path, env=env)
    assert proc.stdout.strip().endswith("OK")


def test_tensor_stages_take_a_strategy_from_config(tmp_path):
    """`extract.strategy` / `attribute.strategy` reach the stages; a bad name is one line."""
    import h5py
    import numpy as np
    from conftest import write_tiny_project

    from pipeline.stages.attribute import _main as attribute
    from pipeline.stages.extract import _main as extract

    params, _, _ = write_tiny_project(tmp_path, n=8)
    params["attribute"].update(methods=["saliency", "gradcam"])
    params["attribute"]["faithfulness"]["enabled"] = False
    params["attribute"]["sanity"]["enabled"] = False
    results = {}
    for name in ("auto", "mirrored"):
        params["extract"]["strategy"] = params["attribute"]["strategy"] = name
        extract(params)
        attribute(params)
        with (
            h5py.File(params["paths"]["activations"]) as a,
            h5py.File(params["paths"]["attributions"]) as b,
        ):
            results[name] = (a["activations/conv"][()], b["methods/gradcam/maps"][()])
    for single, mirrored in zip(results["auto"], results["mirrored"], strict=True):
        np.testing.assert_allclose(single, mirrored, atol=1e-6)
    params["extract"]["strategy"] = "tpu"
    with pytest.raises(KerascopeError, match="valid: auto, mirrored, one_device, multi_worker"):
        extract(params)

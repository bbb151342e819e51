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

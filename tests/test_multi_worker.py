"""`multi_worker`: two worker processes on this machine equal a one-device run.

Each worker is its own process with a ``TF_CONFIG`` naming both (two ``127.0.0.1``
ports), so ``MultiWorkerMirroredStrategy`` runs its real collective ops over gRPC.
Both extract activations and compute saliency and Grad-CAM maps under the strategy's
scope, as the extract and attribute stages do (and, in the training test, first train
the same tiny model on the same global batches, as the train stage does). A third
process runs the same work on one device.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pipeline.distribute import make_strategy
    # The strategy comes first: collective ops must be configured before TensorFlow's
    # runtime starts.
    strategy = make_strategy(sys.argv[1])
    import keras
    from pipeline.activations import extract_activations
    from pipeline.attribution import gradcam, saliency

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((24, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 24)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ])
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    history = {}
    if sys.argv[3] == "train":
        # 17 = 8 + 8 + 1: the last global batch is smaller than the replica count, so one
        # worker's chunk is padding (weight 0); the 8s split 4 + 4. Validation: 7 = 4 + 3.
        xt, yt, val = x[:17], y[:17], (x[17:], y[17:])
        if strategy.num_replicas_in_sync > 1:
            from pipeline.training import fit_distributed

            history = fit_distributed(model, xt, yt, epochs=2, batch_size=8, shuffle=False,
                                      validation_data=val, strategy=strategy, verbose=False)
        else:
            history = model.fit(xt, yt, batch_size=8, epochs=2, shuffle=False,
                                validation_data=val, verbose=0).history
    probe, targets = x[:7], np.array([0, 1, 2, 0, 1, 2, 0])  # 7: uneven across workers
    with strategy.scope():
        acts = extract_activations(model, probe, "all", 4)
        maps = {
            "saliency": saliency(model, probe, targets, batch_size=4),
            "gradcam": gradcam(model, probe, targets, layer="conv", batch_size=4).raw,
        }
    np.savez(
        sys.argv[2],
        replicas=strategy.num_replicas_in_sync,
        **{f"weight{i}": w for i, w in enumerate(model.get_weights())},
        **{f"acts/{k}": v for k, v in acts.items()},
        **maps,
        **{f"history/{k}": np.asarray(v) for k, v in history.items()},
    )
    """
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(strategy: str, out, tf_config: dict | None, work: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERASCOPE_ROOT")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, strategy, str(out), work],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen, what: str) -> None:
    try:
        # Generous: three TensorFlow processes share the CPU cores (about 40 s of CPU
        # time in all); a loaded 2-core machine took 90 s of wall time.
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{what} timed out\n{err[-3000:]}") from None
    assert proc.returncode == 0, f"{what} failed ({proc.returncode})\n{err[-3000:]}"


def _compare(tmp_path, work: str) -> None:
    """Run ``work`` on two workers and on one device; every result must agree."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = [
        _start(
            "multi_worker",
            tmp_path / f"worker{i}.npz",
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
            work,
        )
        for i in range(2)
    ]
    single = _start("one_device", tmp_path / "single.npz", None, work)
    try:
        for i, proc in enumerate(procs):
            _finish(proc, f"worker {i}")
        _finish(single, "one-device run")
    finally:
        for proc in [*procs, single]:
            if proc.poll() is None:
                proc.kill()
    expected = np.load(tmp_path / "single.npz")
    assert int(expected["replicas"]) == 1
    for i in range(2):
        got = np.load(tmp_path / f"worker{i}.npz")
        assert int(got["replicas"]) == 2
        assert sorted(got.files) == sorted(expected.files)
        for key in expected.files:
            assert got[key].shape == expected[key].shape, (i, key)
            if key != "replicas":
                # The runs differ only in summation order: two workers all-reduce two
                # partial gradient sums, one device sums in one kernel (float32 rounding,
                # ~6e-8 relative per addition). Six SGD steps (lr 0.5) on weights of
                # order 1 keep that near 1e-6; 1e-4 relative (1e-5 absolute, for values
                # near zero) leaves two orders of margin, yet a real difference (a loss
                # scaled by the local instead of the global batch, a dropped or doubled
                # example) changes the update itself, far beyond it.
                np.testing.assert_allclose(
                    got[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key
                )


@pytest.mark.slow
def test_two_workers_extract_and_attribute_like_one_device(tmp_path):
    """Each worker computes its replica's chunk; both end with every input's result."""
    _compare(tmp_path, "tensors")


@pytest.mark.slow
def test_two_workers_train_like_one_device(tmp_path):
    """Two workers train with :func:`pipeline.training.fit_distributed`; one device fits.

    Keras 3's ``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585),
    so the workers run the custom loop the train stage uses there. Same global batches,
    same SGD updates: the weights, the per-epoch loss, accuracy and validation scores,
    and the activations and maps computed from the weights agree up to float32 summation
    order (see ``_compare``).
    """
    _compare(tmp_path, "train")


@pytest.mark.slow
def test_train_stage_on_two_workers_through_dvc(tmp_path):
    """As the README launches it: the chief runs ``dvc exp run``, the other worker the
    stage in its own copy of the workspace. Both train the same weights (the same test
    accuracy); only the chief writes outputs, the other's temporary directory is gone."""
    from conftest import SHRINK, copy_repo, run

    from pipeline.artifacts.evaluation import read_evaluation

    shrink = {**SHRINK, "train/default.yaml": {"epochs": 2, "batch_size": 64}}
    chief, other = (copy_repo(tmp_path / name, shrink) for name in ("chief", "other"))
    run(["dvc", "repro", "data"], chief)
    # The other worker's copy gets the same data, as `dvc pull` would bring it.
    (other / "data").mkdir(exist_ok=True)
    shutil.copy2(chief / "data/dataset.h5", other / "data/dataset.h5")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    env = [
        {
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            ),
            "CUDA_VISIBLE_DEVICES": "",
        }
        for i in range(2)
    ]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    other_env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERASCOPE_ROOT")}
    other_env.update(env[1], TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.train", "train.strategy=multi_worker"],
        cwd=other,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=other_env,
    )
    try:
        cmd = ["dvc", "exp", "run", "train", "-S", "train.strategy=multi_worker"]
        chief_run = run(cmd, chief, env=env[0], timeout=300)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]

    headline = json.loads((chief / "outputs/metrics/train.json").read_text())
    assert headline["accuracy"] > 0.3  # 10 classes: chance is 0.1
    # The other worker evaluated its own copy of the weights: the same, to print precision.
    assert f"test accuracy {headline['accuracy']:.4f}" in out
    assert f"test accuracy {headline['accuracy']:.4f}" in chief_run.stdout
    history = read_evaluation(chief / "outputs/evaluation.h5").history
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(v) == 2 for v in history.values())
    assert history["loss"][1] < history["loss"][0]
    live = json.loads((chief / "outputs/live/metrics.json").read_text())
    assert {"train", "val"} <= set(live) and {"loss", "accuracy"} <= set(live["train"])
    assert (chief / "outputs/model.keras").is_file()
    # The other worker wrote nothing into its workspace, and removed its scratch copies.
    assert not (other / "outputs").exists() or not any((other / "outputs").iterdir())
    assert list(scratch.iterdir()) == []

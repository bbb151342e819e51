"""A custom distributed training loop, for strategies under which ``model.fit`` fails.

Keras 3's ``fit`` cannot run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the train stage trains with :func:`fit_distributed` when
several workers share the work. The loop follows TensorFlow's "Custom training with
tf.distribute.Strategy" guide: one ``tf.function`` step runs ``strategy.run`` on each
replica's share of the global batch, each replica's loss is its examples' summed loss
divided by the GLOBAL batch size (so the all-reduced gradient is the gradient of the
global batch's mean loss, exactly what one device computes), and the model's own Keras
optimizer applies the summed gradients.

Pure tensor code: arrays in, a history dict out; no files, config or plotting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.distribute import pad_for_replicas
from pipeline.errors import KerascopeError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans more than one worker process (where ``fit`` fails)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker")) > 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: the chief, or worker 0 without a chief.

    The rule of TensorFlow's multi-worker guide ("Multi-worker training with Keras",
    model saving): every other worker saves to a temporary location instead.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and (resolver.task_id or 0) == 0


def _per_example_loss(model: keras.Model) -> Callable:
    """The compiled loss as a function returning one value per example."""
    import keras

    loss = model.loss
    if isinstance(loss, str) or loss is None:
        # A name (as the train stage compiles) resolves to Keras's per-example function.
        return keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        # Loss.call skips the object's reduction: we reduce over the global batch below.
        return loss.call
    if callable(loss):
        return loss
    raise KerascopeError(
        f"fit_distributed needs a model compiled with one loss (a name, a function or a "
        f"keras.losses.Loss), got {type(loss).__name__}"
    )


def _batches(n: int, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _distribute(strategy, arrays: Sequence[np.ndarray]):
    """Split a global batch across replicas (never an empty chunk), with 0/1 weights.

    A batch smaller than the replica count is padded by repeating its last example (see
    :func:`pipeline.distribute.pad_for_replicas`); the padding gets weight 0, so it adds
    nothing to the loss, the gradients or the metrics.
    """
    import tensorflow as tf

    real = len(arrays[0])
    replicas = strategy.num_replicas_in_sync
    padded = [pad_for_replicas(np.asarray(a), replicas)[0] for a in arrays]
    weights = np.zeros(len(padded[0]), np.float32)
    weights[:real] = 1.0
    padded.append(weights)
    if replicas == 1:
        return [tf.convert_to_tensor(a) for a in padded]
    chunks = [np.array_split(a, replicas) for a in padded]
    return [
        strategy.experimental_distribute_values_from_function(
            lambda ctx, parts=parts: tf.convert_to_tensor(parts[ctx.replica_id_in_sync_group])
        )
        for parts in chunks
    ]


def fit_distributed(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence = (),
    verbose: bool = True,
) -> dict[str, list[float]]:
    """Train a compiled classifier with a custom distributed loop, like ``model.fit``.

    Each step takes the next ``batch_size`` examples (the global batch; the last one may
    be smaller), splits them across the strategy's replicas in nearly equal, non-empty
    chunks, and on every replica computes ``sum(per-example loss) / global batch`` (plus
    the model's regularization losses divided by the replica count), its gradients, and
    ``model.optimizer.apply_gradients``, which sums the gradients over all replicas of
    all workers before the update. The update therefore equals one device's update on
    the same global batch (TensorFlow guide "Custom training with
    tf.distribute.Strategy"; Goyal et al. 2017, "Accurate, Large Minibatch SGD").

    Args:
        model: A model built under ``strategy.scope()`` and compiled there with an
            optimizer and one loss (its ``compile`` metrics are not used: the loop
            reports ``loss`` and sparse categorical ``accuracy``).
        x: Training inputs, shape ``(N, ...)``.
        y: Integer class labels, shape ``(N,)``.
        epochs: Passes over the data.
        batch_size: The global batch size.
        validation_data: ``(x_val, y_val)``, evaluated after each epoch in batches of
            ``batch_size`` with ``training=False``; None for no validation.
        shuffle: Shuffle the examples before each epoch. The order comes from
            ``numpy.random.default_rng(seed)``, so every worker sees the same global
            batches.
        seed: Seed of the shuffling.
        strategy: The strategy; default: the one whose scope is active.
        callbacks: Objects with ``on_epoch_end(epoch, logs)`` (Keras callbacks such as
            :func:`pipeline.models.epoch_logger`).
        verbose: Print one line per epoch.

    Returns:
        The history, as ``model.fit(...).history``: ``loss`` and ``accuracy`` per epoch
        (the example-weighted mean over the epoch's steps, measured in each step's
        forward pass), and ``val_loss`` and ``val_accuracy`` with validation data.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if getattr(model, "optimizer", None) is None:
        raise KerascopeError("fit_distributed needs a compiled model (call model.compile)")
    loss_fn = _per_example_loss(model)
    variables = model.trainable_variables
    with strategy.scope():
        # Optimizer slots must be created under the scope, before the replicated step
        # (variables cannot be created in a replica context).
        model.optimizer.build(variables)
    replicas = float(strategy.num_replicas_in_sync)

    def scores(yb, pred, weights):
        per_example = tf.reshape(loss_fn(yb, pred), (tf.shape(yb)[0], -1))
        per_example = tf.reduce_mean(per_example, axis=-1)
        correct = tf.cast(
            tf.equal(tf.argmax(pred, axis=-1), tf.cast(tf.reshape(yb, [-1]), tf.int64)),
            tf.float32,
        )
        return tf.reduce_sum(per_example * weights), tf.reduce_sum(correct * weights)

    def replica_train(xb, yb, weights, global_n):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss_sum, correct = scores(yb, pred, weights)
            # Divide by the GLOBAL batch, not this replica's chunk: the summed gradients
            # are then those of the global batch's mean loss, however unevenly it split.
            loss = loss_sum / global_n
            regularization = tf.constant(0.0)
            if model.losses:
                regularization = tf.add_n(model.losses)
                loss += regularization / replicas
        grads = tape.gradient(loss, variables)
        model.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss_sum + regularization * tf.reduce_sum(weights), correct

    def replica_test(xb, yb, weights):
        pred = model(xb, training=False)
        loss_sum, correct = scores(yb, pred, weights)
        if model.losses:
            loss_sum += tf.add_n(model.losses) * tf.reduce_sum(weights)
        return loss_sum, correct

    def reduced(values):
        return [float(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)) for v in values]

    # autograph=False: the steps are straight-line code; reduce_retracing: the last,
    # smaller batch traces once more, not once per new shape.
    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(xb, yb, weights, global_n):
        return strategy.run(replica_train, args=(xb, yb, weights, global_n))

    @tf.function(reduce_retracing=True, autograph=False)
    def test_step(xb, yb, weights):
        return strategy.run(replica_test, args=(xb, yb, weights))

    x, y = np.asarray(x), np.asarray(y)
    n = len(x)
    if n == 0:
        raise KerascopeError("fit_distributed got no training examples")
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        totals = np.zeros(2)
        for index in _batches(n, batch_size, order):
            batch = _distribute(strategy, (x[index], y[index]))
            global_n = tf.constant(float(len(index)))
            totals += reduced(train_step(*batch, global_n))
        logs = {"loss": totals[0] / n, "accuracy": totals[1] / n}
        if validation_data is not None and len(validation_data[1]):
            xv, yv = (np.asarray(a) for a in validation_data)
            val = np.zeros(2)
            for index in _batches(len(xv), batch_size, np.arange(len(xv))):
                val += reduced(test_step(*_distribute(strategy, (xv[index], yv[index]))))
            logs.update(val_loss=val[0] / len(xv), val_accuracy=val[1] / len(xv))
        logs = {k: float(v) for k, v in logs.items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if verbose:
            shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch + 1}/{epochs} - {shown}", flush=True)
    return history

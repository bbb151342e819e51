"""``tf.distribute`` strategies chosen by name in config.

TensorFlow is imported inside the functions, so a stage can check a strategy name
against :data:`STRATEGIES` before paying for the import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import KerascopeError, choices_hint

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Build a distribution strategy.

    Args:
        name: ``auto`` (the default strategy on one device, mirrored across all local
            GPUs when there are several), ``mirrored``, ``one_device`` or
            ``multi_worker`` (reads the cluster from ``TF_CONFIG``).

    Returns:
        The strategy. Batch sizes in kerascope's config are global: each replica gets
        ``batch_size // strategy.num_replicas_in_sync`` examples per step.
    """
    if name not in STRATEGIES:
        raise KerascopeError(f"unknown strategy '{name}'; {choices_hint(name, STRATEGIES)}")
    import tensorflow as tf

    if name == "multi_worker":
        # Before anything else touches the runtime (listing devices starts it): collective
        # ops can only be configured at start-up.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch size for a global batch, rejecting uneven splits."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise KerascopeError(
            f"batch size {global_batch} does not split evenly over {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
    return global_batch // replicas


def split_for_replicas(batch, replicas: int) -> list:
    """Split a global batch into ``replicas`` nearly equal, non-empty chunks along axis 0.

    Chunks differ in size by at most one example. A batch smaller than the replica count
    is first padded by repeating its last example (see :func:`pad_for_replicas`): some
    kernels (oneDNN's ReluGrad on AVX-512 CPUs among them) fail on an empty batch.
    """
    padded, _ = pad_for_replicas(np.asarray(batch), replicas)
    return np.array_split(padded, replicas)


def pad_for_replicas(batch: np.ndarray, replicas: int) -> tuple[np.ndarray, int]:
    """Repeat the last example until every replica gets at least one.

    Returns:
        The padded batch and the number of real examples (results beyond it are dropped).
    """
    n = len(batch)
    if n >= replicas or n == 0:
        return batch, n
    extra = np.repeat(batch[-1:], replicas - n, axis=0)
    return np.concatenate([batch, extra]), n


# (id(fn), id(strategy)) -> (fn, strategy, compiled step): one trace per pair. The
# entry keeps both alive, so an id is never reused while its entry exists.
_REPLICATED: dict[tuple[int, int], tuple] = {}


def _replicated(fn, strategy: tf.distribute.Strategy):
    """``strategy.run(fn)`` inside one ``tf.function``, as tf.distribute recommends.

    Run eagerly, MirroredStrategy would call ``fn`` replica by replica from Python
    threads (and cannot bind per-replica values to a fixed input signature).
    """
    import tensorflow as tf

    key = (id(fn), id(strategy))
    if key not in _REPLICATED:

        @tf.function(reduce_retracing=True, autograph=False)
        def step(*args):
            # A plain function: strategy.run would re-wrap a tf.function, keeping its
            # input signature, which per-replica values cannot bind to.
            return strategy.run(lambda *replica_args: fn(*replica_args), args=args)

        _REPLICATED[key] = (fn, strategy, step)
    return _REPLICATED[key][2]


def replicas_in_scope() -> int:
    """Replicas of the strategy whose ``scope()`` is active (1 outside any scope)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def run_distributed(fn, batch, strategy: tf.distribute.Strategy | None = None):
    """Run ``fn`` on one global batch, split across the strategy's replicas.

    With one replica (the default strategy on a CPU or a single GPU) this is simply
    ``fn(batch)``. With several, each replica gets its chunk of the batch through
    ``strategy.run`` and the per-replica results are concatenated back in order, so
    callers see exactly what a single device would return.

    Args:
        fn: A function of a batch tensor (or of several, see ``batch``) returning a
            tensor or a dict/tuple/list of tensors whose first axis is the batch axis
            (typically a ``tf.function``).
        batch: The global batch (numpy array), or a tuple of arrays of equal length
            that are split alike and passed as ``fn(*batch)``.
        strategy: The strategy; default: the one whose scope is active.

    Returns:
        ``fn``'s results for the whole batch, as numpy arrays in the same structure.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    arrays = batch if isinstance(batch, tuple) else (batch,)
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        result = fn(*[tf.convert_to_tensor(a) for a in arrays])
        return tf.nest.map_structure(lambda t: t.numpy(), result)
    chunks = [split_for_replicas(a, replicas) for a in arrays]
    values = [
        strategy.experimental_distribute_values_from_function(
            lambda ctx, parts=parts: tf.convert_to_tensor(parts[ctx.replica_id_in_sync_group])
        )
        for parts in chunks
    ]
    results = _replicated(fn, strategy)(*values)

    real = len(arrays[0])

    def gather(per_replica):
        parts = strategy.experimental_local_results(per_replica)
        if len(parts) < replicas:
            # Several workers (multi_worker): this one holds only its own replicas'
            # chunks, so every worker gathers all of them, in replica order.
            parts = [strategy.gather(per_replica, axis=0)]
        # Padding examples (see split_for_replicas) come last: drop them.
        return np.concatenate([p.numpy() for p in parts], axis=0)[:real]

    return tf.nest.map_structure(gather, results)

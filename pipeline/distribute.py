"""``tf.distribute`` strategies chosen by name in config."""

from __future__ import annotations

import tensorflow as tf

from pipeline.errors import KerascopeError, choices_hint

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
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.MultiWorkerMirroredStrategy()


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch size for a global batch, rejecting uneven splits."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise KerascopeError(
            f"batch size {global_batch} does not split evenly over {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
    return global_batch // replicas

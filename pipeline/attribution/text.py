"""Text models: attribution at the embedding output, summed over the embedding axis.

Token ids are integers: no gradient reaches them (keras-vis #63's
``DisconnectedInputError``, captum #282). As Sundararajan et al. (2017, section 6.3) do
for text, the model is split at its ``Embedding`` layer: the methods explain the
downstream model on the embedded inputs (N, L, D), and a token's attribution is its
vector's attribution summed over the embedding axis, (N, L). With Integrated Gradients
and a zero-embedding baseline the token attributions sum to ``f(x) - f(baseline)``
(completeness). The user's model is not modified: the downstream model shares its
layers and variables.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.errors import KerascopeError
from pipeline.graph import graph_of, list_layers


def embedding_layer(model: keras.Model) -> str | None:
    """The ``Embedding`` layer fed directly by the model's integer input, or None."""
    if not model.inputs or not str(model.inputs[0].dtype).startswith(("int", "uint")):
        return None
    graph = graph_of(model)
    if graph is None:
        return None
    first = {id(t) for t in graph.inputs}
    for info in list_layers(model):
        if isinstance(info.layer, keras.layers.Embedding) and "/" not in info.path:
            node = info.layer._inbound_nodes[info.call_index]
            if any(id(t) in first for t in node.input_tensors):
                return info.path
    return None


def split_at_embedding(model: keras.Model, layer: str | None = None):
    """The embedding layer and the model downstream of it.

    Args:
        model: A Functional or Sequential model whose integer input feeds an
            ``Embedding`` layer (a top-level one).
        layer: The embedding layer's name (None: found by :func:`embedding_layer`).

    Returns:
        ``(embedding, downstream)``: call ``embedding(ids)`` for the vectors (N, L, D)
        and explain ``downstream``, a model of those vectors with the same layers.

    Raises:
        KerascopeError: No such embedding layer, or a model that also reads the token
            ids elsewhere (a padding mask), which the vectors alone cannot reproduce.
    """
    layer = layer or embedding_layer(model)
    if layer is None:
        raise KerascopeError(
            f"model '{model.name}' has no Embedding layer fed by an integer input; text "
            "attribution starts at an embedding's output"
        )
    embedding = model.get_layer(layer)
    if getattr(embedding, "mask_zero", False):
        raise KerascopeError(
            f"Embedding '{layer}' has mask_zero=True: the downstream layers also read the "
            "token ids' mask; rebuild it with mask_zero=False for attribution"
        )
    if isinstance(model, keras.Sequential):
        # A loaded Sequential's layer outputs do not lead to its outputs; its layers
        # after the embedding are called again on the vectors (same variables).
        vectors = keras.Input(tuple(embedding.output.shape[1:]), name=f"{layer}_vectors")
        h, after = vectors, False
        for inner in model.layers:
            if after:
                h = inner(h)
            after = after or inner is embedding
        return embedding, keras.Model(vectors, h, name=f"{model.name}_text")
    try:
        outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
        downstream = keras.Model(embedding.output, outputs, name=f"{model.name}_text")
    except Exception as exc:  # noqa: BLE001 - Keras phrases graph errors many ways
        raise KerascopeError(
            f"cannot split model '{model.name}' at '{layer}': its outputs also depend on the "
            f"token ids by another path ({type(exc).__name__})"
        ) from None
    return embedding, downstream


def embed(embedding: keras.layers.Layer, ids: np.ndarray) -> np.ndarray:
    """Token ids (N, L) as the embedding's vectors (N, L, D), float32."""
    return np.asarray(embedding(np.asarray(ids).astype("int32")), np.float32)


def token_attribution(maps: np.ndarray) -> np.ndarray:
    """Per-token attribution: maps at the embedding output (N, L, D) summed over D."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise KerascopeError(f"embedding-output maps are (N, L, D), got shape {maps.shape}")
    return maps.sum(axis=-1)


def token_ids(x: np.ndarray) -> np.ndarray:
    """Token ids (N, L) as int64 (the data set stores them as whole float32 values)."""
    return np.rint(np.asarray(x)).astype(np.int64)


def per_token(maps: np.ndarray, length: int) -> np.ndarray:
    """Any method's maps on a text model as one value per token, (N, L).

    Gradient methods, Integrated Gradients and perturbation methods give maps at the
    embedding output (N, L, D): they are summed over the embedding axis
    (:func:`token_attribution`; Sundararajan et al. 2017, section 6.3). CAMs are
    already one value per position of the sequence (N, L) and are kept.

    Raises:
        KerascopeError: Maps that are neither (N, L, D) nor (N, L).
    """
    maps = np.asarray(maps)
    if maps.ndim == 3 and maps.shape[1] == length:
        return token_attribution(maps)
    if maps.ndim == 2 and maps.shape[1] == length:
        return maps
    raise KerascopeError(
        f"maps of shape {maps.shape} are not per token; expected (N, {length}, D) or (N, {length})"
    )

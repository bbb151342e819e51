"""How similar two layers' representations are: linear centered kernel alignment (CKA).

Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of Neural Network Representations
Revisited": for activations X (n, p) and Y (n, q) of the same n inputs, centred per
feature, linear CKA is ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, equivalently the
HSIC of the Gram matrices ``X X^T`` and ``Y Y^T`` normalised by their own HSICs. It is
invariant to orthogonal transforms and isotropic scaling of either representation.

:func:`linear_cka` computes it on full arrays. For many inputs, :class:`MinibatchCKA`
and :func:`cka_matrix` use the estimator of Nguyen, Raghu & Kornblith (2021), "Do Wide
and Deep Networks Learn the Same Things?": the unbiased HSIC of Song et al. (2012) is
averaged over minibatches, so memory does not grow with the number of inputs. Each
batch's Gram matrices are computed once per layer (one compiled step) and serve every
pair of layers.

Activations of shape (N, ...) are flattened per input::

    cka = cka_matrix(acts, ["conv1", "conv2", "dense"], batch_size=256)  # (3, 3)

:func:`cross_run_cka_matrices` (arrays or h5py datasets) and
:func:`cross_run_cka_batches` (an iterator of minibatches) compare the layers of several
runs (experiments) on the same inputs, every Gram matrix computed once per batch::

    m = cross_run_cka_matrices({"base": acts_a, "wide": acts_b}, ["conv1", "dense"])
    m["base", "wide"]  # (2, 2): rows are base's layers, columns wide's
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import numpy as np
import tensorflow as tf

from pipeline.errors import KerascopeError, check_positive, choices_hint

#: The unbiased HSIC estimator divides by n (n - 3): a batch needs at least 4 inputs.
MIN_BATCH = 4


def _flat(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def linear_cka(x, y) -> float:
    """Linear CKA of two representations of the same inputs, on the full arrays.

    Kornblith et al. (2019), eq. 5: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on
    feature-centred X and Y, in float64. Computed through the feature products when
    both have fewer features than inputs, else through the (n, n) Gram matrices.

    Args:
        x: Activations (N, ...), flattened per input.
        y: Activations (N, ...) of the same inputs, flattened per input.

    Returns:
        CKA in [0, 1] (NaN when a representation is constant over the inputs).

    Raises:
        KerascopeError: The inputs differ in number, or there are fewer than 2.
    """
    x, y = _flat(x), _flat(y)
    if len(x) != len(y) or len(x) < 2:
        raise KerascopeError(
            f"CKA needs the same 2 or more inputs in both representations, got {len(x)} "
            f"and {len(y)}"
        )
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if max(x.shape[1], y.shape[1]) <= len(x):
        cross = np.sum((y.T @ x) ** 2)
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    else:
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = np.sum(gram_x * gram_y)
        norm_x, norm_y = np.linalg.norm(gram_x), np.linalg.norm(gram_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(cross / (norm_x * norm_y))


def _centered_gram(features: tf.Tensor) -> tf.Tensor:
    """(m, ...) -> the (m, m) Gram matrix of the flattened, feature-centred batch.

    Centring leaves the unbiased HSIC unchanged (it is translation invariant) but keeps
    the float32 product accurate for activations far from zero (ReLU outputs). The
    product is float32, where it is fastest, and the HSIC sums are float64.
    """
    flat = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
    flat = flat - tf.reduce_mean(flat, axis=0)
    return tf.cast(tf.matmul(flat, flat, transpose_b=True), tf.float64)


def _unbiased_hsic(grams: tf.Tensor) -> tf.Tensor:
    """Unbiased HSIC of every pair of (U, n, n) Gram matrices: (U, U).

    Song, Smola, Gretton, Bedo & Borgwardt (2012), eq. 5: with K~ and L~ the Gram
    matrices with zeroed diagonals, HSIC_1 = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2))
    - 2/(n-2) 1'K~L~1] / (n(n-3)). The three terms are matrix products over all pairs.
    """
    n = tf.cast(tf.shape(grams)[1], tf.float64)
    zeroed = tf.linalg.set_diag(grams, tf.zeros(tf.shape(grams)[:2], tf.float64))
    flat = tf.reshape(zeroed, [tf.shape(zeroed)[0], -1])
    traces = tf.matmul(flat, flat, transpose_b=True)  # tr(K~ L~) for symmetric matrices
    rows = tf.reduce_sum(zeroed, axis=2)  # K~ 1
    sums = tf.reduce_sum(rows, axis=1)  # 1' K~ 1
    products = tf.matmul(rows, rows, transpose_b=True)  # 1' K~ L~ 1
    total = traces + sums[:, None] * sums[None, :] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * products
    return total / (n * (n - 3))


_gram = tf.function(_centered_gram, reduce_retracing=True)
_hsic = tf.function(_unbiased_hsic, reduce_retracing=True)


class MinibatchCKA:
    """Linear CKA accumulated over minibatches (Nguyen, Raghu & Kornblith 2021).

    For each batch the unbiased HSIC of every pair of layers is added up (weighted by
    the batch size); :meth:`result` divides the cross terms by the self terms:
    ``CKA(a, b) = mean HSIC_1(K_a, K_b) / sqrt(mean HSIC_1(K_a, K_a) mean HSIC_1(K_b, K_b))``.
    Memory holds one batch and the (layers_a, layers_b) sums. Unlike the full-data CKA
    the estimate is unbiased in the number of inputs, and it approaches the unbiased
    full-data value as batches accumulate.

    Example::

        cka = MinibatchCKA()
        for batch in batches:
            cka.update([batch["conv1"], batch["conv2"]])  # one model against itself
        cka.result()  # (2, 2)
    """

    def __init__(self) -> None:
        self._cross: np.ndarray | None = None
        self._self_a: np.ndarray | None = None
        self._self_b: np.ndarray | None = None
        self.inputs = 0

    def update(self, features_a: Sequence, features_b: Sequence | None = None) -> None:
        """Add one batch of both representations' layers, each (batch, ...).

        Args:
            features_a: One array per layer of the first representation, or a
                zero-argument callable returning it: each layer is then read only when
                its Gram matrix is due, so a batch never holds more than one layer's
                activations (a 224x224 MobileNetV2 holds 12 GB for 100 inputs).
            features_b: One array (or callable) per layer of the second (the same
                inputs, in the same order); None: compare ``features_a`` with itself.
                An item passed in both lists (the same object) gets one Gram matrix.

        Raises:
            KerascopeError: Layers disagree on the batch, it has fewer than 4 inputs,
                or the number of layers changed since the last batch.
        """
        features_a = list(features_a)
        features_b = features_a if features_b is None else list(features_b)
        unique: dict[int, int] = {}
        arrays = []
        for array in (*features_a, *features_b):
            if id(array) not in unique:
                unique[id(array)] = len(arrays)
                arrays.append(array)
        if self._cross is not None and self._cross.shape != (len(features_a), len(features_b)):
            raise KerascopeError(
                f"CKA batch has {len(features_a)} x {len(features_b)} layers, earlier ones "
                f"{self._cross.shape[0]} x {self._cross.shape[1]}"
            )
        sizes, grams = set(), []
        for array in arrays:  # one layer's activations alive at a time
            values = np.asarray(array() if callable(array) else array)
            sizes.add(len(values))
            if len(sizes) != 1 or len(values) < MIN_BATCH:
                raise KerascopeError(
                    f"every layer of a CKA batch needs the same {MIN_BATCH} or more inputs, "
                    f"got {sorted(sizes)}"
                )
            grams.append(_gram(tf.convert_to_tensor(values)))
            del values
        hsic = _hsic(tf.stack(grams)).numpy()
        index_a = [unique[id(a)] for a in features_a]
        index_b = [unique[id(b)] for b in features_b]
        weight = float(sizes.pop())
        cross = hsic[np.ix_(index_a, index_b)] * weight
        self_a, self_b = np.diag(hsic)[index_a] * weight, np.diag(hsic)[index_b] * weight
        if self._cross is None:
            self._cross, self._self_a, self._self_b = cross, self_a, self_b
        else:
            self._cross += cross
            self._self_a += self_a
            self._self_b += self_b
        self.inputs += int(weight)

    def result(self) -> np.ndarray:
        """The (layers_a, layers_b) CKA matrix of every batch so far.

        NaN where a layer is constant over the inputs (its HSIC with itself is 0).

        Raises:
            KerascopeError: No batch was added.
        """
        if self._cross is None:
            raise KerascopeError("no batch was added to the CKA estimate")
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.sqrt(np.outer(self._self_a, self._self_b))
            return np.where(scale > 0, self._cross / scale, np.nan)


def select_layers(available: Sequence[str], selection: Sequence[str] | None) -> list[str]:
    """Stored layers chosen by exact path or glob (``conv*``), in stored order.

    Args:
        available: The stored layer paths, in order.
        selection: Paths or globs; None: every stored layer.

    Raises:
        KerascopeError: An entry matches no stored layer (with the close ones).
    """
    if selection is None:
        return list(available)
    chosen: set[str] = set()
    for entry in selection:
        matched = {p for p in available if p == entry or fnmatch.fnmatchcase(p, entry)}
        if not matched:
            raise KerascopeError(
                f"no stored activations match layer '{entry}'; {choices_hint(entry, available)}"
            )
        chosen |= matched
    return [p for p in available if p in chosen]


def cka_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Start/stop of each batch; a last batch under 4 inputs joins the one before."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_BATCH:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def cka_matrix(
    source_a: Mapping,
    layers_a: Sequence[str],
    source_b: Mapping | None = None,
    layers_b: Sequence[str] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Minibatch linear CKA of every pair of layers, streamed batch by batch.

    Nguyen, Raghu & Kornblith (2021); see :class:`MinibatchCKA`. Each batch is read
    once per layer, its Gram matrix computed once and used for every pair.

    Args:
        source_a: Layer name -> activations (N, ...); anything sliceable along the first
            axis: numpy arrays, ``np.memmap``, h5py datasets (for an activations file,
            ``{r.path: r.dataset for r in acts.layers}``).
        layers_a: The layers of ``source_a`` to compare (rows).
        source_b: The second representation (the same N inputs in the same order,
            say another model's); None: ``source_a``.
        layers_b: Its layers (columns); None: ``layers_a``.
        batch_size: Inputs per batch (4 or more; larger batches lower the variance).

    Returns:
        (len(layers_a), len(layers_b)) CKA values.

    Raises:
        KerascopeError: Unknown layer, differing numbers of inputs, fewer than 4 inputs,
            or a batch size under 4.
    """
    check_positive("batch_size", batch_size)
    if batch_size < MIN_BATCH:
        raise KerascopeError(f"'batch_size' must be at least {MIN_BATCH}, got {batch_size}")
    source_b = source_a if source_b is None else source_b
    layers_a, layers_b = list(layers_a), list(layers_a if layers_b is None else layers_b)
    for source, layers in ((source_a, layers_a), (source_b, layers_b)):
        missing = [layer for layer in layers if layer not in source]
        if missing:
            hint = choices_hint(missing[0], list(source))
            raise KerascopeError(f"no activations of layer '{missing[0]}'; {hint}")
    lengths = {len(source_a[layer]) for layer in layers_a} | {
        len(source_b[layer]) for layer in layers_b
    }
    if len(lengths) != 1 or min(lengths) < MIN_BATCH:
        raise KerascopeError(
            f"CKA needs the same {MIN_BATCH} or more inputs in every layer, got {sorted(lengths)}"
        )
    wanted = [(source_a, layer) for layer in layers_a] + [(source_b, layer) for layer in layers_b]
    estimate = MinibatchCKA()
    for start, stop in cka_bounds(lengths.pop(), batch_size):
        # Readers, not arrays: each layer is read when its Gram matrix is computed, and
        # a layer in both lists is one reader, so it is read once.
        readers: dict[tuple[int, str], Callable[[], np.ndarray]] = {}
        for source, layer in wanted:
            if (id(source), layer) not in readers:
                readers[id(source), layer] = partial(_read_rows, source[layer], start, stop)
        features = [readers[id(source), layer] for source, layer in wanted]
        estimate.update(features[: len(layers_a)], features[len(layers_a) :])
    return estimate.result()


def _read_rows(dataset, start: int, stop: int) -> np.ndarray:
    return np.asarray(dataset[start:stop])


def _cross_result(
    estimate: MinibatchCKA, runs: Sequence[str], layers: Mapping[str, Sequence[str]]
) -> dict[tuple[str, str], np.ndarray]:
    """Split the (sum of layers, sum of layers) matrix into one block per pair of runs."""
    full = estimate.result()
    starts = np.cumsum([0] + [len(layers[run]) for run in runs])
    block = {run: slice(starts[i], starts[i + 1]) for i, run in enumerate(runs)}
    return {(a, b): full[block[a], block[b]] for a in runs for b in runs}


def _run_layers(
    runs: Sequence[str], layers: Sequence[str] | Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    if isinstance(layers, Mapping):
        missing = [run for run in runs if run not in layers]
        if missing:
            raise KerascopeError(f"no layers given for run '{missing[0]}'")
        return {run: list(layers[run]) for run in runs}
    return {run: list(layers) for run in runs}


def cross_run_cka_batches(
    batches: Iterable[Mapping[str, Sequence]],
    runs: Sequence[str],
    layers: Sequence[str] | Mapping[str, Sequence[str]],
) -> dict[tuple[str, str], np.ndarray]:
    """Minibatch linear CKA between the layers of several runs, from streamed batches.

    Nguyen, Raghu & Kornblith (2021): the unbiased HSIC (Song et al. 2012) of every pair
    of (run, layer) representations is summed over the batches, then normalised into
    CKA (Kornblith et al. 2019). Each batch's Gram matrices are computed once per run
    and layer and serve every pair, so comparing R runs of L layers costs R x L Gram
    matrices per batch, not (R x L)^2; memory holds one batch.

    Args:
        batches: Each item maps a run to its activations of one batch of the same
            inputs (the same inputs, in the same order, in every run): one array
            (batch, ...) per layer, in the order of ``layers``.
        runs: The runs, in the order of the result's keys.
        layers: The layers compared, the same for every run, or one list per run
            (architectures may differ; only the inputs must be the same).

    Returns:
        ``{(run_a, run_b): (layers of run_a, layers of run_b) CKA}`` for every ordered
        pair of runs, ``(a, a)`` included (the layer-by-layer matrix of run a);
        ``result[b, a]`` is ``result[a, b].T``.

    Raises:
        KerascopeError: No batch, a batch without a run, disagreeing batch sizes, or
            fewer than 4 inputs in a batch.
    """
    runs = list(runs)
    per_run = _run_layers(runs, layers)
    estimate = MinibatchCKA()
    for batch in batches:
        missing = [run for run in runs if run not in batch]
        if missing:
            raise KerascopeError(f"a CKA batch has no activations of run '{missing[0]}'")
        features = []
        for run in runs:
            arrays = list(batch[run])
            if len(arrays) != len(per_run[run]):
                raise KerascopeError(
                    f"a CKA batch of run '{run}' has {len(arrays)} layers, expected "
                    f"{len(per_run[run])}"
                )
            features += arrays
        estimate.update(features)
    return _cross_result(estimate, runs, per_run)


def cross_run_cka_matrices(
    runs: Mapping[str, Mapping],
    layers: Sequence[str] | Mapping[str, Sequence[str]],
    batch_size: int = 256,
) -> dict[tuple[str, str], np.ndarray]:
    """Minibatch linear CKA between the same layers of several runs, on the same inputs.

    The sources are read one batch at a time (see :func:`cross_run_cka_batches`), so
    arrays, ``np.memmap`` and h5py datasets of any size work; the result does not depend
    on where the arrays live.

    Args:
        runs: Run name -> (layer name -> activations (N, ...)), every run holding the
            same N inputs in the same order.
        layers: The layers compared (the same in every run), or one list per run.
        batch_size: Inputs per batch (4 or more).

    Returns:
        ``{(run_a, run_b): CKA matrix}`` as :func:`cross_run_cka_batches` returns.

    Raises:
        KerascopeError: Unknown layer, differing numbers of inputs, or too few inputs.
    """
    check_positive("batch_size", batch_size)
    if batch_size < MIN_BATCH:
        raise KerascopeError(f"'batch_size' must be at least {MIN_BATCH}, got {batch_size}")
    names = list(runs)
    if not names:
        raise KerascopeError("cross-run CKA needs one or more runs")
    per_run = _run_layers(names, layers)
    for run in names:
        missing = [layer for layer in per_run[run] if layer not in runs[run]]
        if missing:
            hint = choices_hint(missing[0], list(runs[run]))
            raise KerascopeError(f"run '{run}' has no activations of layer '{missing[0]}'; {hint}")
    lengths = {run: {len(runs[run][layer]) for layer in per_run[run]} for run in names}
    sizes = set().union(*lengths.values())
    if len(sizes) != 1 or min(sizes) < MIN_BATCH:
        found = ", ".join(f"{run}: {sorted(n)}" for run, n in lengths.items())
        raise KerascopeError(
            f"cross-run CKA needs the same {MIN_BATCH} or more inputs in every run and "
            f"layer, got {found}"
        )
    bounds = cka_bounds(sizes.pop(), batch_size)
    batches = (
        {run: [np.asarray(runs[run][layer][s:t]) for layer in per_run[run]] for run in names}
        for s, t in bounds
    )
    return cross_run_cka_batches(batches, names, per_run)

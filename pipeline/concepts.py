"""Testing with concept activation vectors (TCAV): how much a concept drives a class.

Kim, Wattenberg, Gilmer, Cai, Wexler, Viegas & Sayres (2018), "Interpretability Beyond
Feature Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)".

A *concept* is a set of example inputs (striped images, say). Its concept activation
vector (CAV) at a layer is the unit normal of a linear classifier that separates the
concept's activations from those of random inputs. An input's sensitivity to the concept
is the directional derivative of its target class's logit along the CAV; the TCAV score
of a class is the share of its inputs with a positive sensitivity. Because a CAV
against one random set may be a fluke, :func:`tcav` repeats it against several random
sets and compares the scores with those of random-versus-random CAVs (a two-sided
t-test): only a significant difference says the concept matters.

Gradients do not depend on the CAV, so each input's gradient is computed once per layer
(one compiled forward and backward pass per batch for every layer) and every CAV's
scores are one matrix product.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.activations import check_inputs
from pipeline.attribution.batching import compile_step, run_batched, spec
from pipeline.attribution.scoring import check_targets, forward, target_score
from pipeline.errors import KerascopeError, check_positive, check_range
from pipeline.graph import KEYWORDS, keyword_layer, resolve_layers


@dataclass
class CAV:
    """A concept activation vector.

    Attributes:
        vector: (features,) unit vector in the layer's flattened activation space,
            pointing from the random inputs towards the concept.
        accuracy: The linear classifier's accuracy on held-out activations (about 0.5
            means the layer does not tell the concept from random inputs).
    """

    vector: np.ndarray
    accuracy: float


@dataclass
class TCAVResult:
    """The TCAV test of one concept for one class at one layer.

    Attributes:
        layer: The layer path.
        target: The class.
        scores: (runs,) TCAV score of the concept's CAV against each random set.
        random_scores: (runs,) TCAV scores of random-versus-random CAVs.
        accuracies: (runs,) held-out accuracy of each of the concept's CAVs.
        p_value: Two-sided Student's t-test (``scipy.stats.ttest_ind``, as in the
            paper's code) of ``scores`` against ``random_scores``; NaN when both are
            constant and equal.
        significant: ``p_value`` below the significance level (alpha, divided by the
            number of tests with the Bonferroni correction).
    """

    layer: str
    target: int
    scores: np.ndarray
    random_scores: np.ndarray
    accuracies: np.ndarray
    p_value: float
    significant: bool

    @property
    def score(self) -> float:
        """The mean TCAV score over the random sets."""
        return float(np.mean(self.scores))


def _flat(acts) -> np.ndarray:
    acts = np.asarray(acts, np.float64)
    return acts.reshape(len(acts), -1)


def concept_activation_vector(
    concept_acts: np.ndarray, random_acts: np.ndarray, seed: int = 0, test_fraction: float = 0.33
) -> CAV:
    """Fit a CAV: the normal of a logistic regression, concept versus random activations.

    Kim et al. (2018), section 3.1. The activations are flattened per input; a share of
    each set (stratified, as in the paper's code) is held out to measure accuracy.

    Args:
        concept_acts: The concept examples' activations (n, ...), 2 or more.
        random_acts: Random counter-examples' activations (m, ...), 2 or more.
        seed: Seed of the train/test split and of the solver.
        test_fraction: Share of the inputs held out.

    Returns:
        :class:`CAV`.

    Raises:
        KerascopeError: Too few examples, or differing activation shapes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    check_range("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
    concept, random = _flat(concept_acts), _flat(random_acts)
    if len(concept) < 2 or len(random) < 2 or concept.shape[1] != random.shape[1]:
        raise KerascopeError(
            f"a CAV needs 2 or more concept and random examples of one layer, got "
            f"{concept.shape} and {random.shape}"
        )
    x = np.concatenate([concept, random])
    labels = np.r_[np.ones(len(concept), int), np.zeros(len(random), int)]
    x_train, x_test, y_train, y_test = train_test_split(
        x, labels, test_size=max(test_fraction, 2 / len(x)), stratify=labels, random_state=seed
    )
    model = LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, y_train)
    normal = model.coef_[0]
    norm = np.linalg.norm(normal)
    vector = normal / norm if norm > 0 else normal
    return CAV(vector.astype(np.float32), float(model.score(x_test, y_test)))


def _layer_step(model: keras.Model, layers: tuple[str, ...], shape: tuple, gradients: bool):
    """The compiled ``(batch, targets) -> per layer (batch, features)`` step.

    Flattened activations, or the gradients of the target logits with respect to them.
    """

    def build():
        fwd = forward(model, "logits", layers)

        def step(batch, target):
            with tf.GradientTape() as tape:
                tape.watch(batch)  # records the taps even for frozen weights
                outputs, taps = fwd(batch)
                value = target_score(outputs, target)
            values = [taps[p] for p in layers]
            if gradients:
                values = tape.gradient(value, values)
                missing = [p for p, g in zip(layers, values, strict=True) if g is None]
                if missing:
                    raise KerascopeError(f"the logits have no gradient path to '{missing[0]}'")
            return tuple(tf.reshape(v, [tf.shape(v)[0], -1]) for v in values)

        return step

    return compile_step(
        model,
        ("tcav", layers, shape, gradients),
        build,
        [spec(shape), spec((), tf.int32)],
    )


def _per_layer(
    model: keras.Model, layers, x, targets, batch_size: int, gradients: bool
) -> dict[str, np.ndarray]:
    check_positive("batch_size", batch_size)
    x = np.asarray(x, np.float32)
    check_inputs(model, [x])
    layers = tuple(layers)
    if targets is None:
        targets = np.zeros(len(x), np.int32)
    fn = _layer_step(model, layers, x.shape[1:], gradients)
    out = run_batched(fn, [x, np.asarray(targets, np.int32)], batch_size)
    return dict(zip(layers, out if isinstance(out, tuple) else (out,), strict=True))


def layer_activations(
    model: keras.Model, layers: Sequence[str], x: np.ndarray, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Flattened activations (N, features) of each layer, one compiled pass per batch.

    The taps are those of the logits forward pass the gradients come from, so
    activations and gradients live in the same space.
    """
    return _per_layer(model, layers, x, None, batch_size, gradients=False)


def layer_gradients(
    model: keras.Model, layers: Sequence[str], x: np.ndarray, targets, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Gradients of the target logits w.r.t. each layer, flattened: (N, features) per layer.

    Args:
        model: A classifier.
        layers: Layer paths.
        x: Inputs (N, ...).
        targets: One class per input (or one for all); None: the predicted class.
        batch_size: Inputs per compiled step.

    Returns:
        Layer path -> gradients, one row per input.
    """
    targets = check_targets(model, targets, len(x), x)
    return _per_layer(model, layers, x, targets, batch_size, gradients=True)


def _class_scores(derivatives: np.ndarray, targets: np.ndarray) -> dict[int, np.ndarray]:
    """Share of each class's inputs with a positive directional derivative, per column."""
    positive = derivatives > 0
    return {int(c): positive[targets == c].mean(axis=0) for c in np.unique(targets)}


def tcav_scores(
    model: keras.Model,
    layer: str,
    x: np.ndarray,
    targets,
    cav: CAV | np.ndarray,
    batch_size: int = 64,
) -> dict[int, float]:
    """TCAV score of one CAV for each target class among the inputs.

    Kim et al. (2018), eq. 1-2: the share of a class's inputs whose target logit grows
    along the CAV, ``grad_layer(logit_target) . cav > 0``.

    Args:
        model: A classifier.
        layer: The layer the CAV lives in.
        x: Inputs (N, ...).
        targets: One class per input (or one for all); None: the predicted class.
        cav: A :class:`CAV` or a vector in the layer's flattened activation space.
        batch_size: Inputs per compiled step.

    Returns:
        Class -> TCAV score in [0, 1].
    """
    targets = check_targets(model, targets, len(x), x)
    gradients = layer_gradients(model, [layer], x, targets, batch_size)[layer]
    vector = np.asarray(cav.vector if isinstance(cav, CAV) else cav, np.float32).reshape(-1)
    if vector.shape[0] != gradients.shape[1]:
        raise KerascopeError(
            f"the CAV has {vector.shape[0]} features but layer '{layer}' has {gradients.shape[1]}"
        )
    return {c: float(s) for c, s in _class_scores(gradients @ vector, targets).items()}


def tcav(
    model: keras.Model,
    layers: str | Sequence[str],
    concept_x: np.ndarray,
    random_sets: Sequence[np.ndarray],
    class_x: np.ndarray,
    class_targets=None,
    runs: int | None = None,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    bonferroni: bool = False,
    batch_size: int = 64,
) -> list[TCAVResult]:
    """Test whether a concept matters to each class, at each layer (Kim et al. 2018).

    For each run r, a CAV separates the concept from random set r + 1 and a
    random-versus-random CAV separates random set 0 from random set r + 1 (the paper's
    null hypothesis). Every CAV's TCAV scores are compared with a two-sided t-test
    (``scipy.stats.ttest_ind``, Student's, as in the paper's code). Activations of every
    set and the gradients of the class inputs are computed once per layer and shared by
    all runs; :func:`tcav_concepts` shares them, and the null CAVs, between concepts too.

    All of one side's CAVs share the concept's (or random set 0's) sampling noise, so
    with small sets a random concept is "significant" far more often than ``alpha``
    says (5 times in 20 in a test with 30 examples per set, once with 150 for the
    concept and set 0 and 30 for the others): give the concept and random set 0
    several times as many examples as each counter-example set.

    Args:
        model: A classifier.
        layers: One layer path or several.
        concept_x: The concept's example inputs.
        random_sets: Random counter-example input sets, ``runs + 1`` or more (set 0
            plays the random concept of the null hypothesis).
        class_x: The inputs whose classes are tested.
        class_targets: One class per input (or one for all); None: the predicted class.
        runs: Random sets to repeat the test with; default: ``len(random_sets) - 1``.
        seed: Seed of the CAVs' train/test splits (run r uses ``seed + r``).
        alpha: Significance level.
        bonferroni: Divide ``alpha`` by the number of tests (layers x classes).
        batch_size: Inputs per compiled step.

    Returns:
        One :class:`TCAVResult` per layer and class, layer by layer.

    Raises:
        KerascopeError: Too few random sets, bad options or inputs.
    """
    found = tcav_concepts(
        model, layers, {"concept": concept_x}, random_sets, class_x, class_targets, runs,
        seed, alpha=alpha, bonferroni=bonferroni, batch_size=batch_size,
    )  # fmt: skip
    return found["concept"]


def tcav_concepts(
    model: keras.Model,
    layers: str | Sequence[str],
    concepts: Mapping[str, np.ndarray],
    random_sets: Sequence[np.ndarray],
    class_x: np.ndarray,
    class_targets=None,
    runs: int | None = None,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    bonferroni: bool = False,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[TCAVResult]]:
    """:func:`tcav` for several concepts against the same random sets and inputs.

    The gradients of the class inputs, the random sets' activations and the
    random-versus-random CAVs (the null hypothesis) do not depend on the concept: they
    are computed once, so every further concept costs its own activations and ``runs``
    CAV fits per layer. The arguments are those of :func:`tcav`, with ``concepts``
    mapping each concept's name to its example inputs; ``progress`` is called with
    each concept's name once it is done.

    Returns:
        Concept name -> its :class:`TCAVResult` list, as :func:`tcav` returns it.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    runs = len(random_sets) - 1 if runs is None else runs
    if runs < 2 or len(random_sets) < runs + 1:
        raise KerascopeError(
            f"TCAV needs 2 or more runs and runs + 1 random sets, got runs={runs} and "
            f"{len(random_sets)} random sets"
        )
    check_range("alpha", alpha, 0.0, 1.0, high_open=True)
    from scipy.stats import ttest_ind

    targets = check_targets(model, class_targets, len(class_x), class_x)
    gradients = layer_gradients(model, layers, class_x, targets, batch_size)
    randoms = [layer_activations(model, layers, r, batch_size) for r in random_sets[: runs + 1]]
    classes = np.unique(targets)
    level = alpha / (len(layers) * len(classes)) if bonferroni else alpha
    nulls = {
        layer: [
            concept_activation_vector(randoms[0][layer], randoms[r + 1][layer], seed + r)
            for r in range(runs)
        ]
        for layer in layers
    }
    found: dict[str, list[TCAVResult]] = {}
    for name, concept_x in concepts.items():
        concept = layer_activations(model, layers, concept_x, batch_size)
        results = []
        for layer in layers:
            cavs = [
                concept_activation_vector(concept[layer], randoms[r + 1][layer], seed + r)
                for r in range(runs)
            ]
            # (features, 2 runs): the concept's CAVs, then the null ones.
            vectors = np.stack([c.vector for c in cavs + nulls[layer]], axis=1)
            for target, shares in _class_scores(gradients[layer] @ vectors, targets).items():
                scores, random_scores = shares[:runs], shares[runs:]
                with warnings.catch_warnings():
                    # Scores that are all equal (every input follows the CAV) are expected.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p_value = float(ttest_ind(scores, random_scores).pvalue)
                results.append(
                    TCAVResult(
                        layer=layer,
                        target=target,
                        scores=scores,
                        random_scores=random_scores,
                        accuracies=np.asarray([c.accuracy for c in cavs]),
                        p_value=p_value,
                        significant=bool(p_value < level),  # NaN compares False
                    )
                )
        found[name] = results
        if progress is not None:
            progress(name)
    return found


def resolve_concept_layers(model: keras.Model, selection: Sequence[str]) -> list[str]:
    """The layers TCAV tests: paths, globs, class names or keywords (``last_conv``, ...).

    A keyword that fits no layer of the model (``last_hidden`` of a model without a
    hidden dense layer) is left out, as the maximize stage does.

    Raises:
        KerascopeError: No layer is left, or an entry matches nothing.
    """
    chosen: list[str] = []
    for entry in selection:
        found = (
            [keyword_layer(model, entry)] if entry in KEYWORDS else resolve_layers(model, [entry])
        )
        chosen += [path for path in found if path is not None and path not in chosen]
    if not chosen:
        raise KerascopeError(
            f"no layer of model '{model.name}' fits the TCAV layers {list(selection)}"
        )
    return chosen

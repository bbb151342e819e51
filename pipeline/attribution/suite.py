"""Every configured method, its faithfulness, sanity check and metrics, in one call.

The attribute stage and a notebook run the same suite: arrays and options in, an
:class:`Explanation` out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from pipeline.attribution import method as method_function
from pipeline.attribution.faithfulness import (
    DeletionInsertion,
    SanityUnavailable,
    deletion_insertion,
    random_maps,
    randomization_sanity,
)
from pipeline.attribution.metrics import (
    average_drop,
    average_stability,
    complexity,
    mu_fidelity,
    random_logit,
    sparseness,
)
from pipeline.attribution.options import (
    METHOD_SPECS,
    FaithfulnessOptions,
    MetricsOptions,
    SanityOptions,
)
from pipeline.attribution.result import Attribution


def method_kwargs(name: str, options, **common) -> dict:
    """The keyword arguments of one method: its options' fields, plus common settings.

    Of the common settings (``score``, ``layer``, ``seed``, ``batch_size``), only those
    the method uses (:data:`~pipeline.attribution.options.METHOD_SPECS`) are passed.

    Raises:
        TypeError: ``options`` is not the method's options dataclass (a bug, not input).
    """
    spec = METHOD_SPECS[name]
    if not isinstance(options, spec.options):
        raise TypeError(f"{name} takes {spec.options.__name__}, got {options!r}")
    return {**asdict(options), **{k: v for k, v in common.items() if k in spec.uses}}


@dataclass
class Explanation:
    """The suite's results.

    Attributes:
        results: Method -> its :class:`Attribution`, in the order asked for.
        options: Method -> the keyword arguments it ran with (batch size left out).
        faithfulness: Method (and ``random``, the reference ranking) -> curves.
        sanity: Method -> (randomised layers in cascade order, Spearman after each).
        sanity_skipped: Why the sanity check could not run on this model ("" if it ran).
        evaluation: Method (and ``random``, the reference ranking, for the metrics that
            have one) -> metric name -> one value per input (see :func:`evaluate`).
    """

    results: dict[str, Attribution]
    options: dict[str, dict]
    faithfulness: dict[str, DeletionInsertion] = field(default_factory=dict)
    sanity: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    sanity_skipped: str = ""
    evaluation: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def metrics(self, threshold: float) -> dict[str, dict[str, float]]:
        """The headline numbers per method, for ``dvc exp show``: a few columns each.

        Per method: the mean deletion and insertion AUC, ``sanity_passed`` (1 when
        |Spearman| after full randomisation is below ``threshold``), IG's mean absolute
        completeness error, and the mean of each further metric evaluated. ``random``
        has the random ranking's values of those with a reference. The curves, the
        sanity correlations and the per-input metrics stay in the attributions file.
        """
        out: dict[str, dict[str, float]] = {name: {} for name in self.results}
        for name, result in self.results.items():
            if "completeness_error" in result.extras:
                error = np.abs(result.extras["completeness_error"]).mean()
                out[name]["completeness_error"] = float(error)
        for name, curves in self.faithfulness.items():
            out.setdefault(name, {})
            out[name]["deletion_auc"] = float(curves.deletion_auc.mean())
            out[name]["insertion_auc"] = float(curves.insertion_auc.mean())
        for name, (_, correlations) in self.sanity.items():
            out[name]["sanity_passed"] = int(abs(float(correlations[-1])) < threshold)
        for name, values in self.evaluation.items():
            out.setdefault(name, {})
            for metric, per_input in values.items():
                out[name][metric] = float(np.mean(per_input))
        return out


def evaluate(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    maps,
    options: MetricsOptions,
    *,
    method: Callable | None = None,
    score: str = "logits",
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """The metrics of :mod:`pipeline.attribution.metrics` that ``options`` switches on.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input.
        maps: The maps to judge.
        options: Which metrics, and their sample counts.
        method: ``method(model, x, targets)`` that made ``maps``, for the metrics that
            re-run it (stability and the random-logit test); None skips those (as for
            the random ranking).
        score: The score MuFidelity removes features from.
        seed: Seed of the subsets, noise and random classes.
        batch_size: Masked inputs per compiled step.

    Returns:
        Metric name -> one value per input.
    """
    values: dict[str, np.ndarray] = {}
    if options.fidelity:
        values["mu_fidelity"] = mu_fidelity(
            model,
            x,
            targets,
            maps,
            samples=options.fidelity_samples,
            subset=options.fidelity_subset,
            grid=options.grid,
            score=score,
            seed=seed,
            batch_size=batch_size,
        )
    if options.average_drop:
        change = average_drop(model, x, targets, maps, batch_size=batch_size)
        values.update(
            average_drop=change.drop, average_increase=change.increase, average_gain=change.gain
        )
    if options.complexity:
        values.update(complexity=complexity(maps), sparseness=sparseness(maps))
    if method is not None and options.stability:
        values["average_stability"] = average_stability(
            method,
            model,
            x,
            targets,
            samples=options.stability_samples,
            noise=options.stability_noise,
            seed=seed,
            original=maps,
        )
    if method is not None and options.random_logit:
        test = random_logit(method, model, x, targets, seed=seed, original=maps)
        values.update(random_logit_ssim=test.ssim, random_logit_spearman=test.spearman)
    return values


def sanity_inputs(n: int, max_inputs: int | None) -> np.ndarray:
    """Indices of the inputs the sanity cascade runs on: all, or ``max_inputs`` evenly spaced.

    Evenly spaced rather than the first ones, because probe sets are ordered by class.
    """
    if max_inputs is None or n <= max_inputs:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_inputs).round().astype(int))


def explain(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    methods: dict,
    *,
    score: str = "logits",
    layer: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    faithfulness: FaithfulnessOptions | None = None,
    sanity: SanityOptions | None = None,
    metrics: MetricsOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Explanation:
    """Run attribution methods, deletion/insertion, the sanity check and further metrics.

    Deletion/insertion follow Petsiuk, Das & Saenko (2018) with a random ranking as the
    reference; the sanity check is the cascading randomisation of Adebayo et al. (2018);
    the further metrics are those of :mod:`pipeline.attribution.metrics` (MuFidelity,
    Average Drop/Increase/Gain, Complexity and Sparseness also for the random ranking).

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input.
        methods: Method name -> its options dataclass (see
            :mod:`pipeline.attribution.options`).
        score: ``logits`` or ``probabilities`` (methods that take a score).
        layer: The CAM layer (None: :func:`pipeline.graph.default_cam_layer`).
        seed: Seed of the noisy methods, the random ranking and the random weights.
        batch_size: Rows per compiled step (None: each method's default, sized from the
            model for the gradient methods and CAMs).
        faithfulness: Deletion/insertion settings (None or disabled: skipped).
        sanity: Sanity-check settings (None or disabled: skipped).
        metrics: Further metrics (None or disabled: skipped).
        progress: Called with a short label after each method, curve, check and
            method's metrics.

    Returns:
        An :class:`Explanation`.
    """
    tick = progress or (lambda label: None)
    common = {"score": score, "layer": layer, "seed": seed, "batch_size": batch_size}
    calls = {name: method_kwargs(name, options, **common) for name, options in methods.items()}
    results = {}
    for name, kwargs in calls.items():
        results[name] = method_function(name)(model, x, targets, **kwargs)
        tick(name)
    explanation = Explanation(
        results, {n: {k: v for k, v in kw.items() if k != "batch_size"} for n, kw in calls.items()}
    )
    ranked = {n: r.maps for n, r in results.items()}
    if results:  # the reference ranking, shaped as the first method's maps
        ranked["random"] = random_maps(next(iter(results.values())).maps.shape, seed)

    def runner(name: str) -> Callable:
        kwargs = calls[name]
        return lambda m, inputs, classes: method_function(name)(m, inputs, classes, **kwargs)

    if faithfulness is not None and faithfulness.enabled:
        for name, maps in ranked.items():
            explanation.faithfulness[name] = deletion_insertion(
                model,
                x,
                targets,
                maps,
                steps=faithfulness.steps,
                substrate_kind=faithfulness.substrate,
                batch_size=max(batch_size or 256, 256),
            )
            if name != "random":
                tick(f"{name} deletion/insertion")
    if sanity is not None and sanity.enabled:
        checked = sanity_inputs(len(x), sanity.max_inputs)
        for name in calls:
            try:
                explanation.sanity[name] = randomization_sanity(
                    model,
                    x[checked],
                    np.asarray(targets)[checked],
                    runner(name),
                    max_layers=sanity.max_layers,
                    steps=sanity.steps,
                    seed=seed,
                    original=np.asarray(results[name].maps)[checked],
                )
            except SanityUnavailable as exc:
                explanation.sanity_skipped = str(exc)
                break
            tick(f"{name} sanity")
    if metrics is not None and metrics.enabled:
        for name, maps in ranked.items():
            explanation.evaluation[name] = evaluate(
                model,
                x,
                targets,
                maps,
                metrics,
                method=runner(name) if name in calls else None,
                score=score,
                seed=seed,
                batch_size=max(batch_size or 256, 256),
            )
            if name != "random":
                tick(f"{name} metrics")
    return explanation

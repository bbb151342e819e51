"""Every configured method, its faithfulness and its sanity check, in one call.

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
from pipeline.attribution.options import METHOD_SPECS, FaithfulnessOptions, SanityOptions
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
    """

    results: dict[str, Attribution]
    options: dict[str, dict]
    faithfulness: dict[str, DeletionInsertion] = field(default_factory=dict)
    sanity: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    sanity_skipped: str = ""

    def metrics(self, threshold: float) -> dict[str, dict[str, float]]:
        """Per method: AUCs, sanity correlation and pass (below ``threshold``), IG error."""
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
            final = float(correlations[-1])
            out[name]["sanity_spearman"] = final
            out[name]["sanity_passed"] = int(abs(final) < threshold)
        return out


def explain(
    model: keras.Model,
    x: np.ndarray,
    targets: np.ndarray,
    methods: dict,
    *,
    score: str = "logits",
    layer: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    faithfulness: FaithfulnessOptions | None = None,
    sanity: SanityOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Explanation:
    """Run attribution methods, deletion/insertion and the randomisation sanity check.

    Deletion/insertion follow Petsiuk, Das & Saenko (2018) with a random ranking as the
    reference; the sanity check is the cascading randomisation of Adebayo et al. (2018).

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input.
        methods: Method name -> its options dataclass (see
            :mod:`pipeline.attribution.options`).
        score: ``logits`` or ``probabilities`` (methods that take a score).
        layer: The CAM layer (None: :func:`pipeline.graph.default_cam_layer`).
        seed: Seed of the noisy methods, the random ranking and the random weights.
        batch_size: Inputs per compiled step.
        faithfulness: Deletion/insertion settings (None or disabled: skipped).
        sanity: Sanity-check settings (None or disabled: skipped).
        progress: Called with a short label after each method, curve and check.

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
    if faithfulness is not None and faithfulness.enabled:
        shape = next(iter(results.values())).maps.shape
        ranked = {**{n: r.maps for n, r in results.items()}, "random": random_maps(shape, seed)}
        for name, maps in ranked.items():
            explanation.faithfulness[name] = deletion_insertion(
                model,
                x,
                targets,
                maps,
                steps=faithfulness.steps,
                substrate_kind=faithfulness.substrate,
                batch_size=max(batch_size, 256),
            )
            if name != "random":
                tick(f"{name} deletion/insertion")
    if sanity is not None and sanity.enabled:
        for name, kwargs in calls.items():

            def maps_of(m, inputs, classes, name=name, kwargs=kwargs):
                return method_function(name)(m, inputs, classes, **kwargs)

            try:
                explanation.sanity[name] = randomization_sanity(
                    model,
                    x,
                    targets,
                    maps_of,
                    max_layers=sanity.max_layers,
                    steps=sanity.steps,
                    seed=seed,
                    original=results[name].maps,
                )
            except SanityUnavailable as exc:
                explanation.sanity_skipped = str(exc)
                break
            tick(f"{name} sanity")
    return explanation

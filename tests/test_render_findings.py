"""The report's summary: each finding states its number and what it means."""

from __future__ import annotations

import numpy as np

from pipeline.artifacts.attributions import Attributions, Curves, Sanity
from pipeline.artifacts.maximization import Maximization, TargetImages
from pipeline.render.findings import (
    LayerHealth,
    faithfulness_findings,
    health_findings,
    reach_findings,
    sanity_findings,
)


def _attributions(aucs: dict[str, tuple[float, float]], sanity: dict[str, float]):
    curves = {m: Curves(np.zeros((2, 3)), np.zeros((2, 3)), d, i) for m, (d, i) in aucs.items()}
    checks = {m: Sanity(["out"], np.array([1.0, r])) for m, r in sanity.items()}
    empty = np.zeros(2)
    return Attributions(empty, empty, empty, empty, empty, {}, faithfulness=curves, sanity=checks)


def test_most_faithful_method_and_methods_worse_than_random():
    # The default run's numbers: Grad-CAM inserts worse than a random ranking.
    result = _attributions(
        {
            "integrated_gradients": (0.132, 0.978),
            "gradcam": (0.693, 0.533),
            "random": (0.752, 0.737),
        },
        {},
    )
    found = faithfulness_findings(result)
    assert found[0][0] == "ok" and "Most faithful method: integrated_gradients" in found[0][1]
    assert "random ranking: deletion 0.752, insertion 0.737" in found[0][1]
    flagged = [text for level, text, _ in found if level == "warn"]
    assert len(flagged) == 1 and flagged[0].startswith("gradcam is worse than a random")
    assert "insertion 0.533 < random 0.737" in flagged[0]


def test_sanity_passes_and_failures_with_their_meaning():
    found = sanity_findings(_attributions({}, {"saliency": 0.2, "smoothgrad": -0.73}))
    levels = {level: text for level, text, _ in found}
    assert "passed by saliency" in levels["ok"]
    # |Spearman| is compared with the threshold: -0.73 fails as much as 0.73.
    assert "failed by smoothgrad (-0.73)" in levels["bad"] and "Do not read" in levels["bad"]


def test_health_is_weighted_by_units_and_the_output_layer_is_not_flagged():
    layers = [
        LayerHealth("conv", "Conv2D", 30, dead=0.1, saturated=0.0),
        LayerHealth("dense", "Dense", 10, dead=0.6, saturated=0.0),
        LayerHealth("out", "Dense", 10, dead=0.0, saturated=1.0),
    ]
    found = health_findings(layers)
    # (30 * 0.1 + 10 * 0.6) / 50 dead; 10 * 1.0 / 50 saturated.
    assert "18.0% of all units are dead and 20.0% saturated" in found[0][1]
    assert "dense (60% dead, 0% saturated)" in found[1][1] and "out (" not in found[1][1]


def test_reach_ratios_below_one_and_without_reference_are_explained():
    def target(layer, reach):
        reach = np.asarray(reach, float)
        z = np.zeros(len(reach))
        return TargetImages(layer, "channel", z, z, z, z, z, z, reach)

    found = reach_findings(
        Maximization([target("conv", [2.0, 0.5, np.nan]), target("dead", [np.nan])], [])
    )
    assert "mean reach ratio 1.25 over 2 units; 1 below 1" in found[0][1]
    assert found[1][0] == "warn" and "never fired" in found[1][1]

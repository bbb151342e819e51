"""The report's summary: what the stored results say, in plain words, with numbers.

Each finding is (level, text, link): ``ok``, ``warn``, ``bad`` or ``info``; the text
gives the number and what it means; the link points at the evidence in the report.
Everything is read from stored results (no tensor is recomputed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.artifacts.attributions import Attributions
from pipeline.artifacts.evaluation import Evaluation
from pipeline.artifacts.maximization import Maximization

Finding = tuple[str, str, str]

#: A layer is listed as unhealthy when at least this share of its units is dead or
#: saturated (a few dead ReLU units are normal; half of a layer is not).
UNHEALTHY_SHARE = 0.5

#: Terms used in the summary and the sections, explained where they appear.
TERMS = {
    "accuracy": "Share of the test split whose highest-scoring class is the true class.",
    "deletion AUC": (
        "Area under the model's score as the most important pixels (by the map) are "
        "removed first. Lower is better: a faithful map points at what the score needs."
    ),
    "insertion AUC": (
        "Area under the score as the most important pixels are added to a blank input. "
        "Higher is better."
    ),
    "random baseline": (
        "The same curves for a random ranking of the pixels. A method no better than "
        "random on either curve does not point at what the model uses."
    ),
    "sanity check": (
        "Randomisation test (Adebayo et al. 2018): the model's layers are re-initialised "
        "from the top, and the map is compared (Spearman rank correlation) with the "
        "original. A method passes when the correlation falls below the threshold: its "
        "map depends on what the model learned. A method that fails draws nearly the same "
        "map for a random model, so it shows the input's structure (edges, contrast), "
        "not the model's reasoning: do not read this model's decisions from it."
    ),
    "dead unit": "A unit whose output was never above zero on any extracted input.",
    "saturated unit": (
        "A bounded unit (sigmoid, tanh, softmax) with at least 95% of its values within "
        "1% of a bound (sigmoid-like: below 0.01 or above 0.99); an unbounded unit whose "
        "mean exceeds its layer's mean by more than 4 standard deviations. Saturated "
        "units pass almost no gradient and carry little information."
    ),
    "reach ratio": (
        "The activation the optimised input reached, divided by the highest activation "
        "of that unit over the real probe inputs. Above 1: the synthetic image excites "
        "the unit more than any real input, so it shows what the unit responds to. Below "
        "1: the optimisation did not get as far as real data (too few steps, too strong a "
        "regulariser): the image is a weak picture of the unit. Negative: the unit ended "
        "below zero. n/a: the unit never fired on real inputs (the ratio has no "
        "reference), typically a dead unit."
    ),
}


@dataclass
class LayerHealth:
    """One layer's health row (from the extract stage's per-layer health file)."""

    path: str
    class_name: str
    units: int
    dead: float
    saturated: float
    nonfinite: float = 0.0


def task_finding(evaluation: Evaluation) -> Finding:
    """A regression or segmentation model's test metrics, against a trivial baseline.

    Regression: R² (0 is always predicting the mean target), MSE and MAE. Segmentation:
    pixel accuracy against always predicting the most frequent class, and the mean IoU
    (Long et al. 2015). The numbers are the train stage's ``metrics/train.json``.
    """
    m, n = evaluation.metrics, len(evaluation.labels)
    if evaluation.task == "regression":
        r2 = m.get("r2")
        shown = f"R² {r2:.3f}" if r2 is not None else "R² undefined (constant targets)"
        text = (
            f"Regression: test {shown} (MSE {m.get('mse', float('nan')):.4g}, "
            f"MAE {m.get('mae', float('nan')):.4g}) on {n} inputs; R² 0 is always "
            "predicting the mean."
        )
        if r2 is not None and r2 <= 0:
            text += " The model is no better than the mean: its explanations describe noise."
        return ("bad" if r2 is not None and r2 <= 0 else "ok", text, "#training")
    accuracy, iou = m.get("pixel_accuracy", float("nan")), m.get("mean_iou")
    counts = np.bincount(np.asarray(evaluation.labels, np.int64).reshape(-1))
    baseline = float(counts.max() / counts.sum()) if counts.sum() else float("nan")
    level = "ok" if accuracy > baseline else "bad"
    text = (
        f"Segmentation: test pixel accuracy {accuracy:.1%}, mean IoU "
        f"{iou if iou is not None else float('nan'):.3f} on {n} inputs (always the most "
        f"frequent class: {baseline:.0%})."
    )
    if level == "bad":
        text += " The model is no better than that: its explanations describe an untrained model."
    return (level, text, "#training")


def accuracy_finding(evaluation: Evaluation | None) -> Finding:
    """Test accuracy (or a regression or segmentation metric), or why there is none."""
    if evaluation is None:
        return ("info", "Accuracy: not computed (run the train stage).", "")
    if evaluation.task != "classification":
        return task_finding(evaluation)
    if not evaluation.labeled:
        return ("info", "Unlabeled data: no accuracy; maps explain the predicted class.", "")
    predicted = evaluation.probabilities.argmax(-1)
    known = evaluation.labels >= 0
    accuracy = float(np.mean(predicted[known] == evaluation.labels[known]))
    chance = 1 / max(1, evaluation.probabilities.shape[-1])
    level = "ok" if accuracy > 2 * chance else "bad"
    text = f"Test accuracy {accuracy:.1%} on {int(known.sum())} inputs (chance: {chance:.0%})." + (
        " The model is near chance: its explanations describe an untrained model."
        if level == "bad"
        else ""
    )
    return (level, text, "#training")


def sanity_findings(result: Attributions) -> list[Finding]:
    """Which methods pass and fail the randomisation sanity check."""
    if not result.sanity:
        return [("info", "Sanity check: not run (attribute.sanity.enabled is off).", "")]
    finals = {m: float(s.correlations[-1]) for m, s in result.sanity.items()}
    passed = sorted(m for m, r in finals.items() if abs(r) < result.sanity_threshold)
    failed = sorted(set(finals) - set(passed))
    out = []
    if passed:
        out.append(
            (
                "ok",
                f"Sanity check passed by {', '.join(passed)}: their maps change when the "
                f"weights are randomised (|Spearman| < {result.sanity_threshold}), so they "
                "depend on what the model learned.",
                "#sanity",
            )
        )
    if failed:
        detail = ", ".join(f"{m} ({finals[m]:.2f})" for m in failed)
        out.append(
            (
                "bad",
                f"Sanity check failed by {detail}: they draw nearly the same map for a "
                "random model, so they show the input's structure rather than the model's "
                "reasoning. Do not read decisions from them.",
                "#sanity",
            )
        )
    return out


def faithfulness_findings(result: Attributions) -> list[Finding]:
    """The most faithful method, and every method no better than random."""
    faith = result.faithfulness
    if not faith:
        return [("info", "Deletion/insertion: not run (attribute.faithfulness is off).", "")]
    methods = {m: c for m, c in faith.items() if m != "random"}
    if not methods:
        return []
    random = faith.get("random")
    # Insertion minus deletion rewards both curves at once (higher is better).
    score = {m: float(c.insertion_auc) - float(c.deletion_auc) for m, c in methods.items()}
    best = max(score, key=score.get)
    c = methods[best]
    reference = ""
    if random is not None:
        reference = (
            f" (random ranking: deletion {float(random.deletion_auc):.3f}, insertion "
            f"{float(random.insertion_auc):.3f})"
        )
    out = [
        (
            "ok",
            f"Most faithful method: {best}, deletion AUC {float(c.deletion_auc):.3f} (lower "
            f"is better), insertion AUC {float(c.insertion_auc):.3f} (higher is "
            f"better){reference}.",
            "#faithfulness",
        )
    ]
    if random is not None:
        for m in sorted(methods):
            worse = []
            if float(methods[m].deletion_auc) > float(random.deletion_auc):
                worse.append(
                    f"deletion {float(methods[m].deletion_auc):.3f} > random "
                    f"{float(random.deletion_auc):.3f}"
                )
            if float(methods[m].insertion_auc) < float(random.insertion_auc):
                worse.append(
                    f"insertion {float(methods[m].insertion_auc):.3f} < random "
                    f"{float(random.insertion_auc):.3f}"
                )
            if worse:
                out.append(
                    (
                        "warn",
                        f"{m} is worse than a random ranking ({'; '.join(worse)}): its "
                        "highest-ranked pixels are not the ones the score depends on.",
                        "#faithfulness",
                    )
                )
    return out


def health_findings(layers: Sequence[LayerHealth]) -> list[Finding]:
    """Overall dead and saturated shares, and the layers where most units are."""
    if not layers:
        return [("info", "Layer health: not computed (run the extract stage).", "")]
    units = np.array([max(1, h.units) for h in layers], float)
    dead = float(np.average([h.dead for h in layers], weights=units))
    saturated = float(np.average([h.saturated for h in layers], weights=units))
    # The model's output is left out: a confident softmax or sigmoid output sits near 0
    # and 1 by design, which the saturation rule would flag.
    bad = [h for h in layers[:-1] if h.dead >= UNHEALTHY_SHARE or h.saturated >= UNHEALTHY_SHARE]
    nonfinite = [h.path for h in layers if h.nonfinite > 0]
    out = [
        (
            "warn" if bad else "ok",
            f"{dead:.1%} of all units are dead and {saturated:.1%} saturated, over "
            f"{len(layers)} layers.",
            "#layers",
        )
    ]
    if bad:
        listed = ", ".join(
            f"{h.path} ({h.dead:.0%} dead, {h.saturated:.0%} saturated)" for h in bad[:8]
        )
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        out.append(
            (
                "warn",
                f"{len(bad)} layer(s) with at least half their units dead or saturated: "
                f"{listed}{more}. Such units pass no gradient; consider the initialisation, "
                "the learning rate or the activation.",
                "#layer-health",
            )
        )
    if nonfinite:
        out.append(("bad", f"NaN or Inf values in {', '.join(nonfinite[:8])}.", "#layer-health"))
    return out


def reach_findings(result: Maximization) -> list[Finding]:
    """Mean reach ratio per maximised layer, with what below 1 means."""
    out = []
    for target in result.targets:
        reach = np.asarray(target.reach_ratio, float)
        finite = reach[np.isfinite(reach)]
        if not len(finite):
            out.append(
                (
                    "warn",
                    f"{target.layer}: no reach ratio (its units never fired on the probe "
                    "inputs), so the images cannot be compared with real data.",
                    "#feature-visualization",
                )
            )
            continue
        mean = float(finite.mean())
        low = int((finite < 1).sum())
        text = f"{target.layer}: mean reach ratio {mean:.2f} over {len(finite)} units"
        if low:
            text += (
                f"; {low} below 1 (the optimised image excites the unit less than some "
                "real input: a weak picture of what it responds to)"
            )
        else:
            text += " (every image excites its unit more than any real input)"
        out.append(("ok" if mean >= 1 else "warn", text + ".", "#feature-visualization"))
    return out


def concept_findings(result) -> list[Finding]:
    """Which concepts matter significantly for which classes (TCAV).

    Args:
        result: A :class:`pipeline.artifacts.concepts.Concepts`.
    """
    if not result.tcav:
        return [("info", "No concept tested (add example folders under concepts/).", "#concepts")]
    classes = result.class_names or []
    hits = []
    for item in result.tcav:
        for row, significant in enumerate(item.significant):
            if significant:
                c = int(result.classes[row])
                name = classes[c] if 0 <= c < len(classes) else str(c)
                hits.append(f"{item.concept} at {item.layer} for class {name}")
    tested = len({item.concept for item in result.tcav})
    if not hits:
        return [
            (
                "info",
                f"{tested} concept(s) tested; none is significant for any class: their TCAV "
                "scores cannot be told apart from random directions.",
                "#tcav",
            )
        ]
    listed = "; ".join(hits[:6]) + (f" and {len(hits) - 6} more" if len(hits) > 6 else "")
    return [("ok", f"Concepts that significantly matter (TCAV): {listed}.", "#tcav")]

"""Which units to visualise: targets by layer path or keyword, units by list or top-k.

A configured target is ``{layer, units, objective, position, direction}``; the layer
may be a keyword of :data:`pipeline.graph.KEYWORDS`, so one config fits any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.errors import KerascopeError, choices_hint
from pipeline.graph import KEYWORDS, LayerForward, keyword_layer, layer_info
from pipeline.maximization.objectives import objective_values
from pipeline.maximization.settings import OBJECTIVES, Objective, check_units, objective_kind

TARGET_KEYS = ("layer", "units", "objective", "position", "direction")


@dataclass
class TargetPlan:
    """One resolved target.

    Attributes:
        objective: What to maximise.
        units: The unit indices chosen.
        probe_values: (probe inputs, all units) objective values on real inputs, the
            reference of the reach ratio.
    """

    objective: Objective
    units: np.ndarray
    probe_values: np.ndarray


def probe_objective(model: keras.Model, objective: Objective, probe_x: np.ndarray) -> np.ndarray:
    """Objective value of every unit on every probe input: (inputs, units)."""
    is_logit = objective.kind == "class_logit"
    forward = LayerForward(model, [] if is_logit else [objective.layer], logits=is_logit)
    n_units = (
        int(model.outputs[0].shape[-1])
        if is_logit
        else int((layer_info(model, objective.layer).output_shape or (1,))[-1])
    )
    values = []
    for start in range(0, len(probe_x), 256):
        outputs, taps = forward(tf.convert_to_tensor(probe_x[start : start + 256]))
        acts = outputs if is_logit else taps[objective.layer]
        rows = []
        for unit in range(n_units):
            units = tf.fill([tf.shape(acts)[0]], unit)
            rows.append(objective_values(objective, acts, units).numpy())
        values.append(np.stack(rows, axis=1))
    return np.concatenate(values)


def resolve_objective(model: keras.Model, target) -> tuple[Objective | None, object]:
    """A configured target as an :class:`Objective` and its unit spec (None: no such layer).

    Raises:
        KerascopeError: A malformed target, unknown key, layer or objective.
    """
    if isinstance(target, str):
        target = {"layer": target}
    if not isinstance(target, dict) or "layer" not in target:
        raise KerascopeError(
            f"invalid maximize target {target!r}; use {{layer: NAME, units: all | [..] | "
            "{top_k: K}, objective: channel | neuron | unit | class_logit | direction}"
        )
    unknown = sorted(set(target) - set(TARGET_KEYS))
    if unknown:
        hint = choices_hint(unknown[0], TARGET_KEYS)
        raise KerascopeError(f"unknown key '{unknown[0]}' in maximize target; {hint}")
    layer = target["layer"]
    if layer in KEYWORDS:
        layer = keyword_layer(model, layer)
        if layer is None:
            return None, None
    info = layer_info(model, layer)
    is_output = info.path == keyword_layer(model, "output")
    kind = target.get("objective") or objective_kind(info.output_shape or (), is_output)
    if kind not in OBJECTIVES:
        raise KerascopeError(
            f"invalid maximize objective '{kind}'; {choices_hint(str(kind), OBJECTIVES)}"
        )
    position = tuple(target["position"]) if target.get("position") is not None else None
    direction = tuple(target["direction"]) if target.get("direction") is not None else None
    if kind == "direction" and direction is None:
        raise KerascopeError(
            f"objective 'direction' for layer '{info.path}' needs a direction vector"
        )
    return Objective(info.path, kind, position, direction), target.get("units", "all")


def choose_units(spec, probe_values: np.ndarray, layer: str) -> np.ndarray:
    """Unit indices from ``all``, a list (or one index), or ``{top_k: K}``.

    ``top_k`` picks the K units most active on average over the probe inputs.

    Raises:
        KerascopeError: A malformed spec or an index out of range.
    """
    n_units = probe_values.shape[1]
    if spec == "all" or spec is None:
        return np.arange(n_units, dtype=np.int32)
    if isinstance(spec, dict):
        top_k = spec.get("top_k")
        if set(spec) != {"top_k"} or not isinstance(top_k, int) or top_k <= 0:
            raise KerascopeError(
                f"invalid units {spec!r} for layer '{layer}'; valid: all, a list, {{top_k: K}} "
                "with K > 0"
            )
        order = np.argsort(-probe_values.mean(axis=0), kind="stable")
        return np.sort(order[:top_k]).astype(np.int32)
    if isinstance(spec, int):
        spec = [spec]
    return check_units(list(spec), n_units, layer)


def plan_targets(
    model: keras.Model, targets: list, probe_x: np.ndarray
) -> tuple[list[TargetPlan], list[str]]:
    """Resolve every configured target against the model and the probe inputs.

    Returns:
        The plans, and the keywords no layer of this model fits (skipped).
    """
    plans, skipped = [], []
    for target in targets:
        objective, spec = resolve_objective(model, target)
        if objective is None:
            skipped.append(target["layer"] if isinstance(target, dict) else str(target))
            continue
        values = probe_objective(model, objective, probe_x)
        plans.append(TargetPlan(objective, choose_units(spec, values, objective.layer), values))
    return plans, skipped


def reach_ratios(final: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Activation reached / best probe activation per image (NaN where the best is ~0)."""
    return np.where(np.abs(best) > 1e-8, final / np.where(best == 0, 1, best), np.nan)

"""Which units to visualise: targets by layer path or keyword, units by list or top-k.

A configured target is ``{layer, units, objective, position, direction}``; the layer
may be a keyword of :data:`pipeline.graph.KEYWORDS`, so one config fits any model. A
composite target ``{objective: sum, terms: [{layer, unit, objective, weight, position,
direction}, ...]}`` is one image maximising the weighted sum of its terms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import keras
import numpy as np
import tensorflow as tf

from pipeline.budget import forward_batch_rows
from pipeline.errors import KerascopeError, choices_hint
from pipeline.graph import KEYWORDS, keyword_layer, layer_info
from pipeline.maximization.objectives import objective_forward, objective_values
from pipeline.maximization.settings import (
    COMPOSITE,
    OBJECTIVES,
    Objective,
    Sum,
    Term,
    check_units,
    objective_kind,
)

TARGET_KEYS = ("layer", "units", "objective", "position", "direction")
TERM_KEYS = ("layer", "unit", "objective", "weight", "position", "direction")

#: Objectives of one value per image (no units to choose): one image per target.
_UNITLESS = ("layer", COMPOSITE)


@dataclass
class TargetPlan:
    """One resolved target.

    Attributes:
        objective: What to maximise.
        units: The unit indices chosen.
        probe_values: (probe inputs, all units) objective values on real inputs, the
            reference of the reach ratio.
    """

    objective: Objective | Sum
    units: np.ndarray
    probe_values: np.ndarray


def _unit_count(model: keras.Model, objective: Objective | Sum) -> int:
    """How many units a target can choose from (1 for a layer or a composite objective)."""
    if objective.kind in _UNITLESS:
        return 1
    if objective.kind == "class_logit":
        return int(model.outputs[0].shape[-1])
    return int((layer_info(model, objective.layer).output_shape or (1,))[-1])


def probe_objective(
    model: keras.Model, objective: Objective | Sum, probe_x: np.ndarray
) -> np.ndarray:
    """Objective value of every unit on every probe input: (inputs, units)."""
    # Compiled, so each layer's output is freed once used, and in batches whose
    # forward pass stays within the attribution steps' memory budget.
    forward = tf.function(objective_forward(model, objective), reduce_retracing=True)
    step = forward_batch_rows(model, tuple(probe_x.shape[1:]), 256)
    n_units = _unit_count(model, objective)
    values = []
    for start in range(0, len(probe_x), step):
        batch = tf.convert_to_tensor(probe_x[start : start + step])
        acts = forward(batch)
        rows = []
        for unit in range(n_units):
            units = tf.fill([batch.shape[0]], unit)
            rows.append(objective_values(objective, acts, units).numpy())
        values.append(np.stack(rows, axis=1))
    return np.concatenate(values)


def _check_keys(entry: dict, valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(entry) - set(valid))
    if unknown:
        raise KerascopeError(
            f"unknown key '{unknown[0]}' in {where}; {choices_hint(unknown[0], valid)}"
        )


def _resolve_one(model: keras.Model, entry: dict) -> Objective | None:
    """One ``{layer, objective, position, direction}`` entry (None: no such layer)."""
    layer = entry["layer"]
    if layer in KEYWORDS:
        layer = keyword_layer(model, layer)
        if layer is None:
            return None
    info = layer_info(model, layer)
    is_output = info.path == keyword_layer(model, "output")
    kind = entry.get("objective") or objective_kind(info.output_shape or (), is_output)
    if kind not in OBJECTIVES:
        raise KerascopeError(
            f"invalid maximize objective '{kind}'; {choices_hint(str(kind), OBJECTIVES)}"
        )
    position = tuple(entry["position"]) if entry.get("position") is not None else None
    direction = tuple(entry["direction"]) if entry.get("direction") is not None else None
    if kind == "direction" and direction is None:
        raise KerascopeError(
            f"objective 'direction' for layer '{info.path}' needs a direction vector"
        )
    return Objective(info.path, kind, position, direction)


def _resolve_term(model: keras.Model, entry) -> Term | None:
    """One term of a composite target, with its fixed unit and weight (None: no layer)."""
    if not isinstance(entry, dict) or "layer" not in entry:
        raise KerascopeError(
            f"invalid term {entry!r} of a maximize sum; use {{layer: NAME, unit: K, "
            "objective: channel | neuron | unit | class_logit | direction | layer, weight: W}"
        )
    _check_keys(entry, TERM_KEYS, "a maximize sum term")
    objective = _resolve_one(model, entry)
    if objective is None:
        return None
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise KerascopeError(f"weight {weight!r} of a maximize sum term must be a number")
    unit = entry.get("unit")
    if objective.kind in ("layer", "direction"):
        return Term(objective, float(weight))  # one value per image: no unit to fix
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise KerascopeError(
            f"term '{objective.layer}' ({objective.kind}) of a maximize sum needs a unit index"
        )
    check_units([unit], _unit_count(model, objective), objective.layer)
    return Term(replace(objective, unit=unit), float(weight))


def resolve_objective(model: keras.Model, target) -> tuple[Objective | Sum | None, object]:
    """A configured target as an objective and its unit spec (None: no such layer).

    A composite target (``objective: sum``) becomes a :class:`Sum` of its terms, each
    with its own layer (keywords resolved per term), fixed unit and weight; it is
    skipped (None) when a term's keyword fits no layer of the model.

    Raises:
        KerascopeError: A malformed target, unknown key, layer or objective.
    """
    if isinstance(target, str):
        target = {"layer": target}
    if isinstance(target, dict) and target.get("objective") == COMPOSITE:
        _check_keys(target, ("objective", "terms"), "a maximize sum")
        entries = target.get("terms")
        if not isinstance(entries, list) or not entries:
            raise KerascopeError("a maximize sum needs a non-empty list of terms")
        terms = [_resolve_term(model, entry) for entry in entries]
        return (None, None) if None in terms else (Sum(tuple(terms)), "all")
    if not isinstance(target, dict) or "layer" not in target:
        raise KerascopeError(
            f"invalid maximize target {target!r}; use {{layer: NAME, units: all | [..] | "
            "{top_k: K}, objective: channel | neuron | unit | class_logit | direction | layer} "
            "or {objective: sum, terms: [{layer, unit, objective, weight}, ...]}"
        )
    _check_keys(target, TARGET_KEYS, "maximize target")
    objective = _resolve_one(model, target)
    return (None, None) if objective is None else (objective, target.get("units", "all"))


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
            skipped.append(_keywords(target))
            continue
        values = probe_objective(model, objective, probe_x)
        plans.append(TargetPlan(objective, choose_units(spec, values, objective.layer), values))
    return plans, skipped


def _keywords(target) -> str:
    """The layer keyword(s) of a skipped target, for the message."""
    if not isinstance(target, dict):
        return str(target)
    entries = target.get("terms") or [target]
    return ", ".join(str(e["layer"]) for e in entries if e.get("layer") in KEYWORDS)


def target_labels(objectives) -> list[str]:
    """One distinct label per target: its layer path (a sum: its formula).

    Two targets on one layer (its channels, and the whole layer as in DeepDream) would
    share a name in the maximization file and the metrics: later ones get their
    objective appended (``conv2 (layer)``), then a number.
    """
    labels: list[str] = []
    for objective in objectives:
        label = objective.layer
        if label in labels:
            label = f"{objective.layer} ({objective.kind})"
        base, count = label, 2
        while label in labels:
            label, count = f"{base} #{count}", count + 1
        labels.append(label)
    return labels


def reach_ratios(final: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Activation reached / best probe activation per image (NaN where the best is ~0)."""
    return np.where(np.abs(best) > 1e-8, final / np.where(best == 0, 1, best), np.nan)

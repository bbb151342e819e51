"""What to optimise and how: the options of activation maximization, without TensorFlow.

:class:`Settings` is both the library's argument and, unchanged, the schema of the
``maximize`` config section (plus its ``targets`` list), so every default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import KerascopeError, check_choice, check_positive, check_range

OBJECTIVES = ("channel", "neuron", "unit", "class_logit", "direction", "layer")
PARAMETRIZATIONS = ("pixel", "fourier", "maco")

#: The ``objective`` of a configured target that adds weighted terms (see :class:`Sum`).
COMPOSITE = "sum"


class _Composable:
    """Lucid-style arithmetic: objectives add, subtract and scale into a :class:`Sum`."""

    def terms_of(self) -> tuple[Term, ...]:
        raise NotImplementedError

    def __add__(self, other) -> Sum:
        if isinstance(other, int | float) and other == 0:
            return Sum(self.terms_of())  # so that the builtin sum() works
        if not isinstance(other, _Composable):
            return NotImplemented
        return Sum(self.terms_of() + other.terms_of())

    __radd__ = __add__

    def __mul__(self, factor) -> Sum:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return Sum(tuple(Term(t.objective, t.weight * float(factor)) for t in self.terms_of()))

    __rmul__ = __mul__

    def __neg__(self) -> Sum:
        return self * -1.0

    def __sub__(self, other) -> Sum:
        if not isinstance(other, _Composable):
            return NotImplemented
        return self + (-other)


@dataclass(frozen=True)
class Objective(_Composable):
    """One optimisation target.

    Objectives combine as in Lucid (Olah et al. 2017):
    ``Objective("conv2", "channel", unit=3) - Objective("conv2", "channel", unit=5)`` or
    ``channel + 0.5 * Objective("out", "class_logit", unit=1)`` is a :class:`Sum`.

    Attributes:
        layer: Layer path (for ``class_logit``: the model's output layer).
        kind: One of :data:`OBJECTIVES`. ``layer`` is the mean of the squared
            activations of the whole layer (DeepDream, Mordvintsev, Olah & Tyka 2015);
            it has no units.
        position: Spatial (or time) index for ``neuron`` objectives; default: centre.
        direction: A vector in the layer's channel space for ``direction``.
        unit: A fixed unit (channel, neuron, class); None: the unit of each image,
            from the ``units`` given to ``maximize``.
    """

    layer: str
    kind: str
    position: tuple[int, ...] | None = None
    direction: tuple[float, ...] | None = None
    unit: int | None = None

    def terms_of(self) -> tuple[Term, ...]:
        """This objective as the one term of a sum, with weight 1."""
        return (Term(self),)


@dataclass(frozen=True)
class Term:
    """One weighted objective of a :class:`Sum`."""

    objective: Objective
    weight: float = 1.0


@dataclass(frozen=True)
class Sum(_Composable):
    """A weighted sum of objectives; each image's value is ``sum(weight * value)``.

    Every layer involved is tapped in the same forward pass. A term with no fixed
    ``unit`` takes each image's unit from ``maximize``'s ``units``. The diversity term
    compares images by the first term's tensor.

    Attributes:
        terms: The weighted objectives, in order.
    """

    terms: tuple[Term, ...]

    kind = COMPOSITE

    def terms_of(self) -> tuple[Term, ...]:
        """The terms themselves."""
        return self.terms

    @property
    def layer(self) -> str:
        """A label for reports and file names: ``channel:conv2[3] - 0.5*channel:conv2[5]``."""
        text = ""
        for term in self.terms:
            objective, weight = term.objective, term.weight
            unit = "" if objective.unit is None else f"[{objective.unit}]"
            factor = "" if abs(weight) == 1 else f"{abs(weight):g}*"
            sign = "-" if weight < 0 else "+"
            text += f" {sign} {factor}{objective.kind}:{objective.layer}{unit}"
        return text[3:] if text.startswith(" + ") else "-" + text[3:]


def objective_kind(output_shape: tuple, is_output: bool) -> str:
    """The natural objective of a layer: class logit, channel mean, or dense unit."""
    if is_output:
        return "class_logit"
    return "channel" if len(output_shape) >= 2 else "unit"


def check_units(units, count: int, layer: str) -> np.ndarray:
    """Validate unit indices against the layer's channel count (one-line errors)."""
    units = np.asarray(units, dtype=np.int32).reshape(-1)
    bad = units[(units < 0) | (units >= count)]
    if len(bad):
        raise KerascopeError(
            f"unit {int(bad[0])} is out of range for layer '{layer}'; valid: 0..{count - 1}"
        )
    return units


@dataclass
class Settings:
    """Optimisation settings (every weight 0 disables its term).

    Attributes:
        steps: Optimisation steps per image.
        learning_rate: Adam step size on the parameters.
        parametrization: ``pixel``, ``fourier``, or ``maco`` (only the Fourier phase is
            optimised, the magnitude fixed at 1/f^decay: Fel et al. 2023).
        decay: Frequency decay of the Fourier scale and of MaCo's magnitude (1 = 1/f).
        decorrelate: Colour decorrelation for RGB inputs.
        l2, lp, p, tv, blur: Weights of the L2 norm, the Lp norm (with exponent ``p``),
            total variation and the blur penalty.
        jitter: Maximum random shift in pixels between steps.
        scale: Range of the random zoom between steps.
        rotate: Maximum random rotation in degrees between steps.
        copies: Images per unit; with ``diversity`` > 0 they are pushed apart.
        diversity: Weight of the diversity term (Olah et al. 2017).
        seed: Seed of the initial images and the transforms (in the pipeline: the
            top-level ``seed``).
        batch_size: Images per compiled step; None picks it from a memory budget.
        steps_per_call: Steps run inside one compiled call when progress is reported
            (its granularity); without a progress callback every step runs in one call.
        explode_at: Stop when an objective's magnitude exceeds this.
        preactivation: Optimise the unit before its activation function (a ReLU unit
            that starts switched off still gets a gradient); the reported final values
            and reach ratios are always after the activation.
    """

    steps: int = 128
    learning_rate: float = 0.05
    parametrization: str = "fourier"
    decay: float = 1.0
    decorrelate: bool = True
    l2: float = 0.0
    lp: float = 0.0
    p: float = 6.0
    tv: float = 0.0
    blur: float = 0.0
    jitter: int = 1
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    copies: int = 1
    diversity: float = 0.0
    seed: int = 0
    batch_size: int | None = None
    steps_per_call: int = 16
    explode_at: float = 1e6
    preactivation: bool = True

    def check(self, prefix: str = "maximize") -> None:
        """Raise a one-line error for an invalid value."""
        for key in ("steps", "learning_rate", "steps_per_call", "copies", "explode_at"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        check_positive(f"{prefix}.batch_size", self.batch_size, optional=True)
        check_choice(f"{prefix}.parametrization", self.parametrization, PARAMETRIZATIONS)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise KerascopeError(
                f"'{prefix}.scale' must be [low, high] with 0 < low <= high, got {list(self.scale)}"
            )
        for key in ("l2", "lp", "tv", "blur", "diversity", "jitter", "rotate"):
            check_range(f"{prefix}.{key}", getattr(self, key), 0, float("inf"))


@dataclass
class MaximizeOptions(Settings):
    """The ``maximize`` config section: the optimisation :class:`Settings` and targets.

    Attributes:
        targets: ``{layer, units, objective, position, direction}`` per target; the
            layer may be a keyword (``output``, ``last_conv``, ``last_hidden``). Or a
            composite, one image: ``{objective: sum, terms: [{layer, unit, objective,
            weight, position, direction}, ...]}``.
    """

    targets: list[Any] = field(default_factory=list)

    def check(self, prefix: str = "maximize") -> None:
        """Raise a one-line error for an invalid value."""
        super().check(prefix)
        if not self.targets:
            raise KerascopeError(f"{prefix}.targets is empty; list layers such as [conv2, dense1]")

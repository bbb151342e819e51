"""The options of every attribution method: the one definition of their names and defaults.

These dataclasses are the library's keyword arguments and, unchanged, the schema of the
``attribute.<method>`` config sections, so a default is written once. The module
imports no TensorFlow, so a stage can validate its config before paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import KerascopeError

SCORES = ("logits", "probabilities")
REDUCTIONS = ("max", "mean")
BASELINES = ("zeros", "blur", "uniform")
SUBSTRATES = ("zeros", "blur", "mean")


def _one_of(name: str, value, valid) -> None:
    if value not in valid:
        raise KerascopeError(f"invalid {name} '{value}'; valid: {', '.join(map(str, valid))}")


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise KerascopeError(f"'{name}' must be a positive number, got {value!r}")


@dataclass
class SaliencyOptions:
    """Vanilla gradient saliency (Simonyan et al. 2013).

    Attributes:
        reduce: ``max`` or ``mean`` of |gradient| over channels.
    """

    reduce: str = "max"

    def check(self, prefix: str = "saliency") -> None:
        """Raise a one-line error for an invalid value."""
        _one_of(f"{prefix}.reduce", self.reduce, REDUCTIONS)


@dataclass
class SmoothGradOptions:
    """SmoothGrad (Smilkov et al. 2017).

    Attributes:
        noise: Standard deviation of the Gaussian noise, as a fraction of each input's
            value range.
        samples: Noisy copies per input.
        reduce: ``max`` or ``mean`` of |gradient| over channels.
    """

    noise: float = 0.15
    samples: int = 16
    reduce: str = "max"

    def check(self, prefix: str = "smoothgrad") -> None:
        """Raise a one-line error for an invalid value."""
        _positive(f"{prefix}.samples", self.samples)
        if self.noise is None or self.noise < 0:
            raise KerascopeError(f"'{prefix}.noise' must be >= 0, got {self.noise!r}")
        _one_of(f"{prefix}.reduce", self.reduce, REDUCTIONS)


@dataclass
class IntegratedGradientsOptions:
    """Integrated Gradients (Sundararajan et al. 2017).

    Attributes:
        baseline: ``zeros``, ``blur`` or ``uniform``.
        steps: Intervals on the straight path (trapezoidal rule).
    """

    baseline: str = "zeros"
    steps: int = 32

    def check(self, prefix: str = "integrated_gradients") -> None:
        """Raise a one-line error for an invalid value."""
        _one_of(f"{prefix}.baseline", self.baseline, BASELINES)
        _positive(f"{prefix}.steps", self.steps)


@dataclass
class CamOptions:
    """Grad-CAM and Grad-CAM++ (no options beyond the common layer)."""

    def check(self, prefix: str = "") -> None:
        """Nothing to check."""


@dataclass
class ScoreCamOptions:
    """Score-CAM (Wang et al. 2020).

    Attributes:
        max_channels: Use only this many channels per input, those with the highest mean
            activation; None uses all.
    """

    max_channels: int | None = None

    def check(self, prefix: str = "scorecam") -> None:
        """Raise a one-line error for an invalid value."""
        if self.max_channels is not None:
            _positive(f"{prefix}.max_channels", self.max_channels)


#: Every method, its options, whether it maps a layer (a CAM), and whether it is noisy.
METHOD_OPTIONS: dict[str, type] = {
    "saliency": SaliencyOptions,
    "smoothgrad": SmoothGradOptions,
    "integrated_gradients": IntegratedGradientsOptions,
    "gradcam": CamOptions,
    "gradcam_plus_plus": CamOptions,
    "scorecam": ScoreCamOptions,
}
METHODS = tuple(METHOD_OPTIONS)
CAM_METHODS = ("gradcam", "gradcam_plus_plus", "scorecam")
#: Methods whose maps depend on a random seed.
SEEDED_METHODS = ("smoothgrad", "integrated_gradients")
#: Methods that always score probabilities of masked inputs (the paper's definition).
FIXED_SCORE_METHODS = ("scorecam",)


@dataclass
class FaithfulnessOptions:
    """Deletion/insertion (Petsiuk et al. 2018).

    Attributes:
        enabled: Compute the curves.
        steps: Deletion/insertion steps.
        substrate: What removed features become: ``blur``, ``zeros`` or ``mean``.
    """

    enabled: bool = True
    steps: int = 20
    substrate: str = "blur"

    def check(self, prefix: str = "faithfulness") -> None:
        """Raise a one-line error for an invalid value."""
        _positive(f"{prefix}.steps", self.steps)
        _one_of(f"{prefix}.substrate", self.substrate, SUBSTRATES)


@dataclass
class SanityOptions:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    Attributes:
        enabled: Run the check.
        max_layers: Randomise at most this many layers (None: all with weights).
        threshold: A method fails when |Spearman| after full randomisation is at least this.
    """

    enabled: bool = True
    max_layers: int | None = None
    threshold: float = 0.5

    def check(self, prefix: str = "sanity") -> None:
        """Raise a one-line error for an invalid value."""
        if self.max_layers is not None:
            _positive(f"{prefix}.max_layers", self.max_layers)
        if self.threshold is None or not 0.0 <= self.threshold <= 1.0:
            raise KerascopeError(f"'{prefix}.threshold' must be in [0, 1], got {self.threshold!r}")

"""The options of every attribution method: the one definition of their names and defaults.

These dataclasses are the library's keyword arguments and, unchanged, the schema of the
``attribute.<method>`` config sections, so a default is written once. The module
imports no TensorFlow, so a stage can validate its config before paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.artifacts.dataset import InputOptions
from pipeline.distribute import STRATEGIES
from pipeline.errors import (
    KerascopeError,
    check_choice,
    check_positive,
    check_range,
)

SCORES = ("logits", "probabilities")
REDUCTIONS = ("max", "mean")
BASELINES = ("zeros", "blur", "uniform")
SUBSTRATES = ("zeros", "blur", "mean")


@dataclass
class SaliencyOptions:
    """Vanilla gradient saliency (Simonyan et al. 2013).

    Attributes:
        reduce: ``max`` or ``mean`` of |gradient| over channels.
    """

    reduce: str = "max"

    def check(self, prefix: str = "saliency") -> None:
        """Raise a one-line error for an invalid value."""
        check_choice(f"{prefix}.reduce", self.reduce, REDUCTIONS)


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
        check_positive(f"{prefix}.samples", self.samples)
        check_range(f"{prefix}.noise", self.noise, 0.0, float("inf"))
        check_choice(f"{prefix}.reduce", self.reduce, REDUCTIONS)


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
        check_choice(f"{prefix}.baseline", self.baseline, BASELINES)
        check_positive(f"{prefix}.steps", self.steps)


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
            activation (a 1,280-channel layer costs 1,280 forward passes per input
            otherwise); None uses all.
    """

    max_channels: int | None = 64

    def check(self, prefix: str = "scorecam") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.max_channels", self.max_channels, optional=True)


@dataclass(frozen=True)
class MethodSpec:
    """What a method takes: its options dataclass and which common settings it uses."""

    options: type
    uses: tuple[str, ...]
    batch_size: int = 64


#: Settings shared by the methods (each uses some): the score explained, the CAM layer,
#: the seed of noisy methods, and inputs per compiled step.
COMMON = {"score": "logits", "layer": None, "seed": 0, "batch_size": 64}

METHOD_SPECS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(SaliencyOptions, ("score", "batch_size")),
    "smoothgrad": MethodSpec(SmoothGradOptions, ("score", "seed", "batch_size")),
    "integrated_gradients": MethodSpec(
        IntegratedGradientsOptions, ("score", "seed", "batch_size"), batch_size=128
    ),
    "gradcam": MethodSpec(CamOptions, ("layer", "score", "batch_size")),
    "gradcam_plus_plus": MethodSpec(CamOptions, ("layer", "score", "batch_size")),
    # Score-CAM always scores probabilities of masked inputs, as the paper defines it.
    "scorecam": MethodSpec(ScoreCamOptions, ("layer", "batch_size"), batch_size=256),
}
METHODS = tuple(METHOD_SPECS)
CAM_METHODS = ("gradcam", "gradcam_plus_plus", "scorecam")


def resolve(method: str, given: dict):
    """Split a method's keyword arguments into its checked options and common settings.

    Args:
        method: A key of :data:`METHOD_SPECS`.
        given: The keyword arguments a caller passed.

    Returns:
        (options dataclass, dict of the common settings the method uses, defaults filled).

    Raises:
        KerascopeError: A keyword the method does not take, or an invalid value.
    """
    spec = METHOD_SPECS[method]
    fields = {f for f in spec.options.__dataclass_fields__}
    valid = sorted(fields | set(spec.uses))
    for key in given:
        check_choice(f"option of {method}", key, valid)
    options = spec.options(**{k: v for k, v in given.items() if k in fields})
    options.check(method)
    common = {**COMMON, "batch_size": spec.batch_size}
    common = {k: given.get(k, common[k]) for k in spec.uses}
    if "score" in common:
        check_choice(f"{method}.score", common["score"], SCORES)
    check_positive(f"{method}.batch_size", common["batch_size"])
    return options, common


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
        check_positive(f"{prefix}.steps", self.steps)
        check_choice(f"{prefix}.substrate", self.substrate, SUBSTRATES)


@dataclass
class SanityOptions:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    Attributes:
        enabled: Run the check.
        max_layers: Randomise at most this many layers (None: all with weights).
        steps: Cascade steps: the layers are randomised in this many consecutive groups,
            top first, so a 150-layer net costs 8 map computations, not 150 (None: one
            step per layer).
        threshold: A method fails when |Spearman| after full randomisation is at least this.
    """

    enabled: bool = True
    max_layers: int | None = None
    steps: int | None = 8
    threshold: float = 0.5

    def check(self, prefix: str = "sanity") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.max_layers", self.max_layers, optional=True)
        check_positive(f"{prefix}.steps", self.steps, optional=True)
        check_range(f"{prefix}.threshold", self.threshold, 0, 1)


@dataclass
class AttributeOptions(InputOptions):
    """The ``attribute`` config section: the inputs, common keys, each method's options.

    Attributes:
        methods: Methods to run, in order (see :data:`METHODS`).
        target: ``predicted``, ``true``, or a class index.
        score: ``logits`` (a final softmax bypassed) or ``probabilities``.
        layer: The CAM layer (None: :func:`pipeline.graph.default_cam_layer`).
        batch_size: Inputs per compiled step.
        strategy: ``tf.distribute`` strategy name.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    target: str = "predicted"
    score: str = "logits"
    layer: str | None = None
    batch_size: int = 64
    strategy: str = "auto"
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    smoothgrad: SmoothGradOptions = field(default_factory=SmoothGradOptions)
    integrated_gradients: IntegratedGradientsOptions = field(
        default_factory=IntegratedGradientsOptions
    )
    gradcam: CamOptions = field(default_factory=CamOptions)
    gradcam_plus_plus: CamOptions = field(default_factory=CamOptions)
    scorecam: ScoreCamOptions = field(default_factory=ScoreCamOptions)
    faithfulness: FaithfulnessOptions = field(default_factory=FaithfulnessOptions)
    sanity: SanityOptions = field(default_factory=SanityOptions)

    def check(self, prefix: str = "attribute") -> None:
        """Raise a one-line error for an invalid value (each method checks its own)."""
        if not self.methods:
            raise KerascopeError(f"{prefix}.methods is empty; valid: {', '.join(METHODS)}")
        for name in self.methods:
            check_choice("attribution method", name, METHODS)
        check_choice(f"{prefix}.score", self.score, SCORES)
        check_choice(f"{prefix}.strategy", self.strategy, STRATEGIES)
        check_positive(f"{prefix}.batch_size", self.batch_size)
        for name in (*METHODS, "faithfulness", "sanity"):
            getattr(self, name).check(f"{prefix}.{name}")
        target = str(self.target)
        if target not in ("predicted", "true") and not target.lstrip("-").isdigit():
            raise KerascopeError(
                f"invalid {prefix}.target '{target}'; valid: predicted, true, or a class index"
            )

    def method_options(self) -> dict:
        """Each chosen method's options dataclass, in order."""
        return {name: getattr(self, name) for name in self.methods}

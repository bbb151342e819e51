"""The options of every attribution method: the one definition of their names and defaults.

These dataclasses are the library's keyword arguments and, unchanged, the schema of the
``attribute.<method>`` config sections, so a default is written once. The module
imports no TensorFlow, so a stage can validate its config before paying for it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from pipeline.artifacts.dataset import InputOptions
from pipeline.attribution.head_options import HeadOptions
from pipeline.distribute import STRATEGIES
from pipeline.errors import (
    KerascopeError,
    check_choice,
    check_positive,
    check_range,
)


def check_finite(name: str, value) -> None:
    """Raise ``'<name>' must be a finite number`` unless it is one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise KerascopeError(f"'{name}' must be a finite number, got {value!r}")


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
        max_channels: Above this many channels, use only this many per input, those
            with the highest spatial variance of their activations, as tf-keras-vis's
            ``max_N`` does (a 1,280-channel layer costs 1,280 forward passes per input
            otherwise); None uses all.
    """

    max_channels: int | None = 64

    def check(self, prefix: str = "scorecam") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.max_channels", self.max_channels, optional=True)


@dataclass
class GradientXInputOptions:
    """Gradient x Input (Shrikumar et al. 2016; no options beyond the common ones)."""

    def check(self, prefix: str = "gradient_x_input") -> None:
        """Nothing to check."""


@dataclass
class VarGradOptions(SmoothGradOptions):
    """VarGrad (Adebayo et al. 2018): the variance of the gradient over noisy copies.

    Attributes:
        noise: Standard deviation of the Gaussian noise, as a fraction of each input's
            value range (the same noise as SmoothGrad's for the same seed).
        samples: Noisy copies per input.
        reduce: ``max`` or ``mean`` of the variance over channels.
    """

    def check(self, prefix: str = "vargrad") -> None:
        """Raise a one-line error for an invalid value."""
        super().check(prefix)


@dataclass
class SquareGradOptions(SmoothGradOptions):
    """SquareGrad (Hooker et al. 2019): the mean squared gradient over noisy copies.

    Attributes:
        noise: As :class:`VarGradOptions`.
        samples: Noisy copies per input.
        reduce: ``max`` or ``mean`` of the mean squared gradient over channels.
    """

    def check(self, prefix: str = "squaregrad") -> None:
        """Raise a one-line error for an invalid value."""
        super().check(prefix)


@dataclass
class GuidedBackpropOptions(SaliencyOptions):
    """Guided Backpropagation (Springenberg et al. 2015).

    Attributes:
        reduce: ``max`` or ``mean`` of |modified gradient| over channels.
    """

    def check(self, prefix: str = "guided_backprop") -> None:
        """Raise a one-line error for an invalid value."""
        super().check(prefix)


@dataclass
class DeconvNetOptions(SaliencyOptions):
    """DeconvNet (Zeiler & Fergus 2014).

    Attributes:
        reduce: ``max`` or ``mean`` of |modified gradient| over channels.
    """

    def check(self, prefix: str = "deconvnet") -> None:
        """Raise a one-line error for an invalid value."""
        super().check(prefix)


@dataclass
class LayerCamOptions(CamOptions):
    """LayerCAM (Jiang et al. 2021; no options beyond the common layer)."""


@dataclass
class FasterScoreCamOptions:
    """Faster-ScoreCAM (tf-keras-vis): Score-CAM over the most varying channels.

    Attributes:
        max_channels: Use only this many channels per input, those with the highest
            spatial variance of their activations; None uses all (plain Score-CAM).
    """

    max_channels: int | None = 10

    def check(self, prefix: str = "faster_scorecam") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.max_channels", self.max_channels, optional=True)


@dataclass
class OcclusionOptions:
    """Occlusion (Zeiler & Fergus 2014).

    Attributes:
        patch_size: Side of the square patch (images) or cube (volumes), or length of
            the time window (sequences) set to ``baseline``.
        stride: Step between patch positions; the last position is moved back to the
            border. With a stride up to ``patch_size`` every position is covered.
        baseline: The value occluded features take.
    """

    patch_size: int = 8
    stride: int = 4
    baseline: float = 0.0

    def check(self, prefix: str = "occlusion") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.patch_size", self.patch_size)
        check_positive(f"{prefix}.stride", self.stride)
        check_finite(f"{prefix}.baseline", self.baseline)


@dataclass
class RiseOptions:
    """RISE (Petsiuk, Das & Saenko 2018).

    Attributes:
        masks: Random masks, shared by all inputs.
        cells: Cells per side of each mask's random binary grid (the paper's s).
        keep: Probability that a grid cell is kept (the paper's p).
    """

    masks: int = 1000
    cells: int = 7
    keep: float = 0.5

    def check(self, prefix: str = "rise") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.masks", self.masks)
        check_positive(f"{prefix}.cells", self.cells)
        check_positive(f"{prefix}.keep", self.keep, at_most=1.0)


def check_grid(prefix: str, grid: int, baseline: float) -> None:
    """Check the square grid and the baseline value of a grid perturbation method."""
    check_positive(f"{prefix}.grid", grid)
    check_finite(f"{prefix}.baseline", baseline)


@dataclass
class LimeOptions:
    """LIME (Ribeiro, Singh & Guestrin 2016) over the cells of a square grid.

    Attributes:
        samples: Random on/off patterns of the cells (the first keeps every cell).
        grid: Cells per side of the grid of segments.
        kernel_width: Width of LIME's exponential kernel on the cosine distance.
        baseline: The value switched-off cells take.
    """

    samples: int = 256
    grid: int = 8
    kernel_width: float = 0.25
    baseline: float = 0.0

    def check(self, prefix: str = "lime") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.samples", self.samples)
        check_positive(f"{prefix}.kernel_width", self.kernel_width)
        check_grid(prefix, self.grid, self.baseline)


@dataclass
class KernelShapOptions:
    """Kernel SHAP (Lundberg & Lee 2017) over the cells of a square grid.

    Attributes:
        samples: Coalitions drawn from the Shapley kernel (in complementary pairs),
            besides the full and the empty one.
        grid: Cells per side of the grid of players.
        baseline: The value cells outside a coalition take.
    """

    samples: int = 256
    grid: int = 8
    baseline: float = 0.0

    def check(self, prefix: str = "kernel_shap") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.samples", self.samples)
        check_grid(prefix, self.grid, self.baseline)


@dataclass
class SobolOptions:
    """Sobol attribution (Fel et al. 2021): total-order indices of grid-cell masks.

    Attributes:
        designs: Points of the quasi-Monte-Carlo design; each input costs
            ``designs * (grid**2 + 2)`` forward passes.
        grid: Cells per side of the grid.
        baseline: The value a fully masked cell takes.
    """

    designs: int = 32
    grid: int = 8
    baseline: float = 0.0

    def check(self, prefix: str = "sobol") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.designs", self.designs)
        check_grid(prefix, self.grid, self.baseline)


@dataclass
class HsicOptions:
    """HSIC attribution (Novello, Fel & Vigouroux 2022).

    Attributes:
        designs: Binary masks (rounded quasi-Monte-Carlo points), one forward pass each.
        grid: Cells per side of the grid.
        baseline: The value a masked cell takes.
    """

    designs: int = 512
    grid: int = 8
    baseline: float = 0.0

    def check(self, prefix: str = "hsic") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.designs", self.designs)
        if self.designs < 2:
            raise KerascopeError(f"'{prefix}.designs' must be at least 2, got {self.designs!r}")
        check_grid(prefix, self.grid, self.baseline)


HEAD_FUSIONS = ("mean", "max", "min")


@dataclass
class AttentionRolloutOptions:
    """Attention rollout (Abnar & Zuidema 2020) over every MultiHeadAttention layer.

    Attributes:
        head_fusion: How each layer's heads become one attention matrix: ``mean`` (the
            paper's), ``max`` or ``min``.
        discard_ratio: Share of each row's lowest attention weights set to 0 before the
            rollout (Gildenblat's vit-explain variant; 0 keeps all), in [0, 1).
    """

    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    def check(self, prefix: str = "attention_rollout") -> None:
        """Raise a one-line error for an invalid value."""
        check_choice(f"{prefix}.head_fusion", self.head_fusion, HEAD_FUSIONS)
        check_finite(f"{prefix}.discard_ratio", self.discard_ratio)
        if not 0.0 <= self.discard_ratio < 1.0:
            raise KerascopeError(
                f"'{prefix}.discard_ratio' must be in [0, 1), got {self.discard_ratio!r}"
            )


@dataclass(frozen=True)
class MethodSpec:
    """What a method takes: its options dataclass and which common settings it uses."""

    options: type
    uses: tuple[str, ...]
    batch_size: int | None = None


#: Settings shared by the methods (each uses some): the score explained, the CAM layer,
#: the seed of noisy methods, and rows per compiled step (None: sized from the model,
#: see :func:`pipeline.attribution.batching.gradient_rows`).
COMMON = {"score": "logits", "layer": None, "seed": 0, "batch_size": None}

METHOD_SPECS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(SaliencyOptions, ("score", "batch_size")),
    "smoothgrad": MethodSpec(SmoothGradOptions, ("score", "seed", "batch_size")),
    "integrated_gradients": MethodSpec(IntegratedGradientsOptions, ("score", "seed", "batch_size")),
    "gradcam": MethodSpec(CamOptions, ("layer", "score", "batch_size")),
    "gradcam_plus_plus": MethodSpec(CamOptions, ("layer", "score", "batch_size")),
    # Score-CAM always scores probabilities of masked inputs, as the paper defines it.
    "scorecam": MethodSpec(ScoreCamOptions, ("layer", "batch_size")),
    "gradient_x_input": MethodSpec(GradientXInputOptions, ("score", "batch_size")),
    "vargrad": MethodSpec(VarGradOptions, ("score", "seed", "batch_size")),
    "squaregrad": MethodSpec(SquareGradOptions, ("score", "seed", "batch_size")),
    "guided_backprop": MethodSpec(GuidedBackpropOptions, ("score", "batch_size")),
    "deconvnet": MethodSpec(DeconvNetOptions, ("score", "batch_size")),
    "layercam": MethodSpec(LayerCamOptions, ("layer", "score", "batch_size")),
    "faster_scorecam": MethodSpec(FasterScoreCamOptions, ("layer", "batch_size")),
    # Black-box methods: batch_size counts perturbed inputs per compiled step.
    "occlusion": MethodSpec(OcclusionOptions, ("score", "batch_size"), batch_size=256),
    "rise": MethodSpec(RiseOptions, ("score", "seed", "batch_size"), batch_size=256),
    "lime": MethodSpec(LimeOptions, ("score", "seed", "batch_size"), batch_size=256),
    "kernel_shap": MethodSpec(KernelShapOptions, ("score", "seed", "batch_size"), batch_size=256),
    "sobol": MethodSpec(SobolOptions, ("score", "seed", "batch_size"), batch_size=256),
    "hsic": MethodSpec(HsicOptions, ("score", "seed", "batch_size"), batch_size=256),
    # Transformers: reads attention only, so no score and no layer.
    "attention_rollout": MethodSpec(AttentionRolloutOptions, ("batch_size",), batch_size=256),
}
METHODS = tuple(METHOD_SPECS)
#: What the attribute stage runs when its config names no methods (the original six).
DEFAULT_METHODS = (
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "gradcam",
    "gradcam_plus_plus",
    "scorecam",
)
CAM_METHODS = ("gradcam", "gradcam_plus_plus", "scorecam", "layercam", "faster_scorecam")
#: Methods that never differentiate the model (they work on models without gradients).
GRADIENT_FREE_METHODS = (
    "scorecam",
    "faster_scorecam",
    "occlusion",
    "rise",
    "lime",
    "kernel_shap",
    "sobol",
    "hsic",
)


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
    if "batch_size" in common and common["batch_size"] is None:
        # Unset: the method's own default (None for gradient methods: sized from the model).
        common["batch_size"] = spec.batch_size
    if "score" in common:
        check_choice(f"{method}.score", common["score"], SCORES)
    check_positive(f"{method}.batch_size", common["batch_size"], optional=True)
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
            top first, so a 150-layer net costs 4 map computations per method, not 150
            (None: one step per layer; a net with fewer layers takes one step each).
        threshold: A method fails when |Spearman| after full randomisation is at least this.
        max_inputs: Run the cascade on at most this many of the explained inputs, evenly
            spaced (None: all). The verdict is a mean rank correlation, which 32 inputs
            estimate well; on 100 inputs of a large net the cascade was most of the
            stage's time.
    """

    enabled: bool = True
    max_layers: int | None = None
    steps: int | None = 4
    threshold: float = 0.5
    max_inputs: int | None = 32

    def check(self, prefix: str = "sanity") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.max_layers", self.max_layers, optional=True)
        check_positive(f"{prefix}.steps", self.steps, optional=True)
        check_positive(f"{prefix}.max_inputs", self.max_inputs, optional=True)
        check_range(f"{prefix}.threshold", self.threshold, 0, 1)


@dataclass
class MetricsOptions:
    """Further quality metrics of each method's maps (see :mod:`pipeline.attribution.metrics`).

    Attributes:
        enabled: Compute the metrics switched on below (off by default: stability
            and the random-logit test re-run every method, 3 more map computations).
        fidelity: MuFidelity (Bhatt et al. 2020).
        fidelity_samples: Random subsets of grid cells (time windows for sequences)
            removed per input.
        fidelity_subset: Share of the cells each subset removes.
        grid: Cells per side of MuFidelity's grid (time windows for sequences).
        average_drop: Average Drop and Increase in Confidence (Chattopadhay et al.
            2018) and Average Gain (Zhang et al. 2023).
        stability: AverageStability (Bhatt et al. 2020): the method re-run on noisy
            copies of the inputs.
        stability_samples: Noisy copies per input.
        stability_noise: Radius of the uniform noise, as a fraction of each input's
            value range.
        complexity: Complexity (entropy) and Sparseness (Gini index) (Chalasani et al. 2020).
        random_logit: The random-logit test (Sixt et al. 2020): the method re-run for a
            random other class.
    """

    enabled: bool = False
    fidelity: bool = True
    fidelity_samples: int = 32
    fidelity_subset: float = 0.2
    grid: int = 8
    average_drop: bool = True
    stability: bool = True
    stability_samples: int = 2
    stability_noise: float = 0.02
    complexity: bool = True
    random_logit: bool = True

    def check(self, prefix: str = "metrics") -> None:
        """Raise a one-line error for an invalid value."""
        check_positive(f"{prefix}.fidelity_samples", self.fidelity_samples)
        check_range(f"{prefix}.fidelity_subset", self.fidelity_subset, 0, 1)
        check_positive(f"{prefix}.fidelity_subset", self.fidelity_subset)
        check_positive(f"{prefix}.grid", self.grid)
        check_positive(f"{prefix}.stability_samples", self.stability_samples)
        check_range(f"{prefix}.stability_noise", self.stability_noise, 0.0, float("inf"))


@dataclass
class AttributeOptions(InputOptions):
    """The ``attribute`` config section: the inputs, common keys, each method's options.

    Attributes:
        methods: Methods to run, in order (see :data:`METHODS`; default
            :data:`DEFAULT_METHODS`).
        target: ``predicted``, ``true``, or a class index.
        score: ``logits`` (a final softmax bypassed) or ``probabilities``.
        layer: The CAM layer (None: :func:`pipeline.graph.default_cam_layer`).
        batch_size: Rows per compiled step (None: sized from the model's activations).
        strategy: ``tf.distribute`` strategy name.
        head: What is explained beyond a class (:class:`HeadOptions`): a regression
            output, a set of classes, a segmentation region or a registered score.
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    target: str = "predicted"
    score: str = "logits"
    layer: str | None = None
    batch_size: int | None = None
    strategy: str = "auto"
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    smoothgrad: SmoothGradOptions = field(default_factory=SmoothGradOptions)
    integrated_gradients: IntegratedGradientsOptions = field(
        default_factory=IntegratedGradientsOptions
    )
    gradcam: CamOptions = field(default_factory=CamOptions)
    gradcam_plus_plus: CamOptions = field(default_factory=CamOptions)
    scorecam: ScoreCamOptions = field(default_factory=ScoreCamOptions)
    gradient_x_input: GradientXInputOptions = field(default_factory=GradientXInputOptions)
    vargrad: VarGradOptions = field(default_factory=VarGradOptions)
    squaregrad: SquareGradOptions = field(default_factory=SquareGradOptions)
    guided_backprop: GuidedBackpropOptions = field(default_factory=GuidedBackpropOptions)
    deconvnet: DeconvNetOptions = field(default_factory=DeconvNetOptions)
    layercam: LayerCamOptions = field(default_factory=LayerCamOptions)
    faster_scorecam: FasterScoreCamOptions = field(default_factory=FasterScoreCamOptions)
    occlusion: OcclusionOptions = field(default_factory=OcclusionOptions)
    rise: RiseOptions = field(default_factory=RiseOptions)
    lime: LimeOptions = field(default_factory=LimeOptions)
    kernel_shap: KernelShapOptions = field(default_factory=KernelShapOptions)
    sobol: SobolOptions = field(default_factory=SobolOptions)
    hsic: HsicOptions = field(default_factory=HsicOptions)
    attention_rollout: AttentionRolloutOptions = field(default_factory=AttentionRolloutOptions)
    faithfulness: FaithfulnessOptions = field(default_factory=FaithfulnessOptions)
    sanity: SanityOptions = field(default_factory=SanityOptions)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    head: HeadOptions = field(default_factory=HeadOptions)

    def check(self, prefix: str = "attribute") -> None:
        """Raise a one-line error for an invalid value (each method checks its own)."""
        if not self.methods:
            raise KerascopeError(f"{prefix}.methods is empty; valid: {', '.join(METHODS)}")
        for name in self.methods:
            check_choice("attribution method", name, METHODS)
        check_choice(f"{prefix}.score", self.score, SCORES)
        check_choice(f"{prefix}.strategy", self.strategy, STRATEGIES)
        check_positive(f"{prefix}.batch_size", self.batch_size, optional=True)
        for name in (*METHODS, "faithfulness", "sanity", "metrics"):
            getattr(self, name).check(f"{prefix}.{name}")
        self.head.check(f"{prefix}.head")
        if self.head.active and self.metrics.enabled and self.metrics.random_logit:
            raise KerascopeError(
                f"{prefix}.head.kind={self.head.kind} explains one score, so the random-logit "
                f"test has no other class; set {prefix}.metrics.random_logit=false"
            )
        target = str(self.target)
        if target not in ("predicted", "true") and not target.lstrip("-").isdigit():
            raise KerascopeError(
                f"invalid {prefix}.target '{target}'; valid: predicted, true, or a class index"
            )

    def method_options(self) -> dict:
        """Each chosen method's options dataclass, in order."""
        return {name: getattr(self, name) for name in self.methods}

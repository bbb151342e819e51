"""Attribution methods: which parts of the input made the model decide this?

Every method is a pure function ``method(model, x, targets, **options) -> maps``, computed
over whole batches inside compiled ``tf.function``s, and never modifies the model. Scores
are pre-softmax logits by default (a final softmax is bypassed on the fly, see
:class:`pipeline.graph.LayerForward`); pass ``score="probabilities"`` for post-softmax.
"""

from pipeline.attribution.faithfulness import deletion_insertion, randomization_sanity
from pipeline.attribution.gradcam import gradcam, gradcam_plus_plus
from pipeline.attribution.integrated_gradients import integrated_gradients
from pipeline.attribution.saliency import saliency, smoothgrad
from pipeline.attribution.scorecam import scorecam
from pipeline.attribution.scores import check_targets, predicted_classes

METHODS = {
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "gradcam": gradcam,
    "gradcam_plus_plus": gradcam_plus_plus,
    "scorecam": scorecam,
}
CAM_METHODS = ("gradcam", "gradcam_plus_plus", "scorecam")

__all__ = [
    "CAM_METHODS",
    "METHODS",
    "check_targets",
    "deletion_insertion",
    "gradcam",
    "gradcam_plus_plus",
    "integrated_gradients",
    "predicted_classes",
    "randomization_sanity",
    "saliency",
    "scorecam",
    "smoothgrad",
]

"""What an attribution explains beyond a class: the ``attribute.head`` config section.

A *score head* turns a model's output into the one number per input that every method
explains (and deletion/insertion, the sanity check and the metrics follow). The default
kind, ``class``, is the class score chosen by ``attribute.target``. The module imports no
TensorFlow, so a stage validates its config before paying for it; the head itself is
:class:`pipeline.attribution.heads.ScoreHead`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import KerascopeError, check_choice

HEAD_KINDS = ("class", "regression", "multilabel", "segmentation", "registered")
DIRECTIONS = ("value", "increase", "decrease")
REGIONS = ("predicted", "box")


@dataclass
class HeadOptions:
    """The score every method explains.

    Attributes:
        kind: ``class`` (``attribute.target``'s class score, the default), ``regression``
            (one output unit), ``multilabel`` (the sum of a set of classes' scores),
            ``segmentation`` (the sum of a class's scores over a region of the output
            map; Vinogradova et al. 2020, Seg-Grad-CAM) or ``registered`` (a function
            registered in Python with :func:`pipeline.attribution.heads.register_score`).
        output_index: ``regression``: which unit of the (flattened) output.
        direction: ``regression``: ``value``/``increase`` explain the output, ``decrease``
            its negative (what lowers it).
        classes: ``multilabel``: the classes whose scores are summed.
        class_index: ``segmentation``: the class.
        region: ``segmentation``: ``predicted`` (the positions where the class is the
            predicted one, per input, recomputed for each input the methods score) or
            ``box`` (``box`` below).
        box: ``segmentation`` with ``region: box``: ``[start, stop]`` per spatial axis
            of the output map, flattened (``[y0, y1, x0, x1]`` for images, ``[t0, t1]``
            for sequences), stop exclusive.
        name: ``registered``: the registered score's name.
    """

    kind: str = "class"
    output_index: int = 0
    direction: str = "value"
    classes: list[int] = field(default_factory=list)
    class_index: int = 0
    region: str = "predicted"
    box: list[int] | None = None
    name: str | None = None

    def check(self, prefix: str = "head") -> None:
        """Raise a one-line error for an invalid value."""
        check_choice(f"{prefix}.kind", self.kind, HEAD_KINDS)
        check_choice(f"{prefix}.direction", self.direction, DIRECTIONS)
        check_choice(f"{prefix}.region", self.region, REGIONS)
        if self.output_index < 0 or self.class_index < 0 or any(c < 0 for c in self.classes):
            raise KerascopeError(f"'{prefix}' output and class indices must be >= 0")
        if self.kind == "multilabel" and not self.classes:
            raise KerascopeError(
                f"{prefix}.kind=multilabel needs {prefix}.classes, a list of class indices"
            )
        if self.kind == "segmentation" and self.region == "box":
            box = self.box or []
            pairs = list(zip(box[::2], box[1::2], strict=False))
            if not box or len(box) % 2 or any(not 0 <= a < b for a, b in pairs):
                raise KerascopeError(
                    f"{prefix}.region=box needs {prefix}.box=[start, stop, ...] per spatial "
                    f"axis with 0 <= start < stop, got {self.box!r}"
                )
        if self.kind == "registered" and not self.name:
            raise KerascopeError(
                f"{prefix}.kind=registered needs {prefix}.name, a score registered with "
                "pipeline.attribution.heads.register_score"
            )

    @property
    def active(self) -> bool:
        """Whether a head replaces the class score (any kind but ``class``)."""
        return self.kind != "class"

    def describe(self) -> str:
        """A short label of what is explained, for the attributions file and the report."""
        if self.kind == "regression":
            return f"regression output {self.output_index} ({self.direction})"
        if self.kind == "multilabel":
            return f"multilabel classes {', '.join(map(str, self.classes))}"
        if self.kind == "segmentation":
            where = "predicted mask" if self.region == "predicted" else f"box {self.box}"
            return f"segmentation class {self.class_index} over the {where}"
        if self.kind == "registered":
            return f"registered score '{self.name}'"
        return "class"

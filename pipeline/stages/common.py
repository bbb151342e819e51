"""What the tensor stages share: loading the model and putting the data in its input space."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from pipeline.artifacts.dataset import DatasetInfo, InputSelection, read_dataset_info
from pipeline.config import Job
from pipeline.data import ClassAlignment, align_classes
from pipeline.inputs import InputSpace, fit_images


@dataclass
class Prepared:
    """A model and its inputs, ready for a tensor stage.

    Attributes:
        info: The data set's description.
        inputs: The chosen inputs in the model's input space (resized and converted
            where needed), with labels as model output indices.
        model: The model (one output).
        space: The model's input space (the report draws inputs back in display space).
        classes: The model's classes and how the data's map onto them.
    """

    info: DatasetInfo
    inputs: InputSelection
    model: object
    space: InputSpace
    classes: ClassAlignment


def load_model(job: Job, one_output: bool = True):
    """``paths.model`` with the job's safe_mode and custom modules.

    Args:
        job: A job that loads the model.
        one_output: Keep only ``model.output`` (what attribution and maximization
            explain); extraction keeps every output.
    """
    from pipeline.models import load_model_file, select_output

    source = job.model
    model = load_model_file(job.paths["model"], source.safe_mode, source.custom_modules)
    return select_output(model, source.output) if one_output else model


def to_model_space(x: np.ndarray, model, space: InputSpace) -> np.ndarray:
    """Display-space data as the model's inputs: fitted to its shape, then mapped."""
    from pipeline.models import check_input_shape

    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else tuple(x.shape[1:])
    x = fit_images(np.asarray(x, np.float32), shape)
    check_input_shape(model, x.shape[1:])
    return space.to_model(x)


def prepare(job: Job, options, one_output: bool = True) -> Prepared:
    """Read the chosen inputs and the model; map data to the model's space and classes.

    The train stage refuses data whose classes do not match the model's; here a
    mismatch (a model trained on other classes) leaves the labels unknown (-1).

    Args:
        job: A job that loads the model.
        options: A :class:`pipeline.artifacts.dataset.InputOptions`.
        one_output: See :func:`load_model`.

    Raises:
        KerascopeError: An unreadable upstream file, a bad selection, or inputs the
            model cannot take.
    """
    from pipeline.errors import KerascopeError
    from pipeline.graph import class_count
    from pipeline.models import select_output

    info = read_dataset_info(job.paths["dataset"])
    inputs = options.select(job.paths["dataset"])
    model = load_model(job, one_output)
    space = job.model.space()
    x = to_model_space(inputs.x, model, space)
    names = None if job.model.name != "pretrained" else job.model.output_classes()
    outputs = class_count(select_output(model, job.model.output))
    if info.task != "classification":
        # Regression targets and segmentation masks are not one class per input: the
        # inputs are unlabeled for the stages that explain them (attribute.head says
        # which score to explain). Segmentation keeps the data's class names.
        classes = ClassAlignment(
            list(info.class_names) or [str(i) for i in range(outputs)], np.zeros(0, np.int64)
        )
        unlabeled = np.full(len(inputs.x), -1, np.int64)
        selection = InputSelection(x, unlabeled, inputs.index, inputs.source)
        return Prepared(info, selection, model, space, classes)
    try:
        classes = align_classes(info.class_names, names, outputs)
    except KerascopeError:
        classes = align_classes([], names if names and len(names) == outputs else None, outputs)
        inputs.y = np.full(len(inputs.y), -1, np.int64)
    selection = InputSelection(x, classes.map_labels(inputs.y), inputs.index, inputs.source)
    return Prepared(info, selection, model, space, classes)


@contextlib.contextmanager
def tensor_work(job: Job, options, one_output: bool = True):
    """Inside ``options.strategy``'s scope, yield :func:`prepare`'s result.

    Batches are then split across the strategy's replicas (several GPUs), and the
    model, loaded inside the scope, has a copy of its weights on each.
    """
    from pipeline.distribute import make_strategy

    with make_strategy(options.strategy).scope():
        yield prepare(job, options, one_output)

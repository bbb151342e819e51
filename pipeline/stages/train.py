"""Train-or-load stage: build a zoo model and train it, or load the user's model.

Writes ``paths.model`` (``.keras``), ``paths.evaluation`` (see
:mod:`pipeline.artifacts.evaluation`) and the ``paths.live`` directory (dvclive:
per-epoch curves under ``plots/metrics`` when the model was trained) and
``<paths.metrics>/train.json``: test accuracy and loss, the DVC metric of this stage;
for regression and segmentation data (``data.task``) every metric of
:data:`pipeline.tasks.METRICS`, null where it does not apply.

Under ``train.strategy=multi_worker`` with several workers, Keras 3's ``fit`` fails
(keras-team/keras#20585), so the model trains with the custom distributed loop
:func:`pipeline.training.fit_distributed`; every other strategy keeps ``fit``. Only the
chief (worker 0) writes the outputs; the other workers write theirs into a temporary
directory outside the workspace, removed when the stage ends.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Job, make_job, run_stage
from pipeline.errors import KerascopeError
from pipeline.models import ModelSource, TrainOptions, read_model_section


@dataclass
class TrainJob:
    """The validated job plus where the model comes from."""

    job: Job[TrainOptions]
    source: ModelSource
    builder_options: dict


def configure(params: dict) -> TrainJob:
    """Validate the ``model`` and ``train`` sections and the paths (no TensorFlow)."""
    job = make_job(params, "train", TrainOptions)
    source, options = read_model_section(params.get("model"))
    model_path = job.paths["model"]
    if model_path.suffix != ".keras":
        raise KerascopeError(
            "'paths.model' must end with .keras (kerascope saves the model in the Keras 3 "
            f"format), got '{params['paths']['model']}'"
        )
    if source.path and Path(source.path).resolve() == model_path.resolve():
        raise KerascopeError(
            f"model.path '{source.path}' is also paths.model, which the train stage "
            "overwrites; keep your model file elsewhere"
        )
    return TrainJob(job, source, options)


def _model(task: TrainJob, info):
    """Build the zoo model, or load the user's (one output); and its renamed layers."""
    from pipeline.models import build_model, load_model_file, renamed_layers

    source = task.source
    if source.name != "pretrained":
        if info.task != "classification":
            raise KerascopeError(
                f"model '{source.name}' is a zoo classifier and cannot be trained for "
                f"data.task={info.task}; bring your trained model: -S model=pretrained -S "
                "model.path=/abs/model.keras"
            )
        classes = len(info.class_names)
        if not classes:
            raise KerascopeError(
                f"model '{source.name}' must be trained, but the data are unlabeled; label "
                "them, or bring a trained model with model=pretrained"
            )
        options = dict(task.builder_options)
        if "vocab_size" in options or source.name == "text_cnn":
            options["vocab_size"] = _vocab_size(options.get("vocab_size", 0), info)
        return build_model(source.name, info.input_shape, classes, **options), {}
    loaded = load_model_file(source.path, source.safe_mode, source.custom_modules)
    return loaded, renamed_layers(loaded)


def _vocab_size(configured: int, info) -> int:
    """A text model's vocabulary size: ``configured``, or (0) one taken from the data.

    From the data: the largest token id + 1, or the vocabulary's size if larger.

    Raises:
        KerascopeError: Token ids at or beyond a configured size (the embedding would
            read outside its table), or inputs that are not token ids.
    """
    top = float(info.value_range[1])
    if info.value_range[0] < 0 or top != int(top):
        raise KerascopeError(
            f"data '{info.name}' are not token ids (values {info.value_range[0]:g}.."
            f"{top:g}); a text model needs data=synthetic_text or data=npz with data.tokens=true"
        )
    needed = max(int(top) + 1, len(info.vocab or ()))
    if configured and configured < needed:
        raise KerascopeError(
            f"model.vocab_size={configured} but the data hold token id {int(top)}; set "
            f"model.vocab_size to at least {needed}, or 0 to take it from the data"
        )
    return int(configured or needed)


class _ScratchOutputs:
    """A non-chief worker's outputs: same ``write`` as the claimed outputs, elsewhere."""

    def __init__(self, root: Path, paths: dict[str, Path]) -> None:
        self.root, self.paths = root, paths

    @contextlib.contextmanager
    def write(self, name: str) -> Iterator[Path]:
        from pipeline.workspace import DIRECTORY_KINDS, PATH_KINDS

        # Same suffix as the real output: writers such as model.save check it.
        final = self.paths.get(name) or self.paths["metrics"] / name.split("/", 1)[-1]
        path = self.root / f"{name.replace('/', '-')}{final.suffix}"
        if PATH_KINDS.get(name) in DIRECTORY_KINDS:
            path.mkdir()
        yield path


@contextlib.contextmanager
def _outputs(job: Job, chief: bool) -> Iterator:
    """The claimed workspace outputs on the chief; a removed temporary directory elsewhere.

    TensorFlow's multi-worker guide has every worker save (saving may take part in
    collective ops) but only the chief keep its files: the others' would overwrite the
    chief's in a shared workspace, or leave stale outputs in their own copy of it.
    """
    if chief:
        with job.claim() as out:
            yield out
        return
    with tempfile.TemporaryDirectory(prefix="kerascope-worker-") as root:
        yield _ScratchOutputs(Path(root), job.paths)


def run(task: TrainJob) -> None:
    """Train (or load) and evaluate the model, then write every output atomically."""
    import keras
    import numpy as np
    from dvclive import Live

    from pipeline.artifacts.dataset import read_dataset_info, read_split
    from pipeline.artifacts.evaluation import Evaluation, LayerRow, write_evaluation
    from pipeline.data import ClassAlignment, align_classes
    from pipeline.distribute import make_strategy, per_replica_batch
    from pipeline.graph import class_count, layer_edges, summary_rows
    from pipeline.models import epoch_logger, evaluate, select_output
    from pipeline.stages.common import to_model_space
    from pipeline.training import fit_distributed, is_chief, is_multi_worker
    from pipeline.workspace import file_hash, mark_model

    job, source, cfg = task.job, task.source, task.job.cfg
    # First: multi_worker configures collective ops, which must precede the runtime's start.
    strategy = make_strategy(cfg.strategy)
    info = read_dataset_info(job.paths["dataset"])
    train, val, test = (read_split(job.paths["dataset"], s) for s in ("train", "val", "test"))
    keras.utils.set_random_seed(job.seed)
    if cfg.deterministic:
        # Every op picks a deterministic kernel (or raises if it has none), so reruns are
        # bit-identical even where thread scheduling would otherwise reorder sums.
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    per_replica_batch(cfg.batch_size, strategy)
    # Several workers: fit fails there (keras-team/keras#20585), so a custom loop trains.
    custom_loop, chief = is_multi_worker(strategy), is_chief(strategy)
    # The model is built or loaded, and the data matched to it, before any output is
    # touched: a class or shape mismatch stops here, not after minutes of work.
    with strategy.scope():
        model, renamed = _model(task, info)
    # Explained and evaluated: model.output (the saved file keeps every output).
    explained = select_output(model, source.output)
    space = source.space()
    x_test = to_model_space(test.x, explained, space)
    other_task = None
    if info.task == "classification":
        names = source.output_classes() if source.name == "pretrained" else None
        classes = align_classes(info.class_names, names, class_count(explained))
        if classes.note and source.name == "pretrained" and info.class_names:
            print(f"note: {classes.note}")
        y_test = classes.map_labels(test.y)
    else:
        # Targets or masks are not classes: nothing to match by name. Scored before any
        # output is touched, so a target/output mismatch stops here in one line.
        classes = ClassAlignment(list(info.class_names), np.zeros(0, np.int64))
        y_test = test.y
        other_task = _task_scores(info.task, explained, x_test, y_test, cfg.batch_size)
    with _outputs(job, chief) as out, out.write("live") as live_dir:
        # dvclive writes metrics.json at every epoch, into this temporary directory.
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)
        history = {}
        if source.name != "pretrained":
            with strategy.scope():
                model.compile(
                    optimizer=keras.optimizers.Adam(cfg.learning_rate),
                    loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"],
                )
            validation = (space.to_model(val.x), val.y) if len(val.y) else None
            logger = epoch_logger(live.log_metric, live.next_step)
            if custom_loop:
                history = fit_distributed(
                    model,
                    space.to_model(train.x),
                    train.y,
                    epochs=cfg.epochs,
                    batch_size=cfg.batch_size,
                    validation_data=validation,
                    shuffle=True,
                    seed=job.seed,
                    strategy=strategy,
                    callbacks=[logger],
                )
            else:
                fit = model.fit(
                    space.to_model(train.x),
                    train.y,
                    validation_data=validation,
                    epochs=cfg.epochs,
                    batch_size=cfg.batch_size,
                    shuffle=True,
                    callbacks=[logger],
                    verbose=2,
                )
                history = {k: [float(v) for v in values] for k, values in fit.history.items()}
        if other_task is None:
            rows = _eval_rows(explained, x_test, cfg.batch_size)
            scores = evaluate(explained, x_test, y_test, rows)
            probabilities, predictions, headline = scores.probabilities, None, None
            if np.isfinite(scores.accuracy):
                live.summary["test"] = {"accuracy": scores.accuracy, "loss": scores.loss}
        else:
            predictions, headline = other_task
            probabilities = np.zeros((len(y_test), 0), np.float32)
            live.summary["test"] = {k: v for k, v in headline.items() if v is not None}
        live.summary["params"] = int(model.count_params())
        with out.write("model") as tmp:
            model.save(tmp)
            mark_model(tmp)
            model_hash = file_hash(tmp)
        evaluation = Evaluation(
            class_names=classes.class_names,
            labels=y_test,
            probabilities=probabilities,
            history=history,
            trained=source.name != "pretrained",
            model_hash=model_hash,
            data_hash=info.data_hash,
            # For a user's model: the hash of the file it came from.
            source_model_hash=file_hash(source.path) if source.path else "",
            layers=[LayerRow(*row) for row in summary_rows(model)],
            edges=layer_edges(model),
            renamed_layers=renamed,
            input_space=space.describe(),
            task=info.task,
            predictions=predictions,
            metrics={k: v for k, v in (headline or {}).items() if v is not None},
        )
        with out.write("evaluation") as tmp:
            write_evaluation(tmp, evaluation, job.config_yaml)
        if headline is None:
            # The headline DVC metric of this stage (null where the data are unlabeled).
            finite = bool(np.isfinite(scores.accuracy))
            headline = {
                "accuracy": float(scores.accuracy) if finite else None,
                "loss": float(scores.loss) if finite else None,
            }
            result = (
                f"test accuracy {scores.accuracy:.4f}, loss {scores.loss:.4f}"
                if finite
                else "unlabeled"
            )
        else:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None)
            result = f"{info.task}: test {shown}"
        with out.write("metrics/train.json") as tmp:
            tmp.write_text(json.dumps(headline, indent=2))
        live.end()
    print(f"train: {model.name} {result}")


def _eval_rows(model, x, batch_size: int) -> int:
    """Rows per evaluation batch: 256 or the training batch, within 1 GiB of activations.

    A 224x224 MobileNetV2 evaluated 256 images at a time peaked at 6.2 GB.
    """
    from pipeline.budget import forward_batch_rows

    return forward_batch_rows(model, tuple(x.shape[1:]), max(batch_size, 256))


def _task_scores(task: str, model, x, y, batch_size: int):
    """A regression or segmentation model's test predictions and metrics.

    Returns:
        (predictions: the outputs (N, k) or the predicted masks (N, H, W); every
        metric of :data:`pipeline.tasks.METRICS`, None where it does not apply).
    """
    import numpy as np

    from pipeline.graph import output_activation
    from pipeline.tasks import (
        empty_metrics,
        predicted_masks,
        regression_metrics,
        regression_outputs,
        segmentation_metrics,
    )

    outputs = model.predict(x, batch_size=_eval_rows(model, x, batch_size), verbose=0)
    headline = empty_metrics()
    if task == "regression":
        headline.update(regression_metrics(y, outputs))
        return regression_outputs(y, outputs)[1].astype(np.float32), headline
    masks = predicted_masks(outputs, output_activation(model))
    headline.update(segmentation_metrics(y, masks))
    return masks, headline


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

"""Train-or-load stage: build a zoo model and train it, or load the user's model.

Writes ``paths.model`` (``.keras``), ``paths.evaluation`` (see
:mod:`pipeline.artifacts.evaluation`) and the ``paths.live`` directory (dvclive:
``metrics.json`` with test accuracy and loss; per-epoch curves under ``plots/metrics``
when the model was trained).
"""

from __future__ import annotations

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


def run(task: TrainJob) -> None:
    """Train (or load) and evaluate the model, then write every output atomically."""
    import keras
    from dvclive import Live

    from pipeline.artifacts.dataset import read_dataset_info, read_split
    from pipeline.artifacts.evaluation import Evaluation, LayerRow, write_evaluation
    from pipeline.distribute import make_strategy, per_replica_batch
    from pipeline.graph import layer_edges, summary_rows
    from pipeline.models import (
        build_model,
        check_input_shape,
        epoch_logger,
        evaluate,
        load_model_file,
        renamed_layers,
    )
    from pipeline.workspace import file_hash, mark_model

    job, source, cfg = task.job, task.source, task.job.cfg
    info = read_dataset_info(job.paths["dataset"])
    train, val, test = (read_split(job.paths["dataset"], s) for s in ("train", "val", "test"))
    keras.utils.set_random_seed(job.seed)
    if cfg.deterministic:
        # Every op picks a deterministic kernel (or raises if it has none), so reruns are
        # bit-identical even where thread scheduling would otherwise reorder sums.
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy)
    per_replica_batch(cfg.batch_size, strategy)
    # The model is built or loaded (and so checked) before any output is touched.
    with strategy.scope():
        if source.name == "pretrained":
            model = load_model_file(source.path, source.safe_mode, source.custom_modules)
            check_input_shape(model, info.input_shape)
        else:
            classes = len(info.class_names)
            model = build_model(source.name, info.input_shape, classes, **task.builder_options)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    # dvclive writes metrics.json at every epoch, into a temporary directory that is
    # renamed into place only when the whole stage has succeeded.
    outputs = job.claim()
    with outputs as out, out.write("live") as live_dir:
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)
        history = {}
        if source.name != "pretrained":
            fit = model.fit(
                train.x,
                train.y,
                validation_data=(val.x, val.y) if len(val.y) else None,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                shuffle=True,
                callbacks=[epoch_logger(live.log_metric, live.next_step)],
                verbose=2,
            )
            history = {k: [float(v) for v in values] for k, values in fit.history.items()}
        scores = evaluate(model, test.x, test.y, max(cfg.batch_size, 256))
        live.summary["test"] = {"accuracy": scores.accuracy, "loss": scores.loss}
        live.summary["params"] = int(model.count_params())
        with out.write("model") as tmp:
            model.save(tmp)
            mark_model(tmp)
            model_hash = file_hash(tmp)
        evaluation = Evaluation(
            class_names=info.class_names,
            labels=test.y,
            probabilities=scores.probabilities,
            history=history,
            trained=source.name != "pretrained",
            model_hash=model_hash,
            data_hash=info.data_hash,
            # For a user's model: the hash of the file it came from.
            source_model_hash=file_hash(source.path) if source.path else "",
            layers=[LayerRow(*row) for row in summary_rows(model)],
            edges=layer_edges(model),
            renamed_layers=renamed_layers(model),
        )
        with out.write("evaluation") as tmp:
            write_evaluation(tmp, evaluation, job.config_yaml)
        live.end()
    print(f"train: {model.name} test accuracy {scores.accuracy:.4f}, loss {scores.loss:.4f}")


main = run_stage(configure, run, __name__)  # runs under `python -m pipeline.stages.*`
_main = main.apply

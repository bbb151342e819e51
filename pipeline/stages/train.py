"""Train-or-load stage: build a zoo model and train it, or load the user's model.

Writes ``paths.model`` (``.keras``), ``paths.evaluation`` (HDF5, kind ``evaluation``:
test labels and probabilities, per-epoch history) and the ``paths.live`` directory
(dvclive: ``metrics.json`` with test accuracy and loss; per-epoch TSV curves under
``plots/metrics`` when the model was trained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import one_of, positive, run_stage, section, to_yaml, workspace_paths
from pipeline.errors import KerascopeError
from pipeline.workspace import preflight

#: Strategy names (kept here, not imported from pipeline.distribute, so that checking
#: the config does not import TensorFlow).
STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
MODEL_NAMES = ("mnist_cnn", "vgg_small", "mlp", "lstm", "pretrained")


@dataclass
class ModelConfig:
    """The ``model`` config section."""

    name: str = "mnist_cnn"
    path: str | None = None
    safe_mode: bool = True
    custom_modules: list[str] = field(default_factory=list)
    filters: list[int] = field(default_factory=lambda: [16, 32, 64])
    dense_units: list[int] = field(default_factory=lambda: [64])
    recurrent_units: list[int] = field(default_factory=lambda: [32, 32])
    dropout: float = 0.0


@dataclass
class TrainConfig:
    """The ``train`` config section."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.002
    strategy: str = "auto"
    deterministic: bool = False


BUILDER_OPTIONS = {
    "vgg_small": ("filters", "dense_units", "dropout"),
    "mlp": ("dense_units", "dropout"),
    "lstm": ("recurrent_units",),
    "mnist_cnn": (),
}


@dataclass
class TrainRun:
    """Everything the train stage needs, validated."""

    model: ModelConfig
    train: TrainConfig
    seed: int
    paths: dict[str, Path]
    params: dict


def configure(params: dict) -> TrainRun:
    """Validate the ``model`` and ``train`` sections and the paths (no TensorFlow)."""
    paths = workspace_paths(params)
    model_cfg = section(params, "model", ModelConfig)
    train_cfg = section(params, "train", TrainConfig)
    one_of("model", model_cfg.name, MODEL_NAMES)
    one_of("train.strategy", train_cfg.strategy, STRATEGIES)
    positive("train.epochs", train_cfg.epochs)
    positive("train.batch_size", train_cfg.batch_size)
    positive("train.learning_rate", train_cfg.learning_rate)
    if paths["model"].suffix != ".keras":
        raise KerascopeError(
            f"'paths.model' must end with .keras (kerascope saves the model in the Keras 3 "
            f"format), got '{params['paths']['model']}'"
        )
    if model_cfg.name == "pretrained":
        if not model_cfg.path:
            raise KerascopeError("model 'pretrained' needs model.path (.keras, .h5 or SavedModel)")
        if Path(model_cfg.path).resolve() == paths["model"].resolve():
            raise KerascopeError(
                f"model.path '{model_cfg.path}' is also paths.model, which the train stage "
                "overwrites; keep your model file elsewhere"
            )
    preflight(paths, "model", "evaluation", "live")
    return TrainRun(model_cfg, train_cfg, int(params.get("seed", 0)), paths, params)


def _live_callback(live):
    import keras

    class LiveLogger(keras.callbacks.Callback):
        """Log each epoch's metrics to dvclive as train/<m> and val/<m> curves."""

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                if key == "learning_rate":
                    continue
                name = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                live.log_metric(name, float(value))
            live.next_step()

    return LiveLogger()


def run(job: TrainRun) -> None:
    """Train (or load) and evaluate the model, then write every output atomically."""
    import keras
    import numpy as np
    from dvclive import Live

    from pipeline.artifacts import read_dataset_info, read_split
    from pipeline.distribute import make_strategy, per_replica_batch
    from pipeline.models import build_model, check_input_shape, load_model_file
    from pipeline.workspace import claim, mark_model

    model_cfg, train_cfg, paths = job.model, job.train, job.paths
    info = read_dataset_info(paths["dataset"])
    train, val, test = (read_split(paths["dataset"], s) for s in ("train", "val", "test"))
    keras.utils.set_random_seed(job.seed)
    if train_cfg.deterministic:
        # Every op picks a deterministic kernel (or raises if it has none), so reruns are
        # bit-identical even where thread scheduling would otherwise reorder sums.
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(train_cfg.strategy)
    per_replica_batch(train_cfg.batch_size, strategy)
    num_classes = len(info.class_names)

    # The model is loaded (and so checked) before any output is touched.
    with strategy.scope():
        if model_cfg.name == "pretrained":
            model = load_model_file(model_cfg.path, model_cfg.safe_mode, model_cfg.custom_modules)
            check_input_shape(model, info.input_shape)
        else:
            options = {k: getattr(model_cfg, k) for k in BUILDER_OPTIONS[model_cfg.name]}
            model = build_model(model_cfg.name, info.input_shape, num_classes, **options)
        model.compile(
            optimizer=keras.optimizers.Adam(train_cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    # dvclive writes metrics.json at every epoch; it writes into a temporary directory
    # that is renamed into place only when the whole stage has succeeded.
    with claim(paths, "model", "evaluation", "live") as out, out.write("live") as live_dir:
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)
        history: dict[str, list[float]] = {}
        if model_cfg.name != "pretrained":
            fit = model.fit(
                train.x,
                train.y,
                validation_data=(val.x, val.y) if len(val.y) else None,
                epochs=train_cfg.epochs,
                batch_size=train_cfg.batch_size,
                shuffle=True,
                callbacks=[_live_callback(live)],
                verbose=2,
            )
            history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
        probabilities = model.predict(test.x, batch_size=max(train_cfg.batch_size, 256), verbose=0)
        test_loss = float(
            keras.losses.sparse_categorical_crossentropy(test.y, probabilities).numpy().mean()
        )
        test_accuracy = float(np.mean(np.argmax(probabilities, axis=-1) == test.y))
        live.summary["test"] = {"accuracy": test_accuracy, "loss": test_loss}
        live.summary["params"] = int(model.count_params())
        with out.write("evaluation") as tmp:
            _write_evaluation(tmp, job, info, test.y, probabilities, history)
        with out.write("model") as tmp:
            model.save(tmp)
            mark_model(tmp)
        live.end()
    print(f"train: {model.name} test accuracy {test_accuracy:.4f}, loss {test_loss:.4f}")


def _write_evaluation(path, job: TrainRun, info, labels, probabilities, history) -> None:
    import numpy as np

    from pipeline.artifacts import provenance_attrs, write_attrs
    from pipeline.workspace import file_hash, hdf5_file

    model_cfg = job.model
    with hdf5_file(path) as f:
        write_attrs(f, provenance_attrs("evaluation", to_yaml(job.params)))
        write_attrs(
            f,
            {
                "class_names": info.class_names,
                "data_hash": info.data_hash,
                # For a user's model: the hash of the file it came from.
                "source_model_hash": file_hash(model_cfg.path) if model_cfg.path else "",
                "trained": model_cfg.name != "pretrained",
            },
        )
        f.create_dataset("test/labels", data=labels)
        f.create_dataset("test/probabilities", data=np.asarray(probabilities, np.float32))
        for key, values in history.items():
            f.create_dataset(f"history/{key}", data=np.asarray(values, np.float64))


def _main(params: dict) -> None:
    run(configure(params))


main = run_stage(configure, run)

if __name__ == "__main__":
    main()

"""Train-or-load stage: build a zoo model and train it, or load the user's model.

Writes ``paths.model`` (``.keras``), ``paths.evaluation`` (HDF5, kind ``evaluation``:
test labels and probabilities, per-epoch history) and dvclive metrics/plots under
``paths.live`` (``metrics.json`` with test accuracy and loss; per-epoch TSV curves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from pipeline.artifacts import provenance_attrs, read_dataset_info, read_split, write_attrs
from pipeline.config import one_of, positive, run_stage, section, to_yaml
from pipeline.distribute import STRATEGIES, make_strategy, per_replica_batch
from pipeline.errors import KerascopeError
from pipeline.io import atomic_path, file_hash, remove_stale
from pipeline.models import MODEL_NAMES, build_model, check_input_shape, load_model_file


@dataclass
class ModelConfig:
    """The ``model`` config section."""

    name: str = "mnist_cnn"
    path: str | None = None
    safe_mode: bool = True
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


def _validate(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    one_of("model", model_cfg.name, MODEL_NAMES)
    one_of("train.strategy", train_cfg.strategy, STRATEGIES)
    positive("train.epochs", train_cfg.epochs)
    positive("train.batch_size", train_cfg.batch_size)
    positive("train.learning_rate", train_cfg.learning_rate)


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


def _main(params: dict) -> None:
    model_cfg = section(params, "model", ModelConfig)
    train_cfg = section(params, "train", TrainConfig)
    _validate(model_cfg, train_cfg)
    paths = params["paths"]
    info = read_dataset_info(paths["dataset"])
    train, val, test = (read_split(paths["dataset"], s) for s in ("train", "val", "test"))

    import keras
    from dvclive import Live

    seed = int(params.get("seed", 0))
    keras.utils.set_random_seed(seed)
    if train_cfg.deterministic:
        # Every op picks a deterministic kernel (or raises if it has none), so reruns are
        # bit-identical even where thread scheduling would otherwise reorder sums.
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(train_cfg.strategy)
    per_replica_batch(train_cfg.batch_size, strategy)
    num_classes = len(info.class_names)

    with strategy.scope():
        if model_cfg.name == "pretrained":
            if not model_cfg.path:
                raise KerascopeError(
                    "model 'pretrained' needs model.path (.keras, .h5 or SavedModel)"
                )
            model = load_model_file(model_cfg.path, safe_mode=model_cfg.safe_mode)
            check_input_shape(model, info.input_shape)
        else:
            options = {k: getattr(model_cfg, k) for k in BUILDER_OPTIONS[model_cfg.name]}
            model = build_model(model_cfg.name, info.input_shape, num_classes, **options)
        model.compile(
            optimizer=keras.optimizers.Adam(train_cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )

    # A failed run must leave no output at all rather than a mix of old and new ones.
    for key in ("model", "evaluation", "live"):
        remove_stale(paths[key])
    # dvclive writes metrics.json at every epoch; it writes into a temporary directory
    # that is renamed into place only when the whole stage has succeeded.
    with atomic_path(paths["live"], directory=True) as live_dir:
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
        _write_evaluation(
            paths["evaluation"], params, info, model_cfg, test.y, probabilities, history
        )
        with atomic_path(paths["model"]) as tmp:
            model.save(tmp)
        live.end()
    print(f"train: {model.name} test accuracy {test_accuracy:.4f}, loss {test_loss:.4f}")


def _write_evaluation(path, params, info, model_cfg, labels, probabilities, history) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_attrs(f, provenance_attrs("evaluation", to_yaml(params)))
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


main = run_stage(_main)

if __name__ == "__main__":
    main()

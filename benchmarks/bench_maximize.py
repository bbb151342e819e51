"""Activation maximization: kerascope (all units in one compiled loop) vs tf-keras-vis
(one unit per call, and its own batched mode) vs the tutorials' per-filter loop.

Every tool gets the same model and weights, the same units, the same number of steps and
inputs in [0, 1]. The reach column is the mean activation the final images achieve,
measured by an independent Keras sub-model, so faster does not hide "worse".

Run: python benchmarks/bench_maximize.py   (needs the `bench` extra)
"""

from __future__ import annotations

import time

import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import keras
import numpy as np
import tensorflow as tf

from pipeline.maximization import Objective, Settings, maximize

STEPS = 128
CASES = (("mnist_cnn", "conv2", 10), ("vgg_small", "block3_conv2", 16))


def once(fn) -> tuple[float, object]:
    """Wall time and result of one call (each tool compiles per call, as users run it)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def reach(model, layer: str, images, units) -> float:
    """Mean activation of each image's unit, by an independently built sub-model."""
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    acts = sub.predict(np.asarray(images, np.float32), verbose=0)
    return float(np.mean([acts[i, ..., u].mean() for i, u in enumerate(units)]))


def tutorial_loop(model, layer: str, units, steps: int, learning_rate: float = 0.05):
    """The tutorials' recipe: one raw tf.Variable per filter, Adam, a compiled step."""
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    shape = tuple(model.inputs[0].shape[1:])
    images = []
    for unit in units:
        image = tf.Variable(tf.random.uniform((1, *shape), 0.45, 0.55, seed=int(unit)))
        optimizer = keras.optimizers.Adam(learning_rate)

        @tf.function
        def step(image=image, optimizer=optimizer, unit=int(unit)):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(sub(image)[..., unit])
            optimizer.apply_gradients([(tape.gradient(loss, image), image)])
            image.assign(tf.clip_by_value(image, 0.0, 1.0))

        for _ in range(steps):
            step()
        images.append(image.numpy()[0])
    return np.stack(images)


def peer(twin, layer: str, units, steps: int, batched: bool):
    """tf-keras-vis ActivationMaximization on a channel, one unit per call or all at once."""
    import tf_keras
    from tf_keras_vis.activation_maximization import ActivationMaximization
    from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayer, ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    visualizer = ActivationMaximization(
        twin, model_modifier=[ExtractIntermediateLayer(layer), ReplaceToLinear()], clone=True
    )
    shape = tuple(twin.inputs[0].shape[1:])
    rng = np.random.default_rng(0)

    def run(chunk):
        seeds = rng.uniform(0.45, 0.55, (len(chunk), *shape)).astype("float32")
        return np.asarray(
            visualizer(
                CategoricalScore(list(chunk)),
                seed_input=seeds,
                input_range=(0.0, 1.0),
                steps=steps,
                optimizer=tf_keras.optimizers.Adam(0.05),
                # No transforms or regularizers: the least work tf-keras-vis can do.
                input_modifiers=[],
                regularizers=[],
            )
        )

    if batched:
        return run(list(units))
    return np.concatenate([run([u]) for u in units])


def bench_case(name: str, layer: str, count: int) -> list[list]:
    """Rows for maximizing ``count`` channels of ``layer`` in an untrained zoo model."""
    model = common.keras3_model(name)
    twin = common.tf_keras_twin(model)
    units = list(range(count))
    objective = Objective(layer, "channel")
    tools = {
        "kerascope (fourier, default)": lambda: (
            maximize(model, objective, units, settings=Settings(steps=STEPS)).images
        ),
        "kerascope (pixel)": lambda: (
            maximize(
                model, objective, units, settings=Settings(steps=STEPS, parametrization="pixel")
            ).images
        ),
        "kerascope (pixel, no jitter: the peers' recipe)": lambda: (
            maximize(
                model,
                objective,
                units,
                settings=Settings(steps=STEPS, parametrization="pixel", jitter=0),
            ).images
        ),
        "tf-keras-vis, one unit per call": lambda: peer(twin, layer, units, STEPS, False),
        "tf-keras-vis, batched seeds": lambda: peer(twin, layer, units, STEPS, True),
        "tutorial loop (tf.Variable + Adam per filter)": lambda: tutorial_loop(
            model, layer, units, STEPS
        ),
    }
    # First calls pay TensorFlow's one-time start-up costs; keep them out of every row.
    maximize(model, objective, units[:1], settings=Settings(steps=2))
    tutorial_loop(model, layer, units[:1], 2)
    peer(twin, layer, units[:1], 2, batched=True)
    times, reaches = {}, {}
    for tool, run in tools.items():
        times[tool], images = once(run)
        reaches[tool] = reach(model, layer, images, units)
    ours = times["kerascope (fourier, default)"]
    return [
        [name, f"{layer} x {count}", tool, t, count * STEPS / t, t / ours, reaches[tool]]
        for tool, t in times.items()
    ]


def main() -> None:
    rows = []
    for case in CASES:
        rows += bench_case(*case)
    print(f"Machine: {common.machine()}; {STEPS} steps per image, untrained models\n")
    print(
        common.table(
            [
                "model",
                "channels",
                "tool",
                "seconds",
                "image-steps/s",
                "time / kerascope default",
                "mean activation reached",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

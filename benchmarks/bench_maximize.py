"""Activation maximization: kerascope against its compute floor and its peers.

The **floor** is one hand-written ``tf.function`` that runs every Adam step over a batch
of images (one per unit) in a ``tf.range`` loop: pixels (or Fourier coefficients and a
one-pixel jitter, for kerascope's default recipe) -> sigmoid -> forward to the layer ->
mean channel activation; with and without XLA. Peers: tf-keras-vis 0.8.7 on the same
Keras 3 model and on tf-keras (a subprocess with ``TF_USE_LEGACY_KERAS=1``), one unit per
call (mnist_cnn only: it is slow) and batched; the tutorials' per-filter loop.

Every tool gets the same model and weights, the same units, the same number of steps and
inputs in [0, 1]. The reach column is the mean activation the final images achieve,
measured by an independent Keras sub-model, so faster does not hide "worse". Raw times
go to ``benchmarks/results/maximize.json``.

Run: python benchmarks/bench_maximize.py   (needs the `bench` extra)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common
import keras
import numpy as np
import tensorflow as tf

from pipeline.maximization import Objective, Settings, maximize

STEPS = 128
CASES = (("mnist_cnn", "conv2", 10), ("vgg_small", "block3_conv2", 16))
LEARNING_RATE = 0.05


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
    from tf_keras_vis.activation_maximization import ActivationMaximization
    from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayer, ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    if not hasattr(twin, "output_names"):  # a Keras 3 Sequential: see bench_attribute
        twin = keras.Model(twin.inputs, twin.outputs)
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
                optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
                # No transforms or regularizers: the least work tf-keras-vis can do.
                input_modifiers=[],
                regularizers=[],
            )
        )

    if batched:
        return run(list(units))
    return np.concatenate([run([u]) for u in units])


def floor(model, layer: str, steps: int, recipe: str, jit: bool):
    """``units -> images``: every Adam step for a batch of images in one ``tf.function``."""
    names = [lay.name for lay in model.layers]
    head = model.layers[: names.index(layer) + 1]
    last = head[-1]
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx**2 + fy**2), 1.0 / max(height, width))
    scale = tf.constant((scale * np.sqrt(height * width) / scale.max()).astype(np.complex64))

    def images_of(params):
        if recipe == "pixel":
            raw = params
        else:
            spectrum = tf.complex(params[..., 0], params[..., 1]) * scale
            raw = tf.transpose(tf.signal.irfft2d(spectrum, [height, width]), [0, 2, 3, 1]) * 4.0
        return tf.sigmoid(raw)

    def acts_of(images, step):
        if recipe != "pixel":  # one-pixel jitter
            shift = tf.random.stateless_uniform([2], [0, step], -1, 2, tf.int32)
            images = tf.roll(images, shift, axis=[1, 2])
        x = images
        for lay in head[:-1]:
            x = lay(x, training=False)
        # Before the activation (kerascope's default: preactivation=True).
        return tf.nn.bias_add(tf.nn.conv2d(x, last.kernel, 1, last.padding.upper()), last.bias)

    @tf.function(jit_compile=jit)
    def run(params, units):
        mask = tf.one_hot(units, last.filters)[:, None, None, :]
        m, v = tf.zeros_like(params), tf.zeros_like(params)
        for step in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(params)
                acts = acts_of(images_of(params), step)
                loss = -tf.reduce_sum(tf.reduce_mean(acts * mask, axis=[1, 2]))
            grad = tape.gradient(loss, params)
            t = tf.cast(step + 1, tf.float32)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * tf.square(grad)
            m_hat, v_hat = m / (1.0 - 0.9**t), v / (1.0 - 0.999**t)
            params = params - LEARNING_RATE * m_hat / (tf.sqrt(v_hat) + 1e-8)
        return images_of(params)

    def call(units):
        n = len(units)
        shape = (n, height, width, channels)
        if recipe != "pixel":
            shape = (n, channels, height, width // 2 + 1, 2)
        params = tf.random.stateless_normal(shape, [0, 0], stddev=0.01)
        return run(params, tf.constant(units, tf.int32)).numpy()

    return call


def kerascope(model, objective, units, **settings):
    return maximize(model, objective, units, settings=Settings(steps=STEPS, **settings)).images


def timed(fn, repeat: int) -> tuple[list[float] | str, object]:
    """Wall times of ``repeat`` calls and the last result; the error if the tool fails."""
    out = []
    try:
        for _ in range(repeat):
            seconds, result = once(fn)
            out.append(seconds)
    except Exception as exc:  # recorded, not fatal
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", None
    return out, result


def bench_case(name: str, layer: str, count: int, repeat: int) -> dict:
    """Times and reach of every tool, maximizing ``count`` channels of ``layer``."""
    model = common.keras3_model(name)
    units = list(range(count))
    objective = Objective(layer, "channel")
    tools = {
        "kerascope default (fourier, jitter 1)": lambda: kerascope(model, objective, units),
        "kerascope pixel, no jitter (the peers' recipe)": lambda: kerascope(
            model, objective, units, parametrization="pixel", jitter=0
        ),
        "floor fourier + jitter": floor(model, layer, STEPS, "fourier", False),
        "floor fourier + jitter, XLA": floor(model, layer, STEPS, "fourier", True),
        "floor pixel": floor(model, layer, STEPS, "pixel", False),
        "floor pixel, XLA": floor(model, layer, STEPS, "pixel", True),
        "tf-keras-vis (Keras 3), batched": lambda: peer(model, layer, units, STEPS, True),
        "tutorial loop (tf.Variable + Adam per filter)": lambda: tutorial_loop(
            model, layer, units, STEPS
        ),
    }
    if name == "mnist_cnn":
        tools["tf-keras-vis (Keras 3), one unit per call"] = lambda: peer(
            model, layer, units, STEPS, False
        )
    # kerascope's fixed cost per call (tracing its compiled loop): one step.
    tools["kerascope default, 1 step (fixed cost per call)"] = lambda: (
        maximize(model, objective, units, settings=Settings(steps=1)).images
    )
    # First calls pay TensorFlow's one-time start-up costs and tracing; keep them out.
    for tool, run in list(tools.items()):
        if tool.startswith("floor"):
            run(units)
            tools[tool] = lambda run=run: run(units)
    maximize(model, objective, units[:1], settings=Settings(steps=2))
    tutorial_loop(model, layer, units[:1], 2)
    peer(model, layer, units[:1], 2, batched=True)
    # Interleaved rounds: load from other jobs on the machine hits every tool alike.
    # kerascope's calls include its tracing (as users run it); the floors' do not.
    seconds: dict[str, list | str] = {tool: [] for tool in tools}
    images: dict[str, object] = {}
    for r in range(repeat):
        for tool, run in tools.items():
            # Peers and the XLA floors (slow to run, or many times slower) run once.
            slow = "tf-keras-vis" in tool or "tutorial" in tool or "XLA" in tool
            if (slow and r) or isinstance(seconds[tool], str):
                continue
            t, result = timed(run, 1)
            if isinstance(t, str):
                seconds[tool] = t
                continue
            seconds[tool] += t
            images[tool] = result
            print(f"{name} {tool}: {t[0]:.3f} s", file=sys.stderr, flush=True)
    return {
        tool: {
            "seconds": seconds[tool],
            "reach": reach(model, layer, images[tool], units) if tool in images else None,
        }
        for tool in tools
    }


def tf_keras_peers() -> dict:
    """In this (TF_USE_LEGACY_KERAS=1) process: tf-keras-vis on tf-keras twins."""
    out = {}
    for name, layer, count in CASES:
        model = common.keras3_model(name)
        twin = common.tf_keras_twin(model)
        units = list(range(count))
        peer(twin, layer, units[:1], 2, batched=True)
        seconds, images = timed(lambda t=twin, c=layer, u=units: peer(t, c, u, STEPS, True), 1)
        out[name] = {
            "seconds": seconds,
            "reach": reach(model, layer, images, units) if images is not None else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tf-keras-peers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf_keras_peers:
        print(json.dumps(tf_keras_peers()))
        return
    results = {"steps": STEPS, "cases": {}}
    for name, layer, count in CASES:
        results["cases"][name] = {
            "layer": layer,
            "units": count,
            "tools": bench_case(name, layer, count, args.repeat),
        }
    proc = subprocess.run(
        [sys.executable, __file__, "--tf-keras-peers"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
    )
    tf_keras = (
        json.loads(proc.stdout.strip().splitlines()[-1])
        if proc.returncode == 0
        else {"error": proc.stderr[-2000:]}
    )
    results["tf_keras"] = tf_keras
    path = common.save("maximize", results)
    rows = []
    for name, case in results["cases"].items():
        tools = dict(case["tools"])
        if name in tf_keras:
            tools["tf-keras-vis (tf-keras), batched"] = tf_keras[name]
        default = tools["kerascope default (fourier, jitter 1)"]["seconds"]
        pixel = tools["kerascope pixel, no jitter (the peers' recipe)"]["seconds"]
        for tool, r in tools.items():
            t = r["seconds"]
            if not isinstance(t, list):
                rows.append([name, tool, t, "–", "–", "–", "–"])
                continue
            ours = (
                pixel
                if "pixel" in tool or "tf-keras-vis" in tool or "tutorial" in tool
                else default
            )
            rows.append(
                [
                    name,
                    tool,
                    common.spread(t),
                    case["units"] * STEPS / min(t),
                    min(ours) / min(t) if isinstance(ours, list) else "–",
                    r["reach"] if r["reach"] is not None else "–",
                    len(t),
                ]
            )
    print(f"Machine: {common.machine()}; {STEPS} steps per image; raw times in {path}\n")
    print(
        "The ratio compares kerascope's matching recipe with the row's tool: the default\n"
        "with the fourier floors, pixel/no jitter with the pixel floors and the peers.\n"
    )
    print(
        common.table(
            [
                "model",
                "tool",
                "best (spread)",
                "image-steps/s",
                "kerascope time / this",
                "mean activation reached",
                "runs",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

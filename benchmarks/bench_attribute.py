"""Attribution: kerascope against its compute floor and against its peers.

For every method, beside kerascope's call, the benchmark times:

* the **floor**: a minimal hand-written batched ``tf.function`` doing only the method's
  essential computation (one gradient per input for saliency, one per noisy copy or
  path point for SmoothGrad and Integrated Gradients, one forward and backward to the
  layer for the CAMs, one forward per masked input for Score-CAM), with and without
  XLA (``jit_compile=True``), at about 256 images per compiled call;
* **tf-keras-vis** 0.8.7 on the same Keras 3 model, and on tf-keras (a subprocess with
  ``TF_USE_LEGACY_KERAS=1``, on a twin with the same weights);
* **xplique** 2.0.2 on the same Keras 3 model;
* the **per-image GradientTape loop** the tutorials teach (saliency and Grad-CAM).

Every tool computes from the same untrained weights (speed does not depend on them).
Raw times go to ``benchmarks/results/attribute.json``.

Run: python benchmarks/bench_attribute.py   (needs the `bench` extra)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from functools import partial

import common
import numpy as np
import tensorflow as tf

MODELS = {"mnist_cnn": "conv2", "vgg_small": "block3_conv2"}
SAMPLES, NOISE, STEPS = 16, 0.15, 32  # kerascope's defaults for SmoothGrad and IG
# Inputs per call on vgg_small (4x as many on the smaller mnist_cnn): the costly methods
# get fewer, so a run stays within a few minutes.
INPUTS = {"smoothgrad": 16, "vargrad": 16, "squaregrad": 16, "integrated_gradients": 16}
INPUTS_DEFAULT = 64
SCALE = {"mnist_cnn": 4, "vgg_small": 1}
REPEAT = 3
# method -> the floor that does its essential computation.
FLOOR_OF = {
    "saliency": "saliency",
    "gradient_x_input": "saliency",
    "guided_backprop": "saliency",
    "smoothgrad": "smoothgrad",
    "vargrad": "smoothgrad",
    "squaregrad": "smoothgrad",
    "integrated_gradients": "integrated_gradients",
    "gradcam": "gradcam",
    "layercam": "gradcam",
    "gradcam_plus_plus": "gradcam_plus_plus",
    "scorecam": "scorecam",
}


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with its progress bars (printed to stdout) silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


class Floors:
    """The essential computation of each method, hand-written for a Sequential model.

    The model is split at the CAM layer: ``acts`` runs the layers up to it, ``logits``
    the rest, with the final softmax left out (scores are logits, as kerascope's).
    """

    def __init__(self, model, layer: str, jit: bool):
        names = [lay.name for lay in model.layers]
        cut = names.index(layer) + 1
        self.head, self.tail, self.last = model.layers[:cut], model.layers[cut:-1], model.layers[-1]
        self.shape = tuple(model.inputs[0].shape[1:])
        self.channels = model.get_layer(layer).output.shape[-1]
        self.jit = jit
        compile_ = lambda fn: tf.function(fn, jit_compile=jit)  # noqa: E731
        self.fns = {
            "saliency": compile_(self.saliency),
            "smoothgrad": compile_(self.smoothgrad),
            "integrated_gradients": compile_(self.integrated_gradients),
            "gradcam": compile_(self.gradcam),
            "gradcam_plus_plus": compile_(self.gradcam_plus_plus),
            "scorecam": compile_(self.scorecam),
        }
        # Inputs per compiled call: about 256 images through the network.
        self.per_call = {
            "saliency": 64,
            "gradcam": 64,
            "gradcam_plus_plus": 64,
            "smoothgrad": 256 // SAMPLES,
            "integrated_gradients": 256 // (STEPS + 1),
            "scorecam": max(1, 256 // self.channels),
        }

    def acts(self, x):
        for layer in self.head:
            x = layer(x, training=False)
        return x

    def logits(self, h):
        for layer in self.tail:
            h = layer(h, training=False)
        return tf.matmul(h, self.last.kernel) + self.last.bias

    def _grad(self, x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.reduce_sum(tf.gather(self.logits(self.acts(x)), t, batch_dims=1))
        return tape.gradient(score, x)

    def saliency(self, x, t):
        return tf.reduce_max(tf.abs(self._grad(x, t)), axis=-1)

    def smoothgrad(self, x, t):
        span = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True) - tf.reduce_min(
            x, axis=[1, 2, 3], keepdims=True
        )
        eps = tf.random.stateless_normal((tf.shape(x)[0], SAMPLES, *self.shape), seed=[0, 1])
        noisy = tf.reshape(x[:, None] + eps * (NOISE * span)[:, None], (-1, *self.shape))
        grads = self._grad(noisy, tf.repeat(t, SAMPLES))
        grads = tf.reshape(grads, (-1, SAMPLES, *self.shape))
        return tf.reduce_max(tf.reduce_mean(tf.abs(grads), axis=1), axis=-1)

    def integrated_gradients(self, x, t):
        alphas = tf.reshape(tf.linspace(0.0, 1.0, STEPS + 1), (1, -1, 1, 1, 1))
        path = tf.reshape(alphas * x[:, None], (-1, *self.shape))  # baseline: zeros
        grads = tf.reshape(self._grad(path, tf.repeat(t, STEPS + 1)), (-1, STEPS + 1, *self.shape))
        avg = (tf.reduce_sum(grads, axis=1) - 0.5 * (grads[:, 0] + grads[:, -1])) / STEPS
        return tf.reduce_sum(avg * x, axis=-1)

    def _cam_grads(self, x, t):
        with tf.GradientTape() as tape:
            acts = self.acts(x)
            tape.watch(acts)
            score = tf.reduce_sum(tf.gather(self.logits(acts), t, batch_dims=1))
        return acts, tape.gradient(score, acts)

    def gradcam(self, x, t):
        acts, grads = self._cam_grads(x, t)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        return tf.nn.relu(tf.reduce_sum(acts * weights, axis=-1))

    def gradcam_plus_plus(self, x, t):
        acts, grads = self._cam_grads(x, t)
        g2, g3 = tf.square(grads), grads * tf.square(grads)
        total = tf.reduce_sum(acts, axis=[1, 2], keepdims=True)
        alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + total * g3)
        weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=[1, 2], keepdims=True)
        return tf.nn.relu(tf.reduce_sum(acts * weights, axis=-1))

    def scorecam(self, x, t):
        acts = self.acts(x)  # (b, h, w, K)
        k = self.channels
        maps = tf.reshape(tf.transpose(acts, [0, 3, 1, 2]), (-1, *acts.shape[1:3], 1))
        masks = tf.image.resize(maps, self.shape[:2])
        lo = tf.reduce_min(masks, axis=[1, 2, 3], keepdims=True)
        hi = tf.reduce_max(masks, axis=[1, 2, 3], keepdims=True)
        masks = tf.math.divide_no_nan(masks - lo, hi - lo)
        logits = self.logits(self.acts(tf.repeat(x, k, axis=0) * masks))
        scores = tf.gather(tf.nn.softmax(logits), tf.repeat(t, k), batch_dims=1)
        weights = tf.nn.softmax(tf.reshape(scores, (-1, 1, 1, k)), axis=-1)
        return tf.nn.relu(tf.reduce_sum(acts * weights, axis=-1))

    def run(self, floor: str, x, t):
        fn, per = self.fns[floor], self.per_call[floor]
        return np.concatenate(
            [
                fn(tf.constant(x[a : a + per]), tf.constant(t[a : a + per])).numpy()
                for a in range(0, len(x), per)
            ]
        )


def tape_saliency(model, x, targets):
    """The tutorials' loop: one GradientTape per image."""
    out = []
    for image, target in zip(x, targets, strict=True):
        image = tf.convert_to_tensor(image[None])
        with tf.GradientTape() as tape:
            tape.watch(image)
            score = model(image)[0, target]
        out.append(np.abs(tape.gradient(score, image).numpy()[0]).max(-1))
    return np.stack(out)


def tape_gradcam(model, layer, x, targets):
    """The keras-io recipe per image: a two-output sub-model and a tape."""
    import keras

    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])
    out = []
    for image, target in zip(x, targets, strict=True):
        with tf.GradientTape() as tape:
            acts, preds = grad_model(image[None])
            score = preds[:, target]
        grads = tape.gradient(score, acts)[0]
        weights = tf.reduce_mean(grads, axis=(0, 1))
        out.append(tf.nn.relu(tf.reduce_sum(acts[0] * weights, -1)).numpy())
    return out


def tf_keras_vis_tools(model, layer: str) -> dict:
    """tf-keras-vis callables ``(x, targets) -> maps``, built once (as a user reuses them)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    if not hasattr(model, "output_names"):
        # A Keras 3 Sequential has no `output_names`, which tf-keras-vis reads; the same
        # layers as a functional model do.
        import keras

        model = keras.Model(model.inputs, model.outputs)
    # Raw maps at the layer's resolution, no rescaling: the least work it can do.
    cam = {
        "penultimate_layer": layer,
        "seek_penultimate_conv_layer": False,
        "expand_cam": False,
        "normalize_cam": False,
    }
    saliency = Saliency(model, model_modifier=ReplaceToLinear())
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear())
    gradcampp = GradcamPlusPlus(model, model_modifier=ReplaceToLinear())
    layercam = Layercam(model, model_modifier=ReplaceToLinear())
    scorecam = Scorecam(model, model_modifier=ReplaceToLinear())

    def score(t):
        return CategoricalScore(list(map(int, t)))

    return {
        "saliency": lambda x, t: saliency(score(t), x, normalize_map=False),
        "smoothgrad": lambda x, t: saliency(
            score(t), x, smooth_samples=SAMPLES, smooth_noise=NOISE, normalize_map=False
        ),
        "gradcam": lambda x, t: gradcam(score(t), x, **cam),
        "gradcam_plus_plus": lambda x, t: gradcampp(score(t), x, **cam),
        "layercam": lambda x, t: layercam(score(t), x, **cam),
        "scorecam": lambda x, t: quiet(scorecam, score(t), x, max_N=-1, **cam),
    }


def xplique_tools(model, layer: str) -> dict:
    """xplique callables ``(x, targets) -> maps`` on the same Keras 3 model."""
    xp = common.import_xplique()
    if xp is None:
        return {}
    big = 256  # perturbed inputs per batch for the sampling methods
    tools = {
        "saliency": xp.Saliency(model, batch_size=64),
        "gradient_x_input": xp.GradientInput(model, batch_size=64),
        "guided_backprop": xp.GuidedBackprop(model, batch_size=64),
        "smoothgrad": xp.SmoothGrad(model, batch_size=big, nb_samples=SAMPLES, noise=NOISE),
        "vargrad": xp.VarGrad(model, batch_size=big, nb_samples=SAMPLES, noise=NOISE),
        "squaregrad": xp.SquareGrad(model, batch_size=big, nb_samples=SAMPLES, noise=NOISE),
        "integrated_gradients": xp.IntegratedGradients(model, batch_size=big, steps=STEPS + 1),
        "gradcam": xp.GradCAM(model, batch_size=64, conv_layer=layer),
        "gradcam_plus_plus": xp.GradCAMPP(model, batch_size=64, conv_layer=layer),
    }
    return {
        name: (lambda x, t, tool=tool: np.asarray(tool.explain(x, tf.one_hot(t, 10))))
        for name, tool in tools.items()
    }


def kerascope_tools(layer: str) -> dict:
    """kerascope's methods ``(model, x, targets) -> maps``, default options."""
    import pipeline.attribution as a

    cam = {"layer": layer}
    return {
        "saliency": lambda m, x, t: a.saliency(m, x, t).maps,
        "gradient_x_input": lambda m, x, t: a.gradient_x_input(m, x, t).maps,
        "guided_backprop": lambda m, x, t: a.guided_backprop(m, x, t).maps,
        "smoothgrad": lambda m, x, t: a.smoothgrad(m, x, t).maps,
        "vargrad": lambda m, x, t: a.vargrad(m, x, t).maps,
        "squaregrad": lambda m, x, t: a.squaregrad(m, x, t).maps,
        "integrated_gradients": lambda m, x, t: a.integrated_gradients(m, x, t).maps,
        "gradcam": lambda m, x, t: a.gradcam(m, x, t, **cam).raw,
        "gradcam_plus_plus": lambda m, x, t: a.gradcam_plus_plus(m, x, t, **cam).raw,
        "layercam": lambda m, x, t: a.layercam(m, x, t, **cam).raw,
        "scorecam": lambda m, x, t: a.scorecam(m, x, t, **cam).raw,
    }


def inputs(model, method: str):
    n = INPUTS.get(method, INPUTS_DEFAULT) * SCALE.get(model.name, 1)
    return common.inputs_for(model, n), (np.arange(n) % 10).astype(np.int32)


def measure(tools: dict, max_runs: dict | None = None, budget: float = 6.0) -> dict:
    """Interleaved timings: every round calls each tool once, so load from other jobs on
    the machine hits all tools alike. A tool that fails records its error instead.

    Args:
        tools: name -> zero-argument callable.
        max_runs: name -> cap on its timed calls (slow tools: 1).
        budget: Rounds continue (3 to 10) while a round takes under ``budget / rounds``.
    """
    max_runs = max_runs or {}
    out: dict[str, list[float] | str] = {}
    for name, fn in tools.items():  # warm-up: tracing, caches
        try:
            fn()
            out[name] = []
        except Exception as exc:  # a peer that cannot run this case: recorded, not fatal
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    live = [name for name in tools if isinstance(out[name], list)]
    rounds = 10
    for r in range(10):
        for name in live:
            if len(out[name]) < max_runs.get(name, 10):
                start = time.perf_counter()
                tools[name]()
                out[name].append(time.perf_counter() - start)
        if r == 0:
            first = sum(out[name][0] for name in live)
            rounds = int(min(10, max(REPEAT, budget / max(first, 1e-6))))
        if r + 1 >= rounds:
            break
    return out


def bench_model(name: str, methods: list[str]) -> dict:
    """Times (seconds per call) of every tool on every method, for one zoo model."""
    model = common.keras3_model(name)
    layer = MODELS[name]
    ours = kerascope_tools(layer)
    floors = {False: Floors(model, layer, jit=False), True: Floors(model, layer, jit=True)}
    tfkv, xpl = tf_keras_vis_tools(model, layer), xplique_tools(model, layer)
    loops = {
        "saliency": lambda x, t: tape_saliency(model, x, t),
        "gradcam": lambda x, t: tape_gradcam(model, layer, x, t),
    }
    out = {}
    for method in methods:
        x, t = inputs(model, method)
        floor = FLOOR_OF[method]
        tools = {
            "kerascope": partial(ours[method], model, x, t),
            "floor_graph": partial(floors[False].run, floor, x, t),
            "floor_xla": partial(floors[True].run, floor, x, t),
        }
        if method in tfkv:
            tools["tf_keras_vis_keras3"] = partial(tfkv[method], x, t)
        if method in xpl:
            tools["xplique"] = partial(xpl[method], x, t)
        if method in loops:
            tools["tape_loop"] = partial(loops[method], x, t)
        row = {"inputs": len(x), "floor": floor, **measure(tools, {"tape_loop": 1})}
        out[method] = row
        brief = {k: min(v) if isinstance(v, list) else v for k, v in row.items()}
        print(f"{name} {method}: {brief}", file=sys.stderr, flush=True)
    return out


def tf_keras_peers(methods: list[str]) -> dict:
    """In this (TF_USE_LEGACY_KERAS=1) process: tf-keras-vis on a tf-keras twin, timed
    interleaved with kerascope (Keras 3) in the same process."""
    out = {}
    for name, layer in MODELS.items():
        model = common.keras3_model(name)
        tools = tf_keras_vis_tools(common.tf_keras_twin(model), layer)
        ours = kerascope_tools(layer)
        out[name] = {}
        for method in methods:
            if method in tools:
                x, t = inputs(model, method)
                out[name][method] = measure(
                    {
                        "kerascope": partial(ours[method], model, x, t),
                        "tf_keras_vis_tf_keras": partial(tools[method], x, t),
                    }
                )
    return out


def run_tf_keras_subprocess(methods: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--tf-keras-peers", "--methods", *methods],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
    )
    if result.returncode:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def ratio(a, b) -> float | str:
    if isinstance(a, list) and isinstance(b, list) and a and b:
        return min(a) / min(b)
    return "–"


def rows(results: dict) -> list[list]:
    table = []
    for name, methods in results["kerascope"].items():
        for method, r in methods.items():
            tfk = results["tf_keras"].get(name, {}).get(method, {})
            ours = r["kerascope"]
            floor = [
                t
                for key in ("floor_graph", "floor_xla")
                if isinstance(r[key], list)
                for t in r[key]
            ]
            table.append(
                [
                    name,
                    method,
                    r["inputs"] / min(ours) if isinstance(ours, list) else ours,
                    common.spread(ours) if isinstance(ours, list) else "–",
                    ratio(ours, r["floor_graph"]),
                    ratio(r["floor_xla"], r["floor_graph"]),
                    ratio(ours, floor),
                    ratio(ours, r.get("tf_keras_vis_keras3", "–")),
                    ratio(tfk.get("kerascope", "–"), tfk.get("tf_keras_vis_tf_keras", "–")),
                    ratio(ours, r.get("xplique", "–")),
                    ratio(ours, r.get("tape_loop", "–")),
                ]
            )
    return table


HEADER = [
    "model",
    "method",
    "kerascope inputs/s",
    "kerascope best (spread)",
    "/ floor",
    "floor XLA / floor",
    "/ best floor",
    "/ tf-keras-vis (Keras 3)",
    "/ tf-keras-vis (tf-keras)",
    "/ xplique",
    "/ per-image tape",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=list(FLOOR_OF))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--tf-keras-peers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf_keras_peers:
        print(json.dumps(tf_keras_peers(args.methods)))
        return
    results = {"kerascope": {}, "inputs_per_call": INPUTS, "repeat": REPEAT}
    for name in args.models:
        results["kerascope"][name] = bench_model(name, args.methods)
    results["tf_keras"] = run_tf_keras_subprocess(args.methods)
    path = common.save("attribute", results)
    print(f"Machine: {common.machine()}; raw times in {path}\n")
    print("Ratios are times (lower is better for kerascope): kerascope's time / the other's.\n")
    print(common.table(HEADER, rows(results)))


if __name__ == "__main__":
    main()

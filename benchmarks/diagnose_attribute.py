"""Why attribution methods sit above their floor: step size and upsampling.

Times, interleaved as in bench_attribute.py, kerascope's default call (steps sized from
the model's activations, noise drawn on the device) against the same call with the
former fixed steps (``batch_size`` 64 and 128), the floor, and the upsampling of the raw
CAM maps alone. Writes ``benchmarks/results/attribute-diagnosis.json``.

With ``--steps`` it instead sweeps the step size (``batch_size`` None, 32, 64, 128, 256
rows) of saliency, SmoothGrad, Integrated Gradients and Score-CAM on both models,
interleaved with the floor, and writes ``results/attribute-steps.json``.

Run: python benchmarks/diagnose_attribute.py [--steps]
"""

from __future__ import annotations

import argparse
from functools import partial

import common
import tensorflow as tf
from bench_attribute import Floors, inputs, measure, quiet

import pipeline.attribution as a


def main() -> None:
    out = {}
    for name, layer in (("mnist_cnn", "conv2"), ("vgg_small", "block3_conv2")):
        m = common.keras3_model(name)
        fl = Floors(m, layer, False)
        x, t = inputs(m, "smoothgrad")
        out[name + " smoothgrad"] = measure(
            {
                "kerascope default (automatic step)": partial(a.smoothgrad, m, x, t),
                "kerascope batch_size=64 (the former default: 4 inputs/step)": partial(
                    a.smoothgrad, m, x, t, batch_size=64
                ),
                "floor (16 inputs/step, noise on device)": partial(fl.run, "smoothgrad", x, t),
            }
        )
        x, t = inputs(m, "integrated_gradients")
        out[name + " integrated_gradients"] = measure(
            {
                "kerascope default (automatic step)": partial(a.integrated_gradients, m, x, t),
                "kerascope batch_size=128 (the former default: 3 inputs/step)": partial(
                    a.integrated_gradients, m, x, t, batch_size=128
                ),
                "floor (7 inputs/step)": partial(fl.run, "integrated_gradients", x, t),
            }
        )
        x, t = inputs(m, "gradcam")
        size = x.shape[1:3]
        up = tf.function(lambda r, size=size: tf.image.resize(r[..., None], size))
        raw = fl.run("gradcam", x, t)
        out[name + " gradcam"] = measure(
            {
                "kerascope default": partial(a.gradcam, m, x, t, layer=layer),
                "floor": partial(fl.run, "gradcam", x, t),
                "upsampling the raw maps alone": partial(up, raw),
            }
        )
    for k, v in out.items():
        print(k)
        for tool, times in v.items():
            print(f"   {tool}: best {min(times) * 1000:.1f} ms of {len(times)}")
    common.save("attribute-diagnosis", out)


def sweep_steps() -> None:
    """Each method at several step sizes beside its floor (times relative to the floor)."""
    out = {}
    cases = (
        ("saliency", "saliency", (None, 32, 64, 128, 256)),
        ("smoothgrad", "smoothgrad", (None, 32, 64, 128, 256)),
        ("integrated_gradients", "integrated_gradients", (None, 32, 64, 128, 256)),
        ("scorecam", "scorecam", (None, 256, 512, 1024, 2048)),
    )
    for name, layer in (("mnist_cnn", "conv2"), ("vgg_small", "block3_conv2")):
        m = common.keras3_model(name)
        fl = Floors(m, layer, False)
        for method, floor, sizes in cases:
            x, t = inputs(m, method)
            fn = getattr(a, method)
            extra = {"layer": layer} if method == "scorecam" else {}
            tools = {"floor": partial(fl.run, floor, x, t)}
            for size in sizes:
                label = "automatic" if size is None else f"batch_size={size}"
                tools[label] = partial(quiet, fn, m, x, t, batch_size=size, **extra)
            times = measure(tools, budget=10.0)
            out[f"{name} {method}"] = times
            best = min(times["floor"])
            shown = ", ".join(f"{k} {min(v) / best:.2f}" for k, v in times.items() if k != "floor")
            print(f"{name} {method} (floor {best * 1000:.1f} ms): {shown}", flush=True)
    common.save("attribute-steps", out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", action="store_true", help="sweep the step size instead")
    if parser.parse_args().steps:
        sweep_steps()
    else:
        main()

"""Why attribution methods sit above their floor: step size and upsampling.

Times, interleaved as in bench_attribute.py, kerascope's default call (steps sized from
the model's activations, noise drawn on the device) against the same call with the
former fixed steps (``batch_size`` 64 and 128), the floor, and the upsampling of the raw
CAM maps alone. Writes ``benchmarks/results/attribute-diagnosis.json``.

Run: python benchmarks/diagnose_attribute.py
"""

from __future__ import annotations

from functools import partial

import common
import tensorflow as tf
from bench_attribute import Floors, inputs, measure

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


if __name__ == "__main__":
    main()

"""Attribution throughput: kerascope vs tf-keras-vis vs the per-image GradientTape loop.

Run: python benchmarks/bench_attribute.py   (needs the `bench` extra)
"""

from __future__ import annotations

import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from pipeline.attribution import gradcam, gradcam_plus_plus, saliency, scorecam

N = 128


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with its Keras progress bars (printed to stdout) silenced."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


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


def relative_difference(ours, theirs) -> float:
    """Largest absolute difference of two sets of maps, relative to their largest value."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def bench_model(name: str, layer: str) -> list[list]:
    """Rows of the table for one zoo model (untrained, same weights for every tool)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = common.keras3_model(name)
    twin = common.tf_keras_twin(model)
    x = common.inputs_for(model, N)
    targets = np.arange(N) % 10
    score = CategoricalScore(targets.tolist())
    compiled = tf.function(lambda b: model(b, training=False))
    forward = common.best_time(lambda: [compiled(x[i : i + 64]).numpy() for i in range(0, N, 64)])
    ours = {
        "saliency": lambda: saliency(model, x, targets),
        "gradcam": lambda: gradcam(model, x, targets, layer=layer).raw,
        "gradcam_plus_plus": lambda: gradcam_plus_plus(model, x, targets, layer=layer).raw,
        "scorecam": lambda: scorecam(model, x, targets, layer=layer).raw,
    }
    # tf-keras-vis upsamples and rescales its maps by default; with expand_cam=False and
    # normalisation off it returns raw maps at the layer's resolution, as kerascope does,
    # so the two can be compared number for number (and it does a little less work).
    cam = {
        "penultimate_layer": layer,
        "seek_penultimate_conv_layer": False,
        "expand_cam": False,
        "normalize_cam": False,
    }
    peers = {
        "saliency": lambda: Saliency(twin, model_modifier=ReplaceToLinear())(
            score, x, normalize_map=False
        ),
        "gradcam": lambda: Gradcam(twin, model_modifier=ReplaceToLinear())(score, x, **cam),
        "gradcam_plus_plus": lambda: GradcamPlusPlus(twin, model_modifier=ReplaceToLinear())(
            score, x, **cam
        ),
        "scorecam": lambda: quiet(
            Scorecam(twin, model_modifier=ReplaceToLinear()), score, x, **cam
        ),
    }
    loops = {
        "saliency": lambda: tape_saliency(model, x, targets),
        "gradcam": lambda: tape_gradcam(model, layer, x, targets),
    }
    rows = []
    for method, run in ours.items():
        t_ours = common.best_time(run)
        t_peer = common.best_time(peers[method], repeat=2)
        t_loop = common.best_time(loops[method], repeat=1) if method in loops else None
        rows.append(
            [
                name,
                method,
                N / t_ours,
                N / t_peer,
                t_peer / t_ours,
                t_loop / t_ours if t_loop else "–",
                t_ours / forward if method == "saliency" else "–",
                relative_difference(run(), peers[method]()),
            ]
        )
    return rows


def main() -> None:
    rows = []
    for name, layer in (("mnist_cnn", "conv2"), ("vgg_small", "block3_conv2")):
        rows += bench_model(name, layer)
    print(f"Machine: {common.machine()}; {N} inputs per call\n")
    print(
        common.table(
            [
                "model",
                "method",
                "kerascope inputs/s",
                "tf-keras-vis inputs/s",
                "speed-up vs tf-keras-vis",
                "speed-up vs per-image tape",
                "saliency cost / compiled forward pass",
                "max difference to tf-keras-vis (relative)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

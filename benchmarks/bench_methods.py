"""The newer attribution methods against their peers: agreement and speed.

For each method of issue 18 (Gradient x Input, VarGrad, SquareGrad, Guided Backprop,
DeconvNet, LayerCAM, Faster-ScoreCAM, Occlusion, RISE, LIME, Kernel SHAP, Sobol, HSIC)
and its peer implementation (xplique 2.0.2, installed with ``pip install --no-deps``,
or tf-keras-vis 0.8.7 on Keras 3), on the same weights and inputs, with matched
settings (samples, masks, patch sizes, grids, baselines), the benchmark measures:

* **agreement**: the mean over inputs of the Pearson correlation between the two
  maps of the same input. Where a method samples at random (VarGrad, SquareGrad, RISE,
  LIME, Kernel SHAP, Sobol, HSIC) the two libraries draw different samples, so
  agreement is statistical; the reference is then each library's agreement with itself
  under other draws (``peer_self``: a second call, whose random ops draw anew;
  ``kerascope_self``: seed 1 against seed 0): kerascope agrees with the peer as well
  as it can when ``agreement`` reaches them;
* **time ratio**: kerascope's best time / the peer's best time, over 3 interleaved
  calls after one warm-up call each (below 1: kerascope is faster).

Peers explain a functional twin of the model whose last layer outputs logits (same
weights), since kerascope explains logits by default. Scores are logits everywhere,
except Faster-ScoreCAM, which scores probabilities of the masked inputs in both.
The load average is recorded before and after each method.
Raw results go to ``benchmarks/results/methods.json``, the table to ``methods.md``.

Run: python benchmarks/bench_methods.py [--models mnist_cnn] [--methods rise lime]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time

import common
import numpy as np
import tensorflow as tf

#: The CAM layer of each benchmark model (as in bench_attribute.py).
LAYERS = {"mnist_cnn": "conv2", "vgg_small": "block3_conv2"}
#: Inputs per call: black-box methods get fewer on the larger net.
INPUTS = {"mnist_cnn": {}, "vgg_small": {"black_box": 8}}
INPUTS_DEFAULT = 32
BLACK_BOX = ("occlusion", "rise", "lime", "kernel_shap", "sobol", "hsic")
#: Cells per side of the grid methods: cells must tile the image exactly, so that
#: xplique's nearest-neighbour upsampling of its grid masks gives kerascope's cells.
GRID = {"mnist_cnn": 7, "vgg_small": 8}
#: Occlusion patch = stride: with non-overlapping patches, xplique's sum over the
#: covering patches and kerascope's mean over them are the same definition.
PATCH = {"mnist_cnn": 4, "vgg_small": 8}
SAMPLES, NOISE = 16, 0.15  # VarGrad / SquareGrad (kerascope's defaults)
RISE_MASKS, RISE_CELLS, RISE_KEEP = 500, 7, 0.5
LIME_SAMPLES, LIME_WIDTH = 256, 0.25
SHAP_SAMPLES = 256
SOBOL_DESIGNS = 32  # a power of two, as xplique requires
HSIC_DESIGNS = 512
MAX_CHANNELS = 10  # Faster-ScoreCAM
REPEAT = 3
BIG = 256  # perturbed inputs per compiled step (kerascope's default for these methods)


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with its progress bars (printed to stdout) silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def logits_twin(model):
    """A functional model with the same layers and weights, whose output is the logits."""
    import keras

    x = inputs = keras.Input(tuple(model.inputs[0].shape[1:]))
    for layer in model.layers[:-1]:
        x = layer(x)
    last = model.layers[-1]
    head = keras.layers.Dense(last.units, activation=None, name="logits")
    out = head(x)
    head.set_weights(last.get_weights())
    return keras.Model(inputs, out)


def pearson(a, b) -> float:
    """Mean over maps of the Pearson correlation of two stacks of maps (N, ...)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    r = np.where(norm > 0, (a * b).sum(axis=1) / np.where(norm > 0, norm, 1.0), np.nan)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def squeeze(maps) -> np.ndarray:
    """xplique's (N, H, W, 1) maps as (N, H, W)."""
    maps = np.asarray(maps)
    return maps[..., 0] if maps.ndim == 4 and maps.shape[-1] == 1 else maps


def grid_cells(shape: tuple, grid: int) -> np.ndarray:
    """Cell index of every pixel of a ``grid`` x ``grid`` grid that tiles (H, W)."""
    rows, cols = (np.arange(size) * grid // size for size in shape)
    return rows[:, None] * grid + cols[None, :]


def bicubic_of_cells(maps: np.ndarray, grid: int) -> np.ndarray:
    """kerascope's piecewise-constant grid maps, resampled as xplique's GSA maps are.

    xplique upsamples its (grid, grid) Sobol/HSIC maps bicubically to the input; this
    takes each cell's value from kerascope's map and does the same.
    """
    height, width = maps.shape[1:3]
    rows = (np.arange(grid) * height + height // 2) // grid
    cols = (np.arange(grid) * width + width // 2) // grid
    cells = maps[:, rows][:, :, cols][..., None]
    return tf.image.resize(cells, (height, width), method="bicubic").numpy()[..., 0]


class Peers:
    """The peer implementations ``(x, targets) -> maps``, shaped as kerascope's."""

    def __init__(self, model, name: str):
        self.model = model
        self.twin = logits_twin(model)
        self.name = name
        self.layer = LAYERS[name]
        self.shape = tuple(model.inputs[0].shape[1:])
        self.grid = GRID[name]
        self.xp = common.import_xplique()

    def _explain(self, tool, x, t):
        # xplique's random ops are stateful: each call draws new samples (a global
        # tf.random.set_seed would not change draws already traced into its functions).
        return np.asarray(tool.explain(tf.constant(x), tf.one_hot(t, 10)))

    def build(self, method: str):
        """(peer name, callable) for ``method``; raises if the peer cannot be built."""
        xp, twin = self.xp, self.twin
        if method in ("layercam", "faster_scorecam"):
            return "tf-keras-vis " + ("Layercam" if method == "layercam" else "Scorecam"), (
                self._tf_keras_vis(method)
            )
        if xp is None:
            raise RuntimeError("xplique is not installed")
        cells = grid_cells(self.shape[:2], self.grid)
        mapping = lambda _inp: tf.constant(cells, tf.int32)  # noqa: E731
        # kerascope's baseline (0); xplique's default for RGB images is grey (0.5).
        zeros = np.zeros(self.shape[-1], np.float32)
        tools = {
            "gradient_x_input": lambda: xp.GradientInput(twin, batch_size=64, reducer=None),
            "vargrad": lambda: xp.VarGrad(
                twin, batch_size=BIG, nb_samples=SAMPLES, noise=NOISE, reducer=None
            ),
            "squaregrad": lambda: xp.SquareGrad(
                twin, batch_size=BIG, nb_samples=SAMPLES, noise=NOISE, reducer=None
            ),
            "guided_backprop": lambda: xp.GuidedBackprop(twin, batch_size=64, reducer=None),
            "deconvnet": lambda: xp.DeconvNet(twin, batch_size=64, reducer=None),
            "occlusion": lambda: xp.Occlusion(
                twin, batch_size=BIG, patch_size=PATCH[self.name], patch_stride=PATCH[self.name]
            ),
            "rise": lambda: xp.Rise(
                twin,
                batch_size=BIG,
                nb_samples=RISE_MASKS,
                grid_size=RISE_CELLS,
                preservation_probability=RISE_KEEP,
            ),
            "lime": lambda: xp.Lime(
                twin,
                batch_size=BIG,
                interpretable_model=_ridge(),
                similarity_kernel=lime_kernel,
                map_to_interpret_space=mapping,
                ref_value=zeros,
                nb_samples=LIME_SAMPLES,
            ),
            "kernel_shap": lambda: xp.KernelShap(
                twin,
                batch_size=BIG,
                map_to_interpret_space=mapping,
                ref_value=zeros,
                nb_samples=SHAP_SAMPLES,
            ),
            "sobol": lambda: xp.SobolAttributionMethod(
                twin, grid_size=self.grid, nb_design=SOBOL_DESIGNS, batch_size=BIG
            ),
            "hsic": lambda: xp.HsicAttributionMethod(
                twin, grid_size=self.grid, nb_design=HSIC_DESIGNS, batch_size=BIG
            ),
        }
        tool = tools[method]()
        reduce = {
            "gradient_x_input": lambda m: m.sum(axis=-1),
            "vargrad": lambda m: m.max(axis=-1),
            "squaregrad": lambda m: m.max(axis=-1),
            "guided_backprop": lambda m: np.abs(m).max(axis=-1),
            "deconvnet": lambda m: np.abs(m).max(axis=-1),
        }.get(method, squeeze)
        peer = "xplique " + type(tool).__name__

        def call(x, t):
            return reduce(self._explain(tool, x, t))

        return peer, call

    def _tf_keras_vis(self, method: str):
        import keras
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

        # tf-keras-vis reads `output_names` and the layers' own output tensors: the
        # Sequential's layers as a functional model, its softmax made linear on a clone.
        model = keras.Model(self.model.inputs, self.model.outputs)

        cam = {
            "penultimate_layer": self.layer,
            "seek_penultimate_conv_layer": False,
            "expand_cam": False,
            "normalize_cam": False,
        }
        if method == "layercam":
            tool = Layercam(model, model_modifier=ReplaceToLinear())
            return lambda x, t: np.asarray(tool(CategoricalScore(list(map(int, t))), x, **cam))
        tool = Scorecam(model, model_modifier=ReplaceToLinear())
        return lambda x, t: np.asarray(
            quiet(
                tool,
                CategoricalScore(list(map(int, t))),
                x,
                max_N=MAX_CHANNELS,
                batch_size=BIG,
                **cam,
            )
        )


def _ridge():
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


def lime_kernel(_inp, samples, _perturbed):
    """kerascope's LIME kernel, for xplique: sqrt(exp(-d^2 / w^2)) of the cosine
    distance d between a sample's on/off vector and the all-on one."""
    on = tf.reduce_sum(tf.cast(samples, tf.float32), axis=1)
    similarity = tf.sqrt(on / tf.cast(tf.shape(samples)[1], tf.float32))
    return tf.sqrt(tf.exp(-((1.0 - similarity) ** 2) / LIME_WIDTH**2))


def hsic_same_design(model, x, t, grid: int, their_maps: np.ndarray) -> dict:
    """Why HSIC agrees less: both estimators on xplique's own design and scores.

    kerascope's scores of xplique's (unscrambled, rounded) Sobol masks, estimated with
    the output kernel's width as kerascope sets it (median distance between scores)
    and as xplique sets it (median of the scores themselves).
    """
    from pipeline.attribution.perturbation import design_scores

    height, width = x.shape[1:3]
    design = np.round(tf.math.sobol_sample(grid * grid, HSIC_DESIGNS).numpy())
    scores = design_scores(
        model,
        x,
        t,
        design,
        grid_cells((height, width), grid),
        baseline=0.0,
        score="logits",
        batch_size=BIG,
    ).astype(np.float64)
    n = len(design)
    centre = np.eye(n) - 1.0 / n
    out = {}
    for rule in ("median_distance", "median_score"):
        values = []
        for y in scores:
            distance = np.abs(y[:, None] - y[None, :])
            if rule == "median_distance":
                w = np.median(distance[np.triu_indices(n, 1)])
            else:
                w = np.percentile(y, 50.0)
            gram = np.exp(-(distance**2) / (2 * (w if w != 0 else 1.0) ** 2))
            values.append(((centre @ gram @ centre @ design) * design).sum(axis=0))
        cells = np.asarray(values).reshape(-1, grid, grid)
        rows = (np.arange(height) * grid) // height
        cols = (np.arange(width) * grid) // width
        maps = cells[:, rows][:, :, cols]
        out[f"agreement_same_design_{rule}"] = pearson(bicubic_of_cells(maps, grid), their_maps)
    return out


def kerascope_tool(method: str, name: str):
    """kerascope's ``(model, x, targets, seed) -> maps`` with the matched settings."""
    import pipeline.attribution as a

    grid, patch, layer = GRID[name], PATCH[name], LAYERS[name]
    options = {
        "gradient_x_input": {},
        "vargrad": {"samples": SAMPLES, "noise": NOISE},
        "squaregrad": {"samples": SAMPLES, "noise": NOISE},
        "guided_backprop": {},
        "deconvnet": {},
        "layercam": {"layer": layer},
        "faster_scorecam": {"layer": layer, "max_channels": MAX_CHANNELS},
        "occlusion": {"patch_size": patch, "stride": patch},
        "rise": {"masks": RISE_MASKS, "cells": RISE_CELLS, "keep": RISE_KEEP},
        "lime": {"samples": LIME_SAMPLES, "grid": grid, "kernel_width": LIME_WIDTH},
        "kernel_shap": {"samples": SHAP_SAMPLES, "grid": grid},
        "sobol": {"designs": SOBOL_DESIGNS, "grid": grid},
        "hsic": {"designs": HSIC_DESIGNS, "grid": grid},
    }[method]
    fn = a.method(method)
    seeded = "seed" in a.options.METHOD_SPECS[method].uses
    cam = method in a.CAM_METHODS

    def call(model, x, t, seed=0):
        result = fn(model, x, t, **options, **({"seed": seed} if seeded else {}))
        return result.raw if cam else result.maps

    return call, seeded


#: Methods whose peer draws random samples (its self-agreement is the reference).
PEER_RANDOM = ("vargrad", "squaregrad", "rise", "lime", "kernel_shap")
METHODS = (
    "gradient_x_input",
    "vargrad",
    "squaregrad",
    "guided_backprop",
    "deconvnet",
    "layercam",
    "faster_scorecam",
    "occlusion",
    "rise",
    "lime",
    "kernel_shap",
    "sobol",
    "hsic",
)
#: What differs in the definitions, so that agreement is below 1 for a reason.
NOTES = {
    "vargrad": "different noise draws; xplique's noise is absolute (inputs span ~1)",
    "squaregrad": "different noise draws; xplique's noise is absolute (inputs span ~1)",
    "faster_scorecam": "tf-keras-vis weights channels by raw probabilities over the union "
    "of the batch's top channels, kerascope by their softmax over each input's own top "
    "channels",
    "rise": "different masks; xplique divides by each pixel's mask sum, kerascope by "
    "masks x keep (the paper's E[M]): a constant offset of the scores then adds mask-density "
    "noise to kerascope's maps, hence its lower self-agreement",
    "lime": "different samples (same grid, kernel, ridge alpha 1)",
    "kernel_shap": "different coalitions; kerascope adds the full and empty coalitions and "
    "enforces efficiency, xplique fits an unconstrained linear regression",
    "sobol": "kerascope scrambles its Sobol sequence (seeded), xplique's is unscrambled; "
    "kerascope's cells resampled bicubically as xplique's maps",
    "hsic": "kerascope scrambles its Sobol sequence (seeded), xplique's is unscrambled; "
    "the output kernel's width is the median distance between scores in kerascope, the "
    "median score in xplique (agreement_same_design_*: both on xplique's design, with "
    "each width); kerascope's cells resampled bicubically as xplique's maps",
}


def interleaved(tools: dict) -> dict:
    """Wall times of ``REPEAT`` interleaved rounds after one warm-up call per tool, so
    load from other jobs hits both tools alike. A failing tool records its error."""
    out: dict[str, list[float] | str] = {}
    for name, fn in tools.items():
        try:
            common.times(fn, repeat=0)  # the warm-up call only
            out[name] = []
        except Exception as exc:  # a peer that cannot run this case: recorded, not fatal
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    live = [name for name in tools if isinstance(out[name], list)]
    for _ in range(REPEAT):
        for name in live:
            start = time.perf_counter()
            tools[name]()
            out[name].append(time.perf_counter() - start)
    return out


def bench_method(model, name: str, peers: Peers, method: str) -> dict:
    """Agreement and times of kerascope and its peer on one method and model."""
    n = INPUTS[name].get("black_box" if method in BLACK_BOX else method, INPUTS_DEFAULT)
    x = common.inputs_for(model, n)
    t = (np.arange(n) % 10).astype(np.int32)
    ours, seeded = kerascope_tool(method, name)
    row = {"inputs": n, "load_before": os.getloadavg()[0], "note": NOTES.get(method, "")}
    try:
        row["peer"], theirs = peers.build(method)
    except Exception as exc:
        row["peer"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        theirs = None
    ours_maps = ours(model, x, t)
    if theirs is not None:
        try:
            their_maps = theirs(x, t)
            compare = ours_maps
            if method in ("sobol", "hsic"):
                compare = bicubic_of_cells(ours_maps, GRID[name])
            row["agreement"] = pearson(compare, their_maps)
            if method == "hsic":
                row.update(hsic_same_design(model, x, t, GRID[name], their_maps))
            if method in PEER_RANDOM:
                row["peer_self"] = pearson(their_maps, theirs(x, t))
            if method == "faster_scorecam":  # one input per call: each its own channels
                single = np.concatenate([theirs(x[i : i + 1], t[i : i + 1]) for i in range(n)])
                row["agreement_one_per_call"] = pearson(ours_maps, single)
        except Exception as exc:
            row["agreement"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if seeded:
        row["kerascope_self"] = pearson(ours_maps, ours(model, x, t, seed=1))
    tools = {"kerascope": lambda: ours(model, x, t)}
    if theirs is not None and not isinstance(row.get("agreement"), str):
        tools["peer"] = lambda: theirs(x, t)
    row["times"] = interleaved(tools)
    kt, pt = row["times"].get("kerascope"), row["times"].get("peer")
    if isinstance(kt, list) and isinstance(pt, list):
        row["ratio"] = min(kt) / min(pt)
    row["load_after"] = os.getloadavg()[0]
    return row


def fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.3f}"
    if value is None:
        return "–"
    return str(value)


def markdown(results: dict) -> str:
    models = list(results["models"])
    header = ["method", "peer"]
    for m in models:
        header += [
            f"agreement ({m})",
            f"peer self ({m})",
            f"kerascope self ({m})",
            f"time ratio ({m})",
        ]
    rows = []
    for method in results["methods"]:
        cells = results["models"][models[0]].get(method, {})
        row = [method, cells.get("peer", "–")]
        for m in models:
            r = results["models"][m].get(method, {})
            agreement = r.get("agreement")
            if "agreement_one_per_call" in r:
                agreement = f"{fmt(agreement)} ({fmt(r['agreement_one_per_call'])} one per call)"
            row += [
                fmt(agreement),
                fmt(r.get("peer_self")),
                fmt(r.get("kerascope_self")),
                fmt(r.get("ratio")),
            ]
        rows.append(row)
    lines = [
        "# kerascope's newer attribution methods against their peers",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}.",
        "",
        "Agreement: mean per-map Pearson correlation with the peer on the same weights and "
        "inputs. Peer self / kerascope self: the same library's agreement with itself under "
        "other random draws (peer: a second call; kerascope: seed 1 against seed 0), the "
        "reference for sampled methods. Time ratio: kerascope's best / the peer's best "
        f"of {REPEAT} interleaved calls after a warm-up (below 1: kerascope is faster).",
        "",
        common.table(header, rows),
        "",
        "Inputs per call, load average (1 min) before and after, and notes:",
        "",
    ]
    for m in models:
        for method, r in results["models"][m].items():
            times = {
                k: common.spread(v) if isinstance(v, list) else v for k, v in r["times"].items()
            }
            lines.append(
                f"- {m} {method}: {r['inputs']} inputs, load {r['load_before']:.2f} -> "
                f"{r['load_after']:.2f}; {times}"
                + "".join(f"; {k} {fmt(v)}" for k, v in r.items() if k.startswith("agreement_"))
                + (f"; {NOTES[method]}" if method in NOTES else "")
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the measured rows of an existing methods.json",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite methods.md from methods.json"
    )
    args = parser.parse_args()
    if args.table_only:
        record = json.loads((common.RESULTS / "methods.json").read_text())
        (common.RESULTS / "methods.md").write_text(markdown(record))
        print(markdown(record))
        return
    results = {
        "methods": args.methods,
        "settings": {
            "inputs": INPUTS_DEFAULT,
            "inputs_black_box_vgg_small": INPUTS["vgg_small"]["black_box"],
            "grid": GRID,
            "occlusion_patch_and_stride": PATCH,
            "samples_noise": [SAMPLES, NOISE],
            "rise": [RISE_MASKS, RISE_CELLS, RISE_KEEP],
            "lime": [LIME_SAMPLES, LIME_WIDTH],
            "kernel_shap": SHAP_SAMPLES,
            "sobol": SOBOL_DESIGNS,
            "hsic": HSIC_DESIGNS,
            "faster_scorecam_max_channels": MAX_CHANNELS,
            "repeat": REPEAT,
        },
        "models": {},
    }
    path = common.RESULTS / "methods.json"
    if args.update and path.exists():
        previous = json.loads(path.read_text())
        results["methods"] = [m for m in METHODS if m in {*previous["methods"], *args.methods}]
        results["models"] = previous["models"]
    for name in args.models:
        model = common.keras3_model(name)
        peers = Peers(model, name)
        results["models"].setdefault(name, {})
        for method in args.methods:
            row = bench_method(model, name, peers, method)
            results["models"][name][method] = row
            brief = {k: v for k, v in row.items() if k not in ("times", "note")}
            print(f"{name} {method}: {brief}", file=sys.stderr, flush=True)
    path = common.save("methods", results)
    record = {**results, "machine": common.machine(), "date": time.strftime("%Y-%m-%d")}
    (common.RESULTS / "methods.md").write_text(markdown(record))
    print(f"raw results in {path}\n")
    print(markdown(record))


if __name__ == "__main__":
    main()

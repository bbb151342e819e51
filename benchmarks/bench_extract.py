"""Extraction: kerascope against its compute floor and what users run today.

The **floors** are a bare multi-output forward pass in one ``tf.function`` (with and
without XLA) that allocates each layer's array once and copies every batch into it
straight from TensorFlow's buffer (memory), or writes every batch once into
uncompressed HDF5 datasets (file). kerascope is ``extract_activations`` (memory) and
what the extract stage runs (HDF5, health statistics included). Peers: a keract-style
multi-output ``predict``, the tutorials' one sub-model per layer, and a bare
``model.predict`` of the final output only. Optionally (``--memory``) the peak memory
against the number of inputs. Raw times go to ``benchmarks/results/extract.json``.

Run: python benchmarks/bench_extract.py [--memory] [--compression]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import common
import h5py
import keras
import numpy as np
import tensorflow as tf

from pipeline.activations import (
    ActivationHealth,
    default_layers,
    extract_activations,
    iter_activations,
    layer_metas,
)
from pipeline.artifacts.activations import write_activations

N = {"mnist_cnn": 2000, "vgg_small": 400}  # vgg_small: 1 MB of activations per input
BATCH = 256
REPEAT = 10


def kerascope_to_hdf5(model, x, path: str, compression=None) -> None:
    """What the extract stage runs: every layer, health statistics, streamed to a file."""
    layers = default_layers(model, None)
    metas = layer_metas(model, layers)
    with h5py.File(path, "w", rdcc_nbytes=0) as f:
        write_activations(
            f,
            iter_activations(model, x, layers, BATCH, stats=True),
            [x],
            metas,
            ActivationHealth({m.path: m.activation for m in metas}),
            batch_size=BATCH,
            compression=compression,
        )


def per_layer_submodels(model, x) -> dict:
    """The tutorials' recipe: one sub-model per layer, each run over all inputs."""
    return {
        layer.name: keras.Model(model.inputs, layer.output).predict(x, batch_size=BATCH, verbose=0)
        for layer in model.layers
    }


def multi_output_submodel(model, x) -> dict:
    """keract's approach: one sub-model with every layer as an output, in memory."""
    sub = keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = sub.predict(x, batch_size=BATCH, verbose=0)
    return dict(zip([layer.name for layer in model.layers], outputs, strict=True))


def floor_forward(model, jit: bool):
    """A bare forward pass returning every layer's output, in one ``tf.function``."""
    sub = keras.Model(model.inputs, [layer.output for layer in model.layers])
    return tf.function(lambda x: sub(x, training=False), jit_compile=jit)


def floor_memory(forward, model, x) -> list[np.ndarray]:
    """Forward per batch; every layer's array allocated once, each batch copied in once."""
    out = None
    for a in range(0, len(x), BATCH):
        parts = forward(tf.constant(x[a : a + BATCH]))
        if out is None:
            out = [np.empty((len(x), *p.shape[1:]), p.dtype.as_numpy_dtype) for p in parts]
        for array, part in zip(out, parts, strict=True):
            array[a : a + len(part)] = np.asarray(part)
    return out


def floor_hdf5(forward, model, x, path: str) -> None:
    """Forward per batch; each batch written once into uncompressed HDF5 datasets."""
    with h5py.File(path, "w") as f:
        datasets = None
        for a in range(0, len(x), BATCH):
            parts = forward(tf.constant(x[a : a + BATCH]))
            if datasets is None:
                datasets = [
                    f.create_dataset(
                        f"layer{i}",
                        (len(x), *p.shape[1:]),
                        p.dtype.as_numpy_dtype,
                        chunks=(min(BATCH, len(x)), *p.shape[1:]),
                    )
                    for i, p in enumerate(parts)
                ]
            for dataset, part in zip(datasets, parts, strict=True):
                dataset[a : a + len(part)] = np.asarray(part)


# Peak memory is VmHWM of the child's own address space: ru_maxrss would also count the
# parent's peak, which Linux carries across fork + exec.
MEMORY_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, "benchmarks")
import common
from bench_extract import kerascope_to_hdf5
model = common.keras3_model("mnist_cnn")
x = np.load(sys.argv[1], mmap_mode="r")
kerascope_to_hdf5(model, x, sys.argv[2])
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) / 1024)
"""


def peak_memory_mb(n: int) -> tuple[float, float]:
    """Peak RSS (MB) of extracting ``n`` memory-mapped inputs, and the file size (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, output = os.path.join(tmp, "x.npy"), os.path.join(tmp, "a.h5")
        x = np.lib.format.open_memmap(inputs, mode="w+", dtype="float32", shape=(n, 28, 28, 1))
        x[:] = np.random.default_rng(0).random(x.shape, dtype=np.float32)
        x.flush()
        del x
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, inputs, output],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        return float(result.stdout.strip().splitlines()[-1]), os.path.getsize(output) / 1e6


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stream_with_stats(model, x) -> None:
    """Diagnostic: the extract stage's compiled pass with health statistics, no file."""
    layers = default_layers(model, None)
    for _ in iter_activations(model, x, layers, BATCH, stats=True):
        pass


def bench_model(name: str, compression: bool) -> dict:
    """Times (seconds) of every tool, for one zoo model (untrained weights)."""
    model = common.keras3_model(name)
    x = common.inputs_for(model, N[name])
    graph, xla = floor_forward(model, False), floor_forward(model, True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "a.h5")
        timed = {
            "floor (memory)": (REPEAT, lambda: floor_memory(graph, model, x)),
            "floor XLA (memory)": (REPEAT, lambda: floor_memory(xla, model, x)),
            "kerascope extract_activations (memory)": (
                REPEAT,
                lambda: extract_activations(model, x, "all", BATCH),
            ),
            "keract-style multi-output predict (memory)": (
                REPEAT,
                lambda: multi_output_submodel(model, x),
            ),
            "tutorial: one sub-model per layer (memory)": (
                1,
                lambda: per_layer_submodels(model, x),
            ),
            "bare model.predict (final output only)": (
                REPEAT,
                lambda: model.predict(x, BATCH, verbose=0),
            ),
            "kerascope forward + health statistics, no file (diagnostic)": (
                REPEAT,
                lambda: stream_with_stats(model, x),
            ),
            "floor (HDF5)": (REPEAT, lambda: floor_hdf5(graph, model, x, h5)),
            "floor XLA (HDF5)": (REPEAT, lambda: floor_hdf5(xla, model, x, h5)),
            "kerascope extract stage -> HDF5 (no compression)": (
                REPEAT,
                lambda: kerascope_to_hdf5(model, x, h5),
            ),
        }
        if compression:
            for kind in ("lzf", "gzip"):
                timed[f"kerascope extract stage -> HDF5 ({kind})"] = (
                    1,
                    lambda k=kind: kerascope_to_hdf5(model, x, h5, k),
                )
        # Interleaved rounds after a warm-up: load from other jobs on the machine hits
        # every tool alike.
        for fn in (fn for _, fn in timed.values()):
            fn()
        results = {tool: [] for tool in timed}
        for r in range(REPEAT):
            for tool, (repeat, fn) in timed.items():
                if r < repeat:
                    results[tool].append(_once(fn))
        for tool, t in results.items():
            print(f"{name} {tool}: {min(t):.3f} s", file=sys.stderr, flush=True)
    return {"inputs": len(x), "tools": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--compression", action="store_true", help="also time lzf and gzip")
    args = parser.parse_args()
    results = {"batch": BATCH, "models": {}}
    rows = []
    for name in N:
        case = bench_model(name, args.compression)
        results["models"][name] = case
        tools = case["tools"]
        floor_mem = min(min(tools["floor (memory)"]), min(tools["floor XLA (memory)"]))
        floor_file = min(min(tools["floor (HDF5)"]), min(tools["floor XLA (HDF5)"]))
        ours_mem = min(tools["kerascope extract_activations (memory)"])
        ours_file = min(tools["kerascope extract stage -> HDF5 (no compression)"])
        for tool, t in tools.items():
            hdf5 = "HDF5" in tool
            rows.append(
                [
                    name,
                    tool,
                    common.spread(t),
                    case["inputs"] / min(t),
                    min(t) / (floor_file if hdf5 else floor_mem),
                    (ours_file if hdf5 else ours_mem) / min(t),
                ]
            )
    if args.memory:
        results["peak_memory"] = []
        for n in (1000, 10000):
            peak, size = peak_memory_mb(n)
            results["peak_memory"].append({"inputs": n, "peak_rss_mb": peak, "file_mb": size})
    path = common.save("extract", results)
    print(f"Machine: {common.machine()}; every layer, batch {BATCH}; raw times in {path}\n")
    print(
        common.table(
            [
                "model",
                "tool",
                "best (spread)",
                "inputs/s",
                "time / best floor (same medium)",
                "kerascope time / this (same medium)",
            ],
            rows,
        )
    )
    if args.memory:
        print("\nmnist_cnn extraction, inputs memory-mapped from disk (a process each):\n")
        print(
            common.table(
                ["inputs", "peak RSS MB", "HDF5 file MB"],
                [[m["inputs"], m["peak_rss_mb"], m["file_mb"]] for m in results["peak_memory"]],
            )
        )


if __name__ == "__main__":
    main()

"""Extraction: kerascope (one compiled pass per batch, streamed to HDF5 with health
statistics) vs what users run today (a sub-model per layer, as the tutorials teach, or
one multi-output sub-model, as keract builds), plus peak memory against input count.

Run: python benchmarks/bench_extract.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import common
import h5py
import keras
import numpy as np

from pipeline.activations import (
    ActivationHealth,
    default_layers,
    extract_activations,
    iter_activations,
    layer_metas,
)
from pipeline.artifacts.activations import write_activations

N = 2000
BATCH = 256


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


def bench_model(name: str) -> list[list]:
    """Rows for one zoo model (untrained: speed does not depend on the weights)."""
    model = common.keras3_model(name)
    x = common.inputs_for(model, N)
    timed = [
        ("bare model.predict (final output only)", 2, lambda: model.predict(x, BATCH, verbose=0)),
        ("tutorial: one sub-model per layer (memory)", 1, lambda: per_layer_submodels(model, x)),
        (
            "keract-style multi-output sub-model (memory)",
            2,
            lambda: multi_output_submodel(model, x),
        ),
        ("kerascope extract_activations (memory)", 2, lambda: extract_activations(model, x)),
    ]
    times = {tool: (common.best_time(fn, repeat), "–") for tool, repeat, fn in timed}
    with tempfile.TemporaryDirectory() as tmp:
        for compression in (None, "lzf", "gzip"):
            path = os.path.join(tmp, f"{compression}.h5")
            t = common.best_time(lambda p=path, c=compression: kerascope_to_hdf5(model, x, p, c), 2)
            tool = f"kerascope extract stage -> HDF5, {compression or 'no'} compression"
            times[tool] = (t, os.path.getsize(path) / 1e6)
    predict = times["bare model.predict (final output only)"][0]
    tutorial = times["tutorial: one sub-model per layer (memory)"][0]
    return [
        [name, tool, N / t, tutorial / t, predict / t, size] for tool, (t, size) in times.items()
    ]


def main() -> None:
    rows = bench_model("mnist_cnn") + bench_model("vgg_small")
    print(f"Machine: {common.machine()}; {N} inputs, every layer, batch {BATCH}\n")
    print(
        common.table(
            [
                "model",
                "tool",
                "inputs/s",
                "speed-up vs tutorial loop",
                "throughput / model.predict",
                "file MB",
            ],
            rows,
        )
    )
    memory = []
    for n in (1000, 10000, 30000):
        peak, size = peak_memory_mb(n)
        memory.append([n, n * 28 * 28 * 4 / 1e6, peak, size])
    print("\nmnist_cnn extraction, inputs memory-mapped from disk (a separate process each):\n")
    print(common.table(["inputs", "input file MB", "peak RSS MB", "HDF5 file MB"], memory))
    print(
        "\nPeak RSS includes the input pages read through the memory map (file-backed, "
        "reclaimable); the rest does not grow with the number of inputs."
    )


if __name__ == "__main__":
    main()

"""Representation similarity across experiments: CKA between runs' activation files.

The compare view (``python -m pipeline.compare``) fetches each experiment's
``outputs/activations.h5`` (through ``dvc.api``) and calls :func:`cross_run_cka`, which
streams every file batch by batch through the unbiased minibatch CKA of Nguyen, Raghu &
Kornblith (2021) (see :func:`pipeline.representations.cross_run_cka_matrices`), so memory
holds one batch of every run whatever the number of inputs.

CKA only means something on the same inputs: the runs must have extracted the same
inputs (same source and indices and, where stored, the same values), which the default
config does (the probe set of the same data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.artifacts.activations import open_activations
from pipeline.errors import KerascopeError, choices_hint
from pipeline.representations import cross_run_cka_matrices


def _same_inputs(first: str, reference, name: str, acts) -> None:
    """Refuse, in one line, runs whose activations are not of the same inputs."""
    if acts.n_inputs != reference.n_inputs:
        raise KerascopeError(
            f"runs '{first}' and '{name}' extracted different numbers of inputs "
            f"({reference.n_inputs} and {acts.n_inputs}); CKA compares the same inputs: set "
            "the same extract.source and extract.count"
        )
    if acts.source != reference.source or not np.array_equal(acts.index, reference.index):
        raise KerascopeError(
            f"runs '{first}' and '{name}' extracted different inputs (source "
            f"{reference.source} and {acts.source}); CKA compares the same inputs"
        )
    mine, theirs = acts.inputs(), reference.inputs()
    comparable = mine is not None and theirs is not None and mine.shape == theirs.shape
    if comparable and not np.allclose(mine, theirs, atol=1e-5):
        raise KerascopeError(
            f"runs '{first}' and '{name}' extracted inputs with different values (another "
            "data set or input space); CKA compares the same inputs"
        )


def _chosen_layers(name: str, available: list[str], wanted) -> list[str]:
    if wanted is None:
        return available
    missing = [layer for layer in wanted if layer not in available]
    if missing:
        raise KerascopeError(
            f"run '{name}' has no activations of layer '{missing[0]}'; "
            f"{choices_hint(missing[0], available)}"
        )
    return list(wanted)


def cross_run_cka(
    runs: Mapping[str, str | Path | BinaryIO],
    layers: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 256,
) -> dict:
    """Linear CKA between the layers of several runs, from their activation files.

    Kornblith et al. (2019) linear CKA with the unbiased minibatch estimator of Nguyen,
    Raghu & Kornblith (2021).

    Args:
        runs: Run name (an experiment, a commit) -> its ``outputs/activations.h5`` (a
            path or an open binary file). Two or more for a comparison; one gives its
            layer-by-layer matrix.
        layers: The layers compared, the same in every run; or one list per run (runs
            of different architectures); None: the layer paths every run stored, in
            the first run's order.
        batch_size: Inputs per batch (4 or more).

    Returns:
        ``{"runs": [names], "layers": {run: [layer paths]}, "n_inputs": N,
        "matrices": {(run_a, run_b): (len(layers[run_a]), len(layers[run_b])) array}}``
        with every ordered pair of runs (``(a, a)`` is run a's layer-by-layer matrix);
        NaN where a layer is constant over the inputs.

    Raises:
        KerascopeError: A missing or foreign file, a missing layer, or runs whose
            inputs differ, as one line.
    """
    names = list(runs)
    if not names:
        raise KerascopeError("cross-run CKA needs one or more runs")
    with contextlib.ExitStack() as stack:
        opened = {name: stack.enter_context(open_activations(runs[name])) for name in names}
        datasets = {name: {r.path: r.dataset for r in acts.layers} for name, acts in opened.items()}
        first = names[0]
        for name in names[1:]:
            _same_inputs(first, opened[first], name, opened[name])
        if isinstance(layers, Mapping):
            chosen = {n: _chosen_layers(n, list(datasets[n]), layers.get(n)) for n in names}
        elif layers is None:
            common = [p for p in datasets[first] if all(p in datasets[n] for n in names)]
            if not common:
                raise KerascopeError(
                    f"runs {', '.join(names)} share no layer path; pass one list of layers per run"
                )
            chosen = dict.fromkeys(names, common)
        else:
            chosen = {n: _chosen_layers(n, list(datasets[n]), list(layers)) for n in names}
        matrices = cross_run_cka_matrices(datasets, chosen, batch_size)
        return {
            "runs": names,
            "layers": {n: list(chosen[n]) for n in names},
            "n_inputs": opened[first].n_inputs,
            "matrices": matrices,
        }

"""Linear CKA checked against its formula, its invariances and a brute-force unbiased HSIC."""

from __future__ import annotations

from itertools import permutations

import h5py
import numpy as np
import pytest

from pipeline.errors import KerascopeError
from pipeline.representations import MinibatchCKA, cka_bounds, cka_matrix, linear_cka


def _hsic_biased(gx, gy):
    """Gretton et al. (2005): tr(K H L H) / (n - 1)^2."""
    n = len(gx)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(gx @ h @ gy @ h) / (n - 1) ** 2


def _cka_by_formula(x, y):
    """Kornblith et al. (2019) eq. 3 with linear kernels, written out on Gram matrices."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    gx, gy = x @ x.T, y @ y.T
    return _hsic_biased(gx, gy) / np.sqrt(_hsic_biased(gx, gx) * _hsic_biased(gy, gy))


def _hsic_u_statistic(gx, gy):
    """Unbiased HSIC as the U-statistic it is (Song et al. 2012), summed over index tuples.

    E[gx_ij gy_ij] + E[gx_ij] E[gy_qr] - 2 E[gx_ij gy_iq] over distinct indices.
    """
    n = len(gx)
    pairs = np.mean([gx[i, j] * gy[i, j] for i, j in permutations(range(n), 2)])
    quads = np.mean([gx[i, j] * gy[q, r] for i, j, q, r in permutations(range(n), 4)])
    triples = np.mean([gx[i, j] * gy[i, q] for i, j, q in permutations(range(n), 3)])
    return pairs + quads - 2 * triples


def _hsic_unbiased(gx, gy):
    """Song et al. (2012) eq. 5 in numpy float64, for data too large for the U-statistic."""
    n = len(gx)
    gx, gy = gx - np.diag(np.diag(gx)), gy - np.diag(np.diag(gy))
    ones = np.ones(n)
    total = (
        np.sum(gx * gy)
        + ones @ gx @ ones * (ones @ gy @ ones) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * ones @ gx @ gy @ ones
    )
    return total / (n * (n - 3))


def _cka_unbiased(x, y, hsic=_hsic_unbiased):
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    gx, gy = x @ x.T, y @ y.T
    return hsic(gx, gy) / np.sqrt(hsic(gx, gx) * hsic(gy, gy))


def _related(rng, n, p=12, q=9, noise=1.0):
    x = rng.standard_normal((n, p))
    y = x @ rng.standard_normal((p, q)) + noise * rng.standard_normal((n, q)) + 3.0
    return x, y


@pytest.mark.parametrize("n", [50, 6])  # more inputs than features, and fewer
def test_direct_cka_matches_the_formula(n):
    rng = np.random.default_rng(1)
    x, y = _related(rng, n)
    x = x.reshape(n, 3, 2, 2)  # (N, ...) is flattened per input
    assert linear_cka(x, y) == pytest.approx(_cka_by_formula(x, y), rel=1e-10)
    assert linear_cka(x, y) < 1


def test_direct_cka_invariances_and_identity():
    rng = np.random.default_rng(2)
    x, y = _related(rng, 40)
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    reference = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(reference, rel=1e-10)
    assert linear_cka(7.5 * x, y) == pytest.approx(reference, rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(x, -3 * x + 1) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(KerascopeError, match="same 2 or more inputs"):
        linear_cka(x, y[:-1])


def test_one_batch_equals_the_unbiased_u_statistic():
    rng = np.random.default_rng(3)
    x, y = _related(rng, 9)
    estimate = MinibatchCKA()
    estimate.update([x], [y.reshape(9, 3, 3)])
    expected = _cka_unbiased(x, y, hsic=_hsic_u_statistic)
    assert estimate.result()[0, 0] == pytest.approx(expected, rel=1e-6)


def test_one_batch_of_all_inputs_equals_the_full_data_unbiased_cka():
    rng = np.random.default_rng(4)
    layers = {"a": rng.random((60, 4, 4, 3)), "b": rng.random((60, 7)), "c": rng.random((60, 5))}
    layers["b"][:, :3] += layers["a"][:, 0, 0, :] * 4  # some shared structure
    names = list(layers)
    result = cka_matrix(layers, names, batch_size=60)
    expected = [[_cka_unbiased(layers[i], layers[j]) for j in names] for i in names]
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    np.testing.assert_allclose(np.diag(result), 1.0, rtol=1e-6)


def test_minibatch_estimate_approaches_the_unbiased_full_data_value():
    rng = np.random.default_rng(5)
    # Many features and small batches: the biased CKA of each batch is far off, the
    # unbiased minibatch estimate is not.
    x, y = _related(rng, 2400, p=150, q=120, noise=6.0)
    full = _cka_unbiased(x, y)
    estimate = cka_matrix({"x": x, "y": y}, ["x"], None, ["y"], batch_size=40)[0, 0]
    biased = np.mean([linear_cka(x[s:t], y[s:t]) for s, t in cka_bounds(len(x), 40)])
    assert abs(estimate - full) < 0.02, (estimate, full)
    assert abs(biased - full) > 5 * abs(estimate - full), (biased, estimate, full)


def test_streaming_from_hdf5_equals_in_memory(tmp_path):
    rng = np.random.default_rng(6)
    acts = {
        "conv": rng.random((103, 5, 5, 2)).astype(np.float32),
        "dense": rng.random((103, 8)).astype(np.float32),
    }
    other = {"logits": (acts["dense"] @ rng.random((8, 3))).astype(np.float32)}
    with h5py.File(tmp_path / "acts.h5", "w") as f:
        for name, value in {**acts, **other}.items():
            f.create_dataset(name, data=value, chunks=(16, *value.shape[1:]))
    memory = cka_matrix(acts, ["conv", "dense"], other, ["logits"], batch_size=25)
    with h5py.File(tmp_path / "acts.h5", "r") as f:
        streamed = cka_matrix(f, ["conv", "dense"], f, ["logits"], batch_size=25)
    assert memory.shape == (2, 1)
    np.testing.assert_array_equal(streamed, memory)


def test_matrix_equals_accumulating_batches_by_hand():
    rng = np.random.default_rng(7)
    a, b = rng.random((50, 6)), rng.random((50, 4))
    estimate = MinibatchCKA()
    for start, stop in cka_bounds(50, 16):  # 16, 16, 18: the last 2 join the third batch
        estimate.update([a[start:stop], b[start:stop]])
    np.testing.assert_allclose(
        cka_matrix({"a": a, "b": b}, ["a", "b"], batch_size=16), estimate.result()
    )
    assert estimate.inputs == 50
    assert cka_bounds(50, 16) == [(0, 16), (16, 32), (32, 50)]
    assert cka_bounds(10, 16) == [(0, 10)]


def test_errors_are_one_line():
    rng = np.random.default_rng(8)
    acts = {"a": rng.random((20, 3)), "b": rng.random((19, 3))}
    with pytest.raises(KerascopeError, match="same 4 or more inputs"):
        cka_matrix(acts, ["a", "b"])
    with pytest.raises(KerascopeError, match="no activations of layer 'c'"):
        cka_matrix(acts, ["c"])
    with pytest.raises(KerascopeError, match="at least 4"):
        cka_matrix(acts, ["a"], batch_size=3)
    with pytest.raises(KerascopeError, match="no batch"):
        MinibatchCKA().result()


def _three_runs(rng, n=64):
    """Run b is run a rotated and scaled (CKA 1 layer for layer); run c is unrelated."""
    a = {"conv": rng.random((n, 3, 3, 4)), "dense": rng.random((n, 6))}
    a["dense"][:, :4] += 3 * a["conv"][:, 0, 0, :]
    q36, _ = np.linalg.qr(rng.standard_normal((36, 36)))
    q6, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    b = {"conv": 2.5 * a["conv"].reshape(n, -1) @ q36 + 1.0, "dense": 0.1 * a["dense"] @ q6}
    c = {"conv": rng.random((n, 5)), "dense": rng.random((n, 7))}
    return {"a": a, "b": b, "c": c}


def test_cross_run_matrices_match_independent_computations():
    from pipeline.representations import cross_run_cka_matrices

    runs = _three_runs(np.random.default_rng(9))
    layers = ["conv", "dense"]
    result = cross_run_cka_matrices(runs, layers, batch_size=64)  # one batch: exact
    assert set(result) == {(p, q) for p in "abc" for q in "abc"}
    for p in "abc":
        for q in "abc":
            expected = [[_cka_unbiased(runs[p][i], runs[q][j]) for j in layers] for i in layers]
            np.testing.assert_allclose(result[p, q], expected, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(result[q, p], result[p, q].T)
    # Invariance: an orthogonal transform and isotropic scaling change nothing.
    np.testing.assert_allclose(np.diag(result["a", "b"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(result["a", "b"], result["a", "a"], rtol=1e-6)
    assert np.abs(result["a", "c"]).max() < 0.3
    # Several batches: the same as pairing the runs two at a time.
    streamed = cross_run_cka_matrices(runs, layers, batch_size=16)
    for p, q in (("a", "b"), ("a", "c"), ("b", "c")):
        pair = cka_matrix(runs[p], layers, runs[q], layers, batch_size=16)
        np.testing.assert_allclose(streamed[p, q], pair, rtol=1e-9)


def test_cross_run_from_an_iterator_of_minibatches_and_different_layers():
    from pipeline.representations import cross_run_cka_batches, cross_run_cka_matrices

    runs = _three_runs(np.random.default_rng(10))
    layers = {"a": ["conv", "dense"], "c": ["dense"]}
    bounds = cka_bounds(64, 20)  # 20, 20, 24

    def batches():
        for s, t in bounds:
            yield {run: [runs[run][layer][s:t] for layer in layers[run]] for run in layers}

    from_iterator = cross_run_cka_batches(batches(), ["a", "c"], layers)
    from_arrays = cross_run_cka_matrices({r: runs[r] for r in layers}, layers, batch_size=20)
    assert from_iterator["a", "c"].shape == (2, 1)
    for key in from_arrays:
        np.testing.assert_allclose(from_iterator[key], from_arrays[key], rtol=1e-12)
    with pytest.raises(KerascopeError, match="no activations of run 'c'"):
        cross_run_cka_batches([{"a": [runs["a"]["conv"][:8]] * 2}], ["a", "c"], layers)
    with pytest.raises(KerascopeError, match="same 4 or more inputs in every run"):
        cross_run_cka_matrices({"a": runs["a"], "x": {"conv": np.zeros((10, 2))}}, ["conv"])
    with pytest.raises(KerascopeError, match="run 'c' has no activations of layer 'conv'"):
        cross_run_cka_matrices({"a": runs["a"], "c": {"dense": runs["c"]["dense"]}}, ["conv"])


def test_minibatch_cka_invariances():
    rng = np.random.default_rng(11)
    x, y = _related(rng, 200, p=12, q=9)
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    source = {"x": x, "y": y, "yq": 4.0 * y @ q - 2.0, "xs": 0.01 * x}
    reference = cka_matrix(source, ["x"], None, ["y"], batch_size=32)[0, 0]
    moved = cka_matrix(source, ["x", "xs"], None, ["y", "yq"], batch_size=32)
    np.testing.assert_allclose(moved, reference, rtol=1e-6)


def test_cross_run_cka_reads_activation_files(tmp_path):
    import keras
    from conftest import write_tiny_project

    from pipeline.representation_compare import cross_run_cka
    from pipeline.stages.extract import _main as extract

    files = {}
    for name, seed in (("base", 0), ("other", 1)):
        keras.utils.set_random_seed(seed)
        params, _, _ = write_tiny_project(tmp_path / name, n=48)
        extract(params)
        files[name] = params["paths"]["activations"]
    found = cross_run_cka(files, ["conv", "out"], batch_size=48)
    assert found["runs"] == ["base", "other"] and found["n_inputs"] == 48
    assert found["layers"] == {"base": ["conv", "out"], "other": ["conv", "out"]}
    with h5py.File(files["base"]) as a, h5py.File(files["other"]) as b:
        conv_a, conv_b = a["activations/conv"][()], b["activations/conv"][()]
        expected = _cka_unbiased(conv_a, conv_b)
    assert found["matrices"]["base", "other"][0, 0] == pytest.approx(expected, rel=1e-5)
    every = cross_run_cka(files)  # the layers both stored
    assert every["layers"]["base"] == ["conv", "flat", "out"]
    # Activations of other inputs are refused.
    params, _, _ = write_tiny_project(tmp_path / "fewer", n=40)
    extract(params)
    with pytest.raises(KerascopeError, match="different numbers of inputs"):
        cross_run_cka({**files, "fewer": params["paths"]["activations"]})
    with pytest.raises(KerascopeError, match="run 'base' has no activations of layer 'dense'"):
        cross_run_cka(files, ["dense"])


def test_readers_are_read_one_layer_at_a_time_and_give_the_same_matrix():
    """Callables stand for layers too large to hold together: each is read only when its
    Gram matrix is due, after the previous layer's array is gone."""
    import weakref

    rng = np.random.default_rng(8)
    layers = [rng.random((30, 6, 6, 4)).astype(np.float32) for _ in range(3)]
    layers[1] += layers[0] * 2  # some shared structure
    alive: list[weakref.ref] = []

    def reader(i):
        def read():
            assert all(ref() is None for ref in alive), "an earlier layer is still held"
            array = layers[i].copy()  # a fresh array, as a read from a file would give
            alive.append(weakref.ref(array))
            return array

        return read

    readers = [reader(i) for i in range(3)]
    streamed = MinibatchCKA()
    streamed.update(readers)
    assert len(alive) == 3  # each reader read once, though it is a row and a column
    expected = [[_cka_unbiased(a, b) for b in layers] for a in layers]
    np.testing.assert_allclose(streamed.result(), expected, rtol=1e-5)

"""Truncation of eigenvalues: free of units, machine-independent, one rule for every spectrum.

The default (``rtol=None``) drops eigenvalues at or below
``1e4 * d * (eps_64 * lambda_max + eps_dtype**2 * mean_square)`` (``sklearn_lib._linalg``,
``docs/math.md``). These tests pin what that promises: the kept dimensions, edges (up to the
scale) and edges needed do not change with the units of the inputs, the batch size, the row
order or the number of threads; and each defect of the former ``rtol=1e-13, atol=1e-15`` rule.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from torch import nn

from conftest import gaussian_data, model_labels, random_mlp
from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    LocalInteractionBasis,
    PCAWhitener,
)
from sklearn_lib._linalg import ROUNDOFF_SAFETY, n_significant, truncation_threshold
from sklearn_lib.adapters import MLPAdapter

EPS64 = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)


# -- the rule itself -----------------------------------------------------------------------------
def test_default_threshold_formula():
    values = torch.tensor([4.0, 1.0, 1e-9, 0.0], dtype=torch.float64)
    expected = ROUNDOFF_SAFETY * 4 * (EPS64 * 4.0 + 0.0)
    assert truncation_threshold(values, None, 0.0) == pytest.approx(expected, rel=1e-15)
    # The forward dtype enters through the mean square of the vectors.
    expected32 = ROUNDOFF_SAFETY * 4 * (EPS64 * 4.0 + EPS32**2 * 10.0)
    assert truncation_threshold(values, None, 0.0, mean_square=10.0,
                                dtype=torch.float32) == pytest.approx(expected32, rel=1e-15)
    # An explicit rtol is the plain relative cut, with atol as a floor.
    assert truncation_threshold(values, 1e-3, 0.0) == pytest.approx(4e-3)
    assert truncation_threshold(values, 1e-3, 0.5) == 0.5
    assert truncation_threshold(values, 0.0, 1e-15) == 1e-15
    assert n_significant(values, 0.0, 0.0) == 3  # rtol=0: every nonzero direction
    # Nothing survives an all-zero spectrum (no division by a zero largest eigenvalue).
    assert n_significant(torch.zeros(3, dtype=torch.float64), None, 0.0) == 0
    assert n_significant(torch.zeros(0, dtype=torch.float64), None, 0.0) == 0


@settings(max_examples=25)
@given(exponent=st.integers(-150, 150), d=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_threshold_is_homogeneous_in_the_units(exponent, d, seed):
    rng = np.random.default_rng(seed)
    values = torch.as_tensor(np.sort(10.0 ** rng.uniform(-20, 0, size=d))[::-1].copy())
    scale = 2.0**exponent  # exact in binary, so only the rule can differ
    base = truncation_threshold(values, None, 0.0, mean_square=3.0)
    scaled = truncation_threshold(values * scale, None, 0.0, mean_square=3.0 * scale)
    assert scaled == pytest.approx(base * scale, rel=1e-14)
    assert n_significant(values * scale, None, 0.0, mean_square=3.0 * scale) == n_significant(
        values, None, 0.0, mean_square=3.0)


# -- scale: bias-free ReLU MLPs are positively homogeneous ---------------------------------------
@pytest.fixture(scope="module")
def bias_free():
    model = random_mlp([5, 8, 7, 4], nn.ReLU, seed=3, bias=False)
    X = gaussian_data(240, 5, seed=3, scale=np.geomspace(3.0, 0.03, 5))
    y = model_labels(model, X)
    adapter = MLPAdapter(model)
    graph = LocalInteractionBasis(adapter).fit_transform(X)
    graph = IGEdgeScorer().fit_transform(graph)
    search = EdgeAblationSearch(metric="accuracy", tolerance=0.0).fit(graph, y)
    pca = PCAWhitener(adapter).fit(X)
    return adapter, X, y, graph, search.n_edges_needed_, pca.n_components_


@settings(max_examples=8)
@given(exponent=st.integers(-8, 8))
def test_bias_free_mlp_is_unchanged_by_the_input_scale(bias_free, exponent):
    adapter, X, y, graph, needed, pca_dims = bias_free
    s = 10.0**exponent
    lib = LocalInteractionBasis(adapter).fit(X * s)
    assert lib.n_components_ == {b.name: b.n_components for b in graph.bases}
    assert PCAWhitener(adapter).fit(X * s).n_components_ == pca_dims
    # Eigenvalues scale with s^2 (LIB's Lambda and the final layer's variances alike).
    for b, ref in zip(lib.bases_, graph.bases):
        np.testing.assert_allclose(b.eigenvalues, ref.eigenvalues * s**2, rtol=1e-7)
    scaled = IGEdgeScorer().fit_transform(lib.transform(X * s))
    for E, E_ref in zip(scaled.edges, graph.edges):
        # Edges into basis features scale with s; the constant output feature stays 1.
        np.testing.assert_allclose(E[1:] / s, E_ref[1:], rtol=1e-6, atol=1e-9 * E_ref.max())
        np.testing.assert_allclose(E[0], E_ref[0], atol=1e-12)
    search = EdgeAblationSearch(metric="accuracy", tolerance=0.0).fit(scaled, y)
    assert search.n_edges_needed_ == needed


@pytest.mark.parametrize("exponent", [-8, -7, -6, -3])
def test_small_inputs_keep_every_layer(bias_free, exponent):
    # The former absolute floor atol=1e-15 (in squared input units) collapsed the layers of a
    # bias-free MLP for inputs times 1e-6 and called them constant for 1e-7.
    adapter, X, y, graph, needed, pca_dims = bias_free
    for cls in (LocalInteractionBasis, GlobalInteractionBasis):
        dims = cls(adapter).fit(X * 10.0**exponent).n_components_
        assert dims == cls(adapter).fit(X).n_components_
        assert min(dims.values()) >= 4


# -- plain arrays --------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_digits_keep_what_pca_keeps_at_any_scale(scale):
    from sklearn.datasets import load_digits

    X = load_digits().data[:600] * scale
    w = PCAWhitener().fit(X)
    rank = np.linalg.matrix_rank(X - X.mean(0))  # SVD rank: free of units
    assert w.n_components_ == {"X": rank}
    pca = PCA(n_components=rank, svd_solver="full").fit(X)
    n = X.shape[0]
    np.testing.assert_allclose(w.explained_variance_ * n / (n - 1), pca.explained_variance_,
                               rtol=1e-8)
    signs = np.sign(np.sum(w.components_ * pca.components_, axis=1))
    np.testing.assert_allclose(w.components_, signs[:, None] * pca.components_, atol=1e-6)


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
def test_float32_arrays_drop_their_round_off_directions(offset):
    # Rank 3 in 12 dimensions, far from the origin: stored in float32, the null directions hold
    # the rounding of the offset (eps32 * offset), far above the former rtol=1e-13.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 12)) + offset
    assert PCAWhitener().fit(X.astype(np.float32)).n_components_ == {"X": 3}
    assert PCAWhitener().fit(X).n_components_ == {"X": 3}


@pytest.mark.parametrize("value", [0.1, 1.0, 1e10, 1e-10])
def test_constant_data_raise_at_any_magnitude(value):
    X = np.full((50, 3), value) * [1.0, 0.3, 7.0]
    with pytest.raises(ValueError, match="the data are constant up to round-off"):
        PCAWhitener().fit(X)


def test_atol_stays_an_absolute_floor():
    X = gaussian_data(300, 4, seed=0, scale=[10.0, 1.0, 0.1, 0.01])
    assert PCAWhitener().fit(X).n_components_ == {"X": 4}
    assert PCAWhitener(atol=1e-3).fit(X).n_components_ == {"X": 3}  # variance 1e-4 dropped
    assert PCAWhitener(rtol=1e-5).fit(X).n_components_ == {"X": 3}  # 1e-4 / 100 <= 1e-5


def test_deep_linear_chain_drops_a_round_off_eigenvalue():
    # The product of these random 4x4 weights has an eigenvalue at 2.9e-12 of the largest
    # through the chain. Known only to ~1e-16 absolute, it differs between layers by 3e-5
    # relative; the former rtol=1e-13 kept it (and the diagonal-edge property then failed).
    model = random_mlp([4, 4, 4, 4], nn.Identity, seed=99)
    X = gaussian_data(100, 4, seed=99, scale=np.linspace(2.0, 0.5, 4))
    lib = LocalInteractionBasis(MLPAdapter(model)).fit(X)
    assert lib.n_components_ == {"input": 3, "1": 3, "3": 3, "4": 3}
    old = LocalInteractionBasis(MLPAdapter(model), rtol=1e-13, atol=1e-15).fit(X)
    assert old.n_components_["4"] == 4
    ev = old.bases_[-1].eigenvalues
    assert ev[-1] / ev[0] < 1e-11


def test_explicit_reference_truncation_is_the_plain_cut():
    model = random_mlp([4, 6, 3], nn.ReLU, seed=2)
    X = gaussian_data(200, 4, seed=2)
    lib = LocalInteractionBasis(MLPAdapter(model), rtol=0.0, atol=1e-15).fit(X)
    for b in lib.bases_:
        assert b.eigenvalues.min() > 1e-15


# -- batch size, row order, threads --------------------------------------------------------------
def test_property_tests_are_derandomised():
    # conftest.py: the same examples on every run (and machine), so failures reproduce; CI
    # (CI set in the environment) loads its own profile without an example database.
    import os

    assert settings.get_profile("default").derandomize
    assert settings.get_profile("ci").derandomize
    assert settings.get_profile("ci").database is None
    assert settings.default.derandomize
    assert settings.default.database is (None if os.environ.get("CI") else
                                         settings.get_profile("default").database)



def _kept(est, X, **params):
    return est.set_params(**params).fit(X).n_components_


@contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn_lib.tasks import load_digits_split, train_mlp_classifier

    X_train, _, y_train, _ = load_digits_split()
    model = train_mlp_classifier(X_train, y_train, hidden=(32, 32), epochs=100)
    return MLPAdapter(model), X_train[:300]


@pytest.mark.parametrize("cls", [LocalInteractionBasis, PCAWhitener])
def test_digits_mlp_kept_dimensions_do_not_depend_on_batching_order_or_threads(digits_mlp,
                                                                              cls):
    adapter, X = digits_mlp
    ref = _kept(cls(adapter), X)
    assert ref["input"] < 64  # the always-blank pixels are dropped
    for batch_size in (1, 7, 256, X.shape[0]):
        assert _kept(cls(adapter), X, batch_size=batch_size) == ref, batch_size
    order = np.random.default_rng(0).permutation(X.shape[0])
    assert _kept(cls(adapter), X[order]) == ref
    with _threads(2):
        assert _kept(cls(adapter), X) == ref


# -- the shipped modular-addition checkpoints (slow: each LIB fit takes seconds) ------------------
def _modadd(seed):
    import json
    import warnings

    from sklearn_lib.adapters._transformer_lens import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter
    from sklearn_lib.tasks._modular_addition import (
        load_modular_addition,
        shipped_modadd_checkpoint,
    )

    checkpoint, config = shipped_modadd_checkpoint(seed)
    cfg = json.loads(open(config).read())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        adapter = modadd_adapter(load_hooked_transformer(checkpoint, cfg))
    data = load_modular_addition(113, cfg["dataset"]["frac_train"], cfg["dataset"]["seed"])
    return adapter, data.X_train


@pytest.mark.slow
@pytest.mark.parametrize("cls", [LocalInteractionBasis, PCAWhitener])
@pytest.mark.parametrize("seed", [0, 2])
def test_modadd_kept_dimensions_do_not_depend_on_batching_order_or_threads(seed, cls):
    adapter, X = _modadd(seed)
    est = cls(adapter, rotate_final=False)
    ref = _kept(est, X)
    # Round-off directions are gone: every kept eigenvalue is far above 1e-12 of the largest
    # (the former default kept 8-14 per layer of seed 0 below that).
    for b in est.bases_:
        assert b.eigenvalues.min() > 1e-12 * b.eigenvalues.max(), b.name
    for batch_size in (1, 7, 256, X.shape[0]):
        assert _kept(cls(adapter, rotate_final=False), X, batch_size=batch_size) == ref
    order = np.random.default_rng(seed).permutation(X.shape[0])
    assert _kept(cls(adapter, rotate_final=False), X[order]) == ref
    with _threads(2):
        assert _kept(cls(adapter, rotate_final=False), X) == ref

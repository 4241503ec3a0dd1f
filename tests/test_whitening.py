"""PCAWhitener on plain arrays: sklearn's estimator checks and the PCA step of DESIGN.md 5."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_lib import PCAWhitener


@parametrize_with_checks([PCAWhitener()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _random_data(seed: int, n: int, d: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Random mixing of anisotropic sources with an offset far from the origin.
    sources = rng.normal(size=(n, d)) * np.exp(rng.uniform(-spread, spread, size=d))
    return sources @ rng.normal(size=(d, d)) + rng.normal(scale=10.0, size=d)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(20, 200),
    d=st.integers(1, 8),
    spread=st.floats(0.0, 2.0),
)
def test_whitened_output_has_identity_covariance(seed, n, d, spread):
    X = _random_data(seed, n, d, spread)
    w = PCAWhitener().fit(X)
    Z = w.transform(X)
    assert Z.shape == (n, w.n_components_["X"])
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-8)
    cov = (Z - Z.mean(0)).T @ (Z - Z.mean(0)) / n  # normalised by n, as in DESIGN.md 5
    np.testing.assert_allclose(cov, np.eye(w.n_components_["X"]), atol=1e-8)
    # Explained variances are sorted and match the covariance spectrum of the data.
    assert np.all(np.diff(w.explained_variance_) <= 0)
    spectrum = np.sort(np.linalg.eigvalsh(np.cov(X.T, bias=True).reshape(d, d)))[::-1]
    np.testing.assert_allclose(w.explained_variance_, spectrum[: w.n_components_["X"]], rtol=1e-8,
                               atol=1e-12 * spectrum[0])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(30, 150), d=st.integers(2, 7))
def test_matches_sklearn_pca_up_to_sign(seed, n, d):
    X = _random_data(seed, n, d, 1.0)
    w = PCAWhitener().fit(X)
    # sklearn's PCA normalises the variance by n - 1; PCAWhitener by n (DESIGN.md 5).
    pca = PCA(whiten=True, svd_solver="full").fit(X)
    assert w.n_components_["X"] == d
    np.testing.assert_allclose(w.mean_, pca.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(w.explained_variance_ * n / (n - 1), pca.explained_variance_,
                               rtol=1e-8)
    signs = np.sign(np.sum(w.components_ * pca.components_, axis=1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(w.components_, signs[:, None] * pca.components_, atol=1e-7)
    Z_pca = pca.transform(X) * np.sqrt(n / (n - 1))
    np.testing.assert_allclose(w.transform(X), Z_pca * signs, atol=1e-6)


def test_deterministic_component_signs():
    # The entry of largest magnitude of each principal axis is positive (svd_flip convention).
    X = _random_data(3, 100, 5, 1.0)
    comps = PCAWhitener().fit(X).components_
    assert np.all(comps[np.arange(5), np.abs(comps).argmax(1)] > 0)
    np.testing.assert_array_equal(PCAWhitener().fit(X).components_, comps)


@pytest.mark.parametrize("noise", [0.0, 1e-12])
@pytest.mark.parametrize("k", [1, 3])
def test_subspace_gives_exactly_k_components(k, noise):
    rng = np.random.default_rng(k)
    d, n = 6, 300
    X = rng.normal(size=(n, k)) @ rng.normal(size=(k, d)) + 5.0
    X = X + noise * rng.normal(size=X.shape)
    w = PCAWhitener().fit(X)
    assert w.n_components_["X"] == k
    assert w.components_.shape == (k, d)
    Z = w.transform(X)
    np.testing.assert_allclose(Z.T @ Z / n, np.eye(k), atol=1e-6)
    # The kept axes span the subspace: projecting back recovers the data.
    np.testing.assert_allclose(w.inverse_transform(Z), X, atol=1e-8)


@pytest.mark.parametrize("batches", [[100, 50, 150], [2, 3, 295], [299, 1]])
def test_partial_fit_equals_fit(batches):
    X = _random_data(7, sum(batches), 5, 1.5)
    full = PCAWhitener().fit(X)
    inc = PCAWhitener()
    start = 0
    for b in batches:
        inc.partial_fit(X[start : start + b])
        start += b
    assert inc.n_samples_seen_ == X.shape[0]
    np.testing.assert_allclose(inc.mean_, full.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(inc.explained_variance_, full.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(inc.components_, full.components_, atol=1e-10)
    np.testing.assert_allclose(inc.transform(X), full.transform(X), atol=1e-8)


def test_second_fit_replaces_partial_fit_state():
    X1, X2 = _random_data(1, 80, 3, 1.0), _random_data(2, 90, 3, 1.0)
    w = PCAWhitener().partial_fit(X1).fit(X2)
    np.testing.assert_allclose(w.mean_, X2.mean(0), atol=1e-12)
    assert w.n_samples_seen_ == 90


def test_three_dimensional_input():
    rng = np.random.default_rng(0)
    X3 = rng.normal(size=(40, 5, 4)) * [2.0, 1.0, 0.5, 0.1] + 1.0
    w = PCAWhitener().fit(X3)
    flat = X3.reshape(-1, 4)
    ref = PCAWhitener().fit(flat)
    assert w.n_features_in_ == 4
    np.testing.assert_allclose(w.components_, ref.components_, atol=1e-12)
    Z3 = w.transform(X3)
    assert Z3.shape == (40, 5, 4)
    np.testing.assert_allclose(Z3.reshape(-1, 4), ref.transform(flat), atol=1e-12)
    # Identity covariance over samples and positions together.
    Zf = Z3.reshape(-1, 4)
    np.testing.assert_allclose(Zf.T @ Zf / Zf.shape[0], np.eye(4), atol=1e-8)
    back = w.inverse_transform(Z3)
    assert back.shape == X3.shape
    np.testing.assert_allclose(back, X3, atol=1e-10)


@pytest.mark.parametrize("whiten", [True, False])
def test_inverse_transform_round_trip_on_kept_subspace(whiten):
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(2, 5))
    X = rng.normal(size=(120, 2)) @ basis + 3.0
    w = PCAWhitener(whiten=whiten).fit(X)
    assert w.n_components_["X"] == 2
    np.testing.assert_allclose(w.inverse_transform(w.transform(X)), X, atol=1e-10)
    # Off the subspace, inverse_transform(transform(.)) is the orthogonal projection onto it.
    Y = rng.normal(size=(10, 5))
    P = w.components_.T @ w.components_
    expected = (Y - w.mean_) @ P + w.mean_
    np.testing.assert_allclose(w.inverse_transform(w.transform(Y)), expected, atol=1e-10)
    # And transform(inverse_transform(.)) is the identity on features.
    Z = rng.normal(size=(10, 2))
    np.testing.assert_allclose(w.transform(w.inverse_transform(Z)), Z, atol=1e-10)


def test_whiten_false_is_a_rotation():
    X = _random_data(11, 150, 4, 1.0)
    rot = PCAWhitener(whiten=False).fit(X)
    Z = rot.transform(X)
    # Distances are preserved (a rotation of the centred data, no rescaling) ...
    np.testing.assert_allclose(
        np.linalg.norm(Z[:, None] - Z[None], axis=-1),
        np.linalg.norm(X[:, None] - X[None], axis=-1), atol=1e-9,
    )
    # ... the axes are orthonormal and the feature variances are the eigenvalues.
    np.testing.assert_allclose(rot.components_ @ rot.components_.T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(Z.var(0), rot.explained_variance_, rtol=1e-9)
    white = PCAWhitener(whiten=True).fit(X).transform(X)
    np.testing.assert_allclose(Z / np.sqrt(rot.explained_variance_), white, atol=1e-9)


def test_whiten_auto_whitens_plain_arrays():
    X = _random_data(12, 100, 3, 1.0)
    np.testing.assert_allclose(PCAWhitener().fit(X).transform(X),
                               PCAWhitener(whiten=True).fit(X).transform(X))


def test_float32_is_preserved_and_accumulated_in_float64():
    X = (_random_data(4, 200, 3, 1.0) + 1e3).astype(np.float32)
    w = PCAWhitener().fit(X)
    Z = w.transform(X)
    assert Z.dtype == np.float32
    assert w.components_.dtype == np.float64
    ref = PCAWhitener().fit(X.astype(np.float64))
    np.testing.assert_allclose(w.explained_variance_, ref.explained_variance_, rtol=1e-12)


def test_unfitted_transform_raises():
    with pytest.raises(NotFittedError, match="PCAWhitener instance is not fitted yet"):
        PCAWhitener().transform(np.ones((3, 2)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PCAWhitener().inverse_transform(np.ones((3, 2)))


@pytest.mark.parametrize("whiten", [True, False])
def test_fit_transform_equals_fit_then_transform(whiten):
    X = _random_data(13, 90, 4, 1.0)
    a = PCAWhitener(whiten=whiten).fit_transform(X)
    b = PCAWhitener(whiten=whiten).fit(X).transform(X)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    X3 = X.reshape(30, 3, 4)
    np.testing.assert_allclose(PCAWhitener(whiten=whiten).fit_transform(X3),
                               PCAWhitener(whiten=whiten).fit(X3).transform(X3), atol=1e-12)


def test_moment_accumulators_merge_like_one_pass():
    """Shards accumulated apart and merged (data-parallel) equal one pass over all rows."""
    import torch

    from sklearn_lib._linalg import MomentAccumulator

    rows = torch.randn(300, 5, dtype=torch.float64) * 3 + 100.0  # a large mean
    whole, a, b = MomentAccumulator(), MomentAccumulator(), MomentAccumulator()
    whole.update(rows)
    a.update(rows[:70])
    b.update(rows[70:200])
    b.update(rows[200:])
    a.merge(b)
    assert a.count == 300
    torch.testing.assert_close(a.mean, rows.mean(0))
    torch.testing.assert_close(a.covariance(), torch.cov(rows.T, correction=0))
    torch.testing.assert_close(a.covariance(), whole.covariance())


# -- input classes --------------------------------------------------------------------------------
def test_sparse_input_is_rejected_with_the_fix():
    sp = pytest.importorskip("scipy.sparse")
    X = _random_data(0, 30, 4, 1.0)
    with pytest.raises(TypeError, match=r"PCAWhitener does not accept sparse matrices \(got "
                                        r"csr_matrix\); .*X\.toarray\(\)"):
        PCAWhitener().fit(sp.csr_matrix(X))
    w = PCAWhitener().fit(X)
    with pytest.raises(TypeError, match=r"does not accept sparse matrices.*toarray"):
        w.transform(sp.csr_array(X))


def test_complex_input_is_rejected():
    X = _random_data(0, 30, 4, 1.0)
    with pytest.raises(ValueError, match=r"Complex data not supported by PCAWhitener \(got dtype "
                                         r"complex128\); pass the real part"):
        PCAWhitener().fit(X + 1j)
    with pytest.raises(ValueError, match="Complex data not supported by PCAWhitener"):
        PCAWhitener().fit(X).transform(X.astype(np.complex64))


def test_negative_strides_and_read_only_arrays_are_copied():
    X = _random_data(4, 60, 5, 1.0)
    flipped = X[::-1, ::-1]
    assert any(s < 0 for s in flipped.strides)
    frozen = X.copy()
    frozen.flags.writeable = False
    ref = PCAWhitener().fit(np.ascontiguousarray(flipped))
    got = PCAWhitener().fit(flipped)
    np.testing.assert_array_equal(got.components_, ref.components_)
    np.testing.assert_array_equal(got.transform(flipped), ref.transform(flipped))
    w = PCAWhitener().fit(frozen)
    np.testing.assert_array_equal(w.transform(frozen), PCAWhitener().fit(X).transform(X))
    assert not frozen.flags.writeable  # the caller's array is untouched


def test_feature_names_and_pandas_output():
    X = _random_data(1, 50, 4, 1.0)
    w = PCAWhitener().fit(X)
    names = w.get_feature_names_out()
    assert names.tolist() == [f"pcawhitener{i}" for i in range(w.n_components_["X"])]
    pd = pytest.importorskip("pandas")
    out = PCAWhitener().set_output(transform="pandas").fit(X).transform(X)
    assert isinstance(out, pd.DataFrame)
    assert out.columns.tolist() == names.tolist()
    np.testing.assert_allclose(out.to_numpy(), w.transform(X))
    X3 = X.reshape(10, 5, 4)
    with pytest.raises(ValueError, match=r"set_output\(transform='pandas'\) needs 2-D output, "
                                         r"but X has positions \(shape \(10, 5, 4\)\)"):
        PCAWhitener().set_output(transform="pandas").fit(X3).transform(X3)
    frame = pd.DataFrame(X, columns=list("abcd"))
    w2 = PCAWhitener().fit(frame)
    assert w2.feature_names_in_.tolist() == list("abcd")
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        w2.get_feature_names_out(["a", "b", "c", "x"])


def test_n_components_is_a_dict_in_both_modes():
    import torch
    from torch import nn

    from sklearn_lib.adapters import MLPAdapter

    X = _random_data(2, 60, 4, 1.0)
    assert PCAWhitener().fit(X).n_components_ == {"X": 4}
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    torch.manual_seed(0)
    w = PCAWhitener(MLPAdapter(mlp)).fit(X)
    assert isinstance(w.n_components_, dict) and set(w.n_components_) == {"input", "1", "2"}
    assert w.n_components_ == {b.name: b.n_components for b in w.bases_}
    with pytest.raises(AttributeError, match="get_feature_names_out is defined for plain arrays"):
        w.get_feature_names_out()


@pytest.mark.parametrize("device, match", [
    ("gpu0", r"The 'device' parameter of PCAWhitener must be a torch.device or a device string "
             r"such as 'cpu', 'cuda' or 'cuda:0'. Got 'gpu0' instead."),
    (3.5, r"The 'device' parameter of PCAWhitener must be .* Got 3.5 instead."),
    (None, r"The 'device' parameter of PCAWhitener must be .* Got None instead."),
])
def test_device_is_validated_at_fit(device, match):
    X = _random_data(0, 30, 3, 1.0)
    w = PCAWhitener(device=device)  # __init__ stores only
    with pytest.raises(ValueError, match=match):
        w.fit(X)
    with pytest.raises(ValueError, match=match):
        PCAWhitener(device=device).partial_fit(X)

"""IGEdgeScorer and the quadrature rules: completeness, explicit per-sample edges, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import gaussian_data, random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sklearn_lib import IGEdgeScorer, LocalInteractionBasis, PCAWhitener, quadrature
from sklearn_lib._segments import CompositeSegment
from sklearn_lib.adapters import MLPAdapter

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))


# -- quadrature --------------------------------------------------------------------------------
def _integrate(rule, n, degree):
    alphas, weights = quadrature(rule, n)
    return float(np.sum(weights * alphas**degree)), 1.0 / (degree + 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_gauss_legendre_exact_up_to_degree_2n_minus_1(n):
    alphas, weights = quadrature("gauss-legendre", n)
    assert alphas.shape == weights.shape == (n,)
    assert np.all((alphas > 0) & (alphas < 1))
    for degree in range(2 * n):
        got, exact = _integrate("gauss-legendre", n, degree)
        assert got == pytest.approx(exact, rel=1e-12, abs=1e-14)
    got, exact = _integrate("gauss-legendre", n, 2 * n)
    assert abs(got - exact) > 1e-12


@pytest.mark.parametrize("n", [2, 3, 10])
def test_trapezoidal_exact_for_degree_1_only(n):
    alphas, weights = quadrature("trapezoidal", n)
    np.testing.assert_allclose(alphas, np.linspace(0, 1, n))
    for degree in (0, 1):
        got, exact = _integrate("trapezoidal", n, degree)
        assert got == pytest.approx(exact, rel=1e-13)
    got, exact = _integrate("trapezoidal", n, 2)
    # The error of the composite rule on alpha^2 is h^2 / 6.
    assert got - exact == pytest.approx(1.0 / (6 * (n - 1) ** 2), rel=1e-10)


def test_endpoint_exact_for_constants_only():
    alphas, weights = quadrature("endpoint", 7)  # n_steps is ignored
    np.testing.assert_array_equal(alphas, [1.0])
    np.testing.assert_array_equal(weights, [1.0])
    got, exact = _integrate("endpoint", 1, 0)
    assert got == exact
    got, exact = _integrate("endpoint", 1, 1)
    assert got != pytest.approx(exact)


# -- an independent IG ---------------------------------------------------------------------------
def _plain_segment(modules, z, C_in_pinv, C_out):
    """``F(z) = C_out [c; seg(h)]`` with ``[c; h] = C_pinv z``, from the plain modules."""
    f = C_in_pinv @ z
    c, h = f[:1], f[1:]
    for m in modules:
        if isinstance(m, nn.Linear):
            h = m.weight @ h + (0 if m.bias is None else c * m.bias)
        else:
            h = m(h)
    return C_out @ torch.cat([c, h])


def explicit_attributions(model, positions, graph, p, alphas, weights):
    """Per sample, ``A[i, j] = z_j sum_k w_k dF_i/dz_j (alpha_k z)``; shape (N, n_out, n_in)."""
    modules = list(model)[positions[p]:positions[p + 1]]
    C_in = torch.as_tensor(graph.bases[p].C)
    C_in_pinv = torch.as_tensor(graph.bases[p].C_pinv)
    C_out = torch.as_tensor(graph.bases[p + 1].C)
    X = torch.as_tensor(np.asarray(graph.X), dtype=torch.float64)
    mods = list(model)
    out = []
    for x in X:
        h = x
        with torch.no_grad():
            for m in mods[: positions[p]]:
                h = m(h)
        z = C_in @ torch.cat([torch.ones(1, dtype=torch.float64), h])
        jbar = sum(
            w * torch.autograd.functional.jacobian(
                lambda v: _plain_segment(modules, v, C_in_pinv, C_out), a * z)
            for a, w in zip(alphas, weights)
        )
        out.append((jbar * z[None, :]).detach().numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def relu_graph():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X = gaussian_data(60, 4, seed=6)
    graph = LocalInteractionBasis(MLPAdapter(model)).fit_transform(X)
    return model, [0, 2, 4, 5], graph


@pytest.fixture(scope="module", params=[nn.GELU, nn.Tanh], ids=["gelu", "tanh"])
def smooth_graph(request):
    model = random_mlp([4, 6, 5, 3], request.param, seed=6)
    X = gaussian_data(60, 4, seed=6)
    graph = LocalInteractionBasis(MLPAdapter(model)).fit_transform(X)
    return model, [0, 2, 4, 5], graph


def _library_attributions(graph, p, integration, n_steps, **kw):
    scorer = IGEdgeScorer(integration=integration, n_steps=n_steps, **kw)
    alphas, weights = quadrature(integration, n_steps)
    seg = graph.adapter.segment(graph.layers[p], **F64)
    C_in, C_in_pinv = (torch.as_tensor(a) for a in (graph.bases[p].C, graph.bases[p].C_pinv))
    C_out = torch.as_tensor(graph.bases[p + 1].C)

    F = CompositeSegment(seg, C_in_pinv, C_out)
    f = graph.adapter.activations(graph.X, [graph.layers[p]], **F64)[graph.layers[p]]
    z = f @ C_in.T
    A = scorer._attributions(F, z, alphas, weights, (0, 0, 0),
                             torch.float64, torch.device("cpu"))
    return A, F(z)


@pytest.mark.parametrize("integration,n_steps", [("endpoint", 1), ("gauss-legendre", 3)])
def test_completeness_for_homogeneous_relu_net(relu_graph, integration, n_steps):
    # With folded biases a ReLU segment is positively homogeneous: the gradient is constant
    # along the ray (alpha > 0), so every rule with interior nodes and weights summing to 1 is
    # exact. (The trapezoidal rule also samples alpha = 0, where ReLU's gradient is 0.)
    model, positions, graph = relu_graph
    for p in range(len(graph.layers) - 1):
        A, Fz = _library_attributions(graph, p, integration, n_steps)
        assert A.shape == (graph.X.shape[0], 1, graph.bases[p + 1].n_features,
                           graph.bases[p].n_features)
        np.testing.assert_allclose(A.sum(-1).numpy(), Fz.numpy(), rtol=1e-10, atol=1e-11)
        # ... and the attributed value is the next layer's LIB feature f_hat^{l+1}.
        np.testing.assert_allclose(A.sum(-1).numpy(), graph.features(graph.layers[p + 1]),
                                   rtol=1e-9, atol=1e-10)


def test_completeness_for_smooth_net_with_gauss_legendre(smooth_graph):
    model, positions, graph = smooth_graph
    for p in range(len(graph.layers) - 1):
        feats = graph.features(graph.layers[p + 1])
        A, Fz = _library_attributions(graph, p, "gauss-legendre", 20)
        np.testing.assert_allclose(A.sum(-1).numpy(), feats, rtol=1e-8, atol=1e-9)
        # The quadrature error shrinks as points are added.
        A4, _ = _library_attributions(graph, p, "gauss-legendre", 4)
        err4 = np.abs(A4.sum(-1).numpy() - feats).max()
        assert np.abs(A.sum(-1).numpy() - feats).max() <= max(1e-3 * err4, 1e-12)
        # The endpoint rule is not exact for a non-homogeneous segment.
        A1, _ = _library_attributions(graph, p, "endpoint", 1)
        if p < len(graph.layers) - 2:  # the last segment is affine, hence homogeneous
            assert np.abs(A1.sum(-1).numpy() - feats).max() > 1e-4
        else:
            np.testing.assert_allclose(A1.sum(-1).numpy(), feats, rtol=1e-9, atol=1e-10)


def test_trapezoidal_completeness_converges_at_second_order(smooth_graph):
    _, _, graph = smooth_graph
    p = 0
    feats = graph.features(graph.layers[p + 1])
    errors = []
    for n in (21, 41, 81):
        A, _ = _library_attributions(graph, p, "trapezoidal", n)
        errors.append(np.abs(A.sum(-1).numpy() - feats).max())
    assert errors[2] < 1e-2 * np.abs(feats).max()
    # Halving the step divides the error by about 4.
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 3.0 < coarse / fine < 5.0


@pytest.mark.parametrize("integration,n_steps", [("endpoint", 1), ("gauss-legendre", 4),
                                                 ("trapezoidal", 3)])
def test_edges_equal_explicit_per_sample_computation(smooth_graph, integration, n_steps):
    model, positions, graph = smooth_graph
    scorer = IGEdgeScorer(integration=integration, n_steps=n_steps, batch_size=17).fit(graph)
    alphas, weights = quadrature(integration, n_steps)
    assert len(scorer.edges_) == 3 and scorer.n_samples_ == graph.X.shape[0]
    assert scorer.pairs_ == graph.pairs
    for p in range(len(graph.layers) - 1):
        A = explicit_attributions(model, positions, graph, p, alphas, weights)
        E = np.sqrt(np.mean(A**2, axis=0))
        assert scorer.edges_[p].shape == E.shape
        np.testing.assert_allclose(scorer.edges_[p], E, rtol=1e-9, atol=1e-12)


def test_relu_edges_explicit_and_rule_independent(relu_graph):
    model, positions, graph = relu_graph
    E_end = IGEdgeScorer().fit(graph).edges_
    E_gl = IGEdgeScorer(integration="gauss-legendre", n_steps=5).fit(graph).edges_
    for p, (a, b) in enumerate(zip(E_end, E_gl)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
        A = explicit_attributions(model, positions, graph, p, [1.0], [1.0])
        np.testing.assert_allclose(a, np.sqrt(np.mean(A**2, axis=0)), rtol=1e-9, atol=1e-12)
        # The constant node: into itself with weight f_0 = 1, into nothing else; the
        # constant output receives nothing from non-constant features.
        assert a[0, 0] == pytest.approx(1.0)
        np.testing.assert_allclose(a[0, 1:], 0.0, atol=1e-14)


def test_edges_do_not_depend_on_batching_or_chunks(relu_graph):
    _, _, graph = relu_graph
    a = IGEdgeScorer(batch_size=256).fit(graph).edges_
    b = IGEdgeScorer(batch_size=7, chunk_size=2).fit(graph).edges_
    for Ea, Eb in zip(a, b):
        np.testing.assert_allclose(Ea, Eb, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n_sources", [1, 4])
def test_stochastic_sources_are_exact_for_mlps(smooth_graph, n_sources):
    _, _, graph = smooth_graph
    exact = IGEdgeScorer(integration="gauss-legendre", n_steps=3).fit(graph).edges_
    est = IGEdgeScorer(integration="gauss-legendre", n_steps=3, n_stochastic_sources=n_sources,
                       random_state=0).fit(graph).edges_
    for a, b in zip(exact, est):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14)


def test_float32_edges_close_to_float64(relu_graph):
    _, _, graph = relu_graph
    a = IGEdgeScorer().fit(graph).edges_
    b = IGEdgeScorer(dtype="float32").fit(graph).edges_
    for Ea, Eb in zip(a, b):
        assert Eb.dtype == np.float64
        np.testing.assert_allclose(Eb, Ea, rtol=1e-3, atol=1e-5 * Ea.max())


def test_transform_attaches_edges_without_mutating(relu_graph):
    _, _, graph = relu_graph
    scorer = IGEdgeScorer().fit(graph)
    out = scorer.transform(graph)
    assert graph.edges is None and out is not graph
    assert all(np.array_equal(a, b) for a, b in zip(out.edges, scorer.edges_))
    assert out.bases is graph.bases and out.X is graph.X
    # A graph of other inputs in the same bases takes the same edges.
    other = graph.with_data(gaussian_data(10, 4, seed=99))
    assert all(np.array_equal(a, b) for a, b in zip(scorer.transform(other).edges, scorer.edges_))


# -- structure the edges must show ---------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(
    widths=st.sampled_from([(4, 4, 4, 4), (6, 5, 4, 3), (3, 5, 6, 4), (5, 5, 3)]),
    seed=st.integers(0, 1000),
)
def test_deep_linear_network_has_diagonal_lib_edges(widths, seed):
    model = random_mlp(list(widths), nn.Identity, seed=seed)
    X = gaussian_data(100, widths[0], seed=seed, scale=np.linspace(2.0, 0.5, widths[0]))
    graph = LocalInteractionBasis(MLPAdapter(model)).fit_transform(X)
    edges = IGEdgeScorer().fit(graph).edges_
    # Every layer keeps the rank of the chain (at most the narrowest width; less where random
    # weights are nearly singular and a direction falls under rtol).
    r = graph.bases[-1].n_components
    assert 1 <= r <= min(widths)
    for p, E in enumerate(edges):
        sub = E[1:, 1:]
        assert sub.shape == (r, r)
        diag = np.diag(sub)
        off = sub - np.diag(diag)
        assert np.abs(off).max() <= 1e-6 * diag.min()
        # f_hat^{l+1} = +-f_hat^l, so E_ii is the feature's standard deviation sqrt(Lambda_i).
        np.testing.assert_allclose(diag, np.sqrt(graph.bases[p].eigenvalues), rtol=1e-6)
        # Means are removed in every layer, so the constant attributes nothing.
        np.testing.assert_allclose(E[1:, 0], 0.0, atol=1e-6 * diag.min())
    # The eigenvalues propagate unchanged through the chain.
    for b in graph.bases[1:]:
        np.testing.assert_allclose(b.eigenvalues, graph.bases[0].eigenvalues, rtol=1e-6)
    # The PCA baseline is not diagonal in general.
    pca_graph = PCAWhitener(MLPAdapter(model)).fit_transform(X)
    E_pca = IGEdgeScorer().fit(pca_graph).edges_[0][1:, 1:]
    off_pca = np.where(np.eye(*E_pca.shape, dtype=bool), 0.0, E_pca)
    assert np.abs(off_pca).max() > 1e-3 * np.abs(E_pca).max()

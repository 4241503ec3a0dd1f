"""The sklearn story: pipelines, clone, params, pickling, fit_transform, probes, graph I/O."""

from __future__ import annotations

import pickle

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import gaussian_data, model_labels, random_mlp  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from torch import nn  # noqa: E402

from sklearn_lib import (  # noqa: E402
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    InteractionGraph,
    LayerFeatures,
    LeidenModularity,
    LocalInteractionBasis,
    PCAWhitener,
    plot_interaction_graph,
)
from sklearn_lib.adapters import MLPAdapter  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X = gaussian_data(150, 4, seed=6)
    return model, MLPAdapter(model), X, model_labels(model, X)


@pytest.fixture(scope="module")
def full_graph(problem):
    model, adapter, X, y = problem
    pipe = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(), EdgeAblationSearch(),
                         LeidenModularity())
    pipe.fit(X, y)
    return pipe, pipe.transform(X)


def _assert_graphs_equal(a: InteractionGraph, b: InteractionGraph):
    assert a.layers == b.layers and a.basis == b.basis
    for ba, bb in zip(a.bases, b.bases):
        assert ba.name == bb.name and ba.n_fixed == bb.n_fixed
        np.testing.assert_array_equal(ba.C, bb.C)
        np.testing.assert_array_equal(ba.C_pinv, bb.C_pinv)
        np.testing.assert_array_equal(ba.eigenvalues, bb.eigenvalues)
    for name in ("edges", "communities"):
        xa, xb = getattr(a, name), getattr(b, name)
        assert (xa is None) == (xb is None)
        for ea, eb in zip(xa or (), xb or ()):
            np.testing.assert_array_equal(ea, eb)
    assert a.ablation == b.ablation
    assert a.modularity == b.modularity


@pytest.mark.parametrize("first", [LocalInteractionBasis, GlobalInteractionBasis, PCAWhitener])
def test_full_pipeline_fits_and_transforms(problem, first):
    model, adapter, X, y = problem
    pipe = make_pipeline(first(adapter), IGEdgeScorer(), EdgeAblationSearch(), LeidenModularity())
    assert pipe.fit(X, y) is pipe
    graph = pipe.transform(X)
    assert isinstance(graph, InteractionGraph)
    assert graph.basis == {LocalInteractionBasis: "lib", GlobalInteractionBasis: "gib",
                           PCAWhitener: "pca"}[first]
    assert graph.layers == ("input", "1", "3", "4")
    assert len(graph.edges) == 3 and len(graph.ablation) == 3
    assert len(graph.communities) == 4 and graph.modularity is not None
    # The steps agree with each other.
    steps = pipe.named_steps
    assert graph.ablation == tuple(steps["edgeablationsearch"].results_)
    for e, f in zip(graph.edges, steps["igedgescorer"].edges_):
        np.testing.assert_array_equal(e, f)
    assert "computed=['edges', 'ablation', 'communities']" in repr(graph)


def test_pipeline_fit_transform_equals_fit_then_transform(problem, full_graph):
    model, adapter, X, y = problem
    _, graph = full_graph
    pipe = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(), EdgeAblationSearch(),
                         LeidenModularity())
    _assert_graphs_equal(pipe.fit_transform(X, y), graph)


def _same_bases(a, b) -> bool:
    # Graphs hold read-only copies of the fitted arrays, so compare values, not identity.
    return len(a) == len(b) and all(
        x.name == y.name and x.n_fixed == y.n_fixed and np.array_equal(x.C, y.C)
        and np.array_equal(x.C_pinv, y.C_pinv) and np.array_equal(x.eigenvalues, y.eigenvalues)
        for x, y in zip(a, b))


@pytest.mark.parametrize("cls", [LocalInteractionBasis, GlobalInteractionBasis, PCAWhitener])
def test_basis_transform_carries_the_fitted_bases(problem, cls):
    # The basis estimators inherit TransformerMixin.fit_transform (fit, then transform), so
    # comparing the two would compare a code path with itself. Check instead what transform
    # must return, that it does not refit, and that fitting is deterministic.
    model, adapter, X, y = problem
    est = cls(adapter)
    a = est.fit_transform(X)
    assert a.layers == est.layers_
    assert _same_bases(a.bases, est.bases_)
    assert a.basis == {LocalInteractionBasis: "lib", GlobalInteractionBasis: "gib",
                       PCAWhitener: "pca"}[cls]
    assert a.adapter is adapter and np.array_equal(a.X, X)
    assert a.edges is None and a.ablation is None and a.communities is None
    # An independent fit gives bit-identical bases.
    _assert_graphs_equal(a, cls(adapter).fit(X).transform(X))
    # transform on other inputs: the same bases (no refit), the other data.
    X2 = gaussian_data(20, 4, seed=1)
    c = est.transform(X2)
    assert _same_bases(c.bases, est.bases_)
    np.testing.assert_array_equal(c.X, X2)


def test_graph_step_fit_transform_equals_fit_then_transform(problem):
    model, adapter, X, y = problem
    g0 = LocalInteractionBasis(adapter).fit_transform(X)
    g1 = IGEdgeScorer().fit_transform(g0)
    _assert_graphs_equal(g1, IGEdgeScorer().fit(g0).transform(g0))
    g2 = EdgeAblationSearch().fit_transform(g1, y)
    _assert_graphs_equal(g2, EdgeAblationSearch().fit(g1, y).transform(g1))
    g3 = LeidenModularity().fit_transform(g2)
    _assert_graphs_equal(g3, LeidenModularity().fit(g2).transform(g2))
    # No step mutated its input.
    assert g0.edges is None and g1.ablation is None and g2.communities is None


def test_clone_keeps_the_adapter_and_params(problem):
    model, adapter, X, y = problem
    for est in (LocalInteractionBasis(adapter, batch_size=64), GlobalInteractionBasis(adapter),
                PCAWhitener(adapter, whiten=True)):
        twin = clone(est)
        assert twin is not est and twin.adapter is adapter
        assert twin.get_params() == est.get_params()
    pipe = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(n_steps=3))
    twin = clone(pipe)
    assert twin.named_steps["localinteractionbasis"].adapter is adapter
    assert twin.named_steps["igedgescorer"].n_steps == 3
    # A fitted estimator clones to an unfitted one.
    fitted = LocalInteractionBasis(adapter).fit(X)
    assert not hasattr(clone(fitted), "bases_")


def test_get_params_set_params(problem):
    model, adapter, X, y = problem
    lib = LocalInteractionBasis(adapter)
    params = lib.get_params()
    assert params["adapter"] is adapter
    assert set(params) == {"adapter", "layers", "rotate_final", "rtol", "atol",
                           "n_stochastic_sources", "batch_size", "chunk_size", "dtype", "device",
                           "random_state", "verbose"}
    assert lib.set_params(batch_size=7, rtol=1e-8) is lib
    assert lib.batch_size == 7 and lib.rtol == 1e-8
    assert set(IGEdgeScorer().get_params()) >= {"integration", "n_steps", "batch_size"}
    assert set(EdgeAblationSearch().get_params()) >= {"metric", "tolerance", "mask_chunk"}
    assert set(LeidenModularity().get_params()) == {"resolution", "n_iterations", "random_state"}
    pipe = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(), EdgeAblationSearch(),
                         LeidenModularity())
    pipe.set_params(igedgescorer__integration="gauss-legendre", igedgescorer__n_steps=4,
                    leidenmodularity__resolution=2.0)
    assert pipe.named_steps["igedgescorer"].integration == "gauss-legendre"
    assert pipe.get_params()["leidenmodularity__resolution"] == 2.0
    pipe.fit(X, y)
    assert pipe.named_steps["leidenmodularity"].n_communities_ >= 1
    # The new rule was used; for this ReLU net (positively homogeneous segments) its edges
    # equal the endpoint rule's.
    E_gl = pipe.named_steps["igedgescorer"].edges_
    E_end = IGEdgeScorer().fit(LocalInteractionBasis(adapter).fit_transform(X)).edges_
    for a, b in zip(E_gl, E_end):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_pickle_round_trips(problem, full_graph):
    model, adapter, X, y = problem
    pipe, graph = full_graph
    for est in pipe.named_steps.values():
        twin = pickle.loads(pickle.dumps(est))
        assert type(twin) is type(est)
    lib = pickle.loads(pickle.dumps(pipe.named_steps["localinteractionbasis"]))
    for a, b in zip(lib.bases_, pipe.named_steps["localinteractionbasis"].bases_):
        np.testing.assert_array_equal(a.C, b.C)
    # The unpickled estimator carries its own copy of the model and still works.
    _assert_graphs_equal(lib.transform(X), pipe.named_steps["localinteractionbasis"].transform(X))
    np.testing.assert_allclose(lib.transform(X).features("3"), graph.features("3"))
    twin = pickle.loads(pickle.dumps(graph))
    _assert_graphs_equal(twin, graph)
    np.testing.assert_array_equal(twin.X, graph.X)
    # And the whole fitted pipeline.
    pipe2 = pickle.loads(pickle.dumps(pipe))
    _assert_graphs_equal(pipe2.transform(X), graph)


def test_layer_features_probe(problem):
    model, adapter, X, y = problem
    probe = make_pipeline(LocalInteractionBasis(adapter), LayerFeatures("3"), LogisticRegression())
    probe.fit(X, y)
    pred = probe.predict(X)
    assert pred.shape == y.shape
    assert (pred == y).mean() > 0.9  # the last hidden layer determines the logits
    lib = probe.named_steps["localinteractionbasis"]
    feats = probe[:-1].transform(X)
    acts = adapter.activations(X, ["3"], dtype=torch.float64, device=torch.device("cpu"))["3"]
    expected = (acts[:, 0].numpy() @ lib.bases_[2].C.T)[:, 1:]
    np.testing.assert_allclose(feats, expected, rtol=1e-12, atol=1e-12)
    lf = LayerFeatures("1", include_constant=True).fit(lib.transform(X))
    assert lf.n_features_out_ == lib.bases_[1].n_features
    out = lf.transform(lib.transform(X))
    np.testing.assert_array_equal(out[:, 0], 1.0)
    one = LayerFeatures("1", position=-1).fit_transform(lib.transform(X))
    np.testing.assert_allclose(one, out[:, 1:])
    # Grid search over the probed layer clones the pipeline (the adapter is shared).
    grid = GridSearchCV(probe, {"layerfeatures__layer": ["input", "3"]}, cv=2).fit(X, y)
    assert grid.best_params_["layerfeatures__layer"] == "3"
    assert grid.best_estimator_.named_steps["localinteractionbasis"].adapter is adapter


def test_save_load_round_trip(tmp_path, problem, full_graph):
    model, adapter, X, y = problem
    _, graph = full_graph
    path = graph.save(tmp_path / "graph.npz")
    assert path.exists()
    loaded = InteractionGraph.load(path)
    _assert_graphs_equal(loaded, graph)
    assert loaded.adapter is None and loaded.X is None
    with_adapter = InteractionGraph.load(path, adapter=adapter).with_data(X)
    np.testing.assert_allclose(with_adapter.features("1"), graph.features("1"))
    # A loaded graph with an adapter and data is good for a new scorer run.
    E = IGEdgeScorer().fit(with_adapter).edges_
    for a, b in zip(E, graph.edges):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # Partial graphs round-trip too.
    bare = LocalInteractionBasis(adapter).fit_transform(X)
    _assert_graphs_equal(InteractionGraph.load(bare.save(tmp_path / "bare.npz")), bare)


def test_to_networkx_and_igraph(full_graph):
    _, graph = full_graph
    g = graph.to_networkx()
    n_nodes = sum(b.n_features for b in graph.bases)
    assert g.number_of_nodes() == n_nodes
    n_edges = sum(int(np.count_nonzero(E)) for E in graph.edges)
    assert g.number_of_edges() == n_edges
    for p, ((a, b), result) in enumerate(zip(graph.pairs, graph.ablation)):
        E = graph.edges[p]
        i, j = np.unravel_index(np.argmax(E[1:, 1:]), E[1:, 1:].shape)
        data = g.edges[(a, j + 1), (b, i + 1)]
        assert data["weight"] == E[i + 1, j + 1] and data["kept"] is True
        kept = {(v[1], u[1]) for u, v, d in g.edges(data=True)
                if d["kept"] and u[0] == a and u[1] > 0 and v[1] > 0}
        # Exactly the edges the search kept: as many as it needed, epsilon the smallest.
        assert len(kept) == result.n_edges_needed
        mask = graph.kept_mask(p)
        assert kept == {(i, j) for i, j in zip(*np.nonzero(mask)) if i > 0 and j > 0}
        if result.n_edges_needed:
            assert min(E[i, j] for i, j in kept) == result.epsilon
    node = g.nodes[("1", 2)]
    assert node["layer"] == "1" and node["feature"] == 2 and not node["constant"]
    assert node["community"] == graph.communities[1][2]
    ig = graph.to_igraph()
    assert ig.vcount() == n_nodes and ig.ecount() == n_edges
    assert sorted(ig.es["weight"]) == sorted(d["weight"] for _, _, d in g.edges(data=True))
    assert sum(ig.es["kept"]) == sum(d["kept"] for _, _, d in g.edges(data=True))


def test_plot_returns_axes(full_graph):
    _, graph = full_graph
    ax = graph.plot()
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.collections) == len(graph.layers)  # one scatter per layer
    # First line: the layer (nn.Sequential indices with their module); second: features shown.
    assert [t.get_text().splitlines()[0] for t in ax.get_yticklabels()] == \
        ["input", "[1] ReLU", "[3] ReLU", "[4] Linear"]
    fig, ax2 = plt.subplots()
    out = plot_interaction_graph(graph, ax=ax2, include_constant=True, max_features=2,
                                 feature_labels={("1", 1): "f1"}, title="t")
    assert out is ax2 and ax2.get_title() == "t"
    assert any(t.get_text() == "f1" for t in ax2.texts)
    plt.close("all")


def test_graph_helpers(problem, full_graph):
    model, adapter, X, y = problem
    _, graph = full_graph
    assert graph.pairs == [("input", "1"), ("1", "3"), ("3", "4")]
    assert graph.basis_of("3") is graph.bases[2]
    assert graph.node_names()[:2] == [("input", 0), ("input", 1)]
    other = graph.with_data(X[:10])
    assert other.X.shape == (10, 4) and other.bases is graph.bases
    np.testing.assert_allclose(graph.features("1", X[:10]), other.features("1"))
    np.testing.assert_allclose(graph.features("1", batch_size=7), graph.features("1"))


def test_trained_digits_mlp_end_to_end():
    """A trained model on real data: the pipeline runs, scores what the model scores, and the
    LIB edges survive a ReLU-commuting reparametrisation of a hidden layer."""
    from sklearn_lib.tasks import load_digits_split, train_mlp_classifier

    X_train, X_test, y_train, y_test = load_digits_split()
    model = train_mlp_classifier(X_train, y_train, hidden=(16, 12), epochs=150).double()
    with torch.no_grad():
        accuracy = (model(torch.as_tensor(X_test)).argmax(1).numpy() == y_test).mean()
    assert accuracy > 0.85
    pipe = make_pipeline(LocalInteractionBasis(MLPAdapter(model)), IGEdgeScorer(),
                         EdgeAblationSearch(), LeidenModularity())
    graph = pipe.fit_transform(X_train, y_train, edgeablationsearch__X_eval=X_test,
                               edgeablationsearch__y_eval=y_test)
    for r in graph.ablation:
        assert r.base_score == pytest.approx(accuracy, abs=1e-12)
        assert 0 < r.n_edges_needed <= r.n_edges_total
        assert r.score_at_needed >= r.base_score - r.tolerance
    scale = np.exp(np.random.default_rng(0).uniform(-1, 1, size=16))
    perm = np.random.default_rng(1).permutation(16)
    A = torch.as_tensor(np.eye(16)[perm] * scale)
    new = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        new[0].weight.copy_(A @ model[0].weight)
        new[0].bias.copy_(A @ model[0].bias)
        new[2].weight.copy_(model[2].weight @ torch.linalg.inv(A))
    graph2 = IGEdgeScorer().fit_transform(
        LocalInteractionBasis(MLPAdapter(new)).fit_transform(X_train))
    for E1, E2 in zip(graph.edges, graph2.edges):
        np.testing.assert_allclose(E2, E1, rtol=1e-5, atol=1e-8 * E1.max())

"""LeidenModularity: recovering known modules, determinism, resolution, and the quality Q."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import gaussian_data, model_labels, random_mlp
from torch import nn

from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LeidenModularity, LocalInteractionBasis
from sklearn_lib.adapters import MLPAdapter


# -- two independent sub-networks ---------------------------------------------------------------
def _orthonormal(rows: int, cols: int, rng) -> np.ndarray:
    q = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))[0]
    return q if rows >= cols else q.T


def block_mlp(seed: int, scale_b: float = 1.3) -> nn.Sequential:
    """Inputs 0-3 -> hidden 0-5 -> logits 0-1, and inputs 4-7 -> hidden 6-11 -> logits 2-3.

    Blocks of orthonormal weights keep every direction comparably important; block B is scaled
    so that no eigenvalue of one block is degenerate with one of the other (which would let the
    eigendecomposition mix the blocks).
    """
    rng = np.random.default_rng(seed)
    W1, W2 = np.zeros((12, 8)), np.zeros((4, 12))
    W1[:6, :4], W1[6:, 4:] = 2 * _orthonormal(6, 4, rng), 2 * scale_b * _orthonormal(6, 4, rng)
    W2[:2, :6], W2[2:, 6:] = 2 * _orthonormal(2, 6, rng), 2 * scale_b * _orthonormal(2, 6, rng)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(W1))
        model[0].bias.copy_(torch.as_tensor(0.1 * rng.normal(size=12)))
        model[2].weight.copy_(torch.as_tensor(W2))
        model[2].bias.zero_()
    return model.eval()


def product_data(seed: int, n_a: int = 16, n_b: int = 15) -> np.ndarray:
    """Every pair (a, b) of block samples: any function of block A is then exactly uncorrelated
    (over the sample) with any function of block B, so covariances and M are block-diagonal."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_a, 4)) * [1.3, 1.1, 0.9, 0.7]
    B = rng.normal(size=(n_b, 4)) * [1.25, 1.05, 0.85, 0.65]
    return np.concatenate([np.repeat(A, n_b, axis=0), np.tile(B, (n_a, 1))], axis=1)


def feature_blocks(graph) -> list[np.ndarray]:
    """Block (0 or 1) of every non-constant feature, read off the basis C; checks purity."""
    splits = {8: 4, 12: 6, 4: 2}
    blocks = []
    for basis in graph.bases:
        C = basis.C[1:, 1:]
        half = splits[C.shape[1]]
        a, b = np.abs(C[:, :half]).max(1), np.abs(C[:, half:]).max(1)
        # LIB did not mix the blocks: each feature reads one block only.
        assert np.all(np.minimum(a, b) <= 1e-8 * np.abs(C).max())
        blocks.append((b > a).astype(int))
    return blocks


@pytest.mark.parametrize("seed", [0, 1, 8])
def test_recovers_two_independent_blocks(seed):
    model = block_mlp(seed)
    X = product_data(seed)
    y = model_labels(model, X)
    # Logits kept unrotated: with a rotated output layer the last (affine) pair is diagonal
    # under LIB, so an output feature's only edge can be the one at epsilon (weight log 1 = 0).
    graph = LocalInteractionBasis(MLPAdapter(model), rotate_final=False).fit_transform(X)
    blocks = feature_blocks(graph)
    for blk in blocks:
        assert set(blk.tolist()) == {0, 1}
    graph = IGEdgeScorer().fit_transform(graph)
    for p, E in enumerate(graph.edges):  # no interaction across blocks
        cross = blocks[p + 1][:, None] != blocks[p][None, :]
        assert np.abs(E[1:, 1:][cross]).max() <= 1e-8 * E[1:, 1:].max()
    graph = EdgeAblationSearch(metric="loss", tolerance=1e-6).fit_transform(graph, y)
    leiden = LeidenModularity().fit(graph)
    assert leiden.n_communities_ == 2
    comm = np.concatenate([c[1:] for c in leiden.communities_])
    blk = np.concatenate(blocks)
    assert len(set(comm[blk == 0])) == 1 and len(set(comm[blk == 1])) == 1
    assert set(comm[blk == 0]) != set(comm[blk == 1])
    assert all(c[0] == -1 for c in leiden.communities_)  # constant features are left out
    # Two disconnected modules of similar weight: Q = 1 - sum_c (vol_c / 2m)^2, about 1/2.
    assert leiden.modularity_ > 0.4


# -- determinism, resolution, quality ------------------------------------------------------------
@pytest.fixture(scope="module")
def scored_graph():
    model = random_mlp([5, 8, 7, 4], nn.ReLU, seed=0)
    X = gaussian_data(200, 5, seed=0)
    graph = IGEdgeScorer().fit_transform(LocalInteractionBasis(MLPAdapter(model)).fit_transform(X))
    return EdgeAblationSearch(metric="loss", tolerance=0.01).fit_transform(
        graph, model_labels(model, X))


def _modularity_graph(graph) -> nx.Graph:
    """Independently built: non-constant nodes; the n_edges_needed largest candidate edges (ties
    in row-major order, as Python's stable sort leaves them) with weights log(E / epsilon),
    zero weights at epsilon included."""
    g = nx.Graph()
    for layer, basis in zip(graph.layers, graph.bases):
        g.add_nodes_from((layer, i) for i in range(1, basis.n_features))
    for p, ((a, b), result) in enumerate(zip(graph.pairs, graph.ablation)):
        E = graph.edges[p]
        cand = [(float(E[i, j]), i, j) for i in range(1, E.shape[0]) for j in range(1, E.shape[1])]
        kept = sorted(cand, key=lambda t: -t[0])[: result.n_edges_needed]
        for value, i, j in kept:
            assert value >= result.epsilon
            g.add_edge((a, j), (b, i), weight=float(np.log(value / result.epsilon)))
    return g


@pytest.mark.parametrize("resolution", [0.5, 1.0, 2.0])
def test_modularity_equals_networkx_quality(scored_graph, resolution):
    leiden = LeidenModularity(resolution=resolution).fit(scored_graph)
    g = _modularity_graph(scored_graph)
    membership = {(layer, i): int(c[i]) for layer, c in zip(scored_graph.layers,
                                                            leiden.communities_)
                  for i in range(1, len(c))}
    parts = [{n for n in g if membership[n] == k} for k in range(leiden.n_communities_)]
    assert all(parts) and sum(map(len, parts)) == g.number_of_nodes()
    Q = nx.community.modularity(g, parts, weight="weight", resolution=resolution)
    assert leiden.modularity_ == pytest.approx(Q, rel=1e-9, abs=1e-12)
    # Nodes without an edge of positive weight are communities of their own.
    for node in [n for n in g if all(d["weight"] == 0 for *_, d in g.edges(n, data=True))]:
        assert sum(membership[m] == membership[node] for m in g) == 1


def test_same_seed_same_partition(scored_graph):
    a = LeidenModularity(random_state=3).fit(scored_graph)
    b = LeidenModularity(random_state=3).fit(scored_graph)
    for ca, cb in zip(a.communities_, b.communities_):
        np.testing.assert_array_equal(ca, cb)
    assert a.modularity_ == b.modularity_
    # A RandomState instance in the same state gives the same partition too.
    c = LeidenModularity(random_state=np.random.RandomState(3)).fit(scored_graph)
    for ca, cc in zip(a.communities_, c.communities_):
        np.testing.assert_array_equal(ca, cc)


def test_higher_resolution_at_least_as_many_communities(scored_graph):
    counts = [LeidenModularity(resolution=r).fit(scored_graph).n_communities_
              for r in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 50.0)]
    assert all(a <= b for a, b in zip(counts[:-1], counts[1:]))
    assert counts[0] < counts[-1]
    n_nodes = sum(b.n_features - 1 for b in scored_graph.bases)
    assert counts[-1] <= n_nodes


def test_communities_shape_and_transform(scored_graph):
    leiden = LeidenModularity().fit(scored_graph)
    assert len(leiden.communities_) == len(scored_graph.layers)
    for c, basis in zip(leiden.communities_, scored_graph.bases):
        assert c.shape == (basis.n_features,) and c[0] == -1
        assert np.all(c[1:] >= 0)
    used = np.unique(np.concatenate([c[1:] for c in leiden.communities_]))
    np.testing.assert_array_equal(used, np.arange(leiden.n_communities_))
    out = leiden.transform(scored_graph)
    assert scored_graph.communities is None and scored_graph.modularity is None
    for a, b in zip(out.communities, leiden.communities_):
        np.testing.assert_array_equal(a, b)
    assert out.modularity == leiden.modularity_
    again = LeidenModularity().fit_transform(scored_graph)
    for a, b in zip(again.communities, out.communities):
        np.testing.assert_array_equal(a, b)


def test_ties_at_epsilon_weigh_zero(scored_graph):
    # Pair 0 with every candidate edge equal: the kept ones are exactly at epsilon, weigh
    # log 1 = 0 and add nothing, so the input features end up alone; Q is the one networkx
    # computes with the zero-weight edges present.
    model = random_mlp([5, 8, 7, 4], nn.ReLU, seed=0)
    X_eval = gaussian_data(150, 5, seed=50)
    E0 = scored_graph.edges[0].copy()
    E0[1:, 1:] = 0.5
    tied = EdgeAblationSearch(metric="loss", tolerance=0.01).fit_transform(
        scored_graph.replace(edges=(E0,) + scored_graph.edges[1:]), X_eval=X_eval,
        y_eval=model_labels(model, X_eval))
    r = tied.ablation[0]
    assert 0 < r.n_edges_needed < r.n_edges_total and r.epsilon == 0.5
    # The old rule (E > epsilon) kept none of these edges.
    assert tied.kept_mask(0)[1:, 1:].sum() == r.n_edges_needed
    leiden = LeidenModularity().fit(tied)
    first = leiden.communities_[0][1:]
    assert len(set(first.tolist())) == first.size
    assert not set(first.tolist()) & set(np.concatenate(leiden.communities_[1:]).tolist())
    g = _modularity_graph(tied)
    assert sum(1 for *_, d in g.edges(data=True) if d["weight"] == 0) >= r.n_edges_needed
    membership = {(layer, i): int(c[i]) for layer, c in zip(tied.layers, leiden.communities_)
                  for i in range(1, len(c))}
    parts = [{n for n in g if membership[n] == k} for k in range(leiden.n_communities_)]
    Q = nx.community.modularity(g, parts, weight="weight")
    assert leiden.modularity_ == pytest.approx(Q, rel=1e-9, abs=1e-12)

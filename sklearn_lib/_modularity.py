"""LeidenModularity: communities of the interaction graph (DESIGN.md section 5)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from sklearn_lib._graph import check_graph
from sklearn_lib._stream import check_same_graph

__all__ = ["LeidenModularity"]


class LeidenModularity(TransformerMixin, BaseEstimator):
    """Leiden communities on the undirected graph with weights ``log(E / epsilon)``.

    Nodes are the non-constant features of every layer. The edges of layer pair ``l`` that
    enter are the candidate edges the ablation search kept (:meth:`InteractionGraph.kept_mask`:
    the ``n_edges_needed`` largest, ties resolved as the search resolved them), with weight
    ``log(E / epsilon^l)``, where ``epsilon^l`` is the smallest kept candidate edge
    (:attr:`AblationResult.epsilon`). Every weight is therefore ``>= 0``; an edge equal to
    epsilon has weight exactly 0, adds nothing to the quality or to any node's strength, and is
    left out of the graph handed to leidenalg (which then never sees a zero weight; the
    partition and ``Q`` are the same as with it). A pair where no edge is kept contributes no
    edges. The constant features connect to everything and carry no structure, so they are left
    out (community ``-1``). The partition maximises the ``RBConfigurationVertexPartition``
    quality with resolution ``gamma`` (leidenalg).

    Parameters
    ----------
    resolution : float, default=1.0
        ``gamma``; higher values give more, smaller communities.
    n_iterations : int, default=-1
        Leiden iterations; ``-1`` runs until the partition is stable.
    random_state : int, RandomState instance or None, default=0
        Seed of the Leiden algorithm (same seed, same partition).

    Attributes
    ----------
    communities_ : tuple of ndarray
        Per layer, the community of each feature (``-1`` for the constant feature).
    modularity_ : float
        Newman modularity ``Q`` of the partition (with resolution ``gamma``).
    n_communities_ : int

    Examples
    --------
    See the user guide (docs/guide.md) for a complete pipeline; the step needs a graph with
    edges and ablation results.
    """

    _parameter_constraints: dict = {
        "resolution": [Interval(Real, 0, None, closed="neither")],
        "n_iterations": [Interval(Integral, -1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, resolution=1.0, n_iterations=-1, random_state=0):
        self.resolution = resolution
        self.n_iterations = n_iterations
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Find the communities.

        Parameters
        ----------
        X : InteractionGraph
            With edges and ablation results.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        import igraph as ig
        import leidenalg

        graph = check_graph(X, type(self).__name__)
        graph.require("edges", type(self).__name__, "run IGEdgeScorer first.")
        graph.require("ablation", type(self).__name__,
                      "run EdgeAblationSearch first (it sets epsilon per layer pair).")
        offsets = np.cumsum([0] + [b.n_features for b in graph.bases])
        for p, E in enumerate(graph.edges):
            E = np.asarray(E)
            if not np.all(np.isfinite(E)) or (E < 0).any():
                raise ValueError(
                    f"Edges of pair {graph.pairs[p]} must be finite and non-negative; recompute "
                    "them with IGEdgeScorer."
                )
        # Refuses ablation results computed on other edges (names the pair).
        graph.check_ablation(type(self).__name__)
        src, dst, weights = [], [], []
        for p, result in enumerate(graph.ablation):
            E = np.asarray(graph.edges[p])
            keep = graph.kept_mask(p)[1:, 1:]
            eps = result.epsilon
            if keep.any() and eps == 0:
                raise ValueError(
                    f"epsilon of pair {graph.pairs[p]} is 0 (the search kept edges equal to 0), "
                    "so log(E / epsilon) is infinite. Rerun EdgeAblationSearch with a larger "
                    "tolerance, or check the edges."
                )
            i, j = np.nonzero(keep)
            w = np.log(E[1:, 1:][i, j] / eps)
            positive = w > 0  # edges at epsilon weigh log 1 = 0: no effect, left out
            src.append(offsets[p] + 1 + j[positive])
            dst.append(offsets[p + 1] + 1 + i[positive])
            weights.append(w[positive])
        src, dst, weights = (np.concatenate(a) if a else np.zeros(0) for a in (src, dst, weights))
        # leidenalg raises a bare BaseException on negative weights: they are checked above.
        n = int(offsets[-1])
        g = ig.Graph(n=n, edges=list(zip(src.tolist(), dst.tolist())), directed=False)
        g.es["weight"] = weights.tolist()
        const = offsets[:-1]
        g.delete_vertices(const.tolist())
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        partition = leidenalg.find_partition(
            g, leidenalg.RBConfigurationVertexPartition, weights="weight",
            resolution_parameter=float(self.resolution), n_iterations=self.n_iterations,
            seed=seed,
        )
        membership = np.asarray(partition.membership, dtype=np.int64)
        full = np.full(n, -1, dtype=np.int64)
        full[np.setdiff1d(np.arange(n), const)] = membership
        self.communities_ = tuple(full[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
        self.modularity_ = (
            float(g.modularity(membership.tolist(), weights="weight",
                               resolution=float(self.resolution)))
            if g.ecount() else 0.0
        )
        self.n_communities_ = int(membership.max() + 1) if membership.size else 0
        self._edges = graph.edges
        return self

    def transform(self, X):
        """Attach communities and modularity to the graph.

        Parameters
        ----------
        X : InteractionGraph

        Returns
        -------
        graph : InteractionGraph
        """
        check_is_fitted(self, "communities_")
        graph = check_graph(X, type(self).__name__)
        check_same_graph(graph.edges, self._edges, what="edges", owner=type(self).__name__)
        return graph.replace(communities=self.communities_, modularity=self.modularity_)

"""InteractionGraph: what flows between the pipeline steps, and LayerFeatures."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from sklearn_lib._common import check_finite, iter_batches, resolve_device, resolve_dtype
from sklearn_lib._linalg import LayerBasis

__all__ = ["AblationResult", "InteractionGraph", "LayerFeatures"]

_FORMAT = "sklearn-lib-interaction-graph"
_VERSION = 1


@dataclass(frozen=True)
class AblationResult:
    """Edge-ablation search on one layer pair (see :class:`EdgeAblationSearch`).

    Attributes
    ----------
    layer_in, layer_out : str
    metric : {"accuracy", "loss"}
    tolerance : float
    n_edges_total : int
        Candidate edges: non-constant source to non-constant target.
    n_edges_nonzero : int
        Candidate edges with ``E > 0``.
    n_edges_needed : int
        Fewest largest edges that keep the score within ``tolerance``.
    epsilon : float
        The smallest kept edge (edges at or below it are ablated).
    base_score : float
        Score with every edge kept.
    score_at_needed, score_at_one_fewer : float
        Score keeping ``n_edges_needed`` and ``n_edges_needed - 1`` edges (NaN when 0 needed).
    n_probes : int
        Scores evaluated by the bisection (the base included).
    probes : tuple of (int, float)
        ``(edges kept, score)`` in the order evaluated.
    """

    layer_in: str
    layer_out: str
    metric: str
    tolerance: float
    n_edges_total: int
    n_edges_nonzero: int
    n_edges_needed: int
    epsilon: float
    base_score: float
    score_at_needed: float
    score_at_one_fewer: float
    n_probes: int
    probes: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["probes"] = [list(p) for p in self.probes]
        return d


@dataclass(frozen=True, eq=False)
class InteractionGraph:
    """Bases, edges, ablation results and communities of a network's node layers.

    Each pipeline step returns a new graph; none mutates its input.

    Attributes
    ----------
    layers : tuple of str
        Node layers, input side first.
    bases : tuple of LayerBasis
        One basis per node layer.
    basis : {"lib", "gib", "pca"}
        Which estimator made the bases.
    adapter : ModelAdapter or None
        The model the bases belong to (not saved).
    X : array-like or None
        The model inputs this graph describes (a reference, not a copy; not saved).
    edges : tuple of ndarray or None
        ``edges[l]`` of shape ``(n_features(l+1), n_features(l))``: the RMS integrated-gradient
        attribution ``E^l[i, j]`` from feature ``j`` of layer ``l`` to feature ``i`` of ``l+1``.
    ablation : tuple of AblationResult or None
        One per layer pair.
    communities : tuple of ndarray or None
        Community of every feature of every layer (``-1`` for the constant feature).
    modularity : float or None
        Modularity ``Q`` of the partition.
    """

    layers: tuple
    bases: tuple
    basis: str
    adapter: Any = None
    X: Any = None
    edges: tuple | None = None
    ablation: tuple | None = None
    communities: tuple | None = None
    modularity: float | None = None

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.bases):
            raise ValueError(f"{len(self.layers)} layers but {len(self.bases)} bases.")

    def __repr__(self) -> str:
        dims = ", ".join(f"{n}: {b.n_features}" for n, b in zip(self.layers, self.bases))
        done = [k for k in ("edges", "ablation", "communities") if getattr(self, k) is not None]
        return f"InteractionGraph(basis={self.basis!r}, features={{{dims}}}, computed={done})"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Adjacent layer pairs ``(layer_in, layer_out)``."""
        return list(zip(self.layers[:-1], self.layers[1:]))

    def replace(self, **changes) -> "InteractionGraph":
        """A new graph with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def with_data(self, X: Any) -> "InteractionGraph":
        """The same graph describing other model inputs (e.g. a held-out split)."""
        if self.adapter is None:
            raise ValueError("This graph has no adapter (loaded from disk?); set one with replace().")
        return self.replace(X=self.adapter.check_input(X))

    def basis_of(self, layer: str) -> LayerBasis:
        try:
            return self.bases[self.layers.index(layer)]
        except ValueError:
            raise ValueError(f"Unknown layer {layer!r}; this graph has {list(self.layers)}.") from None

    def require(self, what: str, step: str, hint: str) -> None:
        if getattr(self, what) is None:
            raise ValueError(f"{step} needs {what} in the InteractionGraph; {hint}")

    def features(
        self,
        layer: str,
        X: Any = None,
        *,
        batch_size: int = 1024,
        dtype: str = "float64",
        device: str = "cpu",
    ) -> np.ndarray:
        """Activations of ``layer`` in this basis, ``ndarray (n_samples, n_positions, n_features)``.

        Feature 0 is the constant (1 on real data). ``X`` defaults to the graph's inputs.
        """
        basis = self.basis_of(layer)
        if self.adapter is None:
            raise ValueError("features() needs the graph's adapter; this graph has none.")
        X = self.X if X is None else self.adapter.check_input(X)
        if X is None:
            raise ValueError("This graph holds no model inputs; pass X.")
        dt, dev = resolve_dtype(dtype), resolve_device(device)
        C = torch.as_tensor(basis.C, dtype=dt, device=dev)
        out = []
        for start, xb in iter_batches(X, batch_size):
            f = self.adapter.activations(xb, [layer], dtype=dt, device=dev)[layer]
            check_finite(f, f"Activations of layer {layer!r}", start)
            out.append((f @ C.T).cpu().numpy())
        return np.concatenate(out, axis=0)

    # -- export ---------------------------------------------------------------------------
    def node_names(self) -> list[tuple[str, int]]:
        return [(layer, i) for layer, b in zip(self.layers, self.bases) for i in range(b.n_features)]

    def to_networkx(self):
        """A ``networkx.DiGraph``: nodes ``(layer, feature)``, edges ``weight = E`` (if computed).

        Node attributes: ``layer``, ``feature``, ``constant``, ``community`` (if computed);
        edge attributes: ``weight`` and ``kept`` (whether the ablation search kept it).
        """
        import networkx as nx

        g = nx.DiGraph(basis=self.basis, modularity=self.modularity)
        for li, (layer, b) in enumerate(zip(self.layers, self.bases)):
            for i in range(b.n_features):
                attrs = {"layer": layer, "feature": i, "constant": i == 0}
                if self.communities is not None:
                    attrs["community"] = int(self.communities[li][i])
                g.add_node((layer, i), **attrs)
        if self.edges is not None:
            for p, (a, b) in enumerate(self.pairs):
                E = self.edges[p]
                eps = None if self.ablation is None else self.ablation[p].epsilon
                rows, cols = np.nonzero(E)
                for i, j in zip(rows.tolist(), cols.tolist()):
                    kept = None if eps is None else bool(E[i, j] > eps or j == 0)
                    g.add_edge((a, j), (b, i), weight=float(E[i, j]), kept=kept)
        return g

    def to_igraph(self):
        """An ``igraph.Graph`` (directed) with the same nodes and edge weights."""
        import igraph as ig

        nodes = self.node_names()
        index = {n: k for k, n in enumerate(nodes)}
        g = ig.Graph(n=len(nodes), directed=True)
        g.vs["layer"] = [n[0] for n in nodes]
        g.vs["feature"] = [n[1] for n in nodes]
        if self.edges is not None:
            src, dst, w = [], [], []
            for p, (a, b) in enumerate(self.pairs):
                rows, cols = np.nonzero(self.edges[p])
                src += [index[(a, j)] for j in cols.tolist()]
                dst += [index[(b, i)] for i in rows.tolist()]
                w += self.edges[p][rows, cols].tolist()
            g.add_edges(list(zip(src, dst)))
            g.es["weight"] = w
        return g

    # -- persistence (no pickle) ----------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the graph to a ``.npz`` file (arrays plus JSON metadata; no pickle).

        The adapter and the model inputs are not saved.
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "basis": self.basis,
            "layers": list(self.layers),
            "n_fixed": [b.n_fixed for b in self.bases],
            "has_edges": self.edges is not None,
            "ablation": None if self.ablation is None else [r.to_dict() for r in self.ablation],
            "has_communities": self.communities is not None,
            "modularity": self.modularity,
        }
        for k, b in enumerate(self.bases):
            arrays[f"C_{k}"] = b.C
            arrays[f"C_pinv_{k}"] = b.C_pinv
            arrays[f"eigenvalues_{k}"] = b.eigenvalues
        for k, E in enumerate(self.edges or ()):
            arrays[f"edges_{k}"] = E
        for k, c in enumerate(self.communities or ()):
            arrays[f"communities_{k}"] = c
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, adapter: Any = None) -> "InteractionGraph":
        """Read a graph written by :meth:`save`; optionally attach an adapter."""
        with np.load(Path(path), allow_pickle=False) as data:
            if "meta" not in data.files:
                raise ValueError(f"{path} is not an InteractionGraph file (no metadata).")
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT or meta.get("version", 0) > _VERSION:
                raise ValueError(
                    f"{path} is not an InteractionGraph file of a version this sklearn-lib reads "
                    f"(format {meta.get('format')!r}, version {meta.get('version')!r})."
                )
            layers = tuple(meta["layers"])
            bases = tuple(
                LayerBasis(name, data[f"C_{k}"], data[f"C_pinv_{k}"], data[f"eigenvalues_{k}"],
                           int(meta["n_fixed"][k]))
                for k, name in enumerate(layers)
            )
            edges = (
                tuple(data[f"edges_{k}"] for k in range(len(layers) - 1))
                if meta["has_edges"] else None
            )
            communities = (
                tuple(data[f"communities_{k}"] for k in range(len(layers)))
                if meta["has_communities"] else None
            )
        ablation = None
        if meta["ablation"] is not None:
            ablation = tuple(
                AblationResult(**{**r, "probes": tuple(tuple(p) for p in r["probes"])})
                for r in meta["ablation"]
            )
        return cls(layers, bases, meta["basis"], adapter, None, edges, ablation, communities,
                   meta["modularity"])

    def plot(self, ax=None, **kwargs):
        """Draw the layered interaction graph (see :func:`sklearn_lib.plot_interaction_graph`)."""
        from sklearn_lib._plotting import plot_interaction_graph

        return plot_interaction_graph(self, ax=ax, **kwargs)


def check_graph(graph: Any, step: str) -> InteractionGraph:
    if not isinstance(graph, InteractionGraph):
        raise TypeError(
            f"{step} takes an InteractionGraph (the output of LocalInteractionBasis, "
            f"GlobalInteractionBasis or PCAWhitener with an adapter); got {type(graph).__name__}."
        )
    return graph


class LayerFeatures(TransformerMixin, BaseEstimator):
    """Turn an :class:`InteractionGraph` into a plain array of one layer's basis features.

    Lets LIB features feed ordinary scikit-learn models (probes)::

        make_pipeline(LocalInteractionBasis(adapter), LayerFeatures("3"), LogisticRegression())

    Parameters
    ----------
    layer : str
        The node layer.
    position : int or None, default=None
        For layers with several positions: keep one position (``-1``: the last), an int in
        ``[-n_positions, n_positions)``. ``None`` flattens positions into features
        (position-major: all features of position 0, then of position 1, ...).
    include_constant : bool, default=False
        Keep the constant feature 0 (of every kept position).
    batch_size : int, default=1024
        Model inputs per forward pass.

    Attributes
    ----------
    n_positions_ : int
        Positions of ``layer`` (1 for MLPs).
    n_features_out_ : int
        Width of ``transform``'s output: the layer's basis features (less the constant unless
        ``include_constant``), times ``n_positions_`` when ``position=None``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LocalInteractionBasis, LayerFeatures
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> X = np.random.default_rng(0).normal(size=(200, 4))
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> graph = LocalInteractionBasis(MLPAdapter(mlp)).fit_transform(X)
    >>> probe = LayerFeatures("1").fit(graph)
    >>> probe.transform(graph).shape == (200, probe.n_features_out_)
    True
    """

    _parameter_constraints: dict = {
        "layer": [str],
        "position": [Interval(Integral, None, None, closed="neither"), None],
        "include_constant": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, layer, *, position=None, include_constant=False, batch_size=1024):
        self.layer = layer
        self.position = position
        self.include_constant = include_constant
        self.batch_size = batch_size

    def _n_positions(self, graph: InteractionGraph) -> int:
        """Positions of ``layer``, from one forward pass on the graph's first input."""
        graph.require("adapter", type(self).__name__, "attach the model adapter with "
                      "graph.replace(adapter=...).")
        graph.require("X", type(self).__name__, "use a graph returned by transform (it holds "
                      "the model inputs).")
        acts = graph.adapter.activations(graph.X[:1], [self.layer], dtype=torch.float64,
                                         device=torch.device("cpu"))[self.layer]
        return int(acts.shape[1])

    def fit(self, X, y=None):
        """Check the parameters against the graph; nothing is learned.

        Parameters
        ----------
        X : InteractionGraph
            A graph holding its adapter and model inputs.
        y : None
            Ignored.

        Returns
        -------
        self : LayerFeatures
        """
        graph = check_graph(X, type(self).__name__)
        self._validate_params()
        if isinstance(self.position, (bool, np.bool_)):
            raise ValueError(
                "The 'position' parameter of LayerFeatures must be an int or None. Got "
                f"{self.position!r} instead."
            )
        basis = graph.basis_of(self.layer)
        n_positions = self._n_positions(graph)
        if self.position is not None and not -n_positions <= self.position < n_positions:
            raise ValueError(
                f"position={self.position} is out of range for layer {self.layer!r}, which has "
                f"{n_positions} position(s); use an int in [{-n_positions}, {n_positions - 1}] "
                "or position=None to keep them all."
            )
        per_position = basis.n_features - (not self.include_constant)
        self.n_positions_ = n_positions
        self.n_features_out_ = per_position * (n_positions if self.position is None else 1)
        return self

    def transform(self, X):
        """Features of ``layer`` for the graph's inputs.

        Parameters
        ----------
        X : InteractionGraph

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out_)
        """
        graph = check_graph(X, type(self).__name__)
        check_is_fitted(self, "n_features_out_")
        F = graph.features(self.layer, batch_size=self.batch_size)
        if not self.include_constant:
            F = F[..., 1:]
        if F.shape[1] != self.n_positions_:
            raise ValueError(
                f"Layer {self.layer!r} has {F.shape[1]} positions in this graph but "
                f"{self.n_positions_} when LayerFeatures was fitted; refit on this graph."
            )
        out = F[:, self.position, :] if self.position is not None else F.reshape(F.shape[0], -1)
        if out.shape[1] != self.n_features_out_:
            raise ValueError(
                f"Layer {self.layer!r} has {out.shape[1]} features in this graph but "
                f"LayerFeatures was fitted on a graph with {self.n_features_out_}; refit on "
                "this graph."
            )
        return out

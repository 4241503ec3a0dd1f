"""InteractionGraph: what flows between the pipeline steps, and LayerFeatures."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tempfile
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
_VERSION = 3  # 2: metadata as UTF-8 JSON bytes in a uint8 array; ablation search fields
# 3: completeness_errors (files of versions 1 and 2 load with None)
_BASES = ("lib", "gib", "pca")


def candidate_order(E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate edges of one layer pair, largest first, in the ablation search's order.

    Candidates are the edges from a non-constant source (column ``j >= 1``) into a
    non-constant target (row ``i >= 1``). Ties keep row-major order (a stable sort), so the
    ``k`` largest candidates are one well-defined set for every ``k``.

    Parameters
    ----------
    E : ndarray of shape (n_out, n_in)

    Returns
    -------
    rows, cols : ndarray of int
        Indices into ``E`` of the candidates, largest first.
    values : ndarray of float
        ``E[rows, cols]``.
    """
    E = np.asarray(E)
    cand = E[1:, 1:].ravel()
    order = np.argsort(-cand, kind="stable")
    rows, cols = np.divmod(order, max(E.shape[1] - 1, 1))
    return rows + 1, cols + 1, cand[order]


def _epsilon_for(values: np.ndarray, n_kept: int) -> float:
    """The smallest kept candidate edge; ``inf`` when none is kept."""
    return float(values[n_kept - 1]) if n_kept > 0 else math.inf


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
        The search's answer: keeping this many of the largest candidate edges keeps the score
        within ``tolerance`` (and, for ``search="bisect"``, one fewer does not).
    n_edges_needed_stable : int
        The smallest probed ``k`` such that every probed ``k' >= k`` keeps the score. The score
        is not monotone in ``k``, so this can exceed ``n_edges_needed`` when the scan shows the
        score leaving the tolerance again above it; for ``search="bisect"`` the two agree by
        construction (a bisection never probes a failing ``k`` above its answer).
    epsilon : float
        The smallest kept candidate edge: the ``n_edges_needed``-th largest in the search's
        order (:meth:`InteractionGraph.kept_mask` gives the kept set itself, ties included);
        ``inf`` when no candidate edge is kept.
    base_score : float
        Score with every edge kept.
    score_at_needed, score_at_one_fewer : float
        Score keeping ``n_edges_needed`` and ``n_edges_needed - 1`` edges (NaN when 0 needed).
    n_probes : int
        Distinct ``k`` scored by the search (the base included).
    probes : tuple of (int, float)
        ``(edges kept, score)`` for every probed ``k``, sorted by ``k``.
    search : {"bisect", "scan"}
        How ``k`` was searched.
    """

    layer_in: str
    layer_out: str
    metric: str
    tolerance: float
    n_edges_total: int
    n_edges_nonzero: int
    n_edges_needed: int
    n_edges_needed_stable: int
    epsilon: float
    base_score: float
    score_at_needed: float
    score_at_one_fewer: float
    n_probes: int
    probes: tuple = field(default_factory=tuple)
    search: str = "bisect"

    def to_dict(self) -> dict:
        """The fields as JSON-ready Python values."""
        d = dataclasses.asdict(self)
        d["probes"] = [list(p) for p in self.probes]
        return d


def _read_only(a: Any) -> np.ndarray:
    """``a`` itself when it is already a read-only ndarray, else a read-only copy."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        return a
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


def _read_only_basis(b: LayerBasis) -> LayerBasis:
    arrays = {k: _read_only(getattr(b, k)) for k in ("C", "C_pinv", "eigenvalues")}
    if all(arrays[k] is getattr(b, k) for k in arrays):
        return b
    return dataclasses.replace(b, **arrays)


def _same_items(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


# What each field is derived from: replacing a field drops everything computed after it.
_DERIVED = {
    "layers": ("edges", "completeness_errors", "ablation", "communities", "modularity"),
    "bases": ("edges", "completeness_errors", "ablation", "communities", "modularity"),
    "edges": ("completeness_errors", "ablation", "communities", "modularity"),
    "ablation": ("communities", "modularity"),
}


@dataclass(frozen=True, eq=False)
class InteractionGraph:
    """Bases, edges, ablation results and communities of a network's node layers.

    Each pipeline step returns a new graph; none mutates its input. The arrays a graph holds
    (bases, edges, communities) are read-only copies, so they cannot drift from what was
    derived from them.

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
        One per layer pair; :meth:`kept_mask` gives the edges each search kept.
    communities : tuple of ndarray or None
        Community of every feature of every layer (``-1`` for the constant feature).
    modularity : float or None
        Modularity ``Q`` of the partition.
    completeness_errors : tuple of float or None
        One per layer pair, set with the edges by :class:`~sklearn_lib.IGEdgeScorer`: the
        relative RMS by which the integrated-gradient attributions miss the next layer's
        features (its ``completeness_errors_``). ``None`` when the edges came from elsewhere;
        replacing the edges drops it.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import PCAWhitener, IGEdgeScorer
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> X = np.random.default_rng(0).normal(size=(50, 3))
    >>> graph = IGEdgeScorer().fit_transform(PCAWhitener(MLPAdapter(mlp)).fit_transform(X))
    >>> graph.edges[0].flags.writeable
    False
    >>> graph.replace(edges=graph.edges).ablation is None  # new edges: derived results dropped
    True
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
    completeness_errors: tuple | None = None

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.bases):
            raise ValueError(f"{len(self.layers)} layers but {len(self.bases)} bases.")
        if self.completeness_errors is not None:
            errors = tuple(self.completeness_errors)
            n_pairs = len(self.layers) - 1
            if self.edges is None:
                raise ValueError(
                    "completeness_errors describe the edges; a graph without edges cannot have "
                    "them. Set edges in the same call, or leave completeness_errors=None."
                )
            if len(errors) != n_pairs or not all(
                isinstance(e, numbers.Real) and not isinstance(e, (bool, np.bool_))
                and math.isfinite(e) and e >= 0 for e in errors
            ):
                raise ValueError(
                    f"completeness_errors must hold {n_pairs} finite numbers >= 0, one per "
                    f"layer pair; got {self.completeness_errors!r}."
                )
            object.__setattr__(self, "completeness_errors", tuple(float(e) for e in errors))
        normalised = {
            "layers": tuple(self.layers),
            "bases": tuple(_read_only_basis(b) for b in self.bases),
            "edges": None if self.edges is None else tuple(_read_only(E) for E in self.edges),
            "ablation": None if self.ablation is None else tuple(self.ablation),
            "communities": (None if self.communities is None
                            else tuple(_read_only(c) for c in self.communities)),
        }
        for name, value in normalised.items():
            old = getattr(self, name)
            if value is not None and not (isinstance(old, tuple) and _same_items(old, value)):
                object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        dims = ", ".join(f"{n}: {b.n_features}" for n, b in zip(self.layers, self.bases))
        done = [k for k in ("edges", "ablation", "communities") if getattr(self, k) is not None]
        return f"InteractionGraph(basis={self.basis!r}, features={{{dims}}}, computed={done})"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Adjacent layer pairs ``(layer_in, layer_out)``."""
        return list(zip(self.layers[:-1], self.layers[1:]))

    def replace(self, **changes) -> "InteractionGraph":
        """A new graph with some fields replaced.

        Replacing a field drops what was derived from it unless that is replaced in the same
        call: new ``layers`` or ``bases`` drop the edges, ablation results and communities;
        new ``edges`` drop the ablation results and communities; new ``ablation`` drops the
        communities (their weights use its epsilon).
        """
        dropped: dict[str, Any] = {}
        for name in changes:
            for derived in _DERIVED.get(name, ()):
                if derived not in changes:
                    dropped[derived] = None
        return dataclasses.replace(self, **dropped, **changes)

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
        C = torch.tensor(basis.C, dtype=dt, device=dev)  # a copy: graph arrays are read-only
        out = []
        for start, xb in iter_batches(X, batch_size):
            f = self.adapter.activations(xb, [layer], dtype=dt, device=dev)[layer]
            check_finite(f, f"Activations of layer {layer!r}", start)
            out.append((f @ C.T).cpu().numpy())
        return np.concatenate(out, axis=0)

    # -- kept edges ------------------------------------------------------------------------
    def check_ablation(self, step: str = "check_ablation") -> None:
        """Check that the ablation results were computed on this graph's edges.

        Raises ``ValueError`` naming the pair when a result's layers, candidate count, nonzero
        count or epsilon (the ``n_edges_needed``-th largest candidate) disagree with the edges.

        Parameters
        ----------
        step : str, default="check_ablation"
            Who asks (named in the error when edges or ablation results are missing).
        """
        self.require("edges", step, "run IGEdgeScorer first.")
        self.require("ablation", step, "run EdgeAblationSearch first.")
        if len(self.ablation) != len(self.pairs):
            raise ValueError(
                f"The graph has {len(self.pairs)} layer pairs but {len(self.ablation)} ablation "
                "results; rerun EdgeAblationSearch on this graph."
            )
        for p, r in enumerate(self.ablation):
            problem = _ablation_mismatch(r, self.pairs[p], self.edges[p])
            if problem:
                raise ValueError(
                    f"The ablation results of pair {self.pairs[p]} do not belong to this graph's "
                    f"edges ({problem}); rerun EdgeAblationSearch on these edges."
                )

    def kept_mask(self, p: int) -> np.ndarray:
        """Which edges of layer pair ``p`` the ablation search kept.

        The ``n_edges_needed`` largest candidate edges, in the search's stable order (so ties
        at epsilon are resolved exactly as the search resolved them), plus every edge from the
        constant source feature. Edges into the constant from other features are not
        candidates (they are identically zero) and are not kept.

        Parameters
        ----------
        p : int
            Index of the layer pair in :attr:`pairs`.

        Returns
        -------
        mask : ndarray of bool of shape ``edges[p].shape``
            ``mask[1:, 1:].sum() == ablation[p].n_edges_needed``.
        """
        self.check_ablation("kept_mask")
        if not isinstance(p, (int, np.integer)) or not -len(self.pairs) <= p < len(self.pairs):
            raise ValueError(
                f"p must be the index of a layer pair, an int in [0, {len(self.pairs)}); "
                f"got {p!r}."
            )
        E = self.edges[p]
        rows, cols, _ = candidate_order(E)
        k = self.ablation[p].n_edges_needed
        mask = np.zeros(E.shape, dtype=bool)
        mask[:, 0] = True
        mask[rows[:k], cols[:k]] = True
        return mask

    # -- export ---------------------------------------------------------------------------
    def node_names(self) -> list[tuple[str, int]]:
        return [(layer, i) for layer, b in zip(self.layers, self.bases) for i in range(b.n_features)]

    def _exported_edges(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows, cols and kept flags of the edges to export: nonzero or kept."""
        E = self.edges[p]
        kept = None if self.ablation is None else self.kept_mask(p)
        present = E != 0 if kept is None else (E != 0) | kept
        rows, cols = np.nonzero(present)
        return rows, cols, None if kept is None else kept[rows, cols]

    def to_networkx(self):
        """A ``networkx.DiGraph``: nodes ``(layer, feature)``, edges ``weight = E`` (if computed).

        Node attributes: ``layer``, ``feature``, ``constant``, ``community`` (if computed);
        edge attributes: ``weight`` and ``kept`` (:meth:`kept_mask`; None before the ablation
        search). Nonzero edges are exported, and kept edges even when zero, so the kept
        candidate edges of each pair number exactly ``n_edges_needed``.
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
                rows, cols, kept = self._exported_edges(p)
                for n, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
                    g.add_edge((a, j), (b, i), weight=float(E[i, j]),
                               kept=None if kept is None else bool(kept[n]))
        return g

    def to_igraph(self):
        """An ``igraph.Graph`` (directed) with the same nodes, edges and attributes.

        Vertex attributes ``layer``, ``feature``; edge attributes ``weight`` and ``kept`` as in
        :meth:`to_networkx`.
        """
        import igraph as ig

        nodes = self.node_names()
        index = {n: k for k, n in enumerate(nodes)}
        g = ig.Graph(n=len(nodes), directed=True)
        g.vs["layer"] = [n[0] for n in nodes]
        g.vs["feature"] = [n[1] for n in nodes]
        if self.edges is not None:
            src, dst, w, flags = [], [], [], []
            for p, (a, b) in enumerate(self.pairs):
                rows, cols, kept = self._exported_edges(p)
                src += [index[(a, j)] for j in cols.tolist()]
                dst += [index[(b, i)] for i in rows.tolist()]
                w += self.edges[p][rows, cols].tolist()
                flags += [None] * rows.size if kept is None else [bool(x) for x in kept]
            g.add_edges(list(zip(src, dst)))
            g.es["weight"] = w
            g.es["kept"] = flags
        return g

    # -- persistence (no pickle) ----------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the graph to a ``.npz`` file: numeric arrays and JSON metadata, no pickle.

        The file is written next to ``path`` under a temporary name and renamed over it when
        complete, so a failed save leaves an existing file untouched. The adapter and the
        model inputs are not saved.

        Parameters
        ----------
        path : str or Path
            Written as given (no suffix is added).

        Returns
        -------
        path : Path
        """
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "basis": self.basis,
            "layers": [str(layer) for layer in self.layers],
            "n_fixed": [int(b.n_fixed) for b in self.bases],
            "has_edges": self.edges is not None,
            "ablation": None if self.ablation is None else [r.to_dict() for r in self.ablation],
            "has_communities": self.communities is not None,
            "modularity": None if self.modularity is None else float(self.modularity),
            "completeness_errors": (None if self.completeness_errors is None
                                    else list(self.completeness_errors)),
        }
        arrays: dict[str, np.ndarray] = {}
        for k, b in enumerate(self.bases):
            arrays[f"C_{k}"] = b.C
            arrays[f"C_pinv_{k}"] = b.C_pinv
            arrays[f"eigenvalues_{k}"] = b.eigenvalues
        for k, E in enumerate(self.edges or ()):
            arrays[f"edges_{k}"] = E
        for k, c in enumerate(self.communities or ()):
            arrays[f"communities_{k}"] = c
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.kind not in "iuf":
                raise ValueError(
                    f"Cannot save the graph: array {name!r} has dtype {a.dtype}, not a real "
                    "number type; graphs hold numeric arrays only."
                )
            arrays[name] = a
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, allow_pickle=False, **arrays)
            # mkstemp creates the file private (0600); give it the mode a plain open() would:
            # the old file's, or the default under the process umask.
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, adapter: Any = None) -> "InteractionGraph":
        """Read a graph written by :meth:`save`; optionally attach an adapter.

        Every part of the file is validated (format, version, metadata, shapes of the bases,
        edges and communities against each other, dtypes, finiteness, ablation results
        against the edges). A file that is not a readable graph raises ``ValueError`` naming
        the file and the problem.

        Parameters
        ----------
        path : str or Path
        adapter : ModelAdapter, default=None
            The model the graph describes, to compute features or rerun steps.

        Returns
        -------
        graph : InteractionGraph
        """
        return _load(cls, Path(path), adapter)

    def plot(self, ax=None, **kwargs):
        """Draw the layered interaction graph (see :func:`sklearn_lib.plot_interaction_graph`)."""
        from sklearn_lib._plotting import plot_interaction_graph

        return plot_interaction_graph(self, ax=ax, **kwargs)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ablation_mismatch(r: AblationResult, pair: tuple, E: np.ndarray) -> str | None:
    """Why an ablation result does not belong to a pair's edges (None when it does)."""
    if (r.layer_in, r.layer_out) != tuple(pair):
        return f"it is for pair {(r.layer_in, r.layer_out)}"
    n_total = (E.shape[0] - 1) * (E.shape[1] - 1)
    if r.n_edges_total != n_total:
        return f"{r.n_edges_total} candidate edges, the edges have {n_total}"
    if not 0 <= r.n_edges_needed <= n_total:
        return f"n_edges_needed={r.n_edges_needed} is outside [0, {n_total}]"
    _, _, values = candidate_order(E)
    if r.n_edges_nonzero != int(np.count_nonzero(values > 0)):
        return f"{r.n_edges_nonzero} nonzero candidate edges, the edges have " \
               f"{int(np.count_nonzero(values > 0))}"
    expected = _epsilon_for(values, r.n_edges_needed)
    if r.epsilon != expected:
        return f"epsilon={r.epsilon!r} but the {r.n_edges_needed}-th largest edge is {expected!r}"
    return None


class _BadFile(Exception):
    """A problem found while reading a graph file (turned into one ValueError)."""


_ABLATION_FIELDS = {f.name: f for f in dataclasses.fields(AblationResult)}
_ABLATION_TYPES = {
    "layer_in": str, "layer_out": str, "metric": str, "tolerance": float,
    "n_edges_total": int, "n_edges_nonzero": int, "n_edges_needed": int,
    "n_edges_needed_stable": int, "epsilon": float, "base_score": float,
    "score_at_needed": float, "score_at_one_fewer": float, "n_probes": int, "probes": list,
    "search": str,
}


def _load(cls, path: Path, adapter: Any) -> InteractionGraph:
    try:
        data = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # a truncated zip, a pickle, random bytes, ...
        raise ValueError(
            f"Cannot load an InteractionGraph from {path}: not a readable .npz file "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"Cannot load an InteractionGraph from {path}: it holds a single array, not a "
            ".npz archive written by InteractionGraph.save."
        )
    try:
        with data:
            return _parse(cls, path, data, adapter)
    except _BadFile as exc:
        raise ValueError(f"Cannot load an InteractionGraph from {path}: {exc}") from None


def _array(data, key: str, kinds: str, ndim: int) -> np.ndarray:
    if key not in data.files:
        raise _BadFile(f"array {key!r} is missing (truncated or edited file?).")
    try:
        a = data[key]
    except Exception as exc:  # a damaged member: CRC error, truncated stream, pickled object
        raise _BadFile(f"array {key!r} cannot be read ({type(exc).__name__}: {exc}).") from None
    if a.dtype.kind not in kinds or a.ndim != ndim:
        raise _BadFile(
            f"array {key!r} has dtype {a.dtype} and {a.ndim} dimensions; expected a "
            f"{ndim}-d array of {'floats' if kinds == 'f' else 'integers'}."
        )
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise _BadFile(f"array {key!r} contains NaN or inf.")
    return a


def _meta(data) -> dict:
    if "meta" not in data.files:
        raise _BadFile("it is not an InteractionGraph file (no metadata).")
    try:
        raw = data["meta"]
        if raw.dtype == np.uint8 and raw.ndim == 1:
            text = raw.tobytes().decode("utf-8")
        elif raw.dtype.kind == "U" and raw.ndim == 0:  # version 1 wrote a unicode scalar
            text = str(raw)
        else:
            raise _BadFile(f"the metadata has dtype {raw.dtype}; expected UTF-8 JSON bytes.")
        meta = json.loads(text)
    except _BadFile:
        raise
    except Exception as exc:
        raise _BadFile(f"the metadata cannot be read ({type(exc).__name__}: {exc}).") from None
    if not isinstance(meta, dict):
        raise _BadFile("the metadata is not a JSON object.")
    version = meta.get("version")
    known = isinstance(version, int) and 1 <= version <= _VERSION
    if meta.get("format") != _FORMAT or not known:
        raise _BadFile(
            f"it is not an InteractionGraph file of a version this sklearn-lib reads "
            f"(format {meta.get('format')!r}, version {version!r}; this sklearn-lib reads "
            f"format {_FORMAT!r} versions 1 to {_VERSION})."
        )
    return meta


def _field(meta: dict, key: str, check, what: str):
    if key not in meta:
        raise _BadFile(f"metadata field {key!r} is missing.")
    value = meta[key]
    if not check(value):
        raise _BadFile(f"metadata field {key!r} must be {what}; got {value!r}.")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_ablation(meta_ablation, pairs, edges) -> tuple:
    if not isinstance(meta_ablation, list) or len(meta_ablation) != len(pairs):
        raise _BadFile(f"metadata field 'ablation' must be a list of {len(pairs)} results.")
    if edges is None:
        raise _BadFile("it has ablation results but no edges.")
    results = []
    for p, r in enumerate(meta_ablation):
        if not isinstance(r, dict):
            raise _BadFile(f"ablation result {p} is not a JSON object.")
        r = dict(r)
        # Version 1 had no search fields; its searches were bisections, where the stable count
        # equals the answer by construction.
        r.setdefault("search", "bisect")
        if "n_edges_needed" in r:
            r.setdefault("n_edges_needed_stable", r["n_edges_needed"])
        if set(r) != set(_ABLATION_FIELDS):
            missing, extra = set(_ABLATION_FIELDS) - set(r), set(r) - set(_ABLATION_FIELDS)
            raise _BadFile(
                f"ablation result {p} has missing fields {sorted(missing)} or unknown fields "
                f"{sorted(extra)}."
            )
        for key, typ in _ABLATION_TYPES.items():
            ok = {str: lambda v: isinstance(v, str), int: _is_int, float: _is_real,
                  list: lambda v: isinstance(v, list)}[typ](r[key])
            if not ok:
                raise _BadFile(f"ablation result {p}: field {key!r} has the wrong type "
                               f"({r[key]!r}).")
        if r["metric"] not in ("accuracy", "loss") or r["search"] not in ("bisect", "scan"):
            raise _BadFile(f"ablation result {p}: unknown metric {r['metric']!r} or search "
                           f"{r['search']!r}.")
        if not (math.isfinite(r["tolerance"]) and r["tolerance"] >= 0
                and math.isfinite(r["base_score"])):
            raise _BadFile(f"ablation result {p}: tolerance and base_score must be finite (and "
                           "the tolerance non-negative).")
        probes = r["probes"]
        if not all(isinstance(q, list) and len(q) == 2 and _is_int(q[0]) and _is_real(q[1])
                   for q in probes):
            raise _BadFile(f"ablation result {p}: probes must be [edges kept, score] pairs.")
        if not 0 <= r["n_edges_needed_stable"] <= r["n_edges_total"]:
            raise _BadFile(f"ablation result {p}: n_edges_needed_stable is outside "
                           f"[0, {r['n_edges_total']}].")
        r["probes"] = tuple((int(k), float(v)) for k, v in probes)
        for key in ("tolerance", "epsilon", "base_score", "score_at_needed",
                    "score_at_one_fewer"):
            r[key] = float(r[key])
        result = AblationResult(**r)
        problem = _ablation_mismatch(result, pairs[p], edges[p])
        if problem:
            raise _BadFile(f"ablation result {p} does not belong to the edges ({problem}).")
        results.append(result)
    return tuple(results)


def _parse(cls, path: Path, data, adapter: Any) -> InteractionGraph:
    meta = _meta(data)
    basis = _field(meta, "basis", lambda v: v in _BASES, f"one of {list(_BASES)}")
    layers = _field(meta, "layers",
                    lambda v: isinstance(v, list) and len(v) >= 1
                    and all(isinstance(x, str) for x in v) and len(set(v)) == len(v),
                    "a list of distinct layer names")
    n_layers = len(layers)
    n_fixed = _field(meta, "n_fixed",
                     lambda v: isinstance(v, list) and len(v) == n_layers
                     and all(_is_int(x) and x >= 1 for x in v),
                     f"a list of {n_layers} positive ints")
    has_edges = _field(meta, "has_edges", lambda v: isinstance(v, bool), "true or false")
    has_comm = _field(meta, "has_communities", lambda v: isinstance(v, bool), "true or false")
    modularity = _field(meta, "modularity",
                        lambda v: v is None or (_is_real(v) and math.isfinite(v)),
                        "null or a finite number")
    meta_ablation = _field(meta, "ablation", lambda v: v is None or isinstance(v, list),
                           "null or a list")
    completeness = None
    if meta["version"] >= 3:  # older files did not record it
        completeness = _field(
            meta, "completeness_errors",
            lambda v: v is None or (isinstance(v, list) and len(v) == n_layers - 1 and all(
                _is_real(e) and math.isfinite(e) and e >= 0 for e in v)),
            f"null or a list of {n_layers - 1} finite numbers >= 0")
        if completeness is not None and not has_edges:
            raise _BadFile("it has completeness errors but no edges.")
    bases = []
    for k, name in enumerate(layers):
        C = _array(data, f"C_{k}", "f", 2)
        C_pinv = _array(data, f"C_pinv_{k}", "f", 2)
        eig = _array(data, f"eigenvalues_{k}", "f", 1)
        if C.shape[0] < n_fixed[k] or C.shape[0] > C.shape[1]:
            raise _BadFile(f"C_{k} has shape {C.shape}; a basis of layer {name!r} needs at "
                           f"least n_fixed={n_fixed[k]} and at most {C.shape[1]} rows.")
        if C_pinv.shape != C.shape[::-1]:
            raise _BadFile(f"C_pinv_{k} has shape {C_pinv.shape}; C_{k} has {C.shape}, so "
                           f"C_pinv_{k} must be {C.shape[::-1]}.")
        if eig.shape != (C.shape[0] - n_fixed[k],):
            raise _BadFile(f"eigenvalues_{k} has shape {eig.shape}; layer {name!r} has "
                           f"{C.shape[0] - n_fixed[k]} non-fixed features.")
        bases.append(LayerBasis(name, C, C_pinv, eig, n_fixed[k]))
    sizes = [b.n_features for b in bases]
    edges = None
    if has_edges:
        edges = []
        for k in range(n_layers - 1):
            E = _array(data, f"edges_{k}", "f", 2)
            if E.shape != (sizes[k + 1], sizes[k]):
                raise _BadFile(f"edges_{k} has shape {E.shape}; the bases have {sizes[k + 1]} "
                               f"and {sizes[k]} features, so it must be "
                               f"{(sizes[k + 1], sizes[k])}.")
            if (E < 0).any():
                raise _BadFile(f"edges_{k} has negative entries; edges are RMS attributions.")
            edges.append(E)
        edges = tuple(edges)
    communities = None
    if has_comm:
        communities = []
        for k in range(n_layers):
            c = _array(data, f"communities_{k}", "iu", 1)
            if c.shape != (sizes[k],) or (c.size and c.min() < -1):
                raise _BadFile(f"communities_{k} must hold {sizes[k]} community indices >= -1; "
                               f"got shape {c.shape}.")
            communities.append(c)
        communities = tuple(communities)
    pairs = list(zip(layers[:-1], layers[1:]))
    ablation = None if meta_ablation is None else _parse_ablation(meta_ablation, pairs, edges)
    return cls(tuple(layers), tuple(bases), basis, adapter, None, edges, ablation, communities,
               None if modularity is None else float(modularity),
               None if completeness is None else tuple(float(e) for e in completeness))


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

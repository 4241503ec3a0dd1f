"""EdgeAblationSearch: how many edges does each layer pair need? (DESIGN.md section 5)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from sklearn_lib._common import (
    check_finite,
    iter_batches,
    resolve_device,
    resolve_dtype,
    same_arrays,
)
from sklearn_lib._graph import AblationResult, InteractionGraph, check_graph
from sklearn_lib._segments import make_composite

__all__ = ["EdgeAblationSearch"]

_DEFAULT_TOLERANCE = {"accuracy": 1e-3, "loss": 0.1}


def _metric_sums(logits: torch.Tensor, y: torch.Tensor, metric: str) -> tuple[float, int]:
    logits = logits.reshape(-1, logits.shape[-1])
    y = y.reshape(-1)
    if logits.shape[0] != y.shape[0]:
        raise ValueError(
            f"The model output has {logits.shape[0]} predictions but y has {y.shape[0]} labels; "
            "pass one label per sample (per position for sequence outputs)."
        )
    if metric == "accuracy":
        return float((logits.argmax(-1) == y).sum()), y.shape[0]
    loss = torch.nn.functional.cross_entropy(logits.to(torch.float64), y, reduction="sum")
    return float(loss), y.shape[0]


class EdgeAblationSearch(TransformerMixin, BaseEstimator):
    """Bisect, per layer pair, for the fewest edges that keep the model's score.

    For each pair, edges are sorted by ``E``; keeping the ``k`` largest, each output feature
    ``i`` is computed from the inputs with the sources of its ablated edges set to 0, the rest
    of the network runs unchanged, and the score is measured. The search finds the smallest
    ``k`` whose score stays within ``tolerance`` of the score with every edge kept. Edges from
    the constant feature are always kept and not counted; edges into it are identically zero
    and not counted either. Only one pair is ablated at a time.

    Evaluate on held-out data the scikit-learn way: fit parameters ``X_eval`` and ``y_eval``
    (routed through a ``Pipeline`` as ``edgeablationsearch__X_eval=...``). Without them the
    graph's own inputs and ``y`` are used.

    Parameters
    ----------
    metric : {"accuracy", "loss"}, default=None
        ``None``: the adapter's default metric.
    tolerance : float, default=None
        Allowed drop in accuracy (default 0.001) or rise in cross-entropy loss in nats
        (default 0.1).
    batch_size : int, default=1024
    mask_chunk : int, default=16
        Distinct masks evaluated per vectorised forward pass (memory knob of the generic
        path; an adapter's closed-form segments size their own chunks by memory).
    dtype : {"float32", "float64"}, default="float64"
    device : str or torch.device, default="cpu"
    verbose : bool, default=False

    Attributes
    ----------
    results_ : list of AblationResult
        One per layer pair.
    n_edges_needed_ : dict of (str, str) to int
    epsilons_ : dict of (str, str) to float
    n_samples_eval_ : int

    See Also
    --------
    IGEdgeScorer : computes the edges.
    LeidenModularity : uses ``epsilon``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LocalInteractionBasis, IGEdgeScorer, EdgeAblationSearch
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(300, 4))
    >>> y = mlp(torch.tensor(X, dtype=torch.float32)).argmax(1).numpy()
    >>> graph = IGEdgeScorer().fit_transform(LocalInteractionBasis(MLPAdapter(mlp)).fit_transform(X))
    >>> search = EdgeAblationSearch().fit(graph, y)
    >>> [r.n_edges_needed <= r.n_edges_total for r in search.results_]
    [True, True]
    """

    _parameter_constraints: dict = {
        "metric": [StrOptions({"accuracy", "loss"}), None],
        "tolerance": [Interval(Real, 0, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "mask_chunk": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": "no_validation",
        "verbose": ["verbose"],
    }

    def __init__(self, *, metric=None, tolerance=None, batch_size=1024, mask_chunk=16,
                 dtype="float64", device="cpu", verbose=False):
        self.metric = metric
        self.tolerance = tolerance
        self.batch_size = batch_size
        self.mask_chunk = mask_chunk
        self.dtype = dtype
        self.device = device
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, X_eval=None, y_eval=None):
        """Run the search on every layer pair.

        Parameters
        ----------
        X : InteractionGraph
            With edges (the output of :class:`IGEdgeScorer`).
        y : array-like of shape (n_samples,) or (n_samples, n_positions), default=None
            Labels of the graph's inputs; used only when ``X_eval`` is not given.
        X_eval, y_eval : array-like, default=None
            Held-out model inputs and labels to evaluate on (the paper's test split).

        Returns
        -------
        self
        """
        graph = check_graph(X, type(self).__name__)
        graph.require("edges", type(self).__name__, "run IGEdgeScorer first.")
        if graph.adapter is None:
            raise ValueError("EdgeAblationSearch needs the graph's adapter to run the model.")
        adapter = graph.adapter
        if (X_eval is None) != (y_eval is None):
            raise ValueError("Pass both X_eval and y_eval, or neither.")
        if X_eval is None:
            if y is None or graph.X is None:
                raise ValueError(
                    "EdgeAblationSearch needs labels: fit(graph, y) for the graph's inputs, or "
                    "held-out data with fit(graph, X_eval=..., y_eval=...)."
                )
            X_eval, y_eval = graph.X, y
        else:
            X_eval = adapter.check_input(X_eval)
        y_eval = torch.as_tensor(np.asarray(y_eval), dtype=torch.long)
        if y_eval.shape[0] != X_eval.shape[0]:
            raise ValueError(
                f"X_eval has {X_eval.shape[0]} samples but y_eval has {y_eval.shape[0]}."
            )
        metric = self.metric or adapter.default_metric
        tol = _DEFAULT_TOLERANCE[metric] if self.tolerance is None else float(self.tolerance)
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        results = []
        for p, (a, b) in enumerate(tqdm(graph.pairs, desc="edge ablation",
                                        disable=not self.verbose)):
            results.append(self._search(graph, p, X_eval, y_eval, metric, tol, dtype, device))
        self.results_ = results
        self.n_edges_needed_ = {(r.layer_in, r.layer_out): r.n_edges_needed for r in results}
        self.epsilons_ = {(r.layer_in, r.layer_out): r.epsilon for r in results}
        self.n_samples_eval_ = X_eval.shape[0]
        self._edges = graph.edges
        return self

    def _search(self, graph: InteractionGraph, p: int, X_eval, y_eval, metric, tol,
                dtype, device) -> AblationResult:
        adapter, layer_in, layer_out = graph.adapter, graph.layers[p], graph.layers[p + 1]
        E = np.asarray(graph.edges[p])
        n_out, n_in = E.shape
        # Candidate edges: non-constant source (j >= 1) into non-constant target (i >= 1).
        cand = E[1:, 1:].ravel()
        order = np.argsort(-cand, kind="stable")
        rows, cols = np.divmod(order, n_in - 1)
        rows, cols = rows + 1, cols + 1
        n_total = cand.size
        C_in = torch.as_tensor(graph.bases[p].C, dtype=dtype, device=device)
        C_in_pinv = torch.as_tensor(graph.bases[p].C_pinv, dtype=dtype, device=device)
        C_out = torch.as_tensor(graph.bases[p + 1].C, dtype=dtype, device=device)
        C_out_pinv = torch.as_tensor(graph.bases[p + 1].C_pinv, dtype=dtype, device=device)
        F = make_composite(adapter, [layer_in, layer_out], C_in_pinv, C_out, dtype=dtype,
                           device=device)
        rest = adapter.forward_from(layer_out, dtype=dtype, device=device)

        def masks_for(k: int) -> torch.Tensor | None:
            if k >= n_total:
                return None
            m = torch.zeros(n_out, n_in, dtype=dtype, device=device)
            m[:, 0] = 1.0  # edges from the constant are always kept
            m[torch.as_tensor(rows[:k]), torch.as_tensor(cols[:k])] = 1.0
            return m

        cache: dict[int, float] = {}

        def score(k: int) -> float:
            if k in cache:
                return cache[k]
            masks = masks_for(k)
            total, count = 0.0, 0
            for start, xb in iter_batches(X_eval, self.batch_size):
                with torch.no_grad():
                    f = adapter.activations(xb, [layer_in], dtype=dtype, device=device)[layer_in]
                    check_finite(f, f"Activations of layer {layer_in!r}", start)
                    z = f @ C_in.T
                    out = F(z) if masks is None else F.ablated(z, masks, self.mask_chunk)
                    logits = rest(out @ C_out_pinv.T)
                    # NaN logits would score silently (argmax picks the NaN) and report garbage.
                    check_finite(logits, f"Model outputs (ablating {layer_in!r} -> "
                                         f"{layer_out!r})", start)
                s, c = _metric_sums(logits, y_eval[start : start + xb.shape[0]], metric)
                total, count = total + s, count + c
            cache[k] = total / count
            return cache[k]

        def ok(value: float, base: float) -> bool:
            return value >= base - tol if metric == "accuracy" else value <= base + tol

        base = score(n_total)
        lo, hi = 0, n_total
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(score(mid), base):
                hi = mid
            else:
                lo = mid + 1
        needed = hi
        n_probes = len(cache)
        at_needed = score(needed)
        one_fewer = score(needed - 1) if needed > 0 else float("nan")
        if needed > 0:
            epsilon = float(cand[order[needed - 1]])
        else:
            epsilon = float(cand.max()) if cand.size else 0.0
        return AblationResult(
            layer_in=layer_in, layer_out=layer_out, metric=metric, tolerance=tol,
            n_edges_total=int(n_total), n_edges_nonzero=int((cand > 0).sum()),
            n_edges_needed=int(needed), epsilon=epsilon, base_score=float(base),
            score_at_needed=float(at_needed), score_at_one_fewer=float(one_fewer),
            n_probes=n_probes, probes=tuple((int(k), float(v)) for k, v in cache.items()),
        )

    def transform(self, X):
        """Attach the ablation results to a graph with the same edges.

        Parameters
        ----------
        X : InteractionGraph

        Returns
        -------
        graph : InteractionGraph
        """
        check_is_fitted(self, "results_")
        graph = check_graph(X, type(self).__name__)
        if not same_arrays(graph.edges, self._edges):
            raise ValueError(
                "This graph's edges differ from the ones EdgeAblationSearch was fitted on; refit."
            )
        return graph.replace(ablation=tuple(self.results_))

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y, **fit_params).transform(X)

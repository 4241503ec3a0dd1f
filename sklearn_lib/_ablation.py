"""EdgeAblationSearch: how many edges does each layer pair need? (DESIGN.md section 5)."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from sklearn_lib._common import (
    check_finite,
    resolve_device,
    resolve_dtype,
)
from sklearn_lib._graph import (
    AblationResult,
    InteractionGraph,
    _epsilon_for,
    candidate_order,
    check_graph,
)
from sklearn_lib._segments import make_composite, pin_positions
from sklearn_lib._stream import (
    ActivationStream,
    check_data,
    check_same_graph,
    first_inputs,
    n_samples,
)

__all__ = ["BaseScoreWarning", "EdgeAblationSearch", "InSampleEvaluationWarning"]

_DEFAULT_TOLERANCE = {"accuracy": 1e-3, "loss": 0.1}


class InSampleEvaluationWarning(UserWarning):
    """The ablation search scored edges on the inputs the graph was fitted on.

    Edges needed measured in-sample can be optimistic; pass held-out data with
    ``EdgeAblationSearch().fit(graph, X_eval=..., y_eval=...)``.
    """


class BaseScoreWarning(UserWarning):
    """The fitted bases alone change the model's score by more than the search's tolerance.

    With every edge kept, a layer pair's score (``AblationResult.base_score``) runs the model
    through the bases of that pair; it should equal the model's own score
    (``EdgeAblationSearch.model_score_``). When the two differ by more than ``tolerance``,
    truncation dropped directions the model uses, typically because the bases were fitted on
    too few inputs (positions x sequences) for the layer's width.
    """


def check_labels(y, n_samples: int, name: str, samples_of: str) -> np.ndarray:
    # samples_of: the subject and verb of the count message, e.g. "X_eval has".
    """Integer class labels, one per sample (or per position), as an int64 array.

    Integral floats (``1.0``) are accepted and converted; booleans, NaN, inf, non-integral
    floats, strings and objects are refused.
    """
    try:
        arr = np.asarray(y)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} must be an array of integer class labels; {exc}") from None
    if arr.dtype == bool:
        raise ValueError(
            f"{name} holds booleans; pass integer class labels in [0, n_classes) (for two "
            f"classes: {name}.astype(int))."
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf; every sample needs a class label.")
        if not np.all(arr == np.round(arr)):
            bad = float(arr[arr != np.round(arr)].ravel()[0])
            raise ValueError(
                f"{name} holds non-integral values such as {bad!r}; pass integer class labels "
                "in [0, n_classes)."
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class labels; got dtype {arr.dtype}. Encode string "
            "labels with sklearn.preprocessing.LabelEncoder first."
        )
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must have shape (n_samples,) or (n_samples, n_positions); got {arr.shape}."
        )
    if arr.shape[0] != n_samples:
        raise ValueError(f"{samples_of} {n_samples} samples but {name} has {arr.shape[0]}.")
    return arr.astype(np.int64, copy=False)


def check_labels_against_outputs(y: np.ndarray, outputs_shape: tuple, name: str) -> None:
    """Labels must match the model's outputs ``(batch, [positions,] n_classes)``."""
    n_classes = int(outputs_shape[-1])
    per_sample = tuple(outputs_shape[1:-1])
    if y.shape[1:] != per_sample and not (y.ndim == 1 and per_sample == (1,)):
        expected = "(n_samples,)" if per_sample in ((), (1,)) else f"(n_samples, {per_sample[0]})"
        raise ValueError(
            f"{name} has shape {y.shape} but the model's outputs have shape "
            f"(n_samples, {', '.join(map(str, outputs_shape[1:]))}); pass one label per sample "
            f"(per position for sequence outputs): shape {expected}."
        )
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} holds labels from {lo} to {hi} but the model has {n_classes} classes (the "
            f"last dimension of its outputs); labels must lie in [0, {n_classes}). Ignore-index "
            "labels such as -100 are not supported: drop those samples instead."
        )


def _metric_sums(logits: torch.Tensor, y: torch.Tensor, metric: str) -> tuple[float, int]:
    logits = logits.reshape(-1, logits.shape[-1])
    y = y.reshape(-1)
    if metric == "accuracy":
        return float((logits.argmax(-1) == y).sum()), y.shape[0]
    loss = torch.nn.functional.cross_entropy(logits.to(torch.float64), y, reduction="sum")
    return float(loss), y.shape[0]


def scan_grid(n_total: int, n_points: int) -> np.ndarray:
    """The ``k`` a scan probes: every ``k`` when few, else spaced evenly in ``log(k + 1)``."""
    if n_total + 1 <= n_points:
        return np.arange(n_total + 1)
    grid = np.round(np.geomspace(1, n_total + 1, n_points)).astype(np.int64) - 1
    return np.unique(np.concatenate([[0], grid, [n_total]]))


class EdgeAblationSearch(TransformerMixin, BaseEstimator):
    """Search, per layer pair, for the fewest edges that keep the model's score.

    For each pair, candidate edges (non-constant source to non-constant target) are sorted by
    ``E``, largest first (a stable sort: ties keep row-major order). Keeping the ``k`` largest,
    each output feature ``i`` is computed from the inputs with the sources of its ablated edges
    set to 0, the rest of the network runs unchanged, and the score is measured. A ``k`` *keeps
    the score* when it stays within ``tolerance`` of the score with every edge kept. Edges from
    the constant feature are always kept and not counted; edges into it are identically zero
    and not counted either. Only one pair is ablated at a time.

    The score is not monotone in ``k``: removing an edge can help, and a ``k`` that keeps the
    score can sit below one that does not. Two counts are therefore reported:

    - ``n_edges_needed``: the search's answer, a ``k`` that keeps the score while ``k - 1``
      does not. ``search="bisect"`` finds it by bisection on ``[0, n_edges_total]`` (the
      reference implementation's rule; its answer depends on that range when the score is not
      monotone). ``search="gallop"`` probes ``k = 0, 1, 2, 4, 8, ...`` until one keeps the
      score, then bisects below it: the same answer on a monotone curve, with a few more
      probes but none wider than twice the answer, so when few edges are needed (language
      models: about 1%) every ablated pass is narrow and cheap (the closed forms' cost
      grows with the edges kept). ``search="scan"`` probes a grid of ``k`` and bisects
      between the first grid point that keeps the score and the one before it.
    - ``n_edges_needed_stable``: the smallest probed ``k`` above which every probed ``k``
      keeps the score. A bisection never probes a failing ``k`` above its answer, so with
      ``search="bisect"`` or ``"gallop"`` it equals ``n_edges_needed``; a scan sees the whole curve and shows
      where the score leaves the tolerance again (the gap is refined to a single edge).

    Every probed ``(k, score)`` is kept in :attr:`AblationResult.probes`;
    :func:`plot_ablation_curve` draws them.

    Evaluate on held-out data the scikit-learn way: fit parameters ``X_eval`` and ``y_eval``
    (routed through a ``Pipeline`` as ``edgeablationsearch__X_eval=...``). Without them the
    graph's own inputs and ``y`` are used and an :class:`InSampleEvaluationWarning` is issued.

    Parameters
    ----------
    metric : {"accuracy", "loss"}, default=None
        ``None``: the adapter's default metric.
    tolerance : float, default=None
        Allowed drop in accuracy (default 0.001; must be below 1, since accuracy lies in
        [0, 1]) or rise in cross-entropy loss in nats (default 0.1).
    search : {"bisect", "gallop", "scan"}, default="bisect"
        How ``k`` is searched (see above).
    n_scan_points : int, default=64
        Grid size of ``search="scan"``: ``k`` spaced evenly in ``log(k + 1)`` from 0 to every
        edge (fewer after rounding duplicates), or every ``k`` when ``n_edges_total`` is below
        ``n_scan_points``. Each point is one evaluation on the whole evaluation set. A dip of
        the score between two grid points stays unseen: raise it, or use ``scan_k``.
    scan_k : array-like of int, default=None
        Extra ``k`` to probe with ``search="scan"`` (every pair; values above a pair's
        ``n_edges_total`` are ignored), e.g. ``range(90, 131)`` to resolve the curve every
        edge around a known answer.
    batch_size : int, default=1024
    mask_chunk : int, default=16
        Distinct masks evaluated per vectorised forward pass (memory knob of the generic
        path; an adapter's closed-form segments size their own chunks by memory).
    dtype : {"float32", "float64"}, default="float64"
    device : str or torch.device, default="cpu"
    verbose : bool, default=False
        A progress bar per layer pair that moves with every probed ``k``.

    Attributes
    ----------
    results_ : list of AblationResult
        One per layer pair.
    n_edges_needed_ : dict of (str, str) to int
    n_edges_needed_stable_ : dict of (str, str) to int
    epsilons_ : dict of (str, str) to float
        The smallest kept candidate edge per pair (``inf`` when none is kept).
    n_samples_eval_ : int
    model_score_ : float
        The model's own score on the evaluation data (no basis, nothing ablated). A
        :class:`BaseScoreWarning` is issued for every pair whose ``base_score`` (every edge
        kept, through the fitted bases) differs from it by more than ``tolerance`` (at least
        ``1e-5 * max(1, |model_score_|)``, so that round-off never warns).

    See Also
    --------
    IGEdgeScorer : computes the edges.
    InteractionGraph.kept_mask : the edges each search kept.
    LeidenModularity : uses ``epsilon``.
    plot_ablation_curve : score against edges kept.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LocalInteractionBasis, IGEdgeScorer, EdgeAblationSearch
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X, X_test = np.random.default_rng(0).normal(size=(2, 300, 4))
    >>> def labels(X):
    ...     return mlp(torch.tensor(X, dtype=torch.float32)).argmax(1).numpy()
    >>> basis = LocalInteractionBasis(MLPAdapter(mlp))
    >>> graph = IGEdgeScorer().fit_transform(basis.fit_transform(X))
    >>> search = EdgeAblationSearch(search="scan").fit(graph, X_eval=X_test, y_eval=labels(X_test))
    >>> [r.n_edges_needed <= r.n_edges_needed_stable <= r.n_edges_total for r in search.results_]
    [True, True]
    """

    _parameter_constraints: dict = {
        "metric": [StrOptions({"accuracy", "loss"}), None],
        "tolerance": [Interval(Real, 0, None, closed="left"), None],
        "search": [StrOptions({"bisect", "gallop", "scan"})],
        "n_scan_points": [Interval(Integral, 2, None, closed="left")],
        "scan_k": ["array-like", None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "mask_chunk": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": "no_validation",
        "verbose": ["verbose"],
    }

    def __init__(self, *, metric=None, tolerance=None, search="bisect", n_scan_points=64,
                 scan_k=None, batch_size=1024, mask_chunk=16, dtype="float64", device="cpu",
                 verbose=False):
        self.metric = metric
        self.tolerance = tolerance
        self.search = search
        self.n_scan_points = n_scan_points
        self.scan_k = scan_k
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
            Integer labels of the graph's inputs; used only when ``X_eval`` is not given.
        X_eval : array-like, default=None
            Held-out model inputs to evaluate on (the paper's test split).
        y_eval : array-like of shape (n_eval,) or (n_eval, n_positions), default=None
            Their integer labels in ``[0, n_classes)``. A language-model adapter with
            ``label_position="next-token"`` derives missing labels (``y`` or ``y_eval``) from
            the tokens with its ``lm_labels``: the label of position ``t`` is token ``t + 1``.

        Returns
        -------
        self
        """
        graph = check_graph(X, type(self).__name__)
        graph.require("edges", type(self).__name__, "run IGEdgeScorer first.")
        if graph.adapter is None:
            raise ValueError("EdgeAblationSearch needs the graph's adapter to run the model.")
        adapter = graph.adapter
        derive = getattr(adapter, "lm_labels", None)
        if not (callable(derive) and getattr(adapter, "label_position", None) == "next-token"):
            derive = None
        if X_eval is not None and y_eval is None and derive is not None:
            y_eval = derive(X_eval)  # next-token labels, from the tokens themselves
        if X_eval is None and y is None and derive is not None and graph.X is not None:
            y = derive(graph.X)
        if (X_eval is None) != (y_eval is None):
            raise ValueError("Pass both X_eval and y_eval, or neither.")
        if X_eval is None:
            if y is None or graph.X is None:
                raise ValueError(
                    "EdgeAblationSearch needs labels: fit(graph, y) for the graph's inputs, or "
                    "held-out data with fit(graph, X_eval=..., y_eval=...) (a language-model "
                    "adapter with label_position='next-token' derives them from the tokens)."
                )
            warnings.warn(
                "EdgeAblationSearch is scoring on the graph's own inputs, the data the basis "
                "and edges were fitted on, so edges needed may be optimistic. Pass held-out "
                "data with fit(graph, X_eval=..., y_eval=...).",
                InSampleEvaluationWarning, stacklevel=3,
            )
            X_eval = graph.X
            labels = check_labels(y, n_samples(X_eval), "y", "The graph's inputs have")
        else:
            X_eval = check_data(adapter, X_eval, type(self).__name__)
            labels = check_labels(y_eval, n_samples(X_eval), "y_eval", "X_eval has")
        metric = self.metric or adapter.default_metric
        tol = _DEFAULT_TOLERANCE[metric] if self.tolerance is None else float(self.tolerance)
        if metric == "accuracy" and tol >= 1:
            raise ValueError(
                f"tolerance={tol} with metric='accuracy' allows any score (accuracy lies in "
                "[0, 1]), so every pair would need 0 edges. Pass a tolerance below 1, e.g. "
                "0.001 for 0.1 percentage points."
            )
        self._scan_k = np.zeros(0, dtype=np.int64)
        if self.scan_k is not None:
            extra = np.asarray(self.scan_k).ravel()
            if extra.dtype.kind not in "iu" or (extra.size and extra.min() < 0):
                raise ValueError(
                    f"scan_k must hold non-negative integers (numbers of edges kept); got "
                    f"{np.asarray(self.scan_k)!r}."
                )
            if self.search != "scan":
                raise ValueError("scan_k is used by search='scan' only; set search='scan'.")
            self._scan_k = np.unique(extra.astype(np.int64))
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        # Labels against the model's outputs on the first batch, before any search.
        first = graph.layers[0]
        with torch.no_grad():
            xb = first_inputs(adapter, X_eval, self.batch_size)
            out = adapter.forward_from(first, dtype=dtype, device=device)(
                adapter.activations(xb, [first], dtype=dtype, device=device)[first])
        check_labels_against_outputs(labels, tuple(out.shape), "y" if y_eval is None else
                                     "y_eval")
        y_t = torch.as_tensor(labels, dtype=torch.long, device=device)
        model_score = self._model_score(adapter, first, X_eval, y_t, metric, dtype, device)
        # One stream per pair for all its probes: the input layer's activations are computed
        # once and kept when they fit the stream's memory budget (the batch bounds memory
        # otherwise).
        results = [
            self._search(graph, p, ActivationStream(
                adapter, X_eval, batch_size=self.batch_size, dtype=dtype, device=device,
                keep=[graph.layers[p]]), y_t, metric, tol, dtype, device)
            for p in range(len(graph.pairs))
        ]
        # Round-off in the bases (float32) must not warn, even with tolerance=0.
        threshold = max(tol, 1e-5 * max(1.0, abs(model_score)))
        for r in results:
            # The bases alone (every edge kept) should not move the model's score: when they
            # do, truncation dropped directions the model uses (e.g. too few training tokens)
            # and the search measures a different model.
            if abs(r.base_score - model_score) > threshold:
                warnings.warn(
                    f"The bases of {r.layer_in!r} -> {r.layer_out!r} change the model's score "
                    f"before any edge is ablated: {metric} {r.base_score:.4g} with every edge "
                    f"kept against the model's own {model_score:.4g} (more than the tolerance "
                    f"{threshold:g}). Truncation dropped directions the model uses: fit the bases on "
                    "more data, or lower rtol/atol.",
                    BaseScoreWarning, stacklevel=3,
                )
        self.results_ = results
        self.n_edges_needed_ = {(r.layer_in, r.layer_out): r.n_edges_needed for r in results}
        self.n_edges_needed_stable_ = {
            (r.layer_in, r.layer_out): r.n_edges_needed_stable for r in results
        }
        self.epsilons_ = {(r.layer_in, r.layer_out): r.epsilon for r in results}
        self.n_samples_eval_ = n_samples(X_eval)
        self.model_score_ = model_score
        self._edges = graph.edges
        return self

    def _model_score(self, adapter, layer, X_eval, y_eval, metric, dtype, device) -> float:
        """The model's own score on the evaluation data (no basis, no ablation).

        Not checked for NaN here: the search's first probe raises with the layer pair named.
        """
        rest = adapter.forward_from(layer, dtype=dtype, device=device)
        stream = ActivationStream(adapter, X_eval, batch_size=self.batch_size, dtype=dtype,
                                  device=device)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in stream.batches([layer]):
                logits = rest(batch.acts[layer])
                s, c = _metric_sums(logits, y_eval[batch.start : batch.start + batch.size],
                                    metric)
                total, count = total + s, count + c
        (sums,) = stream.reduce_sum(torch.tensor([total, count], dtype=torch.float64))
        total, count = sums.tolist()
        return total / count

    def _search(self, graph: InteractionGraph, p: int, stream: ActivationStream, y_eval,
                metric, tol, dtype, device) -> AblationResult:
        adapter, layer_in, layer_out = graph.adapter, graph.layers[p], graph.layers[p + 1]
        E = np.asarray(graph.edges[p])
        n_out, n_in = E.shape
        rows, cols, values = candidate_order(E)
        n_total = values.size
        C_in = torch.tensor(graph.bases[p].C, dtype=dtype, device=device)
        C_in_pinv = torch.tensor(graph.bases[p].C_pinv, dtype=dtype, device=device)
        C_out = torch.tensor(graph.bases[p + 1].C, dtype=dtype, device=device)
        C_out_pinv = torch.tensor(graph.bases[p + 1].C_pinv, dtype=dtype, device=device)
        F = make_composite(adapter, [layer_in, layer_out], C_in_pinv, C_out, dtype=dtype,
                           device=device)
        rest = adapter.forward_from(layer_out, dtype=dtype, device=device)
        # Positions the adapter leaves out of the bases (e.g. an attention sink) run at their
        # exact activations: into the segment (pin_positions) and out of it, into the rest of
        # the network (the segment's own output there, kept per batch across the probes).
        skip = int(getattr(adapter, "skip_positions", 0))
        seg = adapter.segment(layer_in, dtype=dtype, device=device) if skip else None
        held: dict[int, torch.Tensor] = {}
        pinned: dict[int, tuple] = {}  # the last batch's pinned inputs and composite

        def run(batch, masks: torch.Tensor | None) -> torch.Tensor:
            """The network's output from ``layer_in`` with the segment in the bases, ablated."""
            z, G = batch.z[layer_in], F
            if skip:
                if batch.start not in pinned:  # one batch (the usual held-out set): built once
                    acts = batch.acts[layer_in]
                    zp, in_pinned = pin_positions(z, acts, C_in_pinv, skip)
                    pinned.clear()
                    pinned[batch.start] = zp, make_composite(
                        adapter, [layer_in, layer_out], in_pinned, C_out, dtype=dtype,
                        device=device)
                    if batch.start not in held:
                        held[batch.start] = seg(acts)[:, :skip]
                z, G = pinned[batch.start]
                if masks is not None:  # the held coordinates are never ablated
                    masks = torch.cat([masks, masks.new_ones(n_out, z.shape[-1] - n_in)], 1)
            out = G(z) if masks is None else G.ablated(z, masks, self.mask_chunk)
            acts_out = out @ C_out_pinv.T
            if skip:
                acts_out[:, :skip] = held[batch.start]
            return rest(acts_out)

        def masks_for(k: int) -> torch.Tensor | None:
            if k >= n_total:
                return None
            m = torch.zeros(n_out, n_in, dtype=dtype, device=device)
            m[:, 0] = 1.0  # edges from the constant are always kept
            m[torch.as_tensor(rows[:k]), torch.as_tensor(cols[:k])] = 1.0
            return m

        grid = None
        if self.search == "scan":
            grid = np.union1d(scan_grid(n_total, self.n_scan_points),
                              self._scan_k[self._scan_k <= n_total])
        expected = (len(grid) if grid is not None else math.ceil(math.log2(n_total + 1)) + 1)
        bar = tqdm(total=expected, desc=f"ablation {layer_in} -> {layer_out}", unit="probe",
                   disable=not self.verbose)
        cache: dict[int, float] = {}

        def score(k: int) -> float:
            if k in cache:
                return cache[k]
            masks = masks_for(k)
            total, count = 0.0, 0
            with torch.no_grad():
                for batch in stream.batches([layer_in], projections={layer_in: C_in}):
                    logits = run(batch, masks)
                    # NaN logits would score silently (argmax picks the NaN) and report garbage.
                    check_finite(logits, f"Model outputs (ablating {layer_in!r} -> "
                                         f"{layer_out!r})", batch.start)
                    s, c = _metric_sums(logits, y_eval[batch.start : batch.start + batch.size],
                                        metric)
                    total, count = total + s, count + c
            (sums,) = stream.reduce_sum(torch.tensor([total, count], dtype=torch.float64))
            total, count = sums.tolist()
            cache[k] = total / count
            if bar.n >= bar.total:
                bar.total = bar.n + 1
            bar.update(1)
            return cache[k]

        def ok(k: int) -> bool:
            value = score(k)
            return value >= base - tol if metric == "accuracy" else value <= base + tol

        def bisect(lo: int, hi: int) -> int:
            """Smallest k in [lo, hi] that keeps the score, given that hi does (bisection)."""
            while lo < hi:
                mid = (lo + hi) // 2
                if ok(mid):
                    hi = mid
                else:
                    lo = mid + 1
            return hi

        def stable() -> int:
            """Smallest probed k above which every probed k keeps the score."""
            s = n_total
            for k in sorted(cache, reverse=True):
                if not ok(k):
                    break
                s = k
            return s

        try:
            base = score(n_total)
            if grid is None and self.search == "gallop":
                lo, k = 0, 0
                while k < n_total and not ok(k):
                    lo, k = k + 1, min(n_total, max(1, 2 * k))
                needed = bisect(lo, k)
            elif grid is None:
                needed = bisect(0, n_total)
            else:
                for k in grid[::-1]:
                    score(int(k))
                first = min(int(k) for k in grid if ok(int(k)))
                below = [int(k) for k in grid if k < first]
                needed = bisect(max(below) + 1, first) if below else first
                s = stable()
                failing = [k for k in cache if k < s]
                if failing:
                    bisect(max(failing) + 1, s)
            needed_stable = stable()
        finally:
            bar.close()
        return AblationResult(
            layer_in=layer_in, layer_out=layer_out, metric=metric, tolerance=tol,
            n_edges_total=int(n_total), n_edges_nonzero=int((values > 0).sum()),
            n_edges_needed=int(needed), n_edges_needed_stable=int(needed_stable),
            epsilon=_epsilon_for(values, needed), base_score=float(base),
            score_at_needed=float(score(needed)),
            score_at_one_fewer=float(score(needed - 1)) if needed > 0 else float("nan"),
            n_probes=len(cache), probes=tuple(sorted((int(k), float(v)) for k, v in cache.items())),
            search=self.search,
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
        check_same_graph(graph.edges, self._edges, what="edges", owner=type(self).__name__)
        return graph.replace(ablation=tuple(self.results_))

    def fit_transform(self, X, y=None, **fit_params):
        """Fit on the graph, then attach the results to it (see :meth:`fit`)."""
        return self.fit(X, y, **fit_params).transform(X)

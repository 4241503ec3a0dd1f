"""IGEdgeScorer: integrated-gradient edges between the features of adjacent node layers."""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sklearn_lib._common import (
    check_finite,
    resolve_device,
    resolve_dtype,
    torch_generator,
)
from sklearn_lib._graph import check_graph
from sklearn_lib._interaction import sample_sources
from sklearn_lib._segments import make_composite, pin_positions, segment_attributions
from sklearn_lib._stream import ActivationStream, check_same_graph, n_samples

__all__ = ["IGEdgeScorer", "quadrature"]

#: ``IGEdgeScorer`` warns when a layer pair's relative completeness error exceeds this, unless
#: the adapter reports the pair's segment as a norm division (``is_norm_division``).
COMPLETENESS_WARNING_THRESHOLD = 0.05


def quadrature(integration: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights of an integration rule for ``int_0^1 g(alpha)``.

    ``"endpoint"``: the single point ``alpha = 1`` (exact for constant integrands, i.e. for
    the gradients of positively homogeneous segments such as ReLU MLPs with folded biases).
    ``"gauss-legendre"``: ``n_steps`` points, exact for polynomials of degree ``2 n_steps - 1``.
    ``"trapezoidal"``: ``n_steps >= 2`` equally spaced points, exact for degree 1.
    """
    if integration == "endpoint":
        return np.ones(1), np.ones(1)
    if integration == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return (x + 1.0) / 2.0, w / 2.0
    if integration == "trapezoidal":
        if n_steps < 2:
            raise ValueError(
                f"The trapezoidal rule needs n_steps >= 2 points; got n_steps={n_steps}."
            )
        alphas = np.linspace(0.0, 1.0, n_steps)
        w = np.full(n_steps, 1.0 / (n_steps - 1))
        w[[0, -1]] /= 2.0
        return alphas, w
    raise ValueError(
        f"integration must be 'endpoint', 'gauss-legendre' or 'trapezoidal'; got {integration!r}."
    )


class IGEdgeScorer(TransformerMixin, BaseEstimator):
    """Integrated-gradient edges between the basis features of adjacent node layers.

    With ``F`` the segment in basis coordinates (``f_hat^l -> f_hat^{l+1}``),

    .. math::

        A_{(i,s),j}(x) = \\sum_t \\hat f^l_{j,t}(x) \\int_0^1
            \\frac{\\partial F_{i,s}}{\\partial z_{j,t}}\\Big|_{z=\\alpha \\hat f^l(x)} d\\alpha,
        \\qquad
        E_{ij} = \\sqrt{\\tfrac{1}{NT} \\textstyle\\sum_{x,s} A_{(i,s),j}(x)^2}.

    ``T`` is the number of positions of the input layer (the reference implementation's
    convention where a layer pair keeps fewer positions than it reads; it scales a pair's
    edges by one constant).

    The constant feature 0 is a node like the others. Completeness holds:
    ``sum_j A_(i,s),j = F_(i,s)(f_hat)`` (up to quadrature error), since ``F(0) = 0``.
    ``fit`` computes the edges on the graph's inputs, streaming a sum of squares and a count.

    ``fit`` also measures how far completeness is from holding, per layer pair (like captum's
    convergence delta): ``completeness_errors_[l]`` is the RMS over data, positions (or
    stochastic sources) and output features ``i >= 1`` of ``sum_j A_(i,s),j - f_hat^{l+1}_(i,s)``,
    divided by the RMS of ``f_hat^{l+1}_(i,s)`` (the constant output ``i = 0`` is exact and
    left out). It is quadrature error (the ``"endpoint"`` rule is exact only for positively
    homogeneous segments; attention and smooth activations need ``"gauss-legendre"``) plus
    what the bases truncate. A segment that divides by a layer norm's scale is homogeneous of
    degree 0, so integrated gradients from 0 are not complete on it by construction. ``fit``
    warns (``UserWarning``) when the error exceeds ``COMPLETENESS_WARNING_THRESHOLD`` (0.05)
    on a pair whose segment the adapter does not report as a norm division (an adapter
    reports one through an optional ``is_norm_division(layer)`` method).

    Parameters
    ----------
    integration : {"endpoint", "gauss-legendre", "trapezoidal"}, default="endpoint"
        ``"endpoint"``: the single point ``alpha = 1``, as the paper does throughout.
    n_steps : int, default=10
        Points of the Gauss-Legendre or trapezoidal rule (ignored for ``"endpoint"``).
    n_stochastic_sources : int, default=None
        Estimate the sum over output positions with this many random +-1 sources (paper
        appendix C.1, unbiased). ``None``: exact.
    batch_size : int, default=256
    chunk_size : int, default=None
        VJPs (reverse mode) or JVPs (forward mode) vectorised at once, a memory knob
        (default: what fits 64 MiB). The whole Jacobian is never held.
    dtype : {"float32", "float64"}, default="float64"
    device : str or torch.device, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : bool, default=False

    Attributes
    ----------
    edges_ : tuple of ndarray
        ``edges_[l]`` has shape ``(n_features(l+1), n_features(l))``.
    completeness_errors_ : ndarray of shape (n_layers - 1,)
        Relative completeness error of every layer pair (see above).
    pairs_ : list of (str, str)
    n_samples_ : int

    See Also
    --------
    EdgeAblationSearch : the next pipeline step.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LocalInteractionBasis, IGEdgeScorer
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(300, 4))
    >>> graph = LocalInteractionBasis(MLPAdapter(mlp)).fit_transform(X)
    >>> [E.shape for E in IGEdgeScorer().fit_transform(graph).edges]
    [(4, 5), (4, 4)]
    """

    _parameter_constraints: dict = {
        "integration": [StrOptions({"endpoint", "gauss-legendre", "trapezoidal"})],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "n_stochastic_sources": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": "no_validation",
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        integration="endpoint",
        n_steps=10,
        n_stochastic_sources=None,
        batch_size=256,
        chunk_size=None,
        dtype="float64",
        device="cpu",
        random_state=None,
        verbose=False,
    ):
        self.integration = integration
        self.n_steps = n_steps
        self.n_stochastic_sources = n_stochastic_sources
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the edges of every adjacent layer pair on the graph's inputs.

        Parameters
        ----------
        X : InteractionGraph
        y : None
            Ignored.

        Returns
        -------
        self
        """
        graph = check_graph(X, type(self).__name__)
        if graph.adapter is None or graph.X is None:
            raise ValueError(
                "IGEdgeScorer needs the graph's adapter and model inputs; use the output of a "
                "basis estimator's transform, or graph.replace(adapter=...).with_data(X)."
            )
        alphas, weights = quadrature(self.integration, self.n_steps)
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        generator = torch_generator(self.random_state)
        adapter, layers, X = graph.adapter, graph.layers, graph.X
        pairs = list(range(len(layers) - 1))
        C = [torch.tensor(b.C, dtype=dtype, device=device) for b in graph.bases]
        C_pinv = [torch.tensor(b.C_pinv, dtype=dtype, device=device) for b in graph.bases]

        def make(p, in_map):  # basis l -> basis l+1
            return make_composite(adapter, [layers[p], layers[p + 1]], in_map, C[p + 1],
                                  dtype=dtype, device=device, chunk_size=self.chunk_size)

        fns = [make(p, C_pinv[p]) for p in pairs]
        sums = [torch.zeros(b.n_features, a.n_features, dtype=torch.float64)
                for a, b in zip(graph.bases[:-1], graph.bases[1:])]
        counts = [0 for _ in pairs]
        miss = np.zeros(len(pairs))  # sums of squares: completeness residual and f_hat^{l+1}
        size = np.zeros(len(pairs))
        # Sources are drawn per sample from (seed, sample index, pair): the same in any
        # batching or sharding.
        seed = (None if self.n_stochastic_sources is None
                else int(torch.randint(2**62, (1,), generator=generator)))
        # Positions the adapter leaves out of the edges (e.g. an attention sink): attributions
        # from or to them are not summed (completeness is still checked on all of them), and
        # they are held at their exact activations, outside the bases fitted without them.
        skip = int(getattr(adapter, "skip_positions", 0))
        stream = ActivationStream(adapter, X, batch_size=self.batch_size, dtype=dtype,
                                  device=device, verbose=self.verbose)
        for batch in stream.batches(layers, projections=dict(zip(layers, C)), desc="IG edges"):
            for p in pairs:
                z, F = batch.z[layers[p]], fns[p]
                n_in = z.shape[-1]
                if skip:
                    z, in_pinned = pin_positions(z, batch.acts[layers[p]], C_pinv[p], skip)
                    F = make(p, in_pinned)
                A, sources, A_kept = self._attributions(
                    F, z, alphas, weights, (seed, batch.start, p), dtype, device,
                    return_sources=True, skip=skip)
                A_kept = A_kept[..., :n_in]  # the held coordinates are not features
                check_finite(A, f"Attributions {layers[p]!r} -> {layers[p + 1]!r}", batch.start)
                sums[p] += (A_kept.to(torch.float64) ** 2).sum(dim=(0, 1)).cpu()
                counts[p] += z.shape[0] * (z.shape[1] - skip)  # N T, T = positions of layer l
                target = batch.z[layers[p + 1]]  # f_hat^{l+1}: (batch, S, n_out)
                if sources is not None:
                    target = torch.einsum("brs,bsi->bri", sources, target) / sources.shape[1] ** 0.5
                residual = (A.sum(-1) - target)[..., 1:].to(torch.float64)
                miss[p] += float((residual**2).sum())
                size[p] += float((target[..., 1:].to(torch.float64) ** 2).sum())
        *sums, totals = stream.reduce_sum(
            *sums, torch.tensor(np.stack([counts, miss, size]), dtype=torch.float64))
        counts, miss, size = totals[0].tolist(), totals[1].numpy(), totals[2].numpy()
        self.edges_ = tuple((s / c).sqrt().numpy() for s, c in zip(sums, counts))
        self.completeness_errors_ = np.sqrt(miss / np.maximum(size, np.finfo(float).tiny))
        divides = getattr(adapter, "is_norm_division", None)
        for p in pairs:
            error = self.completeness_errors_[p]
            if error > COMPLETENESS_WARNING_THRESHOLD and not (
                callable(divides) and divides(layers[p])
            ):
                warnings.warn(
                    f"Integrated gradients are incomplete on {layers[p]!r} -> "
                    f"{layers[p + 1]!r}: the attributions miss f_hat^(l+1) by {error:.1%} "
                    f"(RMS, relative; threshold {COMPLETENESS_WARNING_THRESHOLD:.0%}). "
                    + ("The 'endpoint' rule is exact only for positively homogeneous segments "
                       "(ReLU MLPs); use integration='gauss-legendre' for attention and smooth "
                       "activations" if self.integration == "endpoint" else
                       "Use more n_steps")
                    + ", or keep more basis directions (smaller rtol).",
                    UserWarning,
                    stacklevel=2,
                )
        self.pairs_ = graph.pairs
        self.n_samples_ = n_samples(X)
        self._bases = graph.bases
        return self

    def _attributions(self, F, z, alphas, weights, draw, dtype, device,
                      return_sources=False, skip=0):
        """``A`` of shape (batch, S, n_out, n_in); S output positions or stochastic sources.

        ``F`` is a :class:`CompositeSegment` (or an adapter's closed-form one); ``draw`` is
        ``(seed, first sample index, pair index)`` for the stochastic sources. With
        ``return_sources``, also the sources of shape (batch, R, S) (``None`` when exact;
        zero on the first ``skip`` output positions) and the attributions that count for the
        edges: neither from nor to the first ``skip`` positions (``A`` when ``skip=0``).
        """
        R = self.n_stochastic_sources
        sources = None
        if R is not None:
            with torch.no_grad():
                t_out = F(z[:1]).shape[1]
            seed, start, stream = draw
            sources = sample_sources(seed, start, z.shape[0], (R, t_out), dtype, device, stream)
            sources[..., :skip] = 0
        # Contracted with z as the Jacobian is computed (or in closed form): never held whole.
        A, A_kept = segment_attributions(F, z, alphas, weights, sources, skip)
        if not return_sources:
            return A
        return A, sources, A_kept

    def transform(self, X):
        """Attach the fitted edges to a graph with the same bases.

        Parameters
        ----------
        X : InteractionGraph

        Returns
        -------
        graph : InteractionGraph
            A new graph with ``edges`` and ``completeness_errors`` (this scorer's
            ``completeness_errors_``) set.
        """
        check_is_fitted(self, "edges_")
        graph = check_graph(X, type(self).__name__)
        check_same_graph([b.C for b in graph.bases], [b.C for b in self._bases], what="bases",
                         owner=type(self).__name__,
                         hint="refit the scorer on this graph (edges belong to one basis).")
        return graph.replace(edges=self.edges_,
                             completeness_errors=tuple(self.completeness_errors_.tolist()))

    def fit_transform(self, X, y=None):
        return self.fit(X, y).transform(X)

"""LocalInteractionBasis and GlobalInteractionBasis (DESIGN.md section 5, the LIB step)."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from sklearn_lib._common import (
    torch_generator,
    check_adapter,
    check_finite,
    check_layers,
    resolve_device,
    resolve_dtype,
)
from sklearn_lib._graph import InteractionGraph
from sklearn_lib._segments import make_composite, pin_positions, segment_gram
from sklearn_lib._stream import ActivationStream, check_data
from sklearn_lib._linalg import LayerBasis, rotate_basis
from sklearn_lib._whitening import _BASIS_PARAMS, fit_pca_bases

__all__ = ["LocalInteractionBasis", "GlobalInteractionBasis"]


def sample_sources(seed: int, start: int, n: int, shape, dtype, device,
                   stream: int = 0) -> torch.Tensor:
    """Stochastic sources of ``n`` samples from ``start`` on, ``(n, *shape)``, each +-1.

    Sample ``k`` draws from its own generator, derived from ``(seed, stream, k)``: the sources
    of a sample do not depend on the batch size, on which process reads it or in which order
    (``stream`` separates independent draws for the same samples, e.g. one per layer pair).
    """
    rows = []
    for k in range(start, start + n):
        state = np.random.SeedSequence([int(seed), int(stream), int(k)]).generate_state(
            1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        rows.append(torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int64))
    return (2 * torch.stack(rows) - 1).to(dtype=dtype, device=device)


class _InteractionBasis(TransformerMixin, BaseEstimator):
    """Shared fit of LIB and GIB; subclasses choose the target layer of the Jacobian."""

    _target_is_final = False
    _basis_name = "lib"

    _parameter_constraints: dict = {
        **_BASIS_PARAMS,
        "n_stochastic_sources": [Interval(Integral, 1, None, closed="left"), None],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        adapter=None,
        *,
        layers=None,
        rotate_final=True,
        rtol=None,
        atol=0.0,
        n_stochastic_sources=None,
        batch_size=256,
        chunk_size=None,
        dtype="float64",
        device="cpu",
        random_state=None,
        verbose=False,
    ):
        self.adapter = adapter
        self.layers = layers
        self.rotate_final = rotate_final
        self.rtol = rtol
        self.atol = atol
        self.n_stochastic_sources = n_stochastic_sources
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the basis of every node layer on model inputs.

        Parameters
        ----------
        X : array-like
            Model inputs, as the adapter takes them (e.g. ``(n_samples, n_features)`` floats for
            an MLP, ``(n_samples, n_positions)`` tokens for a transformer).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        adapter = check_adapter(self.adapter, type(self).__name__)
        layers = check_layers(adapter, self.layers, type(self).__name__)
        dtype = resolve_dtype(self.dtype)
        device = resolve_device(self.device, type(self).__name__)
        X = check_data(adapter, X, type(self).__name__)
        generator = torch_generator(self.random_state)
        # One stream for the moments and every LIB layer: the activations the moments pass
        # computes are kept for the Jacobian passes when they fit the stream's memory budget.
        stream = ActivationStream(adapter, X, batch_size=self.batch_size, dtype=dtype,
                                  device=device, keep=layers, verbose=self.verbose)
        pca = fit_pca_bases(
            adapter, X, layers, whiten=True, rotate_final=self.rotate_final, rtol=self.rtol,
            atol=self.atol, batch_size=self.batch_size, dtype=dtype, device=device,
            verbose=self.verbose, stream=stream,
        )
        bases: list[LayerBasis | None] = [None] * len(layers)
        bases[-1] = pca[-1]
        steps = range(len(layers) - 2, -1, -1)
        for l in tqdm(steps, desc=f"{self._basis_name.upper()} layers", disable=not self.verbose):
            target = bases[-1] if self._target_is_final else bases[l + 1]
            span = list(layers[l:]) if self._target_is_final else [layers[l], layers[l + 1]]
            out_map = torch.as_tensor(target.C, dtype=dtype, device=device)

            def make(in_map, span=span, out_map=out_map):
                return make_composite(adapter, span, in_map, out_map, dtype=dtype,
                                      device=device, chunk_size=self.chunk_size)

            gram = self._jacobian_gram(adapter, stream, layers[l], pca[l], make, dtype, device,
                                       generator)
            bases[l] = rotate_basis(pca[l], gram, rtol=self.rtol, atol=self.atol, dtype=dtype)
        self.bases_ = bases
        self.layers_ = layers
        self.n_components_ = {b.name: b.n_components for b in bases}
        return self

    def _jacobian_gram(self, adapter, X, layer, pca: LayerBasis, make, dtype, device,
                       generator) -> torch.Tensor:
        """``M_jj' = 1/(N T) sum_x sum_{s,t,i} J_(i,s),(j,t) J_(i,s),(j',t)`` (DESIGN.md 5).

        ``make(in_map)`` builds ``G``, the map from the whitened coordinates of ``layer`` to
        the target layer in its basis; ``J`` is its Jacobian. Skipped positions (the
        adapter's ``skip_positions``) are held at their exact activations
        (:func:`~sklearn_lib._segments.pin_positions`), so ``J`` is taken where the model
        really is. The sum over output positions ``s`` is exact or, with
        stochastic sources, replaced by ``R`` random +-1 combinations (unbiased). ``T`` counts
        the positions of ``layer`` (the reference implementation's convention; it only scales
        ``M``). Accumulated in float64.
        """
        if not isinstance(X, ActivationStream):
            X = ActivationStream(adapter, X, batch_size=self.batch_size, dtype=dtype,
                                 device=device, verbose=self.verbose)
        P = torch.as_tensor(pca.C, dtype=dtype, device=device)
        P_pinv = torch.as_tensor(pca.C_pinv, dtype=dtype, device=device)
        G = make(P_pinv)
        n_fixed, k = pca.n_fixed, pca.n_components
        R = self.n_stochastic_sources
        # Sources are drawn per sample from (seed, sample index): the same in any batching or
        # sharding.
        seed = None if R is None else int(torch.randint(2**62, (1,), generator=generator))
        gram = torch.zeros(k, k, dtype=torch.float64, device=device)
        count = 0
        # Positions the adapter leaves out of the bases (e.g. an attention sink): neither
        # input positions t nor output positions s below ``skip`` enter the sum.
        skip = int(getattr(adapter, "skip_positions", 0))
        for batch in X.batches([layer], projections={layer: P}, desc=f"Jacobians at {layer}"):
            z = batch.z[layer]
            sources = None
            if R is not None:
                with torch.no_grad():
                    t_out = G(z[:1]).shape[1]
                sources = sample_sources(seed, batch.start, z.shape[0], (R, t_out), dtype, device)
                sources[..., :skip] = 0
            G_batch = G
            if skip:  # the skipped positions at their own activations, not the truncated basis
                z, in_pinned = pin_positions(z, batch.acts[layer], P_pinv, skip)
                G_batch = make(in_pinned)
            # Streamed (never the whole Jacobian) or in closed form.
            part = segment_gram(G_batch, z, sources, n_fixed, skip)[:k, :k]
            check_finite(part, f"Jacobians at layer {layer!r}", batch.start)
            gram += part
            count += z.shape[0] * (z.shape[1] - skip)
        gram, count = X.reduce_sum(gram, torch.tensor(float(count), dtype=torch.float64))
        return gram.cpu() / float(count)

    def transform(self, X):
        """The :class:`InteractionGraph` of these model inputs in the fitted bases.

        Parameters
        ----------
        X : array-like
            Model inputs.

        Returns
        -------
        graph : InteractionGraph
        """
        check_is_fitted(self, "bases_")
        X = check_data(self.adapter, X, type(self).__name__)
        return InteractionGraph(
            layers=self.layers_, bases=tuple(self.bases_), basis=self._basis_name,
            adapter=self.adapter, X=X,
        )


_DOC_PARAMS = """
    Parameters
    ----------
    adapter : ModelAdapter
        The model, presented as node layers and segment maps (see :mod:`sklearn_lib.adapters`).
    layers : list of str, default=None
        Consecutive node layers to use (default: all of the adapter's).
    rotate_final : bool, default=True
        Centre and rotate the last node layer onto its principal axes (``C^L = U H``, not
        rescaled); ``False`` keeps it as it is.
    rtol : float or None, default=None
        Truncation of the activation covariance, then of the Jacobian Gram matrix ``M``, by
        one rule. ``None``: drop eigenvalues at or below the round-off level of the matrix,
        ``1e4 * d * (eps_64 * lambda_max + eps**2 * E||v||^2)`` with ``d`` its size,
        ``eps_64`` the float64 epsilon (the sums are float64), ``eps`` that of ``dtype`` and
        ``E||v||^2`` the mean squared norm of the vectors summed (activations uncentred,
        Jacobian rows): free of units, and each kept eigenvalue is known to about four
        digits, so the kept dimension does not change with batch size, row order, threads or
        machine (see ``docs/math.md``). A float: drop eigenvalues at most ``rtol`` times the
        largest. ``rtol=0, atol=1e-15`` reproduces the reference implementation.
    atol : float, default=0.0
        Absolute floor of the truncation in eigenvalue units (which scale with the square of
        the inputs); ``0`` keeps the rule free of units.
    n_stochastic_sources : int, default=None
        Replace the sum over output positions by this many random +-1 sources (paper
        appendix C); exact for position-wise segments. ``None``: exact sum.
    batch_size : int, default=256
        Model inputs per batch; bounds peak memory with the Jacobian size.
    chunk_size : int, default=None
        VJPs (reverse mode) or JVPs (forward mode) vectorised at once, a memory knob
        (default: what fits 64 MiB). The whole Jacobian is never held.
    dtype : {"float32", "float64"}, default="float64"
        Dtype of forward passes and Jacobians (sums are accumulated in float64).
    device : str or torch.device, default="cpu"
    random_state : int, RandomState instance or None, default=None
        Seeds the stochastic sources.
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    bases_ : list of LayerBasis
        Per node layer: ``C`` (features ``f_hat = C f``), its right inverse ``C_pinv``, the kept
        eigenvalues ``Lambda`` (``D`` for the last layer) and the kept dimension.
    layers_ : tuple of str
        The node layers.
    n_components_ : dict of str to int
        Kept directions per layer (the constant excluded).
"""


class LocalInteractionBasis(_InteractionBasis):
    __doc__ = (
        """The Local Interaction Basis (LIB) of every node layer of a model.

    From the last node layer back, each layer is whitened (``f~ = D^{-1/2} U (f - mu)``, null
    directions dropped) and rotated onto the eigenvectors of the Gram matrix of the Jacobian
    to the *next* layer's basis, scaled by how much each direction matters:

    .. math::

        M_{jj'} = \\frac{1}{NT} \\sum_{x,s,t,i} J_{(i,s),(j,t)} J_{(i,s),(j',t)},\\quad
        M = V^T \\Lambda V,\\quad C^l = \\Lambda^{1/2} V D^{-1/2} U H

    (paper eqs. 6-7 and Algorithm 1). Features come out ordered by importance.
"""
        + _DOC_PARAMS
        + """
    See Also
    --------
    GlobalInteractionBasis : Jacobians to the final layer instead of the next.
    PCAWhitener : the PCA baseline (``PCAWhitener(adapter)``).
    IGEdgeScorer : the next pipeline step.

    References
    ----------
    Bushnaq et al., "The Local Interaction Basis: Identifying Computationally-Relevant and
    Sparsely Interacting Features in Neural Networks", arXiv:2405.10928 (2024).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LocalInteractionBasis
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(300, 4))
    >>> lib = LocalInteractionBasis(MLPAdapter(mlp)).fit(X)
    >>> lib.n_components_
    {'input': 4, '1': 3, '2': 3}
    """
    )


class GlobalInteractionBasis(_InteractionBasis):
    __doc__ = (
        """The Global Interaction Basis (GIB): LIB with Jacobians to the final layer.

    As :class:`LocalInteractionBasis`, but ``J`` differentiates the final node layer (in its
    basis) with respect to the whitened layer ``l``, so features are ordered by their
    importance for the output rather than for the next layer.
"""
        + _DOC_PARAMS
        + """
    See Also
    --------
    LocalInteractionBasis

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import GlobalInteractionBasis
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(300, 4))
    >>> GlobalInteractionBasis(MLPAdapter(mlp)).fit(X).n_components_["input"]
    4
    """
    )

    _target_is_final = True
    _basis_name = "gib"

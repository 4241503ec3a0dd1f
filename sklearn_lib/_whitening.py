"""PCAWhitener: centre, rotate onto principal axes, drop null directions, whiten."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from sklearn_lib._common import (
    check_adapter,
    check_finite,
    check_layers,
    iter_batches,
    resolve_device,
    resolve_dtype,
)
from sklearn_lib._graph import InteractionGraph
from sklearn_lib._linalg import LayerBasis, MomentAccumulator, n_significant, pca_basis, sorted_eigh

__all__ = ["PCAWhitener"]

_BASIS_PARAMS = {
    "adapter": "no_validation",
    "layers": ["array-like", None],
    "rotate_final": ["boolean"],
    "rtol": [Interval(Real, 0, 1, closed="left")],
    "atol": [Interval(Real, 0, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "dtype": [StrOptions({"float32", "float64"})],
    "device": "no_validation",
    "verbose": ["verbose"],
}


def identity_basis(name: str, dim: int, variances: np.ndarray) -> LayerBasis:
    """The unrotated basis of a layer: the activations themselves, constant first."""
    eye = np.eye(dim)
    return LayerBasis(name, eye, eye.copy(), variances, 1)


def fit_layer_moments(
    adapter, X: Any, layers: tuple[str, ...], *, batch_size: int, dtype, device, verbose: bool
) -> dict[str, MomentAccumulator]:
    """Stream the model inputs once; accumulate mean and scatter of each layer's rotatable part."""
    moments = {layer: MomentAccumulator() for layer in layers}
    fixed = {layer: adapter.fixed_features(layer) for layer in layers}
    skip = int(getattr(adapter, "skip_positions", 0))
    batches = iter_batches(X, batch_size)
    for start, xb in tqdm(batches, desc="activation moments", disable=not verbose,
                          total=-(-X.shape[0] // batch_size), leave=False):
        acts = adapter.activations(xb, layers, dtype=dtype, device=device)
        for layer in layers:
            f = acts[layer]
            check_finite(f, f"Activations of layer {layer!r}", start)
            if skip and f.ndim == 3:  # the adapter leaves its first positions out of the bases
                f = f[:, skip:]
            keep = [j for j in range(f.shape[-1]) if j not in fixed[layer]]
            moments[layer].update(f[..., keep].reshape(-1, len(keep)))
    return moments


def fit_pca_bases(
    adapter,
    X: Any,
    layers: tuple[str, ...],
    *,
    whiten: bool,
    rotate_final: bool,
    rtol: float,
    atol: float,
    batch_size: int,
    dtype,
    device,
    verbose: bool,
) -> list[LayerBasis]:
    """PCA step (DESIGN.md section 5) on every node layer; the final one is never whitened."""
    moments = fit_layer_moments(
        adapter, X, layers, batch_size=batch_size, dtype=dtype, device=device, verbose=verbose
    )
    bases = []
    for i, layer in enumerate(layers):
        fixed = adapter.fixed_features(layer)
        mom = moments[layer]
        dim = mom.mean.shape[0] + len(fixed)
        final = i == len(layers) - 1
        if final and not rotate_final:
            variances = torch.diagonal(mom.covariance()).cpu().numpy()
            bases.append(identity_basis(layer, dim, variances))
            continue
        bases.append(
            pca_basis(
                layer,
                mom.mean.cpu(),
                mom.covariance().cpu(),
                tuple(fixed),
                dim,
                whiten=whiten and not final,
                rtol=rtol,
                atol=atol,
            )
        )
    return bases


class PCAWhitener(TransformerMixin, BaseEstimator):
    """Centre, rotate onto principal axes, drop null directions and whiten.

    On a plain array of activations it is an ordinary scikit-learn transformer. Given a model
    ``adapter`` it is the PCA baseline of LIB: it fits a basis for every node layer and
    ``transform`` returns an :class:`InteractionGraph`, a drop-in for
    :class:`LocalInteractionBasis` in the same pipeline.

    With ``mu`` the mean and ``G = U^T D U`` the covariance (accumulated in float64),

    .. math::

        \\tilde f = D^{-1/2} U (f - \\mu)

    keeping only directions whose eigenvalue exceeds ``max(atol, rtol * D_max)``.

    Parameters
    ----------
    adapter : ModelAdapter, default=None
        Model adapter. ``None``: work on plain arrays of activations.
    whiten : bool or "auto", default="auto"
        Rescale each direction to unit variance. ``"auto"``: whiten plain arrays, but not the
        node layers of a model (the PCA baseline of the LIB paper centres and rotates only;
        whitening an output layer reorders its IG edges).
    rtol : float, default=1e-13
        Directions with eigenvalue at most ``rtol`` times the largest are dropped.
    atol : float, default=1e-15
        Absolute floor of the truncation.
    layers : list of str, default=None
        With an adapter: consecutive node layers to use (default: all of the adapter's).
    rotate_final : bool, default=True
        With an adapter: rotate the last node layer onto its principal axes; ``False`` keeps it
        as it is (the paper's modular-addition setting keeps the logits unrotated).
    batch_size : int, default=256
        With an adapter: model inputs per forward pass.
    dtype : {"float32", "float64"}, default="float64"
        With an adapter: dtype of the forward passes (moments are always accumulated in float64).
    device : str or torch.device, default="cpu"
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    components_ : ndarray of shape (n_components, n_features)
        Principal axes, sorted by decreasing variance, with deterministic signs.
    explained_variance_ : ndarray of shape (n_components,)
    n_components_ : int
        Kept directions (arrays); with an adapter, a dict ``layer -> int``.
    n_features_in_ : int
    bases_ : list of LayerBasis
        With an adapter: the basis of every node layer.
    layers_ : tuple of str
        With an adapter: the node layers.

    See Also
    --------
    LocalInteractionBasis : the basis this is the baseline of.
    sklearn.decomposition.PCA : the same rotation, without the machine-independent truncation.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_lib import PCAWhitener
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 2)) @ [[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]]  # rank 2 in 3-D
    >>> w = PCAWhitener().fit(X)
    >>> w.n_components_
    2
    >>> bool(np.allclose(np.cov(w.transform(X).T, bias=True), np.eye(2)))
    True
    """

    _parameter_constraints: dict = {
        **_BASIS_PARAMS,
        "whiten": ["boolean", StrOptions({"auto"})],
    }

    def __init__(
        self,
        adapter=None,
        *,
        whiten="auto",
        rtol=1e-13,
        atol=1e-15,
        layers=None,
        rotate_final=True,
        batch_size=256,
        dtype="float64",
        device="cpu",
        verbose=False,
    ):
        self.adapter = adapter
        self.whiten = whiten
        self.rtol = rtol
        self.atol = atol
        self.layers = layers
        self.rotate_final = rotate_final
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _whitens(self) -> bool:
        return (self.adapter is None) if self.whiten == "auto" else bool(self.whiten)

    # -- plain arrays ---------------------------------------------------------------------
    def _validate_array(self, X, reset: bool):
        Xa = X if hasattr(X, "ndim") else np.asarray(X)
        shape = None
        if getattr(Xa, "ndim", 2) == 3:
            shape = Xa.shape
            X = np.asarray(Xa).reshape(-1, shape[-1])
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        return X, shape

    def _finish_array_fit(self) -> None:
        mom = self._moments
        if mom.count < 2:
            raise ValueError(
                f"PCAWhitener needs at least 2 samples to estimate a covariance; got "
                f"n_samples = {mom.count} (1 sample)."
            )
        values, vectors = sorted_eigh(mom.covariance())
        k = n_significant(values, self.rtol, self.atol)
        if k == 0:
            raise ValueError(
                "Every direction has negligible variance (the data are constant); there is "
                "nothing to whiten. Check the data, or lower atol."
            )
        self.mean_ = mom.mean.numpy()
        self.components_ = vectors[:k].numpy()
        self.explained_variance_ = values[:k].numpy()
        self.n_components_ = k
        self.n_samples_seen_ = mom.count

    def partial_fit(self, X, y=None):
        """Add a batch to the streaming mean and covariance (float64), then refit the basis.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_positions, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : PCAWhitener
        """
        if self.adapter is not None:
            raise ValueError(
                "partial_fit works on plain arrays of activations; with an adapter, call fit "
                "on the model inputs."
            )
        first = not hasattr(self, "_moments")
        if first:
            self._validate_params()
        X, _ = self._validate_array(X, reset=first)
        if first:
            self._moments = MomentAccumulator()
        self._moments.update(torch.tensor(np.asarray(X), dtype=torch.float64))
        if self._moments.count >= 2:
            self._finish_array_fit()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the basis.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_positions, n_features)
            Activations; or, with an adapter, model inputs.
        y : None
            Ignored.

        Returns
        -------
        self : PCAWhitener
        """
        for attr in ("_moments", "bases_", "layers_"):
            self.__dict__.pop(attr, None)
        if self.adapter is not None:
            return self._fit_adapter(X)
        X, _ = self._validate_array(X, reset=True)
        self._moments = MomentAccumulator()
        self._moments.update(torch.tensor(np.asarray(X), dtype=torch.float64))
        self._finish_array_fit()
        return self

    def transform(self, X):
        """Project onto the kept principal axes (whitened unless ``whiten=False``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_positions, n_features)
            Activations; or, with an adapter, model inputs.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components) or (n_samples, n_positions, n_components)
            With an adapter: an :class:`InteractionGraph` of the inputs.
        """
        if self.adapter is not None:
            check_is_fitted(self, "bases_")
            X = self.adapter.check_input(X)
            return InteractionGraph(
                layers=self.layers_, bases=tuple(self.bases_), basis="pca",
                adapter=self.adapter, X=X,
            )
        check_is_fitted(self, "components_")
        X, shape = self._validate_array(X, reset=False)
        out = (X - self.mean_.astype(X.dtype)) @ self.components_.T.astype(X.dtype)
        if self._whitens():
            out = out / np.sqrt(self.explained_variance_).astype(X.dtype)
        return out if shape is None else out.reshape(*shape[:-1], -1)

    def inverse_transform(self, X):
        """Map features back to activations (the projection onto the kept directions).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components) or (n_samples, n_positions, n_components)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "components_")
        X = np.asarray(X)
        shape = X.shape if X.ndim == 3 else None
        X2 = X.reshape(-1, X.shape[-1]) if shape else X
        if X2.ndim != 2 or X2.shape[1] != self.n_components_:
            raise ValueError(
                f"inverse_transform expects {self.n_components_} features (n_components_); got "
                f"shape {X.shape}."
            )
        if self._whitens():
            X2 = X2 * np.sqrt(self.explained_variance_)
        out = X2 @ self.components_ + self.mean_
        out = out.astype(X.dtype) if X.dtype in (np.float32, np.float64) else out
        return out if shape is None else out.reshape(*shape[:-1], -1)

    # -- model adapters -------------------------------------------------------------------
    def _fit_adapter(self, X):
        adapter = check_adapter(self.adapter, type(self).__name__)
        layers = check_layers(adapter, self.layers, type(self).__name__)
        X = adapter.check_input(X)
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        self.bases_ = fit_pca_bases(
            adapter, X, layers, whiten=self._whitens(), rotate_final=self.rotate_final,
            rtol=self.rtol, atol=self.atol, batch_size=self.batch_size, dtype=dtype,
            device=device, verbose=self.verbose,
        )
        self.layers_ = layers
        self.n_components_ = {b.name: b.n_components for b in self.bases_}
        return self

"""PCAWhitener: centre, rotate onto principal axes, drop null directions, whiten."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted, validate_data

from sklearn_lib._common import (
    check_adapter,
    check_array_input,
    check_layers,
    resolve_device,
    resolve_dtype,
)
from sklearn_lib._graph import InteractionGraph
from sklearn_lib._stream import ActivationStream, check_data
from sklearn_lib._linalg import LayerBasis, MomentAccumulator, n_significant, pca_basis, sorted_eigh

__all__ = ["PCAWhitener"]

_BASIS_PARAMS = {
    "adapter": "no_validation",
    "layers": ["array-like", None],
    "rotate_final": ["boolean"],
    "rtol": [Interval(Real, 0, 1, closed="left"), None],
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
    adapter, X: Any, layers: tuple[str, ...], *, batch_size: int, dtype, device, verbose: bool,
    stream: ActivationStream | None = None,
) -> dict[str, MomentAccumulator]:
    """Stream the model inputs once; accumulate mean and scatter of each layer's rotatable part.

    ``stream`` (default: a new one over ``X``) reads, checks and shards the batches; the
    moments of the ranks are merged, so every rank gets those of the whole data.
    """
    if stream is None:
        stream = ActivationStream(adapter, X, batch_size=batch_size, dtype=dtype,
                                  device=device, verbose=verbose)
    moments = {layer: MomentAccumulator() for layer in layers}
    fixed = {layer: adapter.fixed_features(layer) for layer in layers}
    skip = int(getattr(adapter, "skip_positions", 0))
    for batch in stream.batches(layers, desc="activation moments"):
        for layer in layers:
            f = batch.acts[layer]
            if skip and f.ndim == 3:  # the adapter leaves its first positions out of the bases
                f = f[:, skip:]
            keep = [j for j in range(f.shape[-1]) if j not in fixed[layer]]
            moments[layer].update(f[..., keep].reshape(-1, len(keep)))
    return {layer: stream.reduce_moments(m) for layer, m in moments.items()}


def fit_pca_bases(
    adapter,
    X: Any,
    layers: tuple[str, ...],
    *,
    whiten: bool,
    rotate_final: bool,
    rtol: float | None,
    atol: float,
    batch_size: int,
    dtype,
    device,
    verbose: bool,
    stream: ActivationStream | None = None,
) -> list[LayerBasis]:
    """PCA step (DESIGN.md section 5) on every node layer; the final one is never whitened.

    ``stream``: the :class:`~sklearn_lib._stream.ActivationStream` to read (LIB passes the one
    its Jacobian passes read, so activations computed here can be kept for them).
    """
    moments = fit_layer_moments(
        adapter, X, layers, batch_size=batch_size, dtype=dtype, device=device, verbose=verbose,
        stream=stream,
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
                dtype=dtype,
            )
        )
    return bases


class PCAWhitener(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Centre, rotate onto principal axes, drop null directions and whiten.

    On a plain array of activations it is an ordinary scikit-learn transformer. Given a model
    ``adapter`` it is the PCA baseline of LIB: it fits a basis for every node layer and
    ``transform`` returns an :class:`InteractionGraph`, a drop-in for
    :class:`LocalInteractionBasis` in the same pipeline.

    With ``mu`` the mean and ``G = U^T D U`` the covariance (accumulated in float64),

    .. math::

        \\tilde f = D^{-1/2} U (f - \\mu)

    keeping only directions whose eigenvalue ``D_k`` exceeds the truncation threshold. With
    ``rtol=None`` (default) the threshold is relative to the data only,

    .. math::

        \\tau = 10^4\\, d\\, (\\epsilon_{64} D_{max} + \\epsilon^2 \\, E\\|f\\|^2),

    with ``d`` the number of features, ``epsilon_64`` the float64 machine epsilon (round-off of
    the Gram matrix accumulated in float64), ``epsilon`` that of the input dtype (float32 or
    float64 arrays; with an adapter, of ``dtype``) and ``E||f||^2`` the mean squared norm of
    the uncentred rows: each kept eigenvalue is known to about four digits, so the kept
    dimension does not depend on the units of ``X``, the batch size, the row order, the number
    of threads or the machine. A float ``rtol`` gives the threshold ``max(atol, rtol * D_max)``
    instead. See ``docs/math.md`` (truncation).

    Parameters
    ----------
    adapter : ModelAdapter, default=None
        Model adapter. ``None``: work on plain arrays of activations.
    whiten : bool or "auto", default="auto"
        Rescale each direction to unit variance. ``"auto"``: whiten plain arrays, but not the
        node layers of a model (the PCA baseline of the LIB paper centres and rotates only;
        whitening an output layer reorders its IG edges).
    rtol : float or None, default=None
        Relative truncation: directions with eigenvalue at most ``rtol`` times the largest are
        dropped. ``None``: the round-off rule above (for float64 data about
        ``2.2e-12 * n_features`` of the largest eigenvalue). ``0`` keeps every nonzero
        direction.
    atol : float, default=0.0
        Absolute floor of the truncation, in the units of the eigenvalues (squared units of
        ``X``); ``0`` (default) keeps the rule free of units.
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
    n_components_ : dict of str to int
        Kept directions per node layer, as in :class:`LocalInteractionBasis`; for plain arrays
        the one entry ``{"X": n_components}``. One type in both modes, so code written for a
        pipeline of either reads it the same way.
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
    {'X': 2}
    >>> w.get_feature_names_out().tolist()
    ['pcawhitener0', 'pcawhitener1']
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
        rtol=None,
        atol=0.0,
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
        if not hasattr(X, "iloc"):  # DataFrames go to validate_data as they are (column names)
            X = check_array_input(X, type(self).__name__)
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
        covariance = mom.covariance()
        values, vectors = sorted_eigh(covariance)
        mean_square = float(torch.trace(covariance)) + float(mom.mean @ mom.mean)
        k = n_significant(values, self.rtol, self.atol, mean_square=mean_square,
                          dtype=self._input_dtype)
        if k == 0:
            raise ValueError(
                "Every direction has negligible variance (the data are constant up to "
                "round-off); there is nothing to whiten. Check the data, or pass a smaller "
                "rtol (rtol=0 keeps every nonzero direction)."
            )
        self.mean_ = mom.mean.numpy()
        self.components_ = vectors[:k].numpy()
        self.explained_variance_ = values[:k].numpy()
        self.n_components_ = {"X": k}
        self.n_samples_seen_ = mom.count

    def _update_moments(self, X) -> None:
        """Fold validated rows into the float64 moments; remember the least precise dtype."""
        dtype = torch.float32 if X.dtype == np.float32 else torch.float64
        if getattr(self, "_input_dtype", torch.float64) == torch.float32:
            dtype = torch.float32
        self._input_dtype = dtype
        self._moments.update(torch.tensor(np.asarray(X), dtype=torch.float64))

    @property
    def _n_features_out(self) -> int:
        """Width of ``transform`` on plain arrays (used by ``get_feature_names_out``)."""
        return self.components_.shape[0]

    def get_feature_names_out(self, input_features=None):
        """Output feature names ``pcawhitener0, pcawhitener1, ...`` (plain arrays).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Checked against the names seen in ``fit``; otherwise unused.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        if self.adapter is not None:
            raise AttributeError(
                "get_feature_names_out is defined for plain arrays; with an adapter, transform "
                "returns an InteractionGraph (use graph.node_names() or LayerFeatures)."
            )
        check_is_fitted(self, "components_")
        return super().get_feature_names_out(input_features)

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
            resolve_device(self.device, type(self).__name__)
        X, _ = self._validate_array(X, reset=first)
        if first:
            self._moments = MomentAccumulator()
            self._input_dtype = torch.float64
        self._update_moments(X)
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
        for attr in ("_moments", "_input_dtype", "bases_", "layers_", "components_", "mean_",
                     "explained_variance_", "n_samples_seen_"):
            self.__dict__.pop(attr, None)
        if self.adapter is not None:
            return self._fit_adapter(X)
        resolve_device(self.device, type(self).__name__)
        X, _ = self._validate_array(X, reset=True)
        self._moments = MomentAccumulator()
        self._input_dtype = torch.float64
        self._update_moments(X)
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
            X = check_data(self.adapter, X, type(self).__name__)
            return InteractionGraph(
                layers=self.layers_, bases=tuple(self.bases_), basis="pca",
                adapter=self.adapter, X=X,
            )
        check_is_fitted(self, "components_")
        X, shape = self._validate_array(X, reset=False)
        if shape is not None and _get_output_config("transform", self)["dense"] != "default":
            raise ValueError(
                f"set_output(transform={_get_output_config('transform', self)['dense']!r}) needs "
                f"2-D output, but X has positions (shape {shape}). Reshape X to (n_samples * "
                "n_positions, n_features) first, or use set_output(transform='default')."
            )
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
        k = self.components_.shape[0]
        if X2.ndim != 2 or X2.shape[1] != k:
            raise ValueError(
                f"inverse_transform expects {k} features (n_components_); got shape "
                f"{X.shape}."
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
        dtype = resolve_dtype(self.dtype)
        device = resolve_device(self.device, type(self).__name__)
        X = check_data(adapter, X, type(self).__name__)
        self.bases_ = fit_pca_bases(
            adapter, X, layers, whiten=self._whitens(), rotate_final=self.rotate_final,
            rtol=self.rtol, atol=self.atol, batch_size=self.batch_size, dtype=dtype,
            device=device, verbose=self.verbose,
        )
        self.layers_ = layers
        self.n_components_ = {b.name: b.n_components for b in self.bases_}
        return self

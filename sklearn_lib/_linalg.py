"""Numerical building blocks: streaming moments, sorted eigendecompositions, basis matrices.

Everything here works in float64 torch tensors; callers convert at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MomentAccumulator",
    "sorted_eigh",
    "n_significant",
    "truncation_threshold",
    "ROUNDOFF_SAFETY",
    "pca_basis",
    "rotate_basis",
    "LayerBasis",
]


class MomentAccumulator:
    """Streaming mean and centred scatter matrix of rows, merged batch by batch in float64.

    Uses the pairwise update of Chan et al. (mean and scatter of each batch, then a rank-one
    correction), which stays accurate when the mean is large compared with the spread.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.scatter: Tensor | None = None

    def update(self, rows: Tensor) -> None:
        """Add ``Float[Tensor, "n d"]`` rows."""
        rows = rows.to(torch.float64)
        if rows.shape[0] == 0:
            return
        if self.count and rows.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"Rows have {rows.shape[1]} features but earlier batches had {self.mean.shape[0]}."
            )
        batch = MomentAccumulator()
        batch.count, batch.mean = rows.shape[0], rows.mean(0)
        centred = rows - batch.mean
        batch.scatter = centred.T @ centred
        self.merge(batch)

    def merge(self, other: "MomentAccumulator") -> None:
        """Fold another accumulator in (for data-parallel accumulation)."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.scatter = other.count, other.mean, other.scatter
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.scatter = self.scatter + other.scatter + torch.outer(delta, delta) * (
            self.count * other.count / total
        )
        self.mean = self.mean + delta * (other.count / total)
        self.count = total

    def covariance(self) -> Tensor:
        """``G = E[(f - mu)(f - mu)^T]``, normalised by the count (DESIGN.md section 5)."""
        return self.scatter / self.count


def sorted_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors as *rows* of a symmetric PSD matrix.

    Signs are deterministic: the entry of largest magnitude of each eigenvector is positive
    (the convention of sklearn's ``svd_flip``).
    """
    matrix = 0.5 * (matrix + matrix.T)
    values, vectors = torch.linalg.eigh(matrix)
    values, vectors = values.flip(0), vectors.flip(1)
    # The matrix is PSD by construction; tiny negative eigenvalues are round-off.
    values = values.clamp(min=0.0)
    pivot = vectors.abs().argmax(0)
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return values, (vectors * signs).T


#: Safety factor of the default truncation: a kept eigenvalue must exceed the round-off bound
#: of its matrix by this factor, so it is known to about four significant digits.
ROUNDOFF_SAFETY = 1e4

_EPS64 = float(torch.finfo(torch.float64).eps)


def truncation_threshold(
    values: Tensor,
    rtol: float | None,
    atol: float,
    *,
    mean_square: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Eigenvalues at or below this are negligible (``values``: the spectrum, descending).

    ``rtol`` given: ``max(atol, rtol * lambda_max)``. ``rtol=None`` (the default of the
    estimators): with ``d = len(values)``, ``eps_64`` and ``eps_dtype`` the machine epsilons of
    float64 and of the forward passes, and ``mean_square`` the mean squared norm of the
    (uncentred) vectors whose Gram matrix this is,

        ``max(atol, 1e4 * d * (eps_64 * lambda_max + eps_dtype**2 * mean_square))``.

    The first term is the round-off of a ``d x d`` Gram matrix accumulated and diagonalised
    in float64 (eigenvalues are exact to about ``d eps_64 lambda_max``); the second, of
    vectors computed in ``dtype`` (relative error ``eps_dtype`` per entry, so null directions
    show up at ``eps_dtype**2`` times their squared norm). The factor ``1e4`` asks four
    significant digits of every kept eigenvalue, which makes the cut independent of the
    summation order (batch size, row order, threads, machine). Both terms scale with the
    square of the inputs, so the kept dimension does not depend on their units.
    """
    if values.numel() == 0:
        return float(atol)
    largest = float(values[0])
    if rtol is None:
        eps = float(torch.finfo(dtype).eps)
        return max(
            float(atol),
            ROUNDOFF_SAFETY * values.numel() * (_EPS64 * largest + eps**2 * float(mean_square)),
        )
    return max(float(atol), float(rtol) * largest)


def n_significant(
    values: Tensor,
    rtol: float | None,
    atol: float,
    *,
    mean_square: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> int:
    """Number of eigenvalues above :func:`truncation_threshold` (values sorted descending).

    An all-zero spectrum keeps nothing (the threshold is then ``atol >= 0``), so callers can
    raise a clear error instead of dividing by a zero eigenvalue.
    """
    threshold = truncation_threshold(values, rtol, atol, mean_square=mean_square, dtype=dtype)
    return int((values > threshold).sum())


@dataclass(frozen=True)
class LayerBasis:
    """A basis of one node layer: ``f_hat = C @ f`` (column convention; code uses rows).

    Attributes
    ----------
    name : str
        The node layer.
    C : ndarray of shape (n_features_out, 1 + d)
        Maps activations (constant first) to basis features. The first ``n_fixed`` rows map the
        fixed coordinates (the constant, and any an adapter keeps out of rotations) unchanged.
    C_pinv : ndarray of shape (1 + d, n_features_out)
        A right inverse: ``C @ C_pinv = I``; ``C_pinv @ C`` projects onto the kept directions.
    eigenvalues : ndarray of shape (n_components,)
        Kept eigenvalues that define the directions: the activation variances ``D`` for PCA,
        the Jacobian-Gram eigenvalues ``Lambda`` for LIB and GIB.
    n_fixed : int
        Number of leading fixed features (the constant node is feature 0).
    """

    name: str
    C: np.ndarray
    C_pinv: np.ndarray
    eigenvalues: np.ndarray
    n_fixed: int = 1

    @property
    def n_components(self) -> int:
        """Kept non-fixed directions."""
        return self.C.shape[0] - self.n_fixed

    @property
    def n_features(self) -> int:
        """All basis features, the constant included."""
        return self.C.shape[0]


def pca_basis(
    name: str,
    mean: Tensor,
    covariance: Tensor,
    fixed: tuple[int, ...],
    dim: int,
    *,
    whiten: bool,
    rtol: float | None,
    atol: float,
    dtype: torch.dtype = torch.float64,
) -> LayerBasis:
    """PCA step of DESIGN.md section 5 on the non-fixed coordinates of a ``dim``-wide layer.

    ``C = [fixed ; D^{-1/2} U (f - mu f_0)]`` (or without ``D^{-1/2}`` when ``whiten=False``),
    with negligible eigen-directions of ``G = covariance`` dropped (:func:`truncation_threshold`,
    ``dtype`` being that of the forward passes that produced the activations).
    """
    rotated = [j for j in range(dim) if j not in fixed]
    values, vectors = sorted_eigh(covariance)
    mean_square = float(torch.trace(covariance)) + float(mean @ mean)
    k = n_significant(values, rtol, atol, mean_square=mean_square, dtype=dtype)
    if k == 0:
        raise ValueError(
            f"Every direction of layer {name!r} has negligible variance (largest eigenvalue "
            f"{float(values[0]) if values.numel() else 0.0:.3g}, mean square "
            f"{mean_square:.3g}); the activations are constant up to round-off. Check the "
            "data, or pass a smaller rtol (rtol=0 keeps every nonzero direction)."
        )
    values, U = values[:k], vectors[:k]
    scale = values.rsqrt() if whiten else torch.ones_like(values)
    W = scale[:, None] * U  # (k, d_rot)
    W_inv = U.T / scale[None, :]  # (d_rot, k): W @ W_inv = I
    n_fixed = len(fixed)
    C = torch.zeros(n_fixed + k, dim, dtype=torch.float64)
    C_pinv = torch.zeros(dim, n_fixed + k, dtype=torch.float64)
    for out, j in enumerate(fixed):
        C[out, j] = 1.0
        C_pinv[j, out] = 1.0
    rot = torch.tensor(rotated, dtype=torch.long)
    C[n_fixed:, rot] = W
    C[n_fixed:, 0] = -(W @ mean)
    C_pinv[rot, n_fixed:] = W_inv
    C_pinv[rot, 0] += mean
    return LayerBasis(name, C.numpy(), C_pinv.numpy(), values.numpy(), n_fixed)


def rotate_basis(
    previous: LayerBasis,
    gram: Tensor,
    *,
    rtol: float | None,
    atol: float,
    dtype: torch.dtype = torch.float64,
) -> LayerBasis:
    """LIB step: ``C = Lambda^{1/2} V C_pca`` from the Jacobian Gram matrix ``M`` (DESIGN.md 5).

    ``gram`` is ``M`` over the non-fixed whitened coordinates of ``previous``; ``dtype`` is that
    of the Jacobians. Truncated by the same rule as the covariance (:func:`truncation_threshold`,
    with the mean square ``trace(M)`` of the Jacobian rows).
    """
    values, V = sorted_eigh(gram)
    k = n_significant(values, rtol, atol, mean_square=float(torch.trace(gram)), dtype=dtype)
    if k == 0:
        raise ValueError(
            f"No direction of layer {previous.name!r} affects the next node layer (largest "
            f"Jacobian-Gram eigenvalue {float(values[0]) if values.numel() else 0.0:.3g}). "
            "Check that the node layers are connected, or pass a smaller rtol."
        )
    values, V = values[:k], V[:k]
    n_fixed = previous.n_fixed
    root = values.sqrt()
    R = torch.zeros(n_fixed + k, previous.n_features, dtype=torch.float64)
    R_inv = torch.zeros(previous.n_features, n_fixed + k, dtype=torch.float64)
    R[:n_fixed, :n_fixed] = torch.eye(n_fixed, dtype=torch.float64)
    R_inv[:n_fixed, :n_fixed] = torch.eye(n_fixed, dtype=torch.float64)
    R[n_fixed:, n_fixed:] = root[:, None] * V  # Lambda^{1/2} V  (eqs. 6-7, Algorithm 1)
    R_inv[n_fixed:, n_fixed:] = V.T / root[None, :]
    C = R @ torch.from_numpy(previous.C)
    C_pinv = torch.from_numpy(previous.C_pinv) @ R_inv
    return LayerBasis(previous.name, C.numpy(), C_pinv.numpy(), values.numpy(), n_fixed)

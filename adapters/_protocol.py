"""The interface between the estimators and a model: node layers and segment maps.

An adapter presents a network as a chain of node layers ``f^0, ..., f^L`` and pure torch maps
between them. Every node layer carries a leading constant coordinate equal to 1 on real data
(bias folding, DESIGN.md section 4): activations have shape ``(batch, pos, 1 + d_l)`` with
``f[..., 0] == 1``, and each segment multiplies every bias by that coordinate so that
``segment(0) == 0``.

:class:`ModelAdapter` is what every adapter must have. Two methods are optional, each with
its own protocol: :class:`SupportsCompositeSegment` (closed-form Jacobians and ablation,
returning a :class:`CompositeSegmentLike`) and :class:`SupportsReferenceForward` (the model's
own forward, which :func:`~sklearn_lib.adapters.verify_forward` compares the chain with). A
third, ``is_norm_division(layer)``, tells :class:`~sklearn_lib.IGEdgeScorer` which segments
divide by a norm's scale (see :class:`ModelAdapter`).
:func:`~sklearn_lib.adapters.check_adapter` runs the whole contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "CompositeSegmentLike",
    "ModelAdapter",
    "SegmentFn",
    "SupportsCompositeSegment",
    "SupportsReferenceForward",
]

#: A pure, batched map ``Float[Tensor, "batch pos_in 1+d_in"] -> Float[Tensor, "batch pos_out 1+d_out"]``.
SegmentFn = Callable[[Tensor], Tensor]


@runtime_checkable
class ModelAdapter(Protocol):
    """What the estimators need from a model.

    The contract (:func:`~sklearn_lib.adapters.check_adapter` checks every point):

    - activations have shape ``(batch, pos, 1 + d)`` in the requested dtype and device, with
      the constant ``f[..., 0] == 1`` exactly;
    - ``segment(l)(activations[l]) == activations[l_next]`` and ``segment(l)(0) == 0`` (every
      bias is multiplied by ``f[..., :1]``, which is passed through);
    - segments are pure torch functions: batched, samples independent, correct under
      ``torch.func.vmap``, ``jacrev`` and ``jacfwd`` (no in-place updates of inputs, no
      ``.item()``, no data-dependent Python control flow, no ``detach``);
    - ``forward_from(l)(activations[l])`` is the model's output for every ``l``, and
      the chained segments followed by ``forward_from`` of the last layer reproduce the
      model's own forward;
    - ``fixed_features(l)`` starts with 0 and lies in ``[0, 1 + d)``;
    - ``__sklearn_clone__()`` returns ``self``.

    Optional: ``composite_segment`` (:class:`SupportsCompositeSegment`),
    ``reference_forward`` (:class:`SupportsReferenceForward`) and
    ``is_norm_division(layer) -> bool``: whether the segment after ``layer`` divides by a
    norm's scale (the "ln out" step of a layer norm or RMSNorm). Such a segment is homogeneous
    of degree 0, so integrated gradients from the origin cannot be complete on it;
    :class:`~sklearn_lib.IGEdgeScorer` still reports its ``completeness_errors_`` but does
    not warn about them. Without the method every segment is expected to be complete (a
    large error warns). ``TransformerAdapter`` implements it.

    Attributes
    ----------
    node_layers : tuple of str
        Names of the node layers, input side first (at least two).
    default_metric : {"accuracy", "loss"}
        The score used by the edge-ablation search unless told otherwise.
    """

    node_layers: tuple[str, ...]
    default_metric: str

    def check_input(self, X: Any) -> Any:
        """Validate model inputs; return them in a form that supports ``len`` and slicing.

        Raises ``ValueError`` naming the problem (wrong shape, NaN, out-of-range tokens, ...).
        """

    def activations(
        self, X: Any, layers: Sequence[str], *, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        """The named node layers' activations, ``Float[Tensor, "batch pos 1+d_l"]``.

        Exactly the requested layers; ``f[..., 0] == 1``. Adapters check on the first batch
        they see that their chain reproduces the model (``verify_forward``).
        """

    def segment(self, layer: str, *, dtype: torch.dtype, device: torch.device) -> SegmentFn:
        """The map from node layer ``layer`` to the next node layer, as a pure torch function.

        ``(batch, pos_in, 1 + d_in) -> (batch, pos_out, 1 + d_out)``; ``segment(0) == 0``.
        """

    def forward_from(
        self, layer: str, *, dtype: torch.dtype, device: torch.device
    ) -> Callable[[Tensor], Tensor]:
        """The rest of the network: node layer ``layer`` (with constant) to the model output.

        The output is what the metric reads: logits of shape ``(batch, n_classes)`` or
        ``(batch, pos, n_classes)``.
        """

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        """Coordinates of ``layer`` kept out of every rotation; starts with 0 (the constant)."""

    def __sklearn_clone__(self) -> "ModelAdapter":
        """Return ``self``: cloning an estimator must never deep-copy a model."""


@runtime_checkable
class CompositeSegmentLike(Protocol):
    """A segment between two bases, ``G(z) = segment(z @ in_map.T) @ out_map.T``.

    ``in_map`` of shape ``(1 + d_in, n_in)`` maps basis coordinates of the input layer back to
    its activations, ``out_map`` of shape ``(n_out, 1 + d_out)`` maps activations of the
    output layer to its basis. :class:`sklearn_lib._segments.CompositeSegment` is the generic
    implementation (``torch.func``).
    """

    def __call__(self, z: Tensor) -> Tensor:
        """``G(z)``: ``(batch, T_in, n_in) -> (batch, T_out, n_out)``."""

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """Per-sample Jacobians ``(batch, S, n_out, T_in, n_in)`` of ``G`` at ``z``.

        ``S = T_out`` output positions, or, with ``sources`` of shape ``(batch, R, T_out)``,
        the ``R`` combinations ``sum_s r_s G_s / sqrt(R)``.
        """

    # Optional, used when present (else formed from ``jacobian``; see docs/adapters.md):
    # ``jacobian_gram(z, sources=None, start=0, skip=0)``, the batch's float64 share of LIB's
    # ``M`` over columns ``>= start`` and positions ``>= skip``, and
    # ``attributions(z, alphas, weights, sources=None, skip=0) -> (A, A_kept)``, the
    # integrated-gradient attributions contracted with ``z``.

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out[..., i] = G(z * masks[i])[..., i]``, shape ``(batch, T_out, n_out)``.

        ``masks`` of shape ``(n_out, n_in)`` zero the sources of each output's ablated edges
        at every position; ``mask_chunk`` bounds how many distinct masks run at once (a
        memory knob). With all-ones masks it equals ``G(z)``.
        """


@runtime_checkable
class SupportsCompositeSegment(Protocol):
    """Optional closed-form hook: faster Jacobians and ablation of one segment."""

    def composite_segment(
        self, layer: str, in_map: Tensor, out_map: Tensor, *, dtype: torch.dtype,
        device: torch.device,
    ) -> CompositeSegmentLike | None:
        """The composite of ``segment(layer)`` between the bases, or ``None`` to fall back.

        Must agree with the generic composite: ``__call__`` with
        ``segment(z @ in_map.T) @ out_map.T``, ``jacobian`` with ``torch.func.jacrev`` of
        ``__call__``, ``ablated`` with one forward pass per mask. ``None`` (for a layer or
        maps the closed forms do not cover) makes the library use the generic
        :class:`~sklearn_lib._segments.CompositeSegment`.
        """


@runtime_checkable
class SupportsReferenceForward(Protocol):
    """Optional: the model's own forward, which the chained segments must reproduce."""

    def reference_forward(self, X: Any, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The model's own forward on inputs ``X`` (not the adapter's segments).

        Returns what ``forward_from`` returns (same shape, e.g. the logits at the labelled
        position), computed in ``dtype`` on ``device``.
        """

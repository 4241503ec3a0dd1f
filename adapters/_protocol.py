"""The interface between the estimators and a model: node layers and segment maps.

An adapter presents a network as a chain of node layers ``f^0, ..., f^L`` and pure torch maps
between them. Every node layer carries a leading constant coordinate equal to 1 on real data
(bias folding, DESIGN.md section 4): activations have shape ``(batch, pos, 1 + d_l)`` with
``f[..., 0] == 1``, and each segment multiplies every bias by that coordinate so that
``segment(0) == 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["ModelAdapter", "SegmentFn"]

#: A pure, batched map ``Float[Tensor, "batch pos_in 1+d_in"] -> Float[Tensor, "batch pos_out 1+d_out"]``.
SegmentFn = Callable[[Tensor], Tensor]


@runtime_checkable
class ModelAdapter(Protocol):
    """What the estimators need from a model.

    Attributes
    ----------
    node_layers : tuple of str
        Names of the node layers, input side first.
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
        """Activations ``Float[Tensor, "batch pos 1+d_l"]`` of the named node layers, constant first."""

    def segment(self, layer: str, *, dtype: torch.dtype, device: torch.device) -> SegmentFn:
        """The map from node layer ``layer`` to the next node layer, as a pure torch function."""

    def forward_from(
        self, layer: str, *, dtype: torch.dtype, device: torch.device
    ) -> Callable[[Tensor], Tensor]:
        """The rest of the network: node layer ``layer`` (with constant) to the model output.

        The output is what the metric reads: logits of shape ``(batch, n_classes)`` or
        ``(batch, pos, n_classes)``.
        """

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        """Coordinates of ``layer`` kept out of every rotation; always starts with 0 (the constant)."""

    def __sklearn_clone__(self) -> "ModelAdapter":
        """Return ``self``: cloning an estimator must never deep-copy a model."""

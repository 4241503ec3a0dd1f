"""Closed-form composite segments over the norm-split cuts of language models (attention).

Placeholder of the dispatch: returns None (the generic torch.func composite is used)
until the closed forms land.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["attention_closed_form"]


def attention_closed_form(weights, ops, in_layout: str, out_layout: str, last: bool,
                   segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor):
    """The closed-form composite of ops between cuts of these layouts, or None."""
    return None

"""Read a transformer_lens 3.x ``HookedTransformer`` into :class:`TransformerWeights`.

A ``HookedTransformer``'s state_dict is the TransformerLens format, so this reader is the
state_dict reader (:func:`read_tl_state_dict`) applied to the model's own state_dict and config.
transformer_lens is imported inside the function only.
"""

from __future__ import annotations

from typing import Any

from sklearn_lib.adapters._read_tl_state_dict import read_tl_state_dict
from sklearn_lib.adapters._transformer_weights import TransformerWeights

__all__ = ["read_hooked_transformer"]

_POST_NORM = ("Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM")


def read_hooked_transformer(model: Any) -> TransformerWeights:
    """Read the weights of a transformer_lens ``HookedTransformer`` into plain tensors.

    Parameters
    ----------
    model : transformer_lens.HookedTransformer
        A decoder-only pre-norm model (transformer_lens 2.x or 3.x): learned or rotary
        positions, LayerNorm / RMSNorm (``LN``, ``LNPre``, ``RMS``, ``RMSPre``) or none, plain
        or gated MLPs, grouped-query and local attention, sequential or parallel blocks.

    Returns
    -------
    weights : TransformerWeights
        Detached views of the model's parameters (no copy).

    Raises
    ------
    TypeError
        If ``model`` is not a ``HookedTransformer``.
    ValueError
        If the configuration uses a feature the sequential transformer does not model
        (mixture of experts, QK norm, soft-capping, post-norm blocks, ...).
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"read_hooked_transformer needs a transformer_lens HookedTransformer; got "
            f"{type(model).__name__}. Load one with load_hooked_transformer(...) or "
            "HookedTransformer.from_pretrained(...)."
        )
    arch = getattr(model.cfg, "original_architecture", None)
    if arch in _POST_NORM:
        raise ValueError(
            f"The sequential transformer does not support original_architecture={arch!r} "
            "(post-norm or QK-norm architecture). Use a pre-norm model, or write an adapter "
            "(docs/adapters.md)."
        )
    return read_tl_state_dict(model.state_dict(), model.cfg)

"""Read a transformer_lens 4.x ``TransformerBridge`` into :class:`TransformerWeights`.

transformer_lens 4.x replaced ``HookedTransformer`` by ``TransformerBridge``, a wrapper with
hooks around a HuggingFace model (``bridge.original_model``). The weights are the HF model's,
so this reader reads that model with :func:`read_hf_model`. This keeps the model's own rotary
tables: a bridge's config can report a rotary base that differs from the one the wrapped
model uses (measured on SmolLM2: 1e4 reported, 1e5 used).

Written against the 4.x API (``transformer_lens.model_bridge.TransformerBridge``,
``original_model``); transformer_lens is imported inside the function only.
"""

from __future__ import annotations

from typing import Any

from sklearn_lib.adapters._read_hf import read_hf_model
from sklearn_lib.adapters._transformer_weights import TransformerWeights

__all__ = ["read_transformer_bridge"]


def _bridge_class() -> type | None:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # transformer_lens < 4, or not installed
        return None
    return TransformerBridge


def read_transformer_bridge(bridge: Any) -> TransformerWeights:
    """Read the weights of a transformer_lens 4.x ``TransformerBridge`` into plain tensors.

    Parameters
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
        For example ``TransformerBridge.boot_transformers(name, hf_model=model,
        tokenizer=tokenizer)``; its wrapped HF model must be a family :func:`read_hf_model`
        reads (GPT-2, GPT-Neo, Llama, Mistral, Qwen2).

    Returns
    -------
    weights : TransformerWeights
        Views of the wrapped HF model's parameters.

    Raises
    ------
    TypeError
        If ``bridge`` is not a ``TransformerBridge`` (or transformer_lens 4.x is absent).
    ValueError
        If the wrapped model's family is not read (see :func:`read_hf_model`).

    Notes
    -----
    The bridge's own weight processing (compatibility mode folding layer norms, centring
    the unembedding) is not read: the adapter follows the wrapped model's forward. Check a
    first batch against the bridge's logits when such processing is on.
    """
    cls = _bridge_class()
    if cls is None or not isinstance(bridge, cls):
        raise TypeError(
            f"read_transformer_bridge needs a transformer_lens 4.x TransformerBridge; got "
            f"{type(bridge).__name__}"
            + ("" if cls is not None else " (transformer_lens 4.x is not installed)")
            + ". For a transformers model use read_hf_model, for a transformer_lens 3.x "
            "HookedTransformer read_hooked_transformer."
        )
    return read_hf_model(bridge.original_model)

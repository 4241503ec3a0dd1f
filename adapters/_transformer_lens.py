"""transformer_lens models and checkpoints as sequential transformers.

:class:`HookedTransformerAdapter` is :class:`TransformerAdapter` built from a transformer_lens
3.x ``HookedTransformer`` (read by :func:`read_hooked_transformer`) or from a checkpoint loaded
by :func:`load_hooked_transformer`, which reads a TransformerLens-format state_dict straight into
plain weights (:func:`read_tl_state_dict`) without building a transformer_lens model. The cuts,
segments and architectures live in ``adapters/_transformer_sequential.py``; the plain weights in
``adapters/_transformer_weights.py``. transformer_lens is imported only to read a
``HookedTransformer`` object, so this module imports fast without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from sklearn_lib.adapters._read_hooked import read_hooked_transformer
from sklearn_lib.adapters._read_tl_state_dict import read_config, read_tl_state_dict
from sklearn_lib.adapters._transformer_adapter import TransformerAdapter
from sklearn_lib.adapters._transformer_sequential import _embed, _plan, _span
from sklearn_lib.adapters._transformer_weights import (
    AttentionWeights,
    BlockWeights,
    MLPWeights,
    NormWeights,
    RotaryWeights,
    TransformerWeights,
)

__all__ = [
    "AttentionWeights",
    "BlockWeights",
    "HookedTransformerAdapter",
    "LoadedTransformer",
    "MLPWeights",
    "NormWeights",
    "RotaryWeights",
    "TransformerWeights",
    "load_hooked_transformer",
    "read_hooked_transformer",
]


class LoadedTransformer:
    """A checkpoint read into plain weights: callable like the model, no transformer_lens.

    Returned by :func:`load_hooked_transformer`. ``model(tokens)`` returns the logits
    ``(batch, pos, d_vocab_out)`` computed by the sequential transformer in the weights' dtype.

    Attributes
    ----------
    weights : TransformerWeights
    cfg : types.SimpleNamespace
        The config's fields, defaults and derived values filled in (``cfg.d_model``, ...).
    training : bool
        Always ``False`` (the model is for evaluation).
    """

    training = False

    def __init__(self, weights: TransformerWeights, cfg: Mapping[str, Any]) -> None:
        self.weights = weights
        self.cfg = SimpleNamespace(**cfg)
        self._plan = _plan(weights)

    def eval(self) -> "LoadedTransformer":
        """Return ``self`` (always in evaluation mode)."""
        return self

    def __call__(self, tokens: Any) -> Tensor:
        """Logits ``(batch, pos, d_vocab_out)`` of integer tokens ``(batch, pos)``."""
        w = self.weights
        tokens = torch.as_tensor(tokens, device=w.W_E.device).long()
        cuts, ops = self._plan
        with torch.no_grad():
            f = _span(w, cuts, ops, 0, len(cuts) - 1, None)(_embed(w, tokens))
        return f[..., 1:]

    def __repr__(self) -> str:
        return (f"LoadedTransformer(n_layers={self.weights.n_layers}, "
                f"d_model={self.weights.d_model}, "
                f"normalization_type={getattr(self.cfg, 'normalization_type', None)!r})")


def load_hooked_transformer(
    state_dict_path: str | os.PathLike,
    config_path_or_dict: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device = "cpu",
) -> LoadedTransformer:
    """Read a ``HookedTransformer`` checkpoint into plain weights (strictly), no transformer_lens.

    Parameters
    ----------
    state_dict_path : str or path-like
        A ``torch.save``-d ``HookedTransformer`` state_dict.
    config_path_or_dict : str, path-like or dict
        A JSON file or dict holding either a top-level ``"model"`` section (the format of the
        paper's checkpoints, e.g. ``{"model": {...}, "dataset": {...}, "train": {...}}``) or
        the ``HookedTransformerConfig`` fields directly.
    device : str or torch.device, default="cpu"
        Where the weights are loaded.

    Returns
    -------
    model : LoadedTransformer
        Callable on token ids (logits of every position); ``HookedTransformerAdapter(model)``
        presents it to the estimators.

    Raises
    ------
    ValueError
        If the config is not a ``HookedTransformerConfig`` (unknown or missing fields), uses
        a feature the sequential transformer does not model, or does not match the
        state_dict (missing or unexpected keys, size mismatch).

    Examples
    --------
    >>> import tempfile, torch
    >>> from sklearn_lib.adapters import load_hooked_transformer, read_tl_state_dict
    >>> cfg = dict(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=3, d_vocab=5,
    ...            act_fn="relu", normalization_type=None)
    >>> g = torch.Generator().manual_seed(0)
    >>> shapes = {"embed.W_E": (5, 8), "pos_embed.W_pos": (3, 8),
    ...           "blocks.0.attn.W_Q": (2, 8, 4), "blocks.0.attn.W_K": (2, 8, 4),
    ...           "blocks.0.attn.W_V": (2, 8, 4), "blocks.0.attn.W_O": (2, 4, 8),
    ...           "blocks.0.attn.b_Q": (2, 4), "blocks.0.attn.b_K": (2, 4),
    ...           "blocks.0.attn.b_V": (2, 4), "blocks.0.attn.b_O": (8,),
    ...           "blocks.0.mlp.W_in": (8, 16), "blocks.0.mlp.b_in": (16,),
    ...           "blocks.0.mlp.W_out": (16, 8), "blocks.0.mlp.b_out": (8,),
    ...           "unembed.W_U": (8, 5), "unembed.b_U": (5,)}
    >>> path = tempfile.mkdtemp() + "/model.pt"
    >>> torch.save({k: torch.randn(s, generator=g) for k, s in shapes.items()}, path)
    >>> model = load_hooked_transformer(path, {"model": cfg})
    >>> model.cfg.d_model, model.training, model(torch.tensor([[0, 1, 2]])).shape
    (8, False, torch.Size([1, 3, 5]))
    """
    cfg = read_config(config_path_or_dict)
    state = torch.load(state_dict_path, map_location=torch.device(device), weights_only=True)
    return LoadedTransformer(read_tl_state_dict(state, cfg), cfg)


class HookedTransformerAdapter(TransformerAdapter):
    """Present a transformer_lens model (or checkpoint) to the LIB estimators.

    :class:`TransformerAdapter` over the weights of a transformer_lens ``HookedTransformer``,
    of a checkpoint loaded by :func:`load_hooked_transformer`, or of given
    :class:`TransformerWeights`. Node layers are cuts of the sequential transformer: the
    residual cuts keep the names of transformer_lens's hook points
    (``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_resid_mid``, ``blocks.{i}.hook_resid_post``
    which is the same cut as ``blocks.{i+1}.hook_resid_pre``), plus ``logits``; a sublayer with
    a layer norm adds the cuts ``blocks.{i}.ln1_out`` (residual and the norm's scale) and
    ``blocks.{i}.attn_in`` (residual and the normalised residual), likewise ``ln2_out`` /
    ``mlp_in`` and ``ln_final_out`` / ``unembed_in`` (see ``docs/transformers.md``).
    Activations have shape ``(batch, pos, 1 + d)`` with ``f[..., 0] = 1``, the constant of bias
    folding: every segment multiplies each bias by it, so ``segment(0) = 0``.

    The segments are pure torch functions of the detached weights (cast once per dtype and
    device), safe under ``torch.func.vmap``, ``jacrev`` and ``jacfwd``.

    Parameters
    ----------
    model : HookedTransformer, LoadedTransformer or TransformerWeights
        A decoder-only pre-norm model with learned or rotary positions, normalization None,
        "LN", "LNPre", "RMS" or "RMSPre", plain or gated MLPs, grouped-query or local
        attention, sequential or parallel blocks (``parallel_attn_mlp``). Attention-only
        models are supported (no ``resid_mid``).
    node_layers : sequence of str, default=None
        Cut names, input side first. Default: without layer norm, every ``resid_pre`` and
        ``resid_mid``, the final ``resid_post`` and ``logits``; with layer norm, the
        ``ln*_out`` and ``*_in`` cuts (every division in a segment of its own).
    last_position_from : str, default=None
        A cut name: that cut and every later one keep only the last position (shape
        ``(batch, 1, ...)``). It must lie after the last attention layer. For modular
        addition, ``"blocks.0.hook_resid_mid"``: only the last position feeds the loss.
    metric : {"accuracy", "loss"}, default="accuracy"
        The score the edge-ablation search uses unless told otherwise.
    label_position : int or None, default=-1
        The position whose logits :meth:`forward_from` returns, shape ``(batch, d_vocab_out)``;
        ``None`` returns every position, shape ``(batch, pos, d_vocab_out)``. Must be -1 when
        ``last_position_from`` is set.

    Attributes
    ----------
    model : object
        ``model``.
    node_layers : tuple of str
        The node layers, input side first.
    default_metric : str
        ``metric``.
    d_model, d_vocab, d_vocab_out, n_ctx : int
        Sizes read from the model.

    See Also
    --------
    TransformerAdapter : the same over plain weights, with ``from_hf`` for transformers models.
    MLPAdapter : the adapter for ``nn.Sequential`` MLPs.

    References
    ----------
    .. [1] Bushnaq et al., "The Local Interaction Basis: Identifying Computationally-Relevant
       and Sparsely Interacting Features in Neural Networks", arXiv:2405.10928, appendix A.

    Examples
    --------
    >>> import torch
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> from sklearn_lib.adapters import HookedTransformerAdapter
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16,
    ...                               n_ctx=3, d_vocab=5, act_fn="relu", normalization_type="LN",
    ...                               seed=0)
    >>> adapter = HookedTransformerAdapter(HookedTransformer(cfg))
    >>> adapter.node_layers
    ('blocks.0.ln1_out', 'blocks.0.attn_in', 'blocks.0.ln2_out', 'blocks.0.mlp_in',
     'ln_final_out', 'unembed_in', 'logits')
    >>> acts = adapter.activations(torch.tensor([[1, 2, 3]]), adapter.node_layers,
    ...                            dtype=torch.float64, device="cpu")
    >>> acts["blocks.0.ln1_out"].shape  # constant, 8 residual dims, ln1 scale
    torch.Size([1, 3, 10])
    >>> acts["blocks.0.attn_in"].shape  # constant, residual, normalised residual
    torch.Size([1, 3, 17])
    >>> adapter.fixed_features("blocks.0.ln1_out"), adapter.fixed_features("logits")
    ((0, 9), (0,))
    >>> seg = adapter.segment("blocks.0.attn_in", dtype=torch.float64, device="cpu")
    >>> torch.allclose(seg(acts["blocks.0.attn_in"]), acts["blocks.0.ln2_out"])
    True
    """

    def __init__(
        self,
        model: Any,
        node_layers: Sequence[str] | None = None,
        last_position_from: str | None = None,
        metric: str = "accuracy",
        label_position: int | None = -1,
    ) -> None:
        source = None  # plain weights or our own reader's checkpoint: no independent model
        if isinstance(model, TransformerWeights):
            weights = model
        elif isinstance(getattr(model, "weights", None), TransformerWeights):
            weights = model.weights
        else:
            weights = read_hooked_transformer(model)
            source = "hooked"
        self._init(weights, node_layers, last_position_from, metric, label_position,
                   model=model, source=source)

    def __repr__(self) -> str:
        norm = getattr(getattr(self.model, "cfg", None), "normalization_type", None)
        text = super().__repr__()
        return text.replace(f"d_model={self.d_model}, ",
                            f"d_model={self.d_model}, normalization_type={norm!r}, ", 1)

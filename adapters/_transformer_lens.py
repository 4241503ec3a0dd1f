"""Adapter for transformer_lens ``HookedTransformer`` models as a "sequential transformer".

The paper (arXiv 2405.10928, appendix A.4) writes a transformer as a chain of causal cuts
through the residual stream. Here the cuts are the residual-stream hook points of
transformer_lens (``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_resid_mid``, the final
``blocks.{n-1}.hook_resid_post``) and ``logits``. The maps between cuts are our own torch code
over the model's weights, not the model's forward, because bias folding (appendix A.5) needs
every bias multiplied by the constant coordinate.

Layer norm is split as in appendix A ("Layer norm treatment"): a node layer that feeds a
layer norm carries the norm's scale ``sqrt(var + eps)`` as one extra coordinate after the
residual stream ("ln in"), and the next segment divides by that coordinate ("ln out").

Everything that reads transformer_lens objects is in :func:`read_hooked_transformer` and
:func:`load_hooked_transformer`; the segments only see the plain tensors of
:class:`TransformerWeights`. transformer_lens is imported inside those functions only, so this
module imports fast without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AttentionWeights",
    "BlockWeights",
    "HookedTransformerAdapter",
    "MLPWeights",
    "NormWeights",
    "TransformerWeights",
    "load_hooked_transformer",
    "read_hooked_transformer",
]


# -- plain weights ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NormWeights:
    """A layer norm (``center=True``) or RMS norm (``center=False``), affine part optional.

    ``out = w * x_c / scale + b`` with ``x_c`` the centred input (LayerNorm) or the input
    itself (RMSNorm) and ``scale = sqrt(mean(x_c ** 2) + eps)``. ``w`` and ``b`` are ``None``
    for the ``LNPre`` / ``RMSPre`` variants (weights folded into the next matrices).
    """

    center: bool
    eps: float
    w: Tensor | None  # (d_model,)
    b: Tensor | None  # (d_model,)


@dataclass(frozen=True)
class AttentionWeights:
    """Multi-head attention in transformer_lens layout: inputs multiply on the right."""

    W_Q: Tensor  # (n_heads, d_model, d_head)
    W_K: Tensor  # (n_heads, d_model, d_head)
    W_V: Tensor  # (n_heads, d_model, d_head)
    W_O: Tensor  # (n_heads, d_head, d_model)
    b_Q: Tensor  # (n_heads, d_head)
    b_K: Tensor  # (n_heads, d_head)
    b_V: Tensor  # (n_heads, d_head)
    b_O: Tensor  # (d_model,)
    scale: float  # scores are divided by it
    causal: bool  # query position s reads key positions t <= s only


@dataclass(frozen=True)
class MLPWeights:
    """A two-layer MLP ``act(x W_in + b_in) W_out + b_out``."""

    W_in: Tensor  # (d_model, d_mlp)
    b_in: Tensor  # (d_mlp,)
    W_out: Tensor  # (d_mlp, d_model)
    b_out: Tensor  # (d_model,)
    act_fn: str


@dataclass(frozen=True)
class BlockWeights:
    """A pre-norm block: ``resid_mid = resid_pre + attn(ln1(resid_pre))``,
    ``resid_post = resid_mid + mlp(ln2(resid_mid))`` (no MLP in attention-only models)."""

    ln1: NormWeights | None
    attn: AttentionWeights
    ln2: NormWeights | None
    mlp: MLPWeights | None


@dataclass(frozen=True)
class TransformerWeights:
    """The weights of a decoder-only transformer as plain tensors.

    Produced by :func:`read_hooked_transformer`; a reader for another model class only has to
    produce this structure.
    """

    W_E: Tensor  # (d_vocab, d_model)
    W_pos: Tensor  # (n_ctx, d_model)
    blocks: tuple[BlockWeights, ...]
    ln_final: NormWeights | None
    W_U: Tensor  # (d_model, d_vocab_out)
    b_U: Tensor  # (d_vocab_out,)

    @property
    def d_model(self) -> int:
        return int(self.W_E.shape[1])

    @property
    def d_vocab(self) -> int:
        return int(self.W_E.shape[0])

    @property
    def d_vocab_out(self) -> int:
        return int(self.W_U.shape[1])

    @property
    def n_ctx(self) -> int:
        return int(self.W_pos.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def to(self, dtype: torch.dtype, device: torch.device | str) -> "TransformerWeights":
        """A copy with every tensor detached and cast (no copy where nothing changes)."""
        return _cast(self, dtype, torch.device(device))


def _cast(obj: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to(device=device, dtype=dtype)
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype, device) for o in obj)
    if dataclasses.is_dataclass(obj):
        fields = dataclasses.fields(obj)
        return dataclasses.replace(
            obj, **{f.name: _cast(getattr(obj, f.name), dtype, device) for f in fields}
        )
    return obj


# -- the transformer_lens side ---------------------------------------------------------------
_ACT_FNS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")

# (config field, its plain value, what another value turns on) for features we do not model.
_UNSUPPORTED_FLAGS = (
    ("parallel_attn_mlp", False, "parallel attention and MLP"),
    ("gated_mlp", False, "gated MLPs"),
    ("num_experts", None, "mixture-of-experts MLPs"),
    ("n_key_value_heads", None, "grouped-query attention"),
    ("use_local_attn", False, "local attention"),
    ("use_qk_norm", False, "query/key normalisation"),
    ("clip_qkv", None, "clipped queries, keys and values"),
    ("use_logn_attn", False, "log-n attention scaling"),
    ("use_normalization_before_and_after", False, "normalisation after attention and MLP"),
    ("use_attention_sinks", False, "attention sinks"),
    ("post_embedding_ln", False, "a layer norm after the embedding"),
    ("load_in_4bit", False, "4-bit weights"),
)


def _unsupported(field: str, value: Any, what: str) -> ValueError:
    return ValueError(
        f"HookedTransformerAdapter does not support {field}={value!r} ({what}). Supported: "
        "decoder-only pre-norm transformers with learned positional embeddings "
        "(positional_embedding_type='standard'), normalization_type None, 'LN', 'LNPre', "
        f"'RMS' or 'RMSPre', act_fn in {list(_ACT_FNS)}. Use such a model, or write an adapter "
        "(docs/adapters.md)."
    )


def _check_config(cfg: Any) -> None:
    """Raise ``ValueError`` for a ``HookedTransformerConfig`` this adapter cannot model."""
    pos = getattr(cfg, "positional_embedding_type", "standard")
    if pos != "standard":
        raise _unsupported("positional_embedding_type", pos, "not learned absolute positions")
    norm = getattr(cfg, "normalization_type", None)
    if norm not in (None, "LN", "LNPre", "RMS", "RMSPre"):
        raise _unsupported("normalization_type", norm, "unknown normalisation")
    act = getattr(cfg, "act_fn", None)
    if act not in _ACT_FNS:
        raise _unsupported("act_fn", act, "activation function")
    for field, plain, what in _UNSUPPORTED_FLAGS:
        value = getattr(cfg, field, plain)  # fields older releases lack are off
        if value is not None and value != plain:
            raise _unsupported(field, value, what)
    for field in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        cap = getattr(cfg, field, None)
        if cap is not None and cap > 0:
            raise _unsupported(field, cap, "soft-capping")
    direction = getattr(cfg, "attention_dir", "causal")
    if direction not in ("causal", "bidirectional"):
        raise _unsupported("attention_dir", direction, "attention direction")
    arch = getattr(cfg, "original_architecture", None)
    if arch in ("Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM"):
        raise _unsupported("original_architecture", arch, "post-norm or QK-norm architecture")


def _read_norm(module: Any) -> NormWeights | None:
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    if module is None or isinstance(module, torch.nn.Identity):
        return None
    if isinstance(module, (LayerNorm, RMSNorm)):
        return NormWeights(
            center=isinstance(module, LayerNorm),
            eps=float(module.eps),
            w=module.w.detach(),
            b=module.b.detach() if isinstance(module, LayerNorm) else None,
        )
    if isinstance(module, (LayerNormPre, RMSNormPre)):
        return NormWeights(
            center=isinstance(module, LayerNormPre), eps=float(module.eps), w=None, b=None
        )
    raise _unsupported("normalization module", type(module).__name__, "unknown normalisation")


def read_hooked_transformer(model: Any) -> TransformerWeights:
    """Read the weights of a transformer_lens ``HookedTransformer`` into plain tensors.

    This is the only function that reads transformer_lens model objects: a reader for another
    model class (a ``TransformerBridge``, say) only has to return a :class:`TransformerWeights`.

    Parameters
    ----------
    model : transformer_lens.HookedTransformer
        A decoder-only model (2.x or 3.x).

    Returns
    -------
    weights : TransformerWeights
        Detached views of the model's parameters (no copy).

    Raises
    ------
    TypeError
        If ``model`` is not a ``HookedTransformer``.
    ValueError
        If the configuration uses a feature the adapter does not model (rotary positions,
        parallel attention and MLP, gated MLPs, grouped-query attention, ...).
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"read_hooked_transformer needs a transformer_lens HookedTransformer; got "
            f"{type(model).__name__}. Load one with load_hooked_transformer(...) or "
            "HookedTransformer.from_pretrained(...)."
        )
    cfg = model.cfg
    _check_config(cfg)
    causal = getattr(cfg, "attention_dir", "causal") == "causal"
    blocks = []
    for block in model.blocks:
        attn = block.attn
        scale = getattr(attn, "attn_scale", None)
        if scale is None:  # older releases: recompute from the config
            scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
        has_mlp = not cfg.attn_only
        blocks.append(
            BlockWeights(
                ln1=_read_norm(block.ln1),
                attn=AttentionWeights(
                    W_Q=attn.W_Q.detach(),
                    W_K=attn.W_K.detach(),
                    W_V=attn.W_V.detach(),
                    W_O=attn.W_O.detach(),
                    b_Q=attn.b_Q.detach(),
                    b_K=attn.b_K.detach(),
                    b_V=attn.b_V.detach(),
                    b_O=attn.b_O.detach(),
                    scale=float(scale),
                    causal=causal,
                ),
                ln2=_read_norm(block.ln2) if has_mlp else None,
                mlp=MLPWeights(
                    W_in=block.mlp.W_in.detach(),
                    b_in=block.mlp.b_in.detach(),
                    W_out=block.mlp.W_out.detach(),
                    b_out=block.mlp.b_out.detach(),
                    act_fn=cfg.act_fn,
                )
                if has_mlp
                else None,
            )
        )
    return TransformerWeights(
        W_E=model.embed.W_E.detach(),
        W_pos=model.pos_embed.W_pos.detach(),
        blocks=tuple(blocks),
        ln_final=_read_norm(getattr(model, "ln_final", None)),
        W_U=model.unembed.W_U.detach(),
        b_U=model.unembed.b_U.detach(),
    )


def load_hooked_transformer(
    state_dict_path: str | os.PathLike,
    config_path_or_dict: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device = "cpu",
) -> Any:
    """Build a ``HookedTransformer`` from a config and load a state_dict into it (strictly).

    Parameters
    ----------
    state_dict_path : str or path-like
        A ``torch.save``-d ``HookedTransformer`` state_dict.
    config_path_or_dict : str, path-like or dict
        A JSON file or dict holding either a top-level ``"model"`` section (the format of the
        paper's checkpoints, e.g. ``{"model": {...}, "dataset": {...}, "train": {...}}``) or
        the ``HookedTransformerConfig`` fields directly.
    device : str or torch.device, default="cpu"
        Where the model lives; overrides any ``device`` in the config.

    Returns
    -------
    model : transformer_lens.HookedTransformer
        In evaluation mode.

    Raises
    ------
    ValueError
        If the config is not a ``HookedTransformerConfig`` (unknown or missing fields).

    Examples
    --------
    >>> import tempfile, torch
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> from sklearn_lib.adapters._transformer_lens import load_hooked_transformer
    >>> cfg = dict(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=3, d_vocab=5,
    ...            act_fn="relu", normalization_type=None)
    >>> path = tempfile.mkdtemp() + "/model.pt"
    >>> torch.save(HookedTransformer(HookedTransformerConfig(**cfg)).state_dict(), path)
    >>> model = load_hooked_transformer(path, {"model": cfg})
    >>> model.cfg.d_model, model.training
    (8, False)
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if isinstance(config_path_or_dict, Mapping):
        config = dict(config_path_or_dict)
    else:
        with open(config_path_or_dict) as fh:
            config = json.load(fh)
    if isinstance(config.get("model"), Mapping):
        config = dict(config["model"])
    config["device"] = str(device)
    try:
        cfg = HookedTransformerConfig(**config)
    except TypeError as exc:
        raise ValueError(
            f"The model config is not a HookedTransformerConfig: {exc}. Pass the 'model' "
            "section of a training config, or a flat dict of HookedTransformerConfig fields."
        ) from exc
    model = HookedTransformer(cfg)  # placed on cfg.device
    state = torch.load(state_dict_path, map_location=torch.device(device), weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


# -- pure torch segments ---------------------------------------------------------------------
def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# All have act(0) == 0, which bias folding needs.
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "silu": torch.nn.functional.silu,
}


def _norm_scale(norm: NormWeights, x: Tensor, const: Tensor) -> Tensor:
    """"ln in": ``sqrt(mean(x_c**2) + eps * f_0**2)`` of shape (batch, pos, 1).

    Folding ``eps`` with ``f_0**2`` makes the scale homogeneous of degree 1 in ``(f_0, x)``, so
    the segment that appends it keeps ``F(0) = 0``; on real data (``f_0 = 1``) it is the
    model's own scale (transformer_lens ``hook_scale``).
    """
    xc = x - x.mean(-1, keepdim=True) if norm.center else x
    return torch.sqrt(xc.pow(2).mean(-1, keepdim=True) + norm.eps * const.pow(2))


def _normalize(norm: NormWeights, x: Tensor, scale: Tensor, const: Tensor) -> Tensor:
    """"ln out": ``w * x_c / scale + f_0 * b``, with ``0 / 0`` read as 0 so ``F(0) = 0``.

    The division is homogeneous of degree 0 in ``(x, scale)``, so this part is not
    continuous at the origin; ``scale > 0`` wherever ``f_0 > 0`` and ``eps > 0``. The double
    ``where`` keeps gradients finite where ``scale == 0``.
    """
    xc = x - x.mean(-1, keepdim=True) if norm.center else x
    nonzero = scale != 0
    safe = torch.where(nonzero, scale, torch.ones_like(scale))
    h = torch.where(nonzero, xc / safe, torch.zeros_like(xc))
    if norm.w is not None:
        h = h * norm.w
    if norm.b is not None:
        h = h + const * norm.b
    return h


def _attention(a: AttentionWeights, h: Tensor, const: Tensor, mask: Tensor | None) -> Tensor:
    """Attention output (batch, pos, d_model) of normalised input ``h``, biases times ``f_0``."""
    c = const[..., None]  # (batch, pos, 1, 1) against (n_heads, d_head)
    q = torch.einsum("bpm,nmh->bpnh", h, a.W_Q) + c * a.b_Q
    k = torch.einsum("bpm,nmh->bpnh", h, a.W_K) + c * a.b_K
    v = torch.einsum("bpm,nmh->bpnh", h, a.W_V) + c * a.b_V
    scores = torch.einsum("bqnh,bknh->bnqk", q, k) / a.scale
    if mask is not None:
        n_pos = h.shape[-2]
        scores = scores.masked_fill(~mask[:n_pos, :n_pos], float("-inf"))
    pattern = torch.softmax(scores, dim=-1)  # zero input: uniform over the allowed keys
    z = torch.einsum("bnqk,bknh->bqnh", pattern, v)
    return torch.einsum("bqnh,nhm->bqm", z, a.W_O) + const * a.b_O


def _mlp(m: MLPWeights, h: Tensor, const: Tensor) -> Tensor:
    pre = h @ m.W_in + const * m.b_in
    return _ACTIVATIONS[m.act_fn](pre) @ m.W_out + const * m.b_out


@dataclass(frozen=True)
class _Step:
    """One sublayer between two cuts: ``kind`` is "attn", "mlp" or "unembed"."""

    kind: str
    block: int  # -1 for the unembedding
    norm: NormWeights | None


def _steps(w: TransformerWeights) -> list[_Step]:
    steps = []
    for i, block in enumerate(w.blocks):
        steps.append(_Step("attn", i, block.ln1))
        if block.mlp is not None:
            steps.append(_Step("mlp", i, block.ln2))
    steps.append(_Step("unembed", -1, w.ln_final))
    return steps


def _span(w: TransformerWeights, start: int, stop: int, last_from: int | None):
    """The map from cut ``start`` to cut ``stop`` (cut k sits just before step k).

    Input ``[f_0, resid, (scale of step start's norm)]``; output ``[f_0, resid, (scale of step
    stop's norm)]`` or ``[f_0, logits]`` at the last cut. From cut ``last_from`` on only the
    last position is kept; the steps there are position-wise, so slicing early is exact.
    """
    steps = _steps(w)
    d = w.d_model
    mask = None
    if any(b.attn.causal for b in w.blocks):
        mask = torch.ones(w.n_ctx, w.n_ctx, dtype=torch.bool, device=w.W_E.device).tril()

    def run(f: Tensor) -> Tensor:
        const = f[..., :1]
        x = f[..., 1 : 1 + d]
        has_scale = start < len(steps) and steps[start].norm is not None
        scale = f[..., 1 + d : 2 + d] if has_scale else None
        for k in range(start, stop):
            step = steps[k]
            if step.norm is None:
                h = x
            else:
                if k != start:
                    scale = _norm_scale(step.norm, x, const)
                h = _normalize(step.norm, x, scale, const)
            if step.kind == "attn":
                attn = w.blocks[step.block].attn
                x = x + _attention(attn, h, const, mask if attn.causal else None)
            elif step.kind == "mlp":
                x = x + _mlp(w.blocks[step.block].mlp, h, const)
            else:
                x = h @ w.W_U + const * w.b_U
            if last_from is not None and k + 1 >= last_from:
                x, const = x[..., -1:, :], const[..., -1:, :]
        parts = [const, x]
        if stop < len(steps) and steps[stop].norm is not None:
            parts.append(_norm_scale(steps[stop].norm, x, const))
        return torch.cat(parts, dim=-1)

    return run


# -- the adapter -----------------------------------------------------------------------------
class HookedTransformerAdapter:
    """Present a transformer_lens ``HookedTransformer`` to the LIB estimators.

    Node layers are causal cuts through the residual stream, named like the hook points
    ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_resid_mid`` and
    ``blocks.{i}.hook_resid_post`` (``blocks.{i}.hook_resid_post`` is the same cut as
    ``blocks.{i+1}.hook_resid_pre``), plus ``logits``. Activations have shape
    ``(batch, pos, 1 + d)``:

    - ``f[..., 0] = 1``, the constant of bias folding: every segment multiplies each bias by it,
      so ``segment(0) = 0``;
    - ``f[..., 1:1 + d_model]``, the residual stream (for ``logits``: the ``d_vocab_out``
      logits);
    - if the step after the cut applies a layer norm, ``f[..., 1 + d_model]`` is that norm's
      scale ``sqrt(var + eps)`` of the residual, per position ("ln in" in the paper's appendix
      A); the next segment divides by it ("ln out"). It is reported by :meth:`fixed_features`
      and kept out of the LIB rotations. Its ``eps`` is multiplied by ``f_0**2``, so it is 0
      at the origin.

    The segments are pure torch functions of the detached weights (attention, MLP, layer norm
    and unembedding written out here, with residual connections inside the segment), safe
    under ``torch.func.vmap``, ``jacrev`` and ``jacfwd``.

    Parameters
    ----------
    model : transformer_lens.HookedTransformer
        A decoder-only pre-norm model with learned positional embeddings
        (``positional_embedding_type="standard"``), ``normalization_type`` None, "LN",
        "LNPre", "RMS" or "RMSPre", and act_fn relu, gelu, gelu_new, gelu_fast,
        gelu_pytorch_tanh or silu. Attention-only models are supported (no ``resid_mid``).
    node_layers : sequence of str, default=None
        Cut names, input side first. Default: every ``resid_pre`` and ``resid_mid``, the final
        ``resid_post`` and ``logits``.
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
    node_layers : tuple of str
        The node layers, input side first.
    default_metric : str
        ``metric``.
    d_model, d_vocab, d_vocab_out, n_ctx : int
        Sizes read from the model.

    See Also
    --------
    MLPAdapter : the adapter for ``nn.Sequential`` MLPs.
    read_hooked_transformer : the weights the segments use.

    References
    ----------
    .. [1] Bushnaq et al., "The Local Interaction Basis: Identifying Computationally-Relevant
       and Sparsely Interacting Features in Neural Networks", arXiv:2405.10928, appendix A.

    Examples
    --------
    >>> import torch
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> from sklearn_lib.adapters._transformer_lens import HookedTransformerAdapter
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16,
    ...                               n_ctx=3, d_vocab=5, act_fn="relu", normalization_type="LN",
    ...                               seed=0)
    >>> adapter = HookedTransformerAdapter(HookedTransformer(cfg))
    >>> adapter.node_layers
    ('blocks.0.hook_resid_pre', 'blocks.0.hook_resid_mid', 'blocks.0.hook_resid_post', 'logits')
    >>> acts = adapter.activations(torch.tensor([[1, 2, 3]]), adapter.node_layers,
    ...                            dtype=torch.float64, device="cpu")
    >>> acts["blocks.0.hook_resid_pre"].shape  # constant, 8 residual dims, ln1 scale
    torch.Size([1, 3, 10])
    >>> adapter.fixed_features("blocks.0.hook_resid_pre"), adapter.fixed_features("logits")
    ((0, 9), (0,))
    >>> seg = adapter.segment("blocks.0.hook_resid_pre", dtype=torch.float64, device="cpu")
    >>> torch.allclose(seg(acts["blocks.0.hook_resid_pre"]), acts["blocks.0.hook_resid_mid"])
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
        # Validation here, as MLPAdapter does: an adapter is a view of a model, not an
        # estimator, and a wrong cut name should fail where it is written.
        weights = read_hooked_transformer(model)
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss'. Got {metric!r} instead.")
        if label_position is not None and (
            isinstance(label_position, bool) or not isinstance(label_position, (int, np.integer))
        ):
            raise ValueError(
                f"label_position must be an int or None. Got {label_position!r} instead."
            )
        self.model = model
        self.default_metric = metric
        self.label_position = None if label_position is None else int(label_position)
        self.d_model = weights.d_model
        self.d_vocab = weights.d_vocab
        self.d_vocab_out = weights.d_vocab_out
        self.n_ctx = weights.n_ctx
        steps = _steps(weights)
        self._n_cuts = len(steps) + 1
        self._has_scale = [s.norm is not None for s in steps] + [False]
        self._cuts, canonical = self._cut_names(steps, weights.n_layers)
        available = ", ".join(repr(n) for n in self._cuts)

        if node_layers is None:
            node_layers = canonical
        node_layers = [str(n) for n in node_layers]
        for name in node_layers:
            if name not in self._cuts:
                raise ValueError(f"Unknown node layer {name!r}. Available: {available}.")
        cuts = [self._cuts[n] for n in node_layers]
        if len(node_layers) < 2 or any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise ValueError(
                "node_layers must name at least two distinct cuts in forward order (note that "
                "blocks.{i}.hook_resid_post and blocks.{i+1}.hook_resid_pre are the same cut); "
                f"got {node_layers}."
            )
        self.node_layers = tuple(node_layers)

        self._last_from: int | None = None
        if last_position_from is not None:
            if last_position_from not in self._cuts:
                raise ValueError(
                    f"Unknown last_position_from {last_position_from!r}. Available: {available}."
                )
            cut = self._cuts[last_position_from]
            last_attn = max(k for k, s in enumerate(steps) if s.kind == "attn")
            if cut <= last_attn:
                first_ok = next(n for n, c in self._cuts.items() if c == last_attn + 1)
                raise ValueError(
                    f"last_position_from={last_position_from!r} drops positions that the "
                    f"attention of block {steps[last_attn].block} still reads. Choose a cut "
                    f"after the last attention layer, e.g. {first_ok!r}."
                )
            if self.label_position not in (-1, None):
                raise ValueError(
                    f"label_position must be -1 (or None) when last_position_from is set, since "
                    f"only the last position is kept. Got {label_position!r} instead."
                )
            self._last_from = cut
        self.last_position_from = last_position_from

    @staticmethod
    def _cut_names(steps: list[_Step], n_layers: int) -> tuple[dict[str, int], list[str]]:
        """All accepted names -> cut index, and the canonical name of every cut in order."""
        names: dict[str, int] = {}
        canonical = []
        for k, step in enumerate(steps):
            if step.kind == "attn":
                name = f"blocks.{step.block}.hook_resid_pre"
                if step.block > 0:
                    names[f"blocks.{step.block - 1}.hook_resid_post"] = k
            elif step.kind == "mlp":
                name = f"blocks.{step.block}.hook_resid_mid"
            else:
                name = f"blocks.{n_layers - 1}.hook_resid_post"
            names[name] = k
            canonical.append(name)
        names["logits"] = len(steps)
        canonical.append("logits")
        return dict(sorted(names.items(), key=lambda kv: kv[1])), canonical

    def __sklearn_clone__(self) -> "HookedTransformerAdapter":
        return self

    def __repr__(self) -> str:
        cfg = getattr(self.model, "cfg", None)
        norm = getattr(cfg, "normalization_type", None)
        extra = ""
        if self.last_position_from is not None:
            extra += f", last_position_from={self.last_position_from!r}"
        if self.label_position != -1:
            extra += f", label_position={self.label_position!r}"
        return (
            f"HookedTransformerAdapter(n_layers={getattr(cfg, 'n_layers', '?')}, "
            f"d_model={self.d_model}, normalization_type={norm!r}, "
            f"node_layers={list(self.node_layers)}{extra}, metric={self.default_metric!r})"
        )

    # -- helpers ---------------------------------------------------------------------------
    def _weights(self, dtype: torch.dtype, device: torch.device | str) -> TransformerWeights:
        # Read at every call, as MLPAdapter does, so the adapter follows the model's weights.
        return read_hooked_transformer(self.model).to(dtype, device)

    def _cut(self, layer: str) -> int:
        if layer not in self.node_layers:
            raise ValueError(
                f"Unknown node layer {layer!r}. This adapter's node layers: "
                f"{list(self.node_layers)}."
            )
        return self._cuts[layer]

    # -- the protocol ----------------------------------------------------------------------
    def check_input(self, X: Any) -> np.ndarray | Tensor:
        """Validate token sequences: an int array of shape (n_samples, n_positions).

        Parameters
        ----------
        X : array-like or Tensor of shape (n_samples, n_positions)
            Token ids in ``[0, d_vocab)``, ``n_positions <= n_ctx``.

        Returns
        -------
        X : ndarray or Tensor
            The input (numpy arrays as ``np.asarray``), unchanged otherwise.
        """
        if isinstance(X, Tensor):
            X_arr: np.ndarray | Tensor = X.detach()
            integer = not X_arr.is_floating_point() and not X_arr.is_complex() and (
                X_arr.dtype != torch.bool
            )
        else:
            X_arr = np.asarray(X)
            integer = np.issubdtype(X_arr.dtype, np.integer)
        if not integer:
            raise ValueError(
                f"Model inputs must be integer token ids; got dtype {X_arr.dtype}. Tokenize the "
                "text first, or cast the array with .astype(np.int64) / .long()."
            )
        if X_arr.ndim != 2:
            raise ValueError(
                f"Model inputs must have shape (n_samples, n_positions); got shape "
                f"{tuple(X_arr.shape)}. Use X[None, :] for a single sequence."
            )
        n, n_pos = X_arr.shape
        if n == 0:
            raise ValueError("Found 0 samples in the model inputs; at least 1 is required.")
        if n_pos == 0 or n_pos > self.n_ctx:
            raise ValueError(
                f"Model inputs have {n_pos} positions; the model takes between 1 and "
                f"n_ctx={self.n_ctx}. Truncate the sequences to at most {self.n_ctx} tokens."
            )
        low, high = int(X_arr.min()), int(X_arr.max())
        if low < 0 or high >= self.d_vocab:
            bad = low if low < 0 else high
            raise ValueError(
                f"Model inputs contain token {bad}, outside the vocabulary [0, {self.d_vocab}). "
                "Check the tokenizer matches the model."
            )
        if self.label_position is not None and not -n_pos <= self.label_position < n_pos:
            raise ValueError(
                f"label_position={self.label_position} is out of range for inputs with "
                f"{n_pos} positions."
            )
        return X_arr

    def activations(
        self, X: Any, layers: Sequence[str], *, dtype: torch.dtype, device: torch.device | str
    ) -> dict[str, Tensor]:
        """Activations of the named node layers, constant first (and scale last, if any).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_positions)
            Token ids.
        layers : sequence of str
            Node layers to return.
        dtype, device
            Of the returned tensors (the computation runs in them).

        Returns
        -------
        activations : dict of str to Tensor of shape (n_samples, pos, 1 + d)
            ``pos = 1`` from ``last_position_from`` on.
        """
        wanted = sorted({self._cut(name) for name in layers})
        X = self.check_input(X)
        w = self._weights(dtype, device)
        tokens = torch.as_tensor(X, device=torch.device(device)).long()
        n_pos = tokens.shape[1]
        with torch.no_grad():
            x = w.W_E[tokens] + w.W_pos[:n_pos]
            const = torch.ones_like(x[..., :1])
            parts = [const, x]
            first = _steps(w)[0]
            if first.norm is not None:
                parts.append(_norm_scale(first.norm, x, const))
            f = torch.cat(parts, dim=-1)
            by_cut = {0: f}
            cut = 0
            for nxt in wanted:
                if nxt != cut:
                    f = _span(w, cut, nxt, self._last_from)(f)
                    cut = nxt
                by_cut[cut] = f
        return {name: by_cut[self._cuts[name]] for name in layers}

    def segment(
        self, layer: str, *, dtype: torch.dtype, device: torch.device | str
    ) -> Callable[[Tensor], Tensor]:
        """The map from node layer ``layer`` to the next node layer, as a pure torch function.

        Shape ``(batch, pos_in, 1 + d) -> (batch, pos_out, 1 + d')``; every bias is multiplied
        by ``f[..., :1]``, which is passed through, so ``F(0) = 0``.
        """
        start = self._cut(layer)
        i = self.node_layers.index(layer)
        if i == len(self.node_layers) - 1:
            raise ValueError(f"{layer!r} is the last node layer; it has no segment after it.")
        stop = self._cuts[self.node_layers[i + 1]]
        return _span(self._weights(dtype, device), start, stop, self._last_from)

    def composite_segment(
        self, layer: str, in_map: Tensor, out_map: Tensor, *, dtype: torch.dtype,
        device: torch.device | str,
    ) -> Any:
        """A closed-form :class:`~sklearn_lib._segments.CompositeSegment`, or ``None``.

        ``G(z) = segment(z @ in_map.T) @ out_map.T`` from ``layer`` to the next node layer,
        with its per-sample Jacobians and ablated forward passes in closed form (see
        ``adapters/_transformer_closed_forms.py``). Covered: one sublayer without layer norm
        (attention, MLP or unembedding); anything else returns ``None`` and the caller uses
        the generic ``torch.func`` composite.
        """
        from sklearn_lib.adapters._transformer_closed_forms import closed_form_segment

        start = self._cut(layer)
        i = self.node_layers.index(layer)
        if i == len(self.node_layers) - 1:
            return None
        stop = self._cuts[self.node_layers[i + 1]]
        w = self._weights(dtype, device)
        device = torch.device(device)
        return closed_form_segment(
            w, _steps(w), start, stop, self._last_from,
            _span(w, start, stop, self._last_from),
            in_map.to(dtype=dtype, device=device), out_map.to(dtype=dtype, device=device),
        )

    def forward_from(
        self, layer: str, *, dtype: torch.dtype, device: torch.device | str
    ) -> Callable[[Tensor], Tensor]:
        """The rest of the network: node layer ``layer`` to the logits the metric reads.

        Returns a function of shape ``(batch, pos, 1 + d) -> (batch, d_vocab_out)`` (logits at
        ``label_position``), or ``(batch, pos, d_vocab_out)`` when ``label_position=None``.
        """
        run = _span(self._weights(dtype, device), self._cut(layer), self._n_cuts - 1,
                    self._last_from)
        position = self.label_position

        def output(f: Tensor) -> Tensor:
            logits = run(f)[..., 1:]
            return logits if position is None else logits[..., position, :]

        return output

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        """``(0,)``, or ``(0, 1 + d_model)`` where ``layer`` carries a layer-norm scale."""
        cut = self._cut(layer)
        return (0, 1 + self.d_model) if self._has_scale[cut] else (0,)

"""Read HuggingFace ``transformers`` causal language models into :class:`TransformerWeights`.

Families: GPT-2 (``GPT2LMHeadModel``: Conv1D weights, learned positions, LayerNorm, tied
embeddings), the Llama family (``LlamaForCausalLM`` and the same layout in ``MistralForCausalLM``
and ``Qwen2ForCausalLM``: RMSNorm, rotary positions from the model's own rotary module, SwiGLU,
grouped-query attention, sliding windows), GPT-Neo (``GPTNeoForCausalLM``: local attention
in alternate layers, unscaled scores) and GPT-NeoX / Pythia (``GPTNeoXForCausalLM``: parallel
blocks, partial rotary). The reader only reads modules and config fields;
``transformers`` itself is never imported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sklearn_lib.adapters._transformer_weights import (
    AttentionWeights,
    BlockWeights,
    MLPWeights,
    NormWeights,
    RotaryWeights,
    TransformerWeights,
)

__all__ = ["read_hf_model"]

_LLAMA_LIKE = ("llama", "mistral", "qwen2")
_FAMILIES = ("gpt2", "gpt_neo", "gpt_neox", *_LLAMA_LIKE)


def _t(x: Tensor) -> Tensor:
    return x.detach()


def _bias(module: Any, n: int, like: Tensor) -> Tensor:
    b = getattr(module, "bias", None)
    return like.new_zeros(n) if b is None else _t(b)


def _heads_in(W: Tensor, n_heads: int) -> Tensor:
    """``(n_heads * d_head, d_model)`` (a Linear's weight) -> ``(n_heads, d_model, d_head)``."""
    d_model = W.shape[1]
    return W.reshape(n_heads, -1, d_model).transpose(1, 2)


def _heads_out(W: Tensor, n_heads: int) -> Tensor:
    """``(d_model, n_heads * d_head)`` (a Linear's weight) -> ``(n_heads, d_head, d_model)``."""
    return W.T.reshape(n_heads, -1, W.shape[0])


def _unembed(model: Any, d_model: int) -> tuple[Tensor, Tensor]:
    head = model.get_output_embeddings()
    W_U = _t(head.weight).T  # tied embeddings: a view of the input embedding
    return W_U, _bias(head, W_U.shape[1], W_U)


def _act(config: Any, *names: str) -> str:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return str(value)
    raise ValueError(f"The model config names no activation function (looked at {names}).")


def _read_gpt2(model: Any) -> TransformerWeights:
    cfg = model.config
    if getattr(cfg, "add_cross_attention", False):
        raise ValueError("GPT-2 with cross-attention is not a decoder-only model; use one "
                         "without add_cross_attention.")
    body = model.transformer
    d, H = cfg.n_embd, cfg.n_head
    dh = d // H
    act = _act(cfg, "activation_function")
    blocks = []
    for i, block in enumerate(body.h):
        W, b = _t(block.attn.c_attn.weight), _t(block.attn.c_attn.bias)  # Conv1D: (d, 3d)

        def split(k: int) -> tuple[Tensor, Tensor]:
            return (W[:, k * d : (k + 1) * d].reshape(d, H, dh).transpose(0, 1),
                    b[k * d : (k + 1) * d].reshape(H, dh))

        (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = split(0), split(1), split(2)
        scale = dh**0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale *= i + 1
        attn = AttentionWeights(
            W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=_t(block.attn.c_proj.weight).reshape(H, dh, d),
            b_Q=b_Q, b_K=b_K, b_V=b_V, b_O=_t(block.attn.c_proj.bias), scale=scale,
        )
        mlp = MLPWeights(W_in=_t(block.mlp.c_fc.weight), b_in=_t(block.mlp.c_fc.bias),
                         W_out=_t(block.mlp.c_proj.weight), b_out=_t(block.mlp.c_proj.bias),
                         act_fn=act)
        blocks.append(BlockWeights(ln1=_layer_norm(block.ln_1), attn=attn,
                                   ln2=_layer_norm(block.ln_2), mlp=mlp))
    W_U, b_U = _unembed(model, d)
    return TransformerWeights(W_E=_t(body.wte.weight), W_pos=_t(body.wpe.weight),
                              blocks=tuple(blocks), ln_final=_layer_norm(body.ln_f),
                              W_U=W_U, b_U=b_U)


def _layer_norm(ln: Any) -> NormWeights:
    """``nn.LayerNorm`` (affine optional)."""
    w = getattr(ln, "weight", None)
    b = getattr(ln, "bias", None)
    return NormWeights(center=True, eps=float(ln.eps), w=None if w is None else _t(w),
                       b=None if b is None else _t(b))


def _rms_norm(ln: Any) -> NormWeights:
    """Llama-style RMSNorm: ``weight * x / sqrt(mean(x**2) + eps)``."""
    eps = getattr(ln, "variance_epsilon", getattr(ln, "eps", None))
    w = getattr(ln, "weight", None)
    return NormWeights(center=False, eps=float(eps), w=None if w is None else _t(w))


def _read_gpt_neo(model: Any) -> TransformerWeights:
    cfg = model.config
    body = model.transformer
    d, H = cfg.hidden_size, cfg.num_heads
    act = _act(cfg, "activation_function")
    blocks = []
    for i, block in enumerate(body.h):
        a = block.attn.attention
        window = int(cfg.window_size) if cfg.attention_layers[i] == "local" else None
        W_Q, W_K, W_V = (_heads_in(_t(p.weight), H) for p in (a.q_proj, a.k_proj, a.v_proj))
        like = W_Q
        attn = AttentionWeights(
            W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=_heads_out(_t(a.out_proj.weight), H),
            b_Q=_bias(a.q_proj, d, like).reshape(H, -1),
            b_K=_bias(a.k_proj, d, like).reshape(H, -1),
            b_V=_bias(a.v_proj, d, like).reshape(H, -1), b_O=_bias(a.out_proj, d, like),
            scale=1.0, window=window,  # GPT-Neo does not scale its attention scores
        )
        mlp = MLPWeights(W_in=_t(block.mlp.c_fc.weight).T, b_in=_t(block.mlp.c_fc.bias),
                         W_out=_t(block.mlp.c_proj.weight).T, b_out=_t(block.mlp.c_proj.bias),
                         act_fn=act)
        blocks.append(BlockWeights(ln1=_layer_norm(block.ln_1), attn=attn,
                                   ln2=_layer_norm(block.ln_2), mlp=mlp))
    W_U, b_U = _unembed(model, d)
    return TransformerWeights(W_E=_t(body.wte.weight), W_pos=_t(body.wpe.weight),
                              blocks=tuple(blocks), ln_final=_layer_norm(body.ln_f),
                              W_U=W_U, b_U=b_U)


def _rotary_tables(rotary_emb: Any, n_ctx: int, like: Tensor) -> RotaryWeights:
    """The model's own cos/sin tables (its theta, partial rotary, scaling and precision)."""
    positions = torch.arange(n_ctx, device=like.device)[None]
    with torch.no_grad():
        cos, sin = rotary_emb(like.new_zeros(1), positions)
    return RotaryWeights(cos=cos[0].detach(), sin=sin[0].detach(), adjacent_pairs=False)


def _read_llama(model: Any) -> TransformerWeights:
    cfg = model.config
    body = model.model
    d = cfg.hidden_size
    H, Hkv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None)
    Hkv = Hkv or H
    act = _act(cfg, "hidden_act")
    E = _t(body.embed_tokens.weight)
    n_ctx = int(cfg.max_position_embeddings)
    rotary = _rotary_tables(body.rotary_emb, n_ctx,
                            torch.zeros(1, dtype=torch.float64, device=E.device))
    layer_types = getattr(cfg, "layer_types", None)
    blocks = []
    for i, layer in enumerate(body.layers):
        a = layer.self_attn
        window = None
        if getattr(a, "sliding_window", None):
            window = int(a.sliding_window)
        elif cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
            window = int(cfg.sliding_window)
        elif layer_types is not None and layer_types[i] == "sliding_attention":
            window = int(cfg.sliding_window)
        W_Q = _heads_in(_t(a.q_proj.weight), H)
        dh = W_Q.shape[2]
        scaling = getattr(a, "scaling", dh**-0.5)
        attn = AttentionWeights(
            W_Q=W_Q, W_K=_heads_in(_t(a.k_proj.weight), Hkv),
            W_V=_heads_in(_t(a.v_proj.weight), Hkv), W_O=_heads_out(_t(a.o_proj.weight), H),
            b_Q=_bias(a.q_proj, H * dh, W_Q).reshape(H, dh),
            b_K=_bias(a.k_proj, Hkv * dh, W_Q).reshape(Hkv, dh),
            b_V=_bias(a.v_proj, Hkv * dh, W_Q).reshape(Hkv, dh),
            b_O=_bias(a.o_proj, d, W_Q), scale=1.0 / float(scaling), rotary=rotary,
            window=window,
        )
        m = layer.mlp
        d_mlp = m.up_proj.weight.shape[0]
        mlp = MLPWeights(W_in=_t(m.up_proj.weight).T, b_in=_bias(m.up_proj, d_mlp, W_Q),
                         W_out=_t(m.down_proj.weight).T, b_out=_bias(m.down_proj, d, W_Q),
                         act_fn=act, W_gate=_t(m.gate_proj.weight).T,
                         b_gate=_bias(m.gate_proj, d_mlp, W_Q))
        blocks.append(BlockWeights(ln1=_rms_norm(layer.input_layernorm), attn=attn,
                                   ln2=_rms_norm(layer.post_attention_layernorm), mlp=mlp))
    W_U, b_U = _unembed(model, d)
    return TransformerWeights(W_E=E, W_pos=None, blocks=tuple(blocks),
                              ln_final=_rms_norm(body.norm), W_U=W_U, b_U=b_U)


def _read_gpt_neox(model: Any) -> TransformerWeights:
    """GPT-NeoX / Pythia: fused per-head ``[q, k, v]``, partial rotary, parallel blocks."""
    cfg = model.config
    body = model.gpt_neox
    d, H = cfg.hidden_size, cfg.num_attention_heads
    act = _act(cfg, "hidden_act")
    E = _t(body.embed_in.weight)
    rotary = _rotary_tables(body.rotary_emb, int(cfg.max_position_embeddings),
                            torch.zeros(1, dtype=torch.float64, device=E.device))
    blocks = []
    for layer in body.layers:
        a = layer.attention
        W = _t(a.query_key_value.weight).reshape(H, 3, -1, d)  # per head: q, k, v rows
        b = _bias(a.query_key_value, 3 * d, W).reshape(H, 3, -1)
        dh = W.shape[2]
        attn = AttentionWeights(
            W_Q=W[:, 0].transpose(1, 2), W_K=W[:, 1].transpose(1, 2),
            W_V=W[:, 2].transpose(1, 2), W_O=_heads_out(_t(a.dense.weight), H),
            b_Q=b[:, 0], b_K=b[:, 1], b_V=b[:, 2], b_O=_bias(a.dense, d, W),
            scale=1.0 / float(getattr(a, "scaling", dh**-0.5)), rotary=rotary,
        )
        m = layer.mlp
        d_mlp = m.dense_h_to_4h.weight.shape[0]
        mlp = MLPWeights(W_in=_t(m.dense_h_to_4h.weight).T, b_in=_bias(m.dense_h_to_4h, d_mlp, W),
                         W_out=_t(m.dense_4h_to_h.weight).T, b_out=_bias(m.dense_4h_to_h, d, W),
                         act_fn=act)
        blocks.append(BlockWeights(ln1=_layer_norm(layer.input_layernorm), attn=attn,
                                   ln2=_layer_norm(layer.post_attention_layernorm), mlp=mlp,
                                   parallel=bool(cfg.use_parallel_residual)))
    W_U, b_U = _unembed(model, d)
    return TransformerWeights(W_E=E, W_pos=None, blocks=tuple(blocks),
                              ln_final=_layer_norm(body.final_layer_norm), W_U=W_U, b_U=b_U)


def read_hf_model(model: Any) -> TransformerWeights:
    """Read a HuggingFace ``transformers`` causal LM into plain tensors.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        ``GPT2LMHeadModel``, ``GPTNeoForCausalLM``, ``GPTNeoXForCausalLM`` (Pythia: parallel
        blocks, partial rotary), ``LlamaForCausalLM`` (SmolLM2 is one), ``MistralForCausalLM``
        or ``Qwen2ForCausalLM``.

    Returns
    -------
    weights : TransformerWeights
        Detached views of the model's parameters (no copy; rearranged views where the layout
        differs), and the model's rotary tables.

    Raises
    ------
    TypeError
        If ``model`` is not a ``transformers`` model.
    ValueError
        If its family is not one of the above, or it has no language-model head.

    Notes
    -----
    The Llama family's own forward computes RMSNorm in float32 even for a float64 model
    (``LlamaRMSNorm`` upcasts to float32 and back); the sequential transformer computes it in
    the requested dtype, so in float64 it agrees with the model's forward to float32 precision
    only, and to float64 precision with a forward that keeps the norm in float64.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(
            f"read_hf_model needs a transformers model; got {type(model).__name__}. Use "
            "HookedTransformerAdapter for transformer_lens models."
        )
    if model_type not in _FAMILIES:
        raise ValueError(
            f"Model family {model_type!r} is not read yet; supported: {list(_FAMILIES)}. "
            "Write a reader that returns TransformerWeights (adapters/_read_hf.py shows how)."
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no language-model head; pass the causal LM "
            "(e.g. GPT2LMHeadModel, LlamaForCausalLM), not the base model."
        )
    if model_type == "gpt2":
        return _read_gpt2(model)
    if model_type == "gpt_neo":
        return _read_gpt_neo(model)
    if model_type == "gpt_neox":
        return _read_gpt_neox(model)
    return _read_llama(model)

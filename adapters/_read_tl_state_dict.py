"""Read a TransformerLens-format state_dict and config into :class:`TransformerWeights`.

No transformer_lens import: the state_dict of a ``HookedTransformer`` (``embed.W_E``,
``blocks.{i}.attn.W_Q``, ...) is read straight into plain weights, with the config's defaults
and derived values computed as ``HookedTransformerConfig`` does. Building a transformer_lens
model only to read its weights costs seconds (issue 8); this does not.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
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

__all__ = ["read_config", "read_tl_state_dict"]

#: Fields of ``HookedTransformerConfig`` (transformer_lens 3.x) that do not change the forward
#: pass of a model this reader accepts (bookkeeping, initialisation, hooks, tokenizer).
_INERT_FIELDS = frozenset("""
device use_attn_result use_split_qkv_input default_prepend_bos uses_rms_norm layer_norm_folding
final_rms dtype model_name use_hook_mlp_in use_attn_in train_seq_length
ungroup_grouped_query_attention original_architecture from_checkpoint checkpoint_index
checkpoint_label_type checkpoint_value tokenizer_name init_mode n_devices seed
initializer_range init_weights n_params use_hook_tokens tokenizer_prepends_bos
trust_remote_code quantization_method relative_attention_max_distance
relative_attention_num_buckets decoder_start_token_id tie_word_embeddings norm_topk_prob
experts_per_token NTK_by_parts_low_freq_factor NTK_by_parts_high_freq_factor
NTK_by_parts_factor NTK_original_ctx_len yarn_factor yarn_attention_factor yarn_beta_fast
yarn_beta_slow yarn_original_max_position_embeddings yarn_truncate yarn_global_attn_only
""".split())

#: Fields this reader models, with ``HookedTransformerConfig``'s defaults.
_MODELLED = {
    "d_model": None, "d_head": None, "n_layers": None, "n_ctx": None, "n_heads": -1,
    "d_mlp": None, "d_vocab": -1, "d_vocab_out": -1, "act_fn": "relu",
    "normalization_type": "LN", "eps": 1e-5, "positional_embedding_type": "standard",
    "n_key_value_heads": None, "attn_only": False, "gated_mlp": False, "use_attn_scale": True,
    "attn_scale": -1.0, "scale_attn_by_inverse_layer_idx": False, "use_local_attn": False,
    "window_size": None, "attn_types": None, "attention_dir": "causal", "rotary_dim": None,
    "rotary_base": 10000, "rotary_adjacent_pairs": False, "parallel_attn_mlp": False,
}

#: (field, its plain value, what another value turns on): features no reader models.
_UNSUPPORTED = {
    "num_experts": (None, "mixture-of-experts MLPs"),
    "use_qk_norm": (False, "query/key normalisation"),
    "clip_qkv": (None, "clipped queries, keys and values"),
    "use_logn_attn": (False, "log-n attention scaling"),
    "use_dynamic_ntk_rope": (False, "dynamic NTK rotary scaling"),
    "use_NTK_by_parts_rope": (False, "NTK-by-parts rotary scaling"),
    "use_yarn_rope": (False, "YaRN rotary scaling"),
    "rotary_base_local": (None, "a separate rotary base for local layers"),
    "rotary_scaling_factor": (1.0, "linear rotary scaling"),
    "use_normalization_before_and_after": (False, "normalisation after attention and MLP"),
    "use_attention_sinks": (False, "attention sinks"),
    "post_embedding_ln": (False, "a layer norm after the embedding"),
    "load_in_4bit": (False, "4-bit weights"),
    "attn_scores_soft_cap": (-1.0, "soft-capped attention scores"),
    "output_logits_soft_cap": (-1.0, "soft-capped logits"),
}

_NORMS = (None, "LN", "LNPre", "RMS", "RMSPre")


def _unsupported(field: str, value: Any, what: str) -> ValueError:
    return ValueError(
        f"The sequential transformer does not support {field}={value!r} ({what}). Supported: "
        "decoder-only pre-norm transformers with learned or rotary positions, "
        f"normalization_type in {list(_NORMS)}, plain or gated MLPs, grouped-query and local "
        "attention, sequential or parallel blocks. Use such a model, or write an adapter "
        "(docs/adapters.md)."
    )


def read_config(config: str | os.PathLike | Mapping[str, Any] | Any) -> dict[str, Any]:
    """A ``HookedTransformerConfig``'s fields as a dict, defaults filled in and checked.

    Parameters
    ----------
    config : str, path-like, dict or HookedTransformerConfig
        A JSON file or dict holding either a top-level ``"model"`` section (the format of the
        paper's checkpoints, ``{"model": {...}, "dataset": {...}, "train": {...}}``) or the
        ``HookedTransformerConfig`` fields directly; or a config object.

    Returns
    -------
    config : dict
        Every modelled field, with ``n_heads``, ``d_mlp``, ``d_vocab_out`` and ``attn_scale``
        derived as transformer_lens derives them.

    Raises
    ------
    ValueError
        For a field that is not a ``HookedTransformerConfig`` field, a required field that is
        missing, or a feature the sequential transformer does not model.
    """
    if isinstance(config, (str, os.PathLike)):
        with open(config) as fh:
            config = json.load(fh)
    if not isinstance(config, Mapping):  # a HookedTransformerConfig (a dataclass)
        import dataclasses

        # A config object is trusted to be one: read the fields this reader knows.
        known = set(_MODELLED) | set(_UNSUPPORTED) | {"dtype"}
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                  if f.name in known}
    config = dict(config)
    if isinstance(config.get("model"), Mapping):
        config = dict(config["model"])
    unknown = sorted(set(config) - set(_MODELLED) - set(_UNSUPPORTED) - _INERT_FIELDS)
    if unknown:
        raise ValueError(
            f"The model config is not a HookedTransformerConfig: unknown fields {unknown}. Pass "
            "the 'model' section of a training config, or a flat dict of "
            "HookedTransformerConfig fields."
        )
    missing = [k for k in ("d_model", "d_head", "n_layers", "n_ctx") if k not in config]
    if missing:
        raise ValueError(
            f"The model config is not a HookedTransformerConfig: required fields {missing} are "
            "missing."
        )
    for field, (plain, what) in _UNSUPPORTED.items():
        value = config.get(field, plain)
        if value is None or value == plain:
            continue
        if field.endswith("soft_cap") and value <= 0:
            continue
        raise _unsupported(field, value, what)
    cfg = {**_MODELLED, **{k: v for k, v in config.items() if k in _MODELLED}}
    if cfg["normalization_type"] not in _NORMS:
        raise _unsupported("normalization_type", cfg["normalization_type"], "unknown norm")
    from sklearn_lib.adapters._transformer_sequential import ACTIVATIONS

    if not cfg["attn_only"] and cfg["act_fn"] not in ACTIVATIONS:
        raise _unsupported("act_fn", cfg["act_fn"], f"activations: {sorted(ACTIVATIONS)}")
    if cfg["positional_embedding_type"] not in ("standard", "rotary"):
        raise _unsupported("positional_embedding_type", cfg["positional_embedding_type"],
                           "neither learned absolute nor rotary positions")
    if cfg["attention_dir"] not in ("causal", "bidirectional"):
        raise _unsupported("attention_dir", cfg["attention_dir"], "attention direction")
    if cfg["n_heads"] == -1:
        cfg["n_heads"] = cfg["d_model"] // cfg["d_head"]
    if cfg["d_mlp"] is None and not cfg["attn_only"]:
        cfg["d_mlp"] = 4 * cfg["d_model"]
    if cfg["d_vocab_out"] == -1:
        cfg["d_vocab_out"] = cfg["d_vocab"]
    if cfg["use_attn_scale"]:
        if cfg["attn_scale"] == -1.0:
            cfg["attn_scale"] = math.sqrt(cfg["d_head"])
    else:
        cfg["attn_scale"] = 1.0
    if cfg["positional_embedding_type"] == "rotary" and cfg["rotary_dim"] is None:
        raise ValueError("A rotary config needs rotary_dim; set it (usually d_head).")
    if cfg["use_local_attn"] and not isinstance(cfg["window_size"], int):
        raise ValueError("use_local_attn needs an integer window_size; set it.")
    cfg["dtype"] = config.get("dtype", torch.float32)
    return cfg


def _rotary_tables(cfg: dict, dtype: torch.dtype) -> RotaryWeights:
    """transformer_lens's ``calculate_sin_cos_rotary`` (the default, unscaled rule)."""
    r, base = int(cfg["rotary_dim"]), cfg["rotary_base"]
    high = torch.float64 if dtype == torch.float64 else torch.float32
    pos = torch.arange(cfg["n_ctx"], dtype=high)
    dim = torch.arange(r // 2, dtype=high)
    freq = base ** (dim / (r / 2))
    freq = freq.repeat_interleave(2) if cfg["rotary_adjacent_pairs"] else freq.repeat(2)
    angles = pos[:, None] / freq[None, :]
    return RotaryWeights(cos=torch.cos(angles).to(dtype), sin=torch.sin(angles).to(dtype),
                         adjacent_pairs=bool(cfg["rotary_adjacent_pairs"]))


def _dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    return getattr(torch, str(value).replace("torch.", ""), torch.float32)


def read_tl_state_dict(state_dict: Mapping[str, Tensor] | str | os.PathLike,
                       config: Any) -> TransformerWeights:
    """Read a ``HookedTransformer`` state_dict into plain weights, without transformer_lens.

    Parameters
    ----------
    state_dict : mapping or str or path-like
        A ``HookedTransformer`` state_dict, or the file ``torch.save`` wrote it to.
    config : str, path-like, dict or HookedTransformerConfig
        See :func:`read_config`.

    Returns
    -------
    weights : TransformerWeights
        The state_dict's tensors (no copy).

    Raises
    ------
    ValueError
        For an unsupported config (see :func:`read_config`), or a state_dict that does not
        match the config (missing or unexpected keys, size mismatch).

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib.adapters import read_tl_state_dict
    >>> cfg = dict(n_layers=1, d_model=4, d_head=2, d_mlp=8, n_ctx=3, d_vocab=5,
    ...            normalization_type=None)
    >>> g = torch.Generator().manual_seed(0)
    >>> shapes = {"embed.W_E": (5, 4), "pos_embed.W_pos": (3, 4), "blocks.0.attn.W_Q": (2, 4, 2),
    ...           "blocks.0.attn.W_K": (2, 4, 2), "blocks.0.attn.W_V": (2, 4, 2),
    ...           "blocks.0.attn.W_O": (2, 2, 4), "blocks.0.attn.b_Q": (2, 2),
    ...           "blocks.0.attn.b_K": (2, 2), "blocks.0.attn.b_V": (2, 2),
    ...           "blocks.0.attn.b_O": (4,), "blocks.0.mlp.W_in": (4, 8), "blocks.0.mlp.b_in": (8,),
    ...           "blocks.0.mlp.W_out": (8, 4), "blocks.0.mlp.b_out": (4,),
    ...           "unembed.W_U": (4, 5), "unembed.b_U": (5,)}
    >>> state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    >>> w = read_tl_state_dict(state, {"model": cfg})
    >>> w.n_layers, w.d_model, w.blocks[0].attn.scale
    (1, 4, 1.4142135623730951)
    """
    cfg = read_config(config)
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    sd = dict(state_dict)
    d, dh, H = cfg["d_model"], cfg["d_head"], cfg["n_heads"]
    Hkv = cfg["n_key_value_heads"] or H
    gqa = cfg["n_key_value_heads"] is not None
    d_mlp, V, V_out = cfg["d_mlp"], cfg["d_vocab"], cfg["d_vocab_out"]
    norm_type = cfg["normalization_type"]
    used: set[str] = set()
    ignorable = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")

    def get(key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in sd:
            raise ValueError(
                f"The state_dict does not match the config: missing key {key!r}. Check that "
                "the config is the one the checkpoint was trained with."
            )
        t = sd[key]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(
                f"The state_dict does not match the config: size mismatch for {key!r}: "
                f"{tuple(t.shape)} in the state_dict, {tuple(shape)} from the config."
            )
        used.add(key)
        return t.detach()

    def norm(prefix: str) -> NormWeights | None:
        if norm_type is None:
            return None
        center = norm_type in ("LN", "LNPre")
        if norm_type in ("LNPre", "RMSPre"):
            return NormWeights(center=center, eps=float(cfg["eps"]))
        return NormWeights(center=center, eps=float(cfg["eps"]), w=get(f"{prefix}.w", (d,)),
                           b=get(f"{prefix}.b", (d,)) if center else None)

    dtype = sd["embed.W_E"].dtype if "embed.W_E" in sd else _dtype(cfg["dtype"])
    rotary = None
    if cfg["positional_embedding_type"] == "rotary":
        rotary = _rotary_tables(cfg, dtype)
        stored = sd.get("blocks.0.attn.rotary_cos")
        if stored is not None and stored.shape[0] >= cfg["n_ctx"]:
            rotary = RotaryWeights(cos=stored.detach()[: cfg["n_ctx"]],
                                   sin=sd["blocks.0.attn.rotary_sin"].detach()[: cfg["n_ctx"]],
                                   adjacent_pairs=bool(cfg["rotary_adjacent_pairs"]))
    causal = cfg["attention_dir"] == "causal"
    blocks = []
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}"
        kv = "_" if gqa else ""
        scale = float(cfg["attn_scale"]) * (i + 1 if cfg["scale_attn_by_inverse_layer_idx"] else 1)
        window = None
        if cfg["use_local_attn"]:
            types = cfg["attn_types"]
            if types is None or types[i] == "local":
                window = int(cfg["window_size"])
        attn = AttentionWeights(
            W_Q=get(f"{p}.attn.W_Q", (H, d, dh)), W_K=get(f"{p}.attn.{kv}W_K", (Hkv, d, dh)),
            W_V=get(f"{p}.attn.{kv}W_V", (Hkv, d, dh)), W_O=get(f"{p}.attn.W_O", (H, dh, d)),
            b_Q=get(f"{p}.attn.b_Q", (H, dh)), b_K=get(f"{p}.attn.{kv}b_K", (Hkv, dh)),
            b_V=get(f"{p}.attn.{kv}b_V", (Hkv, dh)), b_O=get(f"{p}.attn.b_O", (d,)),
            scale=scale, causal=causal, rotary=rotary, window=window,
        )
        mlp = None
        if not cfg["attn_only"]:
            gated = cfg["gated_mlp"]
            b_in = get(f"{p}.mlp.b_in", (d_mlp,))
            mlp = MLPWeights(
                W_in=get(f"{p}.mlp.W_in", (d, d_mlp)),
                b_in=torch.zeros_like(b_in) if gated else b_in,
                W_out=get(f"{p}.mlp.W_out", (d_mlp, d)), b_out=get(f"{p}.mlp.b_out", (d,)),
                act_fn=str(cfg["act_fn"]),
                W_gate=get(f"{p}.mlp.W_gate", (d, d_mlp)) if gated else None,
                b_post=b_in if gated else None,
            )
        blocks.append(BlockWeights(ln1=norm(f"{p}.ln1"), attn=attn,
                                   ln2=None if cfg["attn_only"] else norm(f"{p}.ln2"), mlp=mlp,
                                   parallel=bool(cfg["parallel_attn_mlp"]) and mlp is not None))
    weights = TransformerWeights(
        W_E=get("embed.W_E", (V, d)),
        W_pos=get("pos_embed.W_pos", (cfg["n_ctx"], d)) if rotary is None else None,
        blocks=tuple(blocks),
        ln_final=norm("ln_final"),
        W_U=get("unembed.W_U", (d, V_out)),
        b_U=get("unembed.b_U", (V_out,)),
    )
    unexpected = sorted(k for k in sd if k not in used and not k.endswith(ignorable))
    if unexpected:
        raise ValueError(
            f"The state_dict does not match the config: unexpected keys {unexpected[:8]}. "
            "Check that the config is the one the checkpoint was trained with."
        )
    return weights

"""Plain weights of a decoder-only transformer: what every reader produces.

A reader (transformer_lens ``HookedTransformer``, a transformer_lens 4.x ``TransformerBridge``, a
HuggingFace ``transformers`` model, a TransformerLens-format state_dict) turns a model into a
:class:`TransformerWeights`: frozen dataclasses of plain tensors in one layout. The sequential
transformer (``adapters/_transformer_sequential.py``) runs on these and nothing else, so the
architecture lives in one place and a reader for a new family is a small file.

Layout (transformer_lens's: inputs multiply on the right):

- ``W_Q (n_heads, d_model, d_head)``, ``W_K``/``W_V (n_kv_heads, d_model, d_head)`` (grouped-query
  and multi-query attention: query head ``h`` reads key/value head ``h // (n_heads //
  n_kv_heads)``), ``W_O (n_heads, d_head, d_model)``;
- ``W_in (d_model, d_mlp)``, ``W_out (d_mlp, d_model)``, ``W_E (d_vocab, d_model)``,
  ``W_U (d_model, d_vocab_out)``.

This module imports only torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AttentionWeights",
    "BlockWeights",
    "MLPWeights",
    "NormWeights",
    "RotaryWeights",
    "TransformerWeights",
]


@dataclass(frozen=True)
class NormWeights:
    """A layer norm (``center=True``) or RMS norm (``center=False``), affine part optional.

    ``out = w * x_c / scale + b`` with ``x_c`` the centred input (LayerNorm) or the input
    itself (RMSNorm) and ``scale = sqrt(mean(x_c ** 2) + eps)``. ``w`` and ``b`` are ``None``
    when absent (transformer_lens ``LNPre`` / ``RMSPre``, or a norm without affine weights).
    """

    center: bool
    eps: float
    w: Tensor | None = None  # (d_model,)
    b: Tensor | None = None  # (d_model,)


@dataclass(frozen=True)
class RotaryWeights:
    """Rotary positions: the model's own ``cos`` and ``sin`` tables.

    Applied to the first ``rotary_dim`` coordinates of every query and key head (partial
    rotary leaves the rest unchanged): ``x_rot * cos + rotate(x_rot) * sin``, where ``rotate``
    maps each pair ``(a, b)`` to ``(-b, a)``; the pairs are ``(k, k + rotary_dim / 2)``
    (``adjacent_pairs=False``: GPT-NeoX, Llama, HF ``rotate_half``) or ``(2k, 2k + 1)``
    (``adjacent_pairs=True``: GPT-J). Readers take the tables from the model (theta, partial
    rotary, scaling and the precision the model computes them in all included).
    """

    cos: Tensor  # (n_ctx, rotary_dim)
    sin: Tensor  # (n_ctx, rotary_dim)
    adjacent_pairs: bool = False

    @property
    def rotary_dim(self) -> int:
        return int(self.cos.shape[1])


@dataclass(frozen=True)
class AttentionWeights:
    """Multi-head attention; key/value heads may be fewer than query heads (GQA, MQA).

    ``scores = q k^T / scale`` with ``q = h W_Q + b_Q`` and ``k = h W_K + b_K`` (rotated by
    ``rotary`` when set); ``causal`` lets query ``s`` read keys ``t <= s``; ``window`` (local
    attention) also requires ``s - t < window``.
    """

    W_Q: Tensor  # (n_heads, d_model, d_head)
    W_K: Tensor  # (n_kv_heads, d_model, d_head)
    W_V: Tensor  # (n_kv_heads, d_model, d_head)
    W_O: Tensor  # (n_heads, d_head, d_model)
    b_Q: Tensor  # (n_heads, d_head)
    b_K: Tensor  # (n_kv_heads, d_head)
    b_V: Tensor  # (n_kv_heads, d_head)
    b_O: Tensor  # (d_model,)
    scale: float  # scores are divided by it
    causal: bool = True
    rotary: RotaryWeights | None = None
    window: int | None = None

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return int(self.W_K.shape[0])


@dataclass(frozen=True)
class MLPWeights:
    """A two-layer MLP, plain or gated.

    Plain: ``act(x W_in + b_in) W_out + b_out``. Gated (``W_gate`` set, Llama's SwiGLU):
    ``(act(x W_gate + b_gate) * (x W_in + b_in) + b_post) W_out + b_out``, ``b_gate`` and
    ``b_post`` optional (transformer_lens puts its gated-MLP bias after the product).
    """

    W_in: Tensor  # (d_model, d_mlp)
    b_in: Tensor  # (d_mlp,)
    W_out: Tensor  # (d_mlp, d_model)
    b_out: Tensor  # (d_model,)
    act_fn: str
    W_gate: Tensor | None = None  # (d_model, d_mlp)
    b_gate: Tensor | None = None  # (d_mlp,)
    b_post: Tensor | None = None  # (d_mlp,)


@dataclass(frozen=True)
class BlockWeights:
    """A pre-norm block: ``resid_mid = resid_pre + attn(ln1(resid_pre))``,
    ``resid_post = resid_mid + mlp(ln2(resid_mid))`` (no MLP in attention-only models).

    ``parallel=True`` (GPT-NeoX, GPT-J) reads both sublayers from ``resid_pre``:
    ``resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))``.
    """

    ln1: NormWeights | None
    attn: AttentionWeights
    ln2: NormWeights | None
    mlp: MLPWeights | None
    parallel: bool = False


@dataclass(frozen=True)
class TransformerWeights:
    """The weights of a decoder-only transformer as plain tensors.

    ``W_pos`` (learned absolute positions) is ``None`` for rotary models; ``n_ctx`` is then the
    length of the rotary tables. Tied embeddings are ``W_U = W_E.T`` (a view).
    """

    W_E: Tensor  # (d_vocab, d_model)
    W_pos: Tensor | None  # (n_ctx, d_model)
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
        if self.W_pos is not None:
            return int(self.W_pos.shape[0])
        lengths = [b.attn.rotary.cos.shape[0] for b in self.blocks if b.attn.rotary is not None]
        return int(min(lengths)) if lengths else 2**31 - 1

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def to(self, dtype: torch.dtype, device: torch.device | str) -> "TransformerWeights":
        """A copy with every tensor detached and cast (no copy where nothing changes).

        A tensor shared by several fields (rotary tables, tied embeddings) is cast once.
        """
        return _cast(self, dtype, torch.device(device), {})


def _cast(obj: Any, dtype: torch.dtype, device: torch.device, memo: dict) -> Any:
    if isinstance(obj, Tensor):
        key = (obj.data_ptr(), obj.shape, obj.stride(), obj.dtype)
        if key not in memo:
            memo[key] = obj.detach().to(device=device, dtype=dtype)
        return memo[key]
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype, device, memo) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        return dataclasses.replace(
            obj, **{f.name: _cast(getattr(obj, f.name), dtype, device, memo) for f in fields}
        )
    return obj

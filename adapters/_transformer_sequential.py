"""The sequential transformer: pure-torch node layers and segments over :class:`TransformerWeights`.

The paper (arXiv 2405.10928, appendix A.4) writes a transformer as a chain of causal cuts
through the residual stream; every sublayer's input carries the residual stream along so each
cut is a function of the previous one. Bias folding (appendix A.5): every node layer starts with
a constant coordinate ``f_0`` (1 on real data) and every bias is multiplied by it, so every
segment has ``F(0) = 0``.

Layer norm is split as in appendix A ("Layer norm treatment") into "ln in", which appends the
norm's scale ``sqrt(var + eps)`` to the residual stream as its own feature, and "ln out", which
divides by it. A sublayer with a norm therefore has three cuts before it (the paper's ``ln1``,
``ln1_out`` and ``attn_in``):

===========================  ===============================  =====================================
cut                          activations ``(batch, pos, .)``  paper
===========================  ===============================  =====================================
``blocks.{i}.hook_resid_pre``  ``[f_0, resid]``               ``ln1`` (alias ``blocks.{i}.ln1``)
``blocks.{i}.ln1_out``         ``[f_0, resid, scale]``        ``ln1_out`` (after "ln in")
``blocks.{i}.attn_in``         ``[f_0, resid, ln1(resid)]``   ``attn_in`` (after "ln out")
``blocks.{i}.hook_resid_mid``  ``[f_0, resid]``               ``ln2`` (alias ``blocks.{i}.ln2``)
``blocks.{i}.ln2_out``         ``[f_0, resid, scale]``        ``ln2_out``
``blocks.{i}.mlp_in``          ``[f_0, resid, ln2(resid)]``   ``mlp_in``
``blocks.{i}.hook_resid_post`` ``[f_0, resid]``               = ``blocks.{i+1}.hook_resid_pre``
``ln_final_out``               ``[f_0, resid, scale]``        the final norm's "ln in"
``unembed_in``                 ``[f_0, ln_final(resid)]``     the final norm's "ln out"
``logits``                     ``[f_0, logits]``
===========================  ===============================  =====================================

A parallel block (GPT-NeoX, GPT-J: ``resid_post = resid_pre + attn(ln1(resid_pre)) +
mlp(ln2(resid_pre))``) has no cut between its attention and MLP; its cuts are
``blocks.{i}.hook_resid_pre``, ``blocks.{i}.ln_out`` (``[f_0, resid, scale]``: both norms divide
by the same scale) and ``blocks.{i}.parallel_in`` (``[f_0, resid, ln1(resid), ln2(resid)]``).

Sublayers without a norm have only the residual cut before them (the modular-addition model:
``hook_resid_pre``, ``hook_resid_mid``, the final ``hook_resid_post`` and ``logits``). The
``ln*_out -> *_in`` segments divide by the scale: they are homogeneous of degree 0 and IG
completeness fails on them by construction; every other segment is IG-complete. The default
node layers are the ``ln*_out`` and ``*_in`` cuts of every normed sublayer (the residual cut of
every sublayer without a norm) and ``logits``, so every division sits in a segment of its own.

Architectures: LayerNorm and RMSNorm (affine weights optional), learned absolute or rotary
positions (the model's own tables; partial rotary), GELU variants, ReLU and SiLU, plain and
gated MLPs, grouped-query and multi-query attention, local (windowed) attention, tied
embeddings, sequential or parallel blocks (a parallel block whose two norms differ in kind or
eps raises a clear error: there is no single scale feature to cut at).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
import torch
from torch import Tensor

from sklearn_lib.adapters._transformer_weights import (
    AttentionWeights,
    MLPWeights,
    NormWeights,
    RotaryWeights,
    TransformerWeights,
)

__all__ = ["ACTIVATIONS"]


# -- activations -----------------------------------------------------------------------------
def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


#: Elementwise activations by the names transformer_lens and ``transformers`` use. All have
#: ``act(0) == 0``, which bias folding needs.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "quick_gelu": _quick_gelu,
    "silu": torch.nn.functional.silu,
    "swish": torch.nn.functional.silu,
}


# -- the pieces ------------------------------------------------------------------------------
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


def _rotate(x: Tensor, rot: RotaryWeights) -> Tensor:
    """Rotary positions on ``x (batch, pos, heads, d_head)``: the first ``rotary_dim`` coords."""
    n_pos, r = x.shape[1], rot.rotary_dim
    cos, sin = rot.cos[None, :n_pos, None, :], rot.sin[None, :n_pos, None, :]
    x_rot, x_pass = x[..., :r], x[..., r:]
    if rot.adjacent_pairs:
        flipped = torch.stack([-x_rot[..., 1::2], x_rot[..., 0::2]], dim=-1).flatten(-2)
    else:
        flipped = torch.cat([-x_rot[..., r // 2 :], x_rot[..., : r // 2]], dim=-1)
    out = x_rot * cos + flipped * sin
    return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)


def _attention_mask(a: AttentionWeights, n_pos: int, device: torch.device) -> Tensor | None:
    """Allowed (query, key) pairs, or ``None`` when every key is allowed."""
    if not a.causal and a.window is None:
        return None
    s = torch.arange(n_pos, device=device)[:, None]
    t = torch.arange(n_pos, device=device)[None, :]
    allowed = t <= s if a.causal else torch.ones(n_pos, n_pos, dtype=torch.bool, device=device)
    if a.window is not None:
        allowed = allowed & (s - t < a.window) & (t - s < a.window)
    return allowed


def _attention(a: AttentionWeights, h: Tensor, const: Tensor) -> Tensor:
    """Attention output (batch, pos, d_model) of (normalised) input ``h``, biases times ``f_0``."""
    c = const[..., None]  # (batch, pos, 1, 1) against (n_heads, d_head)
    q = torch.einsum("bpm,nmh->bpnh", h, a.W_Q) + c * a.b_Q
    k = torch.einsum("bpm,nmh->bpnh", h, a.W_K) + c * a.b_K
    v = torch.einsum("bpm,nmh->bpnh", h, a.W_V) + c * a.b_V
    if a.rotary is not None:
        q, k = _rotate(q, a.rotary), _rotate(k, a.rotary)
    if a.n_kv_heads != a.n_heads:  # query head h reads key/value head h // group
        group = a.n_heads // a.n_kv_heads
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqnh,bknh->bnqk", q, k) / a.scale
    allowed = _attention_mask(a, h.shape[-2], h.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = torch.softmax(scores, dim=-1)  # zero input: uniform over the allowed keys
    z = torch.einsum("bnqk,bknh->bqnh", pattern, v)
    return torch.einsum("bqnh,nhm->bqm", z, a.W_O) + const * a.b_O


def _mlp(m: MLPWeights, h: Tensor, const: Tensor) -> Tensor:
    act = ACTIVATIONS[m.act_fn]
    pre = h @ m.W_in + const * m.b_in
    if m.W_gate is None:
        hidden = act(pre)
    else:
        gate = h @ m.W_gate
        if m.b_gate is not None:
            gate = gate + const * m.b_gate
        hidden = act(gate) * pre
        if m.b_post is not None:
            hidden = hidden + const * m.b_post
    return hidden @ m.W_out + const * m.b_out


# -- cuts and operations ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Op:
    """One operation between two adjacent cuts.

    ``kind``: "ln_in" (append the scale), "ln_out" (divide by it), "attn", "mlp", "unembed".
    ``block`` is -1 for the final norm and the unembedding; ``norm`` names the norm the
    operation uses or follows ("ln1", "ln2", "ln_final"), ``None`` for none. Weights are
    looked up in the (cast) :class:`TransformerWeights` a span runs on.
    """

    kind: str
    block: int
    norm: str | None = None


def _norm_of(w: TransformerWeights, op: _Op) -> NormWeights:
    return w.ln_final if op.norm == "ln_final" else getattr(w.blocks[op.block], op.norm)


@dataclass(frozen=True)
class _Cut:
    """A cut: ``layout`` "resid" ``[f_0, x]``, "scaled" ``[f_0, x, scale]``, "normed"
    ``[f_0, x, h]``, "final" ``[f_0, h]`` (before the unembedding) or "logits"."""

    name: str
    layout: str
    aliases: tuple[str, ...] = ()


def _plan(w: TransformerWeights) -> tuple[list[_Cut], list[_Op]]:
    """The cuts (``len(ops) + 1``) and the operations between them (op k: cut k -> k + 1)."""
    cuts: list[_Cut] = []
    ops: list[_Op] = []
    n = w.n_layers

    def sublayer(norm, resid: str, aliases: tuple[str, ...], prefix: str, ln: str,
                 kind: str, block: int, final: bool = False) -> None:
        cuts.append(_Cut(resid, "resid", aliases))
        if norm is not None:
            ops.append(_Op("ln_in", block, ln))
            cuts.append(_Cut(f"{prefix}{ln}_out", "scaled"))
            ops.append(_Op("ln_out", block, ln))
            cuts.append(_Cut(f"{prefix}{kind}_in" if not final else "unembed_in",
                             "final" if final else "normed"))
        ops.append(_Op(kind, block, None if norm is None else ln))

    for i, block in enumerate(w.blocks):
        prev = (f"blocks.{i - 1}.hook_resid_post",) if i > 0 else ()
        if block.parallel and block.mlp is not None:
            _parallel_block(i, block, prev, cuts, ops)
            continue
        sublayer(block.ln1, f"blocks.{i}.hook_resid_pre", prev + (f"blocks.{i}.ln1",),
                 f"blocks.{i}.", "ln1", "attn", i)
        if block.mlp is not None:
            sublayer(block.ln2, f"blocks.{i}.hook_resid_mid", (f"blocks.{i}.ln2",),
                     f"blocks.{i}.", "ln2", "mlp", i)
    sublayer(w.ln_final, f"blocks.{n - 1}.hook_resid_post", ("ln_final",), "", "ln_final",
             "unembed", -1, final=True)
    cuts.append(_Cut("logits", "logits"))
    return cuts, ops


def _parallel_block(i: int, block: Any, prev: tuple[str, ...], cuts: list[_Cut],
                    ops: list[_Op]) -> None:
    """Cuts of a parallel block: ``resid_pre``, ``ln_out`` (one scale), ``parallel_in``.

    Attention and MLP read the same residual, so there is no cut between them; their two
    norms divide by the same scale, which must therefore be one feature (same kind, same eps).
    """
    cuts.append(_Cut(f"blocks.{i}.hook_resid_pre", "resid", prev + (f"blocks.{i}.ln1",)))
    if block.ln1 is None and block.ln2 is None:
        ops.append(_Op("parallel", i, None))
        return
    if block.ln1 is None or block.ln2 is None or (block.ln1.center, block.ln1.eps) != (
        block.ln2.center, block.ln2.eps
    ):
        raise ValueError(
            f"Block {i} runs attention and MLP in parallel with norms of different kinds or "
            "eps; the sequential transformer cuts a parallel block only where both norms divide "
            "by the same scale (GPT-NeoX, GPT-J). Use a model with sequential blocks."
        )
    ops.append(_Op("ln_in", i, "ln1"))
    cuts.append(_Cut(f"blocks.{i}.ln_out", "scaled"))
    ops.append(_Op("ln_out2", i, "ln1"))
    cuts.append(_Cut(f"blocks.{i}.parallel_in", "normed2"))
    ops.append(_Op("parallel", i, "ln1"))


def _span(w: TransformerWeights, cuts: list[_Cut], ops: list[_Op], start: int, stop: int,
          last_from: int | None) -> Callable[[Tensor], Tensor]:
    """The map from cut ``start`` to cut ``stop``, as a pure batched torch function.

    From cut ``last_from`` on only the last position is kept; the operations there are
    position-wise, so slicing early is exact.
    """
    d = w.d_model

    def run(f: Tensor) -> Tensor:
        const = f[..., :1]
        layout = cuts[start].layout
        x = scale = h = h2 = None
        if layout == "final":
            h = f[..., 1:]
        elif layout == "logits":
            x = f[..., 1:]
        else:
            x = f[..., 1 : 1 + d]
            if layout == "scaled":
                scale = f[..., 1 + d : 2 + d]
            elif layout == "normed":
                h = f[..., 1 + d :]
            elif layout == "normed2":
                h, h2 = f[..., 1 + d : 1 + 2 * d], f[..., 1 + 2 * d :]
        for k in range(start, stop):
            op = ops[k]
            if op.kind == "ln_in":
                scale = _norm_scale(_norm_of(w, op), x, const)
            elif op.kind == "ln_out":
                h = _normalize(_norm_of(w, op), x, scale, const)
                scale = None
            elif op.kind == "ln_out2":  # a parallel block: both norms, one scale
                block = w.blocks[op.block]
                h = _normalize(block.ln1, x, scale, const)
                h2 = _normalize(block.ln2, x, scale, const)
                scale = None
            elif op.kind == "parallel":
                block = w.blocks[op.block]
                a_in, m_in = (x, x) if op.norm is None else (h, h2)
                x = x + _attention(block.attn, a_in, const) + _mlp(block.mlp, m_in, const)
                h = h2 = None
            elif op.kind == "attn":
                x = x + _attention(w.blocks[op.block].attn, x if op.norm is None else h, const)
                h = None
            elif op.kind == "mlp":
                x = x + _mlp(w.blocks[op.block].mlp, x if op.norm is None else h, const)
                h = None
            else:  # unembed
                x = (x if op.norm is None else h) @ w.W_U + const * w.b_U
                h = None
            if last_from is not None and k + 1 >= last_from:
                const = const[..., -1:, :]
                x = None if x is None else x[..., -1:, :]
                h = None if h is None else h[..., -1:, :]
                h2 = None if h2 is None else h2[..., -1:, :]
                scale = None if scale is None else scale[..., -1:, :]
        out = cuts[stop].layout
        if out == "final":
            parts = [const, h]
        elif out == "scaled":
            parts = [const, x, scale]
        elif out == "normed":
            parts = [const, x, h]
        elif out == "normed2":
            parts = [const, x, h, h2]
        else:
            parts = [const, x]
        return torch.cat(parts, dim=-1)

    return run


def _embed(w: TransformerWeights, tokens: Tensor) -> Tensor:
    """The first cut ``[f_0, resid]`` of token ids."""
    x = w.W_E[tokens]
    if w.W_pos is not None:
        x = x + w.W_pos[: tokens.shape[1]]
    return torch.cat([torch.ones_like(x[..., :1]), x], dim=-1)

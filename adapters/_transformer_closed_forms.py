"""Closed-form composite segments for :class:`HookedTransformerAdapter` (no layer norm).

A composite segment ``G(z) = seg(z @ in_map.T) @ out_map.T`` maps basis coordinates of one node
layer to basis coordinates of the next (see :mod:`sklearn_lib._segments`). The generic
:class:`~sklearn_lib._segments.CompositeSegment` differentiates the segment with
``torch.func`` and ablates with one full forward pass per mask. For the single sublayers of a
transformer without layer norm the three operations have short closed forms once ``in_map``
and ``out_map`` are folded into the weights, which is done once per composite here:

- :class:`UnembedComposite`: ``logits = W_U resid + b_U f0`` is linear, ``G(z) = Gmat z``;
- :class:`MLPComposite`: ``G(z) = L0 z + A act(Bm z)``, ``J = L0 + A diag(act'(Bm z)) Bm``;
- :class:`AttentionComposite`: per head, queries, keys and the value-output path (one vector
  per head and output feature) in basis coordinates, the Jacobian from the softmax derivative.

Every bias is folded as in the adapter: it multiplies the constant ``f0 = (z @ in_map.T)[..., 0]``
and so enters through the constant row of ``in_map``. ``last_position_from`` slicing (the
segment keeps only the last position) is reproduced: outputs at the last position only,
Jacobians with respect to every input position.

:func:`closed_form_segment` returns ``None`` for what is not covered here (spans of several
sublayers, layer norm), and the caller falls back to the generic segment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sklearn_lib._segments import CompositeSegment

__all__ = [
    "AttentionComposite",
    "MLPComposite",
    "UnembedComposite",
    "closed_form_segment",
]

#: Bytes a temporary of the batched ablation / Jacobian may take (outputs are chunked to it).
_MEMORY_BUDGET = 128 * 2**20


def closed_form_segment(weights, steps, start: int, stop: int, last_from: int | None,
                        segment: Callable[[Tensor], Tensor], in_map: Tensor,
                        out_map: Tensor) -> CompositeSegment | None:
    """The closed-form composite of the single step ``start`` (cut ``start`` -> ``start + 1``).

    ``weights`` are the adapter's :class:`TransformerWeights` (already cast), ``steps`` its
    ``_steps(weights)``, ``segment`` the generic span (kept as ``.segment``). Returns ``None``
    when the span has several sublayers or touches a layer norm.
    """
    if stop != start + 1 or not 0 <= start < len(steps):
        return None
    step = steps[start]
    if step.norm is not None or (stop < len(steps) and steps[stop].norm is not None):
        return None
    d = weights.d_model
    if in_map.shape[0] != 1 + d or out_map.shape[1] != (
        1 + (weights.d_vocab_out if step.kind == "unembed" else d)
    ):
        return None
    last = last_from is not None and start + 1 >= last_from
    if step.kind == "attn":
        return AttentionComposite(weights.blocks[step.block].attn, segment, in_map, out_map,
                                  last)
    if step.kind == "mlp":
        return MLPComposite(weights.blocks[step.block].mlp, segment, in_map, out_map, last)
    return UnembedComposite(weights.W_U, weights.b_U, segment, in_map, out_map, last)


# -- helpers -----------------------------------------------------------------------------------
def _chunk(per_item_bytes: int, n: int) -> int:
    """How many items fit the memory budget (at least one)."""
    return max(1, min(n, _MEMORY_BUDGET // max(1, per_item_bytes)))


def _sparse_mask_chunks(masks: Tensor, bytes_per_output: Callable[[int], int]):
    """Chunks of outputs with the kept input columns of their masks, sparsest first.

    The ablation search keeps few edges in most of its probes, so output ``i`` only needs the
    ``nnz_i`` columns its mask keeps. Outputs are sorted by ``nnz``, grouped while the chunk's
    temporaries (``bytes_per_output(kmax)`` each, ``kmax`` the chunk's largest ``nnz``) fit
    the memory budget, and yield ``(outputs, idx, valid)``: ``idx`` of shape ``(C, kmax)`` the
    kept columns padded with column 0, ``valid`` 1 on the kept ones and 0 on the padding.
    """
    nnz = (masks != 0).sum(1)
    order = torch.argsort(nnz, stable=True)
    nnz_sorted = nnz[order].tolist()
    n = len(nnz_sorted)
    lo = 0
    while lo < n:
        hi = lo + 1
        while hi < n and (hi + 1 - lo) * bytes_per_output(max(1, nnz_sorted[hi])) <= _MEMORY_BUDGET:
            hi += 1
        outputs = order[lo:hi]
        kmax = max(1, nnz_sorted[hi - 1])
        m = masks[outputs]
        # Kept columns first (stable: in increasing order), then the padding.
        idx = torch.argsort((m == 0).to(torch.int8), dim=1, stable=True)[:, :kmax]
        valid = m.gather(1, idx)
        yield outputs, idx, valid
        lo = hi


def _activation_and_derivative(act_fn: str) -> tuple[Callable[[Tensor], Tensor],
                                                     Callable[[Tensor], Tensor]]:
    from sklearn_lib.adapters._transformer_lens import _ACTIVATIONS

    act = _ACTIVATIONS[act_fn]
    if act_fn == "relu":
        # The derivative autograd uses: 0 at the kink.
        return act, lambda x: (x > 0).to(x.dtype)

    def derivative(x: Tensor) -> Tensor:
        # Elementwise: the forward-mode derivative along ones is the derivative.
        return torch.func.jvp(act, (x,), (torch.ones_like(x),))[1]

    return act, derivative


class _FoldedComposite(CompositeSegment):
    """Shared state: ``in_map = [a0; P; ...]``, ``out_map = [o0 | Q]``, output positions."""

    def __init__(self, segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor,
                 last: bool) -> None:
        super().__init__(segment, in_map, out_map)
        self.last = last
        self.n_in = in_map.shape[1]
        self.n_out = out_map.shape[0]

    def _positions(self, T: int) -> slice:
        return slice(T - 1, T) if self.last else slice(0, T)

    def _place_diagonal(self, X: Tensor, T_in: int, sources: Tensor | None) -> Tensor:
        """Jacobian ``(B, S|R, n_out, T_in, n_in)`` of a position-wise map.

        ``X`` of shape ``(B, S, n_out, n_in)`` is the derivative of output position ``s`` with
        respect to its own input position (the last one when slicing, else ``s``).
        """
        B, S, n_out, n_in = X.shape
        if sources is not None:
            R = sources.shape[1]
            X = torch.einsum("brs,bsij->brisj", sources, X) / R**0.5  # (B, R, n_out, S, n_in)
            if S == T_in:
                return X
            J = X.new_zeros(B, R, n_out, T_in, n_in)
            J[:, :, :, T_in - 1 :, :] = X
            return J
        if T_in == 1:
            return X.unsqueeze(3)
        J = X.new_zeros(B, S, n_out, T_in, n_in)
        if S == 1:  # the last position only
            J[:, 0, :, T_in - 1, :] = X[:, 0]
        else:
            idx = torch.arange(S, device=X.device)
            J[:, idx, :, idx, :] = X.transpose(0, 1)  # advanced indices first: (S, B, ...)
        return J


# -- unembedding -------------------------------------------------------------------------------
class UnembedComposite(_FoldedComposite):
    """``G(z) = Gmat z`` per position with ``Gmat = o0 a0 + Q (W_U^T P + b_U a0)``."""

    def __init__(self, W_U: Tensor, b_U: Tensor, segment, in_map: Tensor, out_map: Tensor,
                 last: bool) -> None:
        super().__init__(segment, in_map, out_map, last)
        d = W_U.shape[0]
        a0, P = in_map[0], in_map[1 : 1 + d]
        o0, Q = out_map[:, 0], out_map[:, 1:]
        inner = W_U.T @ P + torch.outer(b_U, a0)  # (d_vocab_out, n_in): logits per z
        self.Gmat = torch.outer(o0, a0) + Q @ inner  # (n_out, n_in)

    def __call__(self, z: Tensor) -> Tensor:
        return z[:, self._positions(z.shape[1])] @ self.Gmat.T

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """The same matrix for every sample; without sources a broadcast (read-only) view."""
        B, T = z.shape[:2]
        S = 1 if self.last else T
        X = self.Gmat.expand(B, S, *self.Gmat.shape)
        return self._place_diagonal(X, T, sources)

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        masks = masks.to(dtype=z.dtype, device=z.device)
        return z[:, self._positions(z.shape[1])] @ (masks * self.Gmat).T


# -- MLP ---------------------------------------------------------------------------------------
class MLPComposite(_FoldedComposite):
    """``G(z) = L0 z + A act(Bm z)`` per position.

    ``L0 = o0 a0 + Q (P + b_out a0)`` (residual and output bias), ``A = Q W_out^T``,
    ``Bm = W_in^T P + b_in a0``.
    """

    def __init__(self, mlp, segment, in_map: Tensor, out_map: Tensor, last: bool) -> None:
        super().__init__(segment, in_map, out_map, last)
        d = mlp.W_in.shape[0]
        a0, P = in_map[0], in_map[1 : 1 + d]
        o0, Q = out_map[:, 0], out_map[:, 1:]
        self.L0 = torch.outer(o0, a0) + Q @ (P + torch.outer(mlp.b_out, a0))  # (n_out, n_in)
        self.A = Q @ mlp.W_out.T  # (n_out, d_mlp)
        self.Bm = mlp.W_in.T @ P + torch.outer(mlp.b_in, a0)  # (d_mlp, n_in)
        self.act, self.act_prime = _activation_and_derivative(mlp.act_fn)

    def __call__(self, z: Tensor) -> Tensor:
        z = z[:, self._positions(z.shape[1])]
        return z @ self.L0.T + self.act(z @ self.Bm.T) @ self.A.T

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        B, T = z.shape[:2]
        zs = z[:, self._positions(T)]
        S = zs.shape[1]
        rows = zs.reshape(B * S, -1)
        n_out, d_mlp = self.A.shape
        n_in = self.n_in
        X = torch.empty(B * S, n_out, n_in, dtype=z.dtype, device=z.device)
        # Scale the smaller of A (n_out x d_mlp) and Bm (d_mlp x n_in) by act'.
        step = _chunk(min(n_out, n_in) * d_mlp * z.element_size(), B * S)
        for lo in range(0, B * S, step):
            g = self.act_prime(rows[lo : lo + step] @ self.Bm.T)  # (b, d_mlp)
            if n_in <= n_out:
                X[lo : lo + step] = torch.matmul(self.A, g[:, :, None] * self.Bm)
            else:
                X[lo : lo + step] = torch.matmul(self.A * g[:, None, :], self.Bm)
        X += self.L0
        return self._place_diagonal(X.reshape(B, S, n_out, n_in), T, sources)

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out_i = L0_i (z * m_i) + A_i act(Bm (z * m_i))`` over the kept columns of ``m_i``.

        ``mask_chunk`` is accepted for the interface; chunks are sized by memory instead.
        """
        masks = masks.to(dtype=z.dtype, device=z.device)
        zs = z[:, self._positions(z.shape[1])]
        B, S, _ = zs.shape
        d_mlp = self.A.shape[1]
        out = torch.empty(B, S, self.n_out, dtype=z.dtype, device=z.device)
        BmT, size = self.Bm.T, z.element_size()
        for outputs, idx, valid in _sparse_mask_chunks(
            masks, lambda k: size * (B * S * (2 * d_mlp + k) + k * d_mlp)
        ):
            zg = zs[..., idx] * valid  # (B, S, C, k): the kept inputs of each output
            pre = torch.einsum("bscj,cjk->bsck", zg, BmT[idx])
            val = torch.einsum("bsck,ck->bsc", self.act(pre), self.A[outputs])
            val += torch.einsum("bscj,cj->bsc", zg, self.L0[outputs[:, None], idx])
            out[..., outputs] = val
        return out


# -- attention ---------------------------------------------------------------------------------
class AttentionComposite(_FoldedComposite):
    """``G(z)_s = L0 z_s + sum_h sum_t a_{h,s,t} (z_t @ U_h)`` with softmax attention ``a``.

    In basis coordinates: queries ``z_s @ WQ_h``, keys ``z_t @ WK_h`` (biases folded through
    ``a0``), the value-output path ``U_h = (P^T W_V^h + a0 b_V^h) W_O^h Q^T`` of shape
    ``(n_in, n_out)``, and ``L0 = o0 a0 + Q (P + b_O a0)``.
    """

    def __init__(self, attn, segment, in_map: Tensor, out_map: Tensor, last: bool) -> None:
        super().__init__(segment, in_map, out_map, last)
        d = attn.W_Q.shape[1]
        a0, P = in_map[0], in_map[1 : 1 + d]
        o0, Q = out_map[:, 0], out_map[:, 1:]

        def fold(W: Tensor, b: Tensor) -> Tensor:  # (H, d, dh), (H, dh) -> (H, n_in, dh)
            return torch.einsum("dj,hdk->hjk", P, W) + a0[None, :, None] * b[:, None, :]

        self.WQ = fold(attn.W_Q, attn.b_Q)
        self.WK = fold(attn.W_K, attn.b_K)
        WV = fold(attn.W_V, attn.b_V)
        self.U = torch.einsum("hjk,hkd,id->hji", WV, attn.W_O, Q)  # (H, n_in, n_out)
        self.L0 = torch.outer(o0, a0) + Q @ (P + torch.outer(attn.b_O, a0))
        self.scale = float(attn.scale)
        self.causal = bool(attn.causal)
        self._QK: Tensor | None = None  # WQ_h WK_h^T, made on first use
        #: How :meth:`ablated` forms the scores: "qk" (queries and keys, ``d_head`` per head),
        #: "QK" (the bilinear form ``WQ_h WK_h^T``, ``n_in`` per head) or None (cheaper one).
        self.score_path: str | None = None

    # The pattern of the output positions: (B, H, S, T), plus queries and keys.
    def _allowed(self, T: int, S: int, device) -> Tensor | None:
        if not self.causal:
            return None
        allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        return allowed[T - S :]

    def _pattern(self, scores: Tensor, T: int, S: int) -> Tensor:
        allowed = self._allowed(T, S, scores.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _forward_parts(self, z: Tensor):
        T = z.shape[1]
        zs = z[:, self._positions(T)]
        S = zs.shape[1]
        q = torch.einsum("bsj,hjk->bhsk", zs, self.WQ)
        k = torch.einsum("btj,hjk->bhtk", z, self.WK)
        a = self._pattern(torch.einsum("bhsk,bhtk->bhst", q, k) / self.scale, T, S)
        vo = torch.einsum("btj,hji->bhti", z, self.U)  # (B, H, T, n_out)
        return zs, q, k, a, vo

    def __call__(self, z: Tensor) -> Tensor:
        zs, _, _, a, vo = self._forward_parts(z)
        return zs @ self.L0.T + torch.einsum("bhst,bhti->bsi", a, vo)

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """``dG_{s,i}/dz_{t,j}``: residual, value path and the softmax path.

        With ``c_{h,s,i,t} = a_{h,s,t} (vo_{h,t,i} - sum_t' a_{h,s,t'} vo_{h,t',i})`` (the
        derivative of the output with respect to the score ``(s, t)``):
        ``J = delta_{ts} (L0 + sum_{h,t'} c_{h,s,i,t'} (WQ_h k_{h,t'})_j / scale)
        + sum_h a_{h,s,t} U_{h,j,i} + sum_h c_{h,s,i,t} (WK_h q_{h,s})_j / scale``.
        """
        B, T, _ = z.shape
        zs, q, k, a, vo = self._forward_parts(z)
        S = zs.shape[1]
        vbar = torch.einsum("bhst,bhti->bhsi", a, vo)
        c = a[:, :, :, None, :] * (vo.transpose(2, 3)[:, :, None] - vbar[..., None])
        # c: (B, H, S, n_out, T); the query and key directions in basis coordinates.
        qK = torch.einsum("bhsk,hjk->bhsj", q, self.WK) / self.scale  # (B, H, S, n_in)
        kQ = torch.einsum("bhtk,hjk->bhtj", k, self.WQ) / self.scale  # (B, H, T, n_in)
        diag = self.L0 + torch.einsum("bhsit,bhtj->bsij", c, kQ)  # (B, S, n_out, n_in)
        if sources is None:
            J = torch.einsum("bhst,hji->bsitj", a, self.U)
            J += torch.einsum("bhsit,bhsj->bsitj", c, qK)
        else:
            R = sources.shape[1]
            W = sources.to(z.dtype) / R**0.5  # (B, R, S)
            J = torch.einsum("bhrt,hji->britj", torch.einsum("brs,bhst->bhrt", W, a), self.U)
            Wq = W[:, :, None, :, None] * qK[:, None]  # (B, R, H, S, n_in)
            J += torch.einsum("brhsj,bhsit->britj", Wq, c)
            diag = torch.einsum("brs,bsij->brisj", W, diag)  # (B, R, n_out, S, n_in)
        return self._add_diagonal(J, diag, T, S, sources is not None)

    def _add_diagonal(self, J: Tensor, diag: Tensor, T: int, S: int, mixed: bool) -> Tensor:
        if mixed:  # diag (B, R, n_out, S, n_in) at input positions T-S .. T-1
            J[:, :, :, T - S :, :] += diag
        elif S == 1:
            J[:, 0, :, T - 1, :] += diag[:, 0]
        else:
            idx = torch.arange(S, device=J.device)
            J[:, idx, :, idx, :] += diag.transpose(0, 1)
        return J

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """Per output ``i``: queries, keys and value scalars from ``z * masks[i]``.

        Only the columns output ``i``'s mask keeps are gathered (outputs in chunks of similar
        sparsity); the value path of output ``i`` is the vector ``U_{h,:,i}`` per head.
        ``mask_chunk`` is accepted for the interface; chunks are sized by memory instead.
        """
        masks = masks.to(dtype=z.dtype, device=z.device)
        B, T, _ = z.shape
        S = 1 if self.last else T
        H, _, dh = self.WQ.shape
        size = z.element_size()
        out = torch.empty(B, S, self.n_out, dtype=z.dtype, device=z.device)

        def use_QK(k: int) -> bool:  # scores via WQ_h WK_h^T (k per head) or q, k (dh)
            if self.score_path is not None:
                return self.score_path == "QK"
            return S * k * k + S * T * k < (S + T) * k * dh

        def nbytes(k: int) -> int:
            width = T * k + H * S * (k if use_QK(k) else dh) + H * T * dh + 3 * H * S * T
            return size * (B * width + H * k * max(k, dh))

        for outputs, idx, valid in _sparse_mask_chunks(masks, nbytes):
            k = idx.shape[1]
            zg = z[..., idx] * valid  # (B, T, C, k)
            zq = zg[:, T - S :]
            if use_QK(k):
                if self._QK is None:
                    self._QK = torch.einsum("hjd,hld->hjl", self.WQ, self.WK)
                QKg = self._QK[:, idx[:, :, None], idx[:, None, :]]  # (H, C, k, k)
                u = torch.einsum("bscj,hcjl->bchsl", zq, QKg)
                scores = torch.einsum("bchsl,btcl->bchst", u, zg)
            else:
                q = torch.einsum("bscj,hcjd->bchsd", zq, self.WQ[:, idx])
                kk = torch.einsum("btcj,hcjd->bchtd", zg, self.WK[:, idx])
                scores = torch.einsum("bchsd,bchtd->bchst", q, kk)
            a = self._pattern(scores / self.scale, T, S)  # (B, C, H, S, T)
            vo = torch.einsum("btcj,hcj->bcht", zg, self.U[:, idx, outputs[:, None]])
            val = torch.einsum("bchst,bcht->bsc", a, vo)
            val += torch.einsum("bscj,cj->bsc", zq, self.L0[outputs[:, None], idx])
            out[..., outputs] = val
        return out

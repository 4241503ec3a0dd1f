"""Closed-form composite segments for :class:`TransformerAdapter` (between residual cuts).

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
operations, layer norm, rotary positions, local attention, gated MLPs), and the caller falls
back to the generic segment. Grouped-query attention is expanded to one key/value per head.
"""

from __future__ import annotations

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

#: Bytes the temporaries of one chunk of the batched Jacobians and ablations may take (masks
#: and rows are chunked to it). A compromise measured on 2 CPU cores: 128 MiB chunks ran up to
#: 2-3x slower (fresh pages instead of the allocator's heap), 8 MiB ones issue 4x as many
#: small operations, each of which can cost milliseconds of thread wake-up on a busy machine.
_MEMORY_BUDGET = 32 * 2**20


def closed_form_segment(weights, ops, in_layout: str, out_layout: str, last: bool,
                        segment: Callable[[Tensor], Tensor], in_map: Tensor,
                        out_map: Tensor) -> CompositeSegment | None:
    """The closed-form composite of the operations ``ops`` between two cuts, or ``None``.

    ``weights`` are the adapter's :class:`TransformerWeights` (already cast), ``ops`` the
    sequential transformer's operations from the input cut to the output cut, ``in_layout``
    and ``out_layout`` the two cuts' layouts ("resid", "scaled", "normed", "final", ...),
    ``last`` whether the output cut keeps only the last position, ``segment`` the generic span
    (kept as ``.segment``). Dispatches to the closed forms of this module (one operation
    between residual cuts, no norm) and to those of the norm-split cuts of language models
    (:mod:`~sklearn_lib.adapters._norm_closed_forms` for the position-wise ones,
    :mod:`~sklearn_lib.adapters._attention_closed_forms` for attention). Returns ``None`` for
    what none covers; the caller falls back to the generic segment.
    """
    if len(ops) == 1 and in_layout == "resid" and out_layout in ("resid", "logits"):
        fast = _residual_closed_form(weights, ops[0], last, segment, in_map, out_map)
        if fast is not None:
            return fast
    from sklearn_lib.adapters._attention_closed_forms import attention_closed_form
    from sklearn_lib.adapters._norm_closed_forms import norm_closed_form

    for make in (norm_closed_form, attention_closed_form):
        fast = make(weights, ops, in_layout, out_layout, last, segment, in_map, out_map)
        if fast is not None:
            return fast
    return None


def _residual_closed_form(weights, op, last: bool, segment: Callable[[Tensor], Tensor],
                          in_map: Tensor, out_map: Tensor) -> CompositeSegment | None:
    """One operation between two residual cuts of a model without norms, or ``None``.

    Returns ``None`` for a norm inside the span, rotary positions, local attention and gated
    MLPs.
    """
    if op.norm is not None or op.kind not in ("attn", "mlp", "unembed"):
        return None
    d = weights.d_model
    if in_map.shape[0] != 1 + d or out_map.shape[1] != (
        1 + (weights.d_vocab_out if op.kind == "unembed" else d)
    ):
        return None
    if op.kind == "attn":
        attn = weights.blocks[op.block].attn
        if attn.rotary is not None or attn.window is not None:
            return None
        return AttentionComposite(attn, segment, in_map, out_map, last)
    if op.kind == "mlp":
        mlp = weights.blocks[op.block].mlp
        if mlp.W_gate is not None:
            return None
        return MLPComposite(mlp, segment, in_map, out_map, last)
    return UnembedComposite(weights.W_U, weights.b_U, segment, in_map, out_map, last)


# -- helpers -----------------------------------------------------------------------------------
def _masked_product(rows: Tensor, zg: Tensor, idx: Tensor, complement: bool, cache: dict,
                    key, MT: Tensor) -> Tensor:
    """``(z * m) @ MT`` for each mask ``m`` of a chunk, ``(C, N, MT.shape[1])``.

    ``zg`` ``(C, k, N)`` holds the inputs of the columns ``idx`` each mask keeps (zero where
    padded); for a complement chunk they are the columns it drops, and the product is the
    unmasked one (``rows @ MT``, computed once per block of rows and kept in ``cache[key]``)
    less theirs.
    """
    out = torch.matmul(zg.transpose(1, 2), MT[idx])
    if complement:
        if key not in cache:
            cache[key] = rows @ MT
        out = torch.sub(cache[key], out, out=out)
    return out


def _chunk(per_item_bytes: int, n: int) -> int:
    """How many items fit the memory budget (at least one)."""
    return max(1, min(n, _MEMORY_BUDGET // max(1, per_item_bytes)))


def _mask_chunks(masks: Tensor, bytes_per_mask: Callable[[int, int, bool], int],
                 cost: Callable[[int, bool], float] | None = None):
    """Chunks of distinct masks, each with the few input columns it needs and its outputs.

    The ablation search keeps few edges in most of its probes, so a mask usually keeps few
    columns; in its first probes many masks drop few. Each distinct mask is handled through
    the columns it keeps (``complement=False``: the output is computed from them alone) or
    the columns it drops (``complement=True``: their contribution is subtracted from the
    unablated pre-activations, which are linear in the inputs), whichever ``cost(width,
    complement)`` finds cheaper (default: the narrower). Outputs sharing a mask share the
    work. Masks are grouped by ``(R, complement)``, ``R`` the number of outputs using the
    mask, sorted by the number of columns needed and chunked while the widths stay similar
    and the chunk's temporaries (``bytes_per_mask(kmax, R, complement)`` each, ``kmax`` the
    chunk's widest) fit the memory budget.

    Yields ``(idx, valid, outs, complement)``: ``idx`` of shape ``(C, kmax)`` the needed
    columns padded with column 0, ``valid`` 1 on the needed ones and 0 on the padding, ``outs``
    of shape ``(C, R)`` the outputs using each mask.
    """
    cost = cost or (lambda k, complement: k)
    unique, inverse, counts = torch.unique(masks != 0, dim=0, return_inverse=True,
                                           return_counts=True)
    n_in = masks.shape[1]
    by_mask = torch.argsort(inverse, stable=True)  # outputs grouped by their mask
    starts = torch.cumsum(counts, 0) - counts
    kept = unique.sum(1)
    complement = torch.tensor([cost(n_in - k, True) < cost(k, False) for k in kept.tolist()],
                              dtype=torch.bool, device=masks.device)
    width = torch.where(complement, n_in - kept, kept)
    keys = torch.stack([counts, complement.long()], 1)
    for R, comp in torch.unique(keys, dim=0).tolist():
        group = torch.nonzero((counts == R) & (complement == bool(comp))).squeeze(1)
        group = group[torch.argsort(width[group], stable=True)]
        k_sorted = width[group].tolist()
        outs_all = by_mask[starts[group, None] + torch.arange(R, device=masks.device)]
        lo = 0
        while lo < len(k_sorted):
            hi = lo + 1
            while hi < len(k_sorted) and k_sorted[hi] <= 1.5 * k_sorted[lo] + 4 and (
                (hi + 1 - lo) * bytes_per_mask(max(1, k_sorted[hi]), R, bool(comp))
                <= _MEMORY_BUDGET
            ):  # padding every mask to the widest wastes at most about half
                hi += 1
            kmax = max(1, k_sorted[hi - 1])
            needed = unique[group[lo:hi]] != bool(comp)  # kept, or dropped for complements
            # Needed columns first (stable: in increasing order), then the padding.
            idx = torch.argsort((~needed).to(torch.int8), dim=1, stable=True)[:, :kmax]
            yield idx, needed.gather(1, idx), outs_all[lo:hi], bool(comp)
            lo = hi


def _activation_and_derivative(act_fn: str) -> tuple[Callable[[Tensor], Tensor],
                                                     Callable[[Tensor], Tensor]]:
    from sklearn_lib.adapters._transformer_sequential import ACTIVATIONS

    act = ACTIVATIONS[act_fn]
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

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out[..., i] = G(z * masks[i])[..., i]`` (``masks`` 0/1 of shape (n_out, n_in)).

        The distinct masks are processed in chunks of similar width (see
        :func:`_mask_chunks`), over blocks of rows that keep each chunk within the memory
        budget. ``mask_chunk`` is accepted for the interface; chunks are sized by memory.
        """
        masks = masks.to(dtype=z.dtype, device=z.device)
        B, T = z.shape[:2]
        per_row = self._row_elements(T, max(1, self.n_in // 2), 1, False) * z.element_size()
        block = int(min(B, max(16, _MEMORY_BUDGET // (2 * per_row))))
        chunks = list(_mask_chunks(
            masks, lambda k, R, c: block * self._row_elements(T, k, R, c) * z.element_size(),
            lambda k, c: self._width_cost(T, k, c),
        ))
        blocks = [self._ablated_block(z[lo : lo + block], masks, chunks)
                  for lo in range(0, B, block)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _row_elements(self, T: int, k: int, R: int, complement: bool) -> int:
        """Elements of the temporaries per row of ``z`` for one mask of width ``k``."""
        raise NotImplementedError

    def _width_cost(self, T: int, k: int, complement: bool) -> float:
        """Work per row for a mask that needs ``k`` columns, kept or (complement) dropped."""
        return k

    def _ablated_block(self, z: Tensor, masks: Tensor, chunks: list) -> Tensor:
        raise NotImplementedError

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

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        """``rows * Gmat^T Gmat`` on columns ``>= start`` (float64): every row (position
        ``>= skip``) has Jacobian ``Gmat``; the map is position-wise, so +-1 sources leave the
        sum unchanged."""
        rows = z.shape[0] * (1 if self.last else z.shape[1] - skip)
        G = self.Gmat[:, start:].to(torch.float64)
        return rows * (G.T @ G)


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
        self.act_ = torch.relu_ if mlp.act_fn == "relu" else None  # in place, on temporaries

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
        gated = self.act_ is torch.relu_ and n_out * d_mlp * n_in >= _GATE_MIN_PRODUCT
        for lo in range(0, B * S, step):
            g = self.act_prime(rows[lo : lo + step] @ self.Bm.T)  # (b, d_mlp)
            if gated:  # 0/1 gates: through the fewer of on and off units
                X[lo : lo + step] = _gated_products(self, g)  # L0 included
            elif n_in <= n_out:
                X[lo : lo + step] = torch.matmul(self.A, g[:, :, None] * self.Bm)
            else:
                X[lo : lo + step] = torch.matmul(self.A * g[:, None, :], self.Bm)
        if not gated:
            X += self.L0
        return self._place_diagonal(X.reshape(B, S, n_out, n_in), T, sources)

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        r"""``sum_rows J^T J`` on columns ``>= start`` and positions ``>= skip`` without
        forming the Jacobians (float64).

        With ``J = L0 + A diag(g) B`` per row (``g = act'(B z)``) and ``K = A^T A``,

        .. math::

            \sum J^T J = N L_0^T L_0 + L_0^T A \,\mathrm{diag}(\textstyle\sum g)\, B
                + (\cdot)^T + B^T \big(K \circ \textstyle\sum g g^T\big) B,

        ``O(N d_hidden^2)`` instead of ``O(N n_out n_in^2)`` (``N`` rows: samples times output
        positions). The segment is position-wise, so random +-1 sources mixing output
        positions leave the sum unchanged: ``sources`` is accepted and not needed.
        """
        zs = z[:, self._positions(z.shape[1])] if self.last else z[:, skip:]
        rows = zs.reshape(-1, zs.shape[-1])
        f64 = torch.float64
        g = self.act_prime(rows @ self.Bm.T).to(f64)  # (N, d_hidden)
        A, B, L0 = self.A.to(f64), self.Bm[:, start:].to(f64), self.L0[:, start:].to(f64)
        K = A.T @ A
        gram = B.T @ ((K * (g.T @ g)) @ B)
        cross = ((L0.T @ A) * g.sum(0)) @ B
        gram += cross + cross.T + rows.shape[0] * (L0.T @ L0)
        return gram

    def _row_elements(self, T: int, k: int, R: int, complement: bool) -> int:
        S = 1 if self.last else T
        return S * (2 * self.A.shape[1] + k + 2 * R)

    def _ablated_block(self, z: Tensor, masks: Tensor, chunks: list) -> Tensor:
        """``out_i = L0_i (z * m_i) + A_i act(Bm (z * m_i))``, one hidden layer per distinct
        mask, from the columns it keeps (or the unablated one less the columns it drops)."""
        zs = z[:, self._positions(z.shape[1])]
        B, S, n_in = zs.shape
        N = B * S
        rows = zs.reshape(N, n_in)
        zT = rows.T.contiguous()  # (n_in, N): gathers the rows of needed inputs
        out = (rows @ (masks * self.L0).T).T.contiguous()  # (n_out, N): the linear part
        BmT = self.Bm.T
        cache: dict = {}  # unablated pre-activations, for masks that drop few columns
        for idx, valid, outs, complement in chunks:
            zg = zT[idx] * valid[..., None]  # (C, k, N)
            pre = _masked_product(rows, zg, idx, complement, cache, "pre", BmT)  # (C, N, d_mlp)
            h = self.act_(pre) if self.act_ is not None else self.act(pre)
            val = torch.matmul(h, self.A[outs].transpose(1, 2))  # (C, N, R)
            out[outs.reshape(-1)] += val.transpose(1, 2).reshape(-1, N)
        return out.T.reshape(B, S, self.n_out)


# -- attention ---------------------------------------------------------------------------------
class AttentionComposite(_FoldedComposite):
    """``G(z)_s = L0 z_s + sum_h sum_t a_{h,s,t} (z_t @ U_h)`` with softmax attention ``a``.

    In basis coordinates: queries ``z_s @ WQ_h`` (``1/scale`` folded in), keys ``z_t @ WK_h``
    (biases folded through ``a0``), the value-output path ``U_h = (P^T W_V^h + a0 b_V^h) W_O^h Q^T`` of shape
    ``(n_in, n_out)``, and ``L0 = o0 a0 + Q (P + b_O a0)``.
    """

    def __init__(self, attn, segment, in_map: Tensor, out_map: Tensor, last: bool) -> None:
        super().__init__(segment, in_map, out_map, last)
        d = attn.W_Q.shape[1]
        a0, P = in_map[0], in_map[1 : 1 + d]
        o0, Q = out_map[:, 0], out_map[:, 1:]

        def fold(W: Tensor, b: Tensor) -> Tensor:  # (H, d, dh), (H, dh) -> (H, n_in, dh)
            return torch.einsum("dj,hdk->hjk", P, W) + a0[None, :, None] * b[:, None, :]

        group = attn.W_Q.shape[0] // attn.W_K.shape[0]  # grouped-query: share K and V

        def kv(t: Tensor) -> Tensor:
            return t if group == 1 else t.repeat_interleave(group, dim=0)

        self.scale = float(attn.scale)
        self.WQ = fold(attn.W_Q, attn.b_Q) / self.scale  # scores are q . k, scale folded in
        self.WK = fold(kv(attn.W_K), kv(attn.b_K))
        WV = fold(kv(attn.W_V), kv(attn.b_V))
        self.U = torch.einsum("hjk,hkd,id->hji", WV, attn.W_O, Q)  # (H, n_in, n_out)
        self.L0 = torch.outer(o0, a0) + Q @ (P + torch.outer(attn.b_O, a0))
        self.causal = bool(attn.causal)
        self._masked: dict[tuple[int, int], Tensor] = {}  # (T, S) -> disallowed (S, T)
        self._QK: Tensor | None = None  # WQ_h WK_h^T, made on first use
        #: How :meth:`ablated` forms the scores: "qk" (queries and keys, ``d_head`` per head),
        #: "QK" (the bilinear form ``WQ_h WK_h^T``, ``n_in`` per head) or None (cheaper one).
        self.score_path: str | None = None

    def _pattern(self, scores: Tensor, T: int, S: int) -> Tensor:
        """Softmax over keys of ``scores (..., S, T)``, causal for the last ``S`` queries."""
        if self.causal:
            masked = self._masked.get((T, S))
            if masked is None:
                allowed = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
                masked = self._masked[(T, S)] = ~allowed[T - S :]
            scores = scores.masked_fill(masked, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _forward_parts(self, z: Tensor):
        """Output-position inputs, queries, keys, the pattern (B, H, S, T) and the values."""
        T = z.shape[1]
        zs = z[:, self._positions(T)]
        S = zs.shape[1]
        q = torch.einsum("bsj,hjk->bhsk", zs, self.WQ)
        k = torch.einsum("btj,hjk->bhtk", z, self.WK)
        a = self._pattern(torch.einsum("bhsk,bhtk->bhst", q, k), T, S)
        vo = torch.einsum("btj,hji->bhti", z, self.U)  # (B, H, T, n_out)
        return zs, q, k, a, vo

    def __call__(self, z: Tensor) -> Tensor:
        zs, _, _, a, vo = self._forward_parts(z)
        return zs @ self.L0.T + torch.einsum("bhst,bhti->bsi", a, vo)

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """``dG_{s,i}/dz_{t,j}``: residual, value path and the softmax path.

        With ``c_{h,s,i,t} = a_{h,s,t} (vo_{h,t,i} - sum_t' a_{h,s,t'} vo_{h,t',i})`` (the
        derivative of the output with respect to the score ``(s, t)``):
        ``J = delta_{ts} (L0 + sum_{h,t'} c_{h,s,i,t'} (WQ_h k_{h,t'})_j)
        + sum_h a_{h,s,t} U_{h,j,i} + sum_h c_{h,s,i,t} (WK_h q_{h,s})_j`` (``1/scale`` is
        in ``WQ`` and ``q``).
        """
        if sources is None:  # laid out by input position, in two GEMMs
            return _attention_jacobian(self, z)
        T = z.shape[1]
        zs, q, k, a, vo = self._forward_parts(z)
        S = zs.shape[1]
        vbar = torch.einsum("bhst,bhti->bhsi", a, vo)
        c = a[:, :, :, None, :] * (vo.transpose(2, 3)[:, :, None] - vbar[..., None])
        # c: (B, H, S, n_out, T); the query and key directions in basis coordinates.
        qK = torch.einsum("bhsk,hjk->bhsj", q, self.WK)  # (B, H, S, n_in); q carries 1/scale
        kQ = torch.einsum("bhtk,hjk->bhtj", k, self.WQ)  # (B, H, T, n_in); so does WQ
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

    def _use_QK(self, T: int, k: int, complement: bool) -> bool:
        """Scores through ``WQ_h WK_h^T`` (``k`` per head) rather than queries and keys."""
        if complement:
            return False  # q and k are linear in the mask: subtract the dropped part
        if self.score_path is not None:
            return self.score_path == "QK"
        S = 1 if self.last else T
        dh = self.WQ.shape[2]
        return S * k * k + S * T * k < (S + T) * k * dh

    def _width_cost(self, T: int, k: int, complement: bool) -> float:
        S = 1 if self.last else T
        dh = self.WQ.shape[2]
        return S * k * k + S * T * k if self._use_QK(T, k, complement) else (S + T) * k * dh

    def _row_elements(self, T: int, k: int, R: int, complement: bool) -> int:
        S = 1 if self.last else T
        H, _, dh = self.WQ.shape
        return (T * k + H * S * (k if self._use_QK(T, k, complement) else dh) + H * T * dh
                + 3 * H * S * T + 2 * H * R * T + 2 * S * R)

    def _ablated_block(self, z: Tensor, masks: Tensor, chunks: list) -> Tensor:
        """Per output ``i``: queries, keys and value scalars from ``z * masks[i]``.

        Only the columns a mask keeps are gathered, or the ones it drops are subtracted from
        the unablated queries, keys and values; the value path of output ``i`` is the vector
        ``U_{h,:,i}`` per head.
        """
        B, T, _ = z.shape
        S = 1 if self.last else T
        zq = z[:, T - S :]
        out = zq @ (masks * self.L0).T  # (B, S, n_out): the residual and bias part
        full = None  # unablated queries, keys and values, for masks that drop few columns
        for idx, valid, outs, complement in chunks:
            k = idx.shape[1]
            zg = z[..., idx] * valid  # (B, T, C, k): the kept (or dropped) inputs
            zgq = zg[:, T - S :]
            if self._use_QK(T, k, complement):
                if self._QK is None:
                    self._QK = torch.einsum("hjd,hld->hjl", self.WQ, self.WK)
                QKg = self._QK[:, idx[:, :, None], idx[:, None, :]]  # (H, C, k, k)
                u = torch.einsum("bscj,hcjl->bchsl", zgq, QKg)
                scores = torch.einsum("bchsl,btcl->bchst", u, zg)
            else:
                q = torch.einsum("bscj,hcjd->bchsd", zgq, self.WQ[:, idx])
                kk = torch.einsum("btcj,hcjd->bchtd", zg, self.WK[:, idx])
                if complement:
                    if full is None:
                        full = (torch.einsum("bsj,hjd->bhsd", zq, self.WQ)[:, None],
                                torch.einsum("btj,hjd->bhtd", z, self.WK)[:, None],
                                torch.einsum("btj,hji->bhit", z, self.U))
                    q = torch.sub(full[0], q, out=q)
                    kk = torch.sub(full[1], kk, out=kk)
                scores = torch.einsum("bchsd,bchtd->bchst", q, kk)
            a = self._pattern(scores, T, S)  # (B, C, H, S, T)
            Ug = self.U[:, idx[:, None, :], outs[:, :, None]]  # (H, C, R, k)
            vo = torch.einsum("btcj,hcrj->bchrt", zg, Ug)
            if complement:
                vo = full[2][:, :, outs].permute(0, 2, 1, 3, 4) - vo
            out[..., outs.reshape(-1)] += torch.einsum("bchst,bchrt->bscr", a, vo).reshape(
                B, S, -1)
        return out


# -- ReLU Jacobians through the switched units ---------------------------------------------------
#: Rows of gates gathered at once by :func:`_gated_products`.
_GATE_GROUP = 16
#: ``n_out * d_hidden * n_in`` from which a ReLU MLP's Jacobians go through
#: :func:`_gated_products`: below it the dense product is cheaper than the gathers and the
#: loop over groups of rows.
_GATE_MIN_PRODUCT = 2**20


def _gated_products(mlp: MLPComposite, g: Tensor) -> Tensor:
    """``L0 + A diag(g_r) Bm`` for every row ``g_r`` of 0/1 gates ``g`` of shape (N, d_hidden).

    From the units that are on, or as ``L0 + A Bm`` less the units that are off, whichever
    are fewer: the work scales with ``min(on, off)`` rather than ``d_hidden``. Rows are sorted
    by their count and gathered in groups of ``_GATE_GROUP`` (padded to the group's largest).
    """
    A, Bm = mlp.A, mlp.Bm
    N, d = g.shape
    if getattr(mlp, "_gated", None) is None:  # A^T and Bm with a zero row d for the padding
        zero = A.new_zeros(1, A.shape[0]), Bm.new_zeros(1, Bm.shape[1])
        mlp._gated = torch.cat([A.T, zero[0]]), torch.cat([Bm, zero[1]]), mlp.L0 + A @ Bm
    AT, B0, AB = mlp._gated
    on = g != 0
    count = on.sum(1)
    out = torch.empty(N, A.shape[0], Bm.shape[1], dtype=A.dtype, device=A.device)
    order = torch.argsort(count)
    for lo in range(0, N, _GATE_GROUP):
        rows = order[lo : lo + _GATE_GROUP]
        r = rows.numel()
        complement = bool(2 * count[rows].sum() > d * r)
        needed = ~on[rows] if complement else on[rows]
        k = max(1, int(needed.sum(1).max()))
        idx = torch.argsort((~needed).to(torch.int8), dim=1, stable=True)[:, :k]  # needed first
        idx = idx.masked_fill_(~needed.gather(1, idx), d).reshape(-1)  # padding: the zero row
        prod = torch.bmm(AT.index_select(0, idx).view(r, k, -1).transpose(1, 2),
                         B0.index_select(0, idx).view(r, k, -1))  # (r, n_out, n_in)
        if complement:
            prod = torch.sub(AB, prod, out=prod)
        else:
            prod += mlp.L0
        out[rows] = prod
    return out


# -- attention Jacobians laid out by input position ---------------------------------------------
def _attention_jacobian(attn: AttentionComposite, z: Tensor) -> Tensor:
    """:meth:`AttentionComposite.jacobian` without sources, stored ``(B, S, T, n_out, n_in)``.

    The value path ``sum_h a_{h,s,t} U_h^T`` is one GEMM over the heads and the softmax path
    ``sum_h c_{h,s,i,t} qK_{h,s,j}`` one batched GEMM added in place, instead of two einsums
    and a sum of the full tensors; each input position is then a matrix, which a chain of
    segments multiplies without a copy. Returns the ``(B, S, n_out, T, n_in)`` view.
    """
    B, T = z.shape[:2]
    zs, q, k, a, vo = attn._forward_parts(z)
    S = zs.shape[1]
    H, n_in, n_out = attn.U.shape
    vbar = torch.einsum("bhst,bhti->bhsi", a, vo)
    c = a[:, :, :, None, :] * (vo.transpose(2, 3)[:, :, None] - vbar[..., None])  # (B,H,S,i,T)
    qK = torch.einsum("bhsk,hjk->bhsj", q, attn.WK)
    kQ = torch.einsum("bhtk,hjk->bhtj", k, attn.WQ)
    diag = attn.L0 + torch.einsum("bhsit,bhtj->bsij", c, kQ)  # (B, S, n_out, n_in)
    Ut = getattr(attn, "_Ut", None)
    if Ut is None:
        Ut = attn._Ut = attn.U.transpose(1, 2).reshape(H, n_out * n_in)  # (h, (i, j))
    J = torch.mm(a.permute(0, 2, 3, 1).reshape(B * S * T, H), Ut).view(B * S, T * n_out, n_in)
    J.baddbmm_(c.permute(0, 2, 4, 3, 1).reshape(B * S, T * n_out, H),
               qK.transpose(1, 2).reshape(B * S, H, n_in))
    J = J.view(B, S, T, n_out, n_in)
    if S == 1:  # the last position only
        J[:, 0, T - 1] += diag[:, 0]
    else:
        idx = torch.arange(S, device=J.device)
        J[:, idx, idx] += diag  # adjacent advanced indices stay in place: (B, S, ...)
    return J.permute(0, 1, 3, 2, 4)

"""Closed-form attention segments of language models: rotary, grouped queries, windows, norms.

:class:`AttentionSpanComposite` serves the attention segments of the norm-split cut set (see
:mod:`~sklearn_lib.adapters._transformer_sequential`) and the attention between residual cuts
that :class:`~sklearn_lib.adapters._transformer_closed_forms.AttentionComposite` leaves out
(rotary positions, local attention):

- ``[attn]`` from a ``normed`` cut ``[f0, x, h]`` to a residual cut ``[f0, x']``,
  ``x' = x + attn(h)`` (or from a residual cut, the attention reading ``x`` itself);
- ``[attn, ln_in]`` from a ``normed`` cut to a ``scaled`` cut ``[f0, x', scale(x')]``,
  ``scale = sqrt(mean(x'_c^2) + eps f0^2)`` (``x'_c`` centred for LayerNorm, not for RMSNorm).

The maths (``in_map`` folded into per-head weights in basis coordinates, ``1/scale`` folded
into the queries, every bias through the constant row ``a0`` of ``in_map``). Per query head
``h`` (key/value head ``h // group``): ``q_hs = R_s(z_s WQ_h)``, ``k_ht = R_t(z_t WK_h)``,
``v_ht = z_t WV_h`` with ``R_t`` the rotary map at position ``t``, pattern ``a_hst``, head
output ``o_hs = sum_t a_hst v_ht`` and ``G(z)_s = L0 z_s + sum_h o_hs U_h`` with ``U_h =
W_O,h Q^T`` (``Q`` the residual rows of ``out_map``) and ``L0`` the residual and bias part.
The Jacobian at input position ``t``, mixed over output positions by sources ``r``, is

.. math::

    J^r_t = r_t L_0 + \\sum_h U_h^T M_{ht} N_h, \\quad
    M_{ht} = [c_{ht} I \\mid \\Psi^K_{ht} \\mid \\Psi^Q_{ht}], \\quad
    N_h = [WV_h; WK_h; WQ_h]^T,

``c_ht = sum_s r_s a_hst``, ``PsiK_ht = sum_s r_s a_hst (v_ht - o_hs) q_hs^T R_t``,
``PsiQ_ht = r_t sum_k a_htk (v_hk - o_ht) k_hk^T R_t`` (``R_t`` acts on the rows from the
right: rotary is linear, so its transpose at the key's or query's own position). Without
sources, each output position is one source row (``r = e_s``).

- Gram matrix (LIB): ``N^T (sum_t M_t^T G M_t) N`` plus the cross and residual terms, with
  ``G = U U^T`` formed once; of ``M_t^T G M_t`` only the key/query blocks need GEMMs per
  token (the value blocks are ``c I``), and only half of the head pairs (symmetry).
- Attributions (IG): ``sum_t J^r_t[i, j] z_tj`` contracts the positions inside the heads,
  ``sum_t Psi_ht[m, k] z_tj`` one GEMM per head, then with ``WK_h[j, k]``, ``WQ_h[j, k]``.
- A following ``ln_in`` adds the scale row ``q`` (the scale column of ``out_map``):
  ``J = J_Q + q J_w``, ``J_w`` one vector-Jacobian product per source row (cotangent
  ``r_s d scale_s / d x'_s``) in closed form; the Gram gains ``J_{Q^T q}^T J_w + J_w^T
  J_{Q^T q} + |q|^2 J_w^T J_w``.
- Ablation: per distinct mask, queries, keys and values from the kept (or dropped) columns,
  rotated after the projection; ``x'`` and its scale only for the masks of outputs with
  ``q_i != 0``.

The Jacobian itself (``jacobian``) and ``__call__`` are the generic ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from sklearn_lib.adapters import _transformer_closed_forms as _cf
from sklearn_lib.adapters._transformer_closed_forms import _FoldedComposite

__all__ = ["AttentionSpanComposite", "attention_closed_form"]

#: The Gram and attribution temporaries may take this many times the closed forms' budget:
#: their GEMMs are then large enough to run at full speed on a few cores.
_BUDGET_FACTOR = 4


def attention_closed_form(weights, ops, in_layout: str, out_layout: str, last: bool,
                          segment: Callable[[Tensor], Tensor], in_map: Tensor,
                          out_map: Tensor) -> "AttentionSpanComposite | None":
    """The closed-form composite of an attention span, or ``None``.

    Covers ``[attn]`` (``normed`` or ``resid`` -> ``resid``) and ``[attn, ln_in]``
    (``normed`` or ``resid`` -> ``scaled``) over all positions, with any rotary positions,
    grouped-query attention and causal or windowed masks. Returns ``None`` for anything else
    (the caller falls back to the generic composite), and when the output cut keeps only the
    last position.
    """
    from sklearn_lib.adapters._transformer_sequential import _norm_of

    if last or not ops or ops[0].kind != "attn":
        return None
    if len(ops) == 1 and out_layout == "resid":
        norm_after = None
    elif len(ops) == 2 and ops[1].kind == "ln_in" and out_layout == "scaled":
        norm_after = _norm_of(weights, ops[1])
    else:
        return None
    if (in_layout, ops[0].norm is None) not in (("normed", False), ("resid", True)):
        return None
    d = weights.d_model
    if in_map.shape[0] != (1 + 2 * d if in_layout == "normed" else 1 + d):
        return None
    if out_map.shape[1] != (2 + d if norm_after is not None else 1 + d):
        return None
    return AttentionSpanComposite(weights.blocks[ops[0].block].attn, norm_after, segment,
                                  in_map, out_map, normed_input=in_layout == "normed")


def _budget() -> int:
    return _BUDGET_FACTOR * _cf._MEMORY_BUDGET


class AttentionSpanComposite(_FoldedComposite):
    """``G(z) = seg(z @ in_map.T) @ out_map.T`` for one attention sublayer, in closed form.

    Parameters
    ----------
    attn : AttentionWeights
        The sublayer (cast to the composite's dtype and device).
    norm_after : NormWeights or None
        The norm whose scale the output cut appends (``[attn, ln_in]``), or ``None``.
    segment : callable
        The generic span (kept for ``__call__`` and ``jacobian``).
    in_map : Tensor of shape (1 + d or 1 + 2 d, n_in)
        Basis of the input cut (``[f0, x]`` or ``[f0, x, h]``).
    out_map : Tensor of shape (n_out, 1 + d or 2 + d)
        Basis of the output cut (``[f0, x']`` or ``[f0, x', scale]``).
    normed_input : bool
        Whether the attention reads the ``h`` rows of the input (else the ``x`` rows).

    Notes
    -----
    ``__call__`` and ``jacobian`` are the generic ones. :meth:`jacobian_gram`,
    :meth:`attributions` and :meth:`ablated` never form the Jacobian; their temporaries are
    chunked over sequences, source rows and positions to a memory budget, linear in the
    number of positions per sequence.
    """

    def __init__(self, attn, norm_after, segment: Callable[[Tensor], Tensor], in_map: Tensor,
                 out_map: Tensor, normed_input: bool) -> None:
        super().__init__(segment, in_map, out_map, last=False)
        d = attn.W_Q.shape[1]
        self.d = d
        a0, P = in_map[0], in_map[1 : 1 + d]
        P_att = in_map[1 + d : 1 + 2 * d] if normed_input else P
        o0, Q = out_map[:, 0], out_map[:, 1 : 1 + d]
        H, _, dh = attn.W_Q.shape
        group = H // attn.W_K.shape[0]

        def fold(W: Tensor, b: Tensor) -> Tensor:  # (H, d, dh), (H, dh) -> (H, n_in, dh)
            return torch.einsum("dj,hdk->hjk", P_att, W) + a0[None, :, None] * b[:, None, :]

        def kv(t: Tensor) -> Tensor:
            return t if group == 1 else t.repeat_interleave(group, dim=0)

        self.H, self.dh = H, dh
        self.WQ = fold(attn.W_Q, attn.b_Q) / float(attn.scale)
        self.WK = fold(kv(attn.W_K), kv(attn.b_K))
        self.WV = fold(kv(attn.W_V), kv(attn.b_V))
        self.W_O = attn.W_O  # (H, dh, d)
        self.b_O = attn.b_O
        self.a0 = a0
        self.U = torch.einsum("hmd,id->hmi", attn.W_O, Q)  # (H, dh, n_out)
        self.resid = P + torch.outer(attn.b_O, a0)  # d x' / d z at the same position
        self.L0 = torch.outer(o0, a0) + Q @ self.resid  # (n_out, n_in)
        # The stacked value, key and query weights per head: (H * 3 dh, n_in).
        self.N = torch.cat([self.WV, self.WK, self.WQ], dim=2).permute(0, 2, 1).reshape(
            3 * H * dh, -1)
        self.rotary = attn.rotary
        self.attn = attn
        self.norm = norm_after
        if norm_after is not None:
            self.q = out_map[:, 1 + d]  # the scale column
            self.Uq = self.U @ self.q  # (H, dh): the value path of the covector Q^T q
            self.L0q = self.q @ self.L0  # (n_in,)
        else:
            self.q = None
        self._G: Tensor | None = None
        self._W3: Tensor | None = None
        self._WKQ: Tensor | None = None
        self._mask_cache: dict[int, Tensor | None] = {}

    # -- forward pieces ------------------------------------------------------------------------
    def _allowed(self, T: int, device: torch.device) -> Tensor | None:
        from sklearn_lib.adapters._transformer_sequential import _attention_mask

        if T not in self._mask_cache:
            self._mask_cache[T] = _attention_mask(self.attn, T, device)
        return self._mask_cache[T]

    def _rot(self, x: Tensor, pos: slice | Tensor, pos_dim: int, transpose: bool = False,
             out: Tensor | None = None) -> Tensor:
        """``R_t x`` (or ``R_t^T x``) on the last dimension, position ``t`` on ``pos_dim``.

        ``R_t x = cos_t x + sin_t F(x)`` on the first ``rotary_dim`` coordinates, ``F`` the
        rotate-half (or adjacent-pairs) map ``F [x1; x2] = [-x2; x1]``. On the two halves
        (or the even and odd coordinates): ``R = [[C1, -S1], [S2, C2]]`` and
        ``R^T = [[C1, S2], [-S1, C2]]``. Returns a new contiguous tensor (broadcast over
        the positions when ``x`` has one there), or writes it into ``out``.
        """
        rot = self.rotary
        if rot is None:
            return x if out is None else out.copy_(x)
        r = rot.rotary_dim
        cos, sin = rot.cos[pos], rot.sin[pos]  # (tc, r)
        shape = [1] * x.dim()
        shape[pos_dim], shape[-1] = cos.shape[0], r
        cos, sin = cos.reshape(shape), sin.reshape(shape)
        if out is None:
            out_shape = list(torch.broadcast_shapes(x.shape[:-1] + (r,), cos.shape))
            out_shape[-1] = x.shape[-1]
            out = torch.empty(out_shape, dtype=x.dtype, device=x.device)

        def halves(u: Tensor) -> tuple[Tensor, Tensor]:
            if rot.adjacent_pairs:
                return u[..., 0:r:2], u[..., 1:r:2]
            return u[..., : r // 2], u[..., r // 2 : r]

        (x1, x2), (c1, c2), (s1, s2), (o1, o2) = halves(x), halves(cos), halves(sin), halves(out)
        if transpose:  # o1 = c1 x1 + s2 x2, o2 = c2 x2 - s1 x1
            torch.mul(x1, c1, out=o1).addcmul_(x2, s2)
            torch.mul(x2, c2, out=o2).addcmul_(x1, s1, value=-1.0)
        else:  # o1 = c1 x1 - s1 x2, o2 = c2 x2 + s2 x1
            torch.mul(x1, c1, out=o1).addcmul_(x2, s1, value=-1.0)
            torch.mul(x2, c2, out=o2).addcmul_(x1, s2)
        if r < x.shape[-1]:
            out[..., r:] = x[..., r:]
        return out

    def _parts(self, z: Tensor) -> dict[str, Tensor]:
        """Queries, keys, values, pattern and head outputs of sequences ``z (b, T, n_in)``.

        Queries and keys are rotated (queries carry ``1/scale``); with a norm after the
        attention also ``x'``, its scale and ``w = d scale / d x'``.
        """
        T = z.shape[1]
        pos = slice(0, T)
        q = self._rot(torch.einsum("btj,hjk->bhtk", z, self.WQ), pos, 2)
        k = self._rot(torch.einsum("btj,hjk->bhtk", z, self.WK), pos, 2)
        v = torch.einsum("btj,hjk->bhtk", z, self.WV)
        scores = q @ k.transpose(-1, -2)
        allowed = self._allowed(T, z.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(scores, dim=-1)  # (b, H, S, T)
        o = a @ v
        parts = dict(q=q, k=k, v=v, a=a, o=o, f0=z @ self.a0)
        if self.norm is not None:
            parts.update(self._scale_parts(z, o, parts["f0"]))
        return parts

    def _scale_parts(self, z: Tensor, o: Tensor, f0: Tensor) -> dict[str, Tensor]:
        x = z @ self.resid.T + torch.einsum("bhtm,hmd->btd", o, self.W_O)
        xc = x - x.mean(-1, keepdim=True) if self.norm.center else x
        sc = torch.sqrt(xc.pow(2).mean(-1) + self.norm.eps * f0.pow(2))  # (b, T)
        return dict(sc=sc, w=xc / (self.d * sc[..., None]))

    # -- row (source) quantities ----------------------------------------------------------------
    def _rows(self, B: int, T: int, R: int | None, skip: int, per_row: int
              ) -> Iterator[tuple[slice, slice]]:
        """Chunks ``(sequences, rows)``: all rows with sources, else output positions >= skip."""
        units = R if R is not None else T - skip
        per_seq = max(1, units * per_row)
        b = max(1, min(B, _budget() // per_seq))
        rc = units if b > 1 or R is not None else max(1, min(units, _budget() // per_row))
        for lo in range(0, B, b):
            for r0 in range(0, units, rc):
                yield slice(lo, lo + b), slice(r0, min(units, r0 + rc))

    def _row_weights(self, z: Tensor, sources: Tensor | None, seqs: slice, rows: slice,
                     skip: int) -> Tensor:
        """``r (b, rows, T)``: the sources over ``sqrt(R)``, or one-hot output positions."""
        b, T = z[seqs].shape[:2]
        if sources is not None:
            R = sources.shape[1]
            return sources[seqs, rows].to(z.dtype) / R**0.5
        s = torch.arange(rows.start, rows.stop, device=z.device) + skip
        r = z.new_zeros(b, s.numel(), T)
        r[:, torch.arange(s.numel(), device=z.device), s] = 1.0
        return r

    def _scale_row(self, p: dict[str, Tensor], r: Tensor) -> Tensor:
        """``J_w (b, R, T, n_in)``: the Jacobian of ``sum_s r_s scale_s`` (one VJP per row)."""
        g = r[:, :, None, :, None] * torch.einsum("hmd,bsd->bhsm", self.W_O, p["w"])[:, None]
        e = torch.einsum("brhsm,bhtm->brhst", g, p["v"]) - (g * p["o"][:, None]).sum(-1)[
            ..., None]
        ae = p["a"][:, None] * e
        T = r.shape[-1]
        cv = torch.einsum("bhst,brhsm->brhtm", p["a"], g)
        ck = self._rot(torch.einsum("brhst,bhsk->brhtk", ae, p["q"]), slice(0, T), 3, True)
        cq = self._rot(torch.einsum("brhtk,bhkx->brhtx", ae, p["k"]), slice(0, T), 3, True)
        coef = torch.cat([cv, ck, cq], dim=-1).permute(0, 1, 3, 2, 4).flatten(3)
        own = p["w"] @ self.resid + (self.norm.eps * p["f0"] / p["sc"])[..., None] * self.a0
        return coef @ self.N + r[..., None] * own[:, None]

    def _psi(self, p: dict[str, Tensor], r: Tensor, ts: slice, P: Tensor,
             out: tuple[Tensor, Tensor] | None = None):
        """``c (b,R,H,tc)``, ``PsiK`` and ``PsiQ`` ``(b,R,H,tc,dh,dh)`` at positions ``ts``.

        ``out``: views of that shape to write ``PsiK`` and ``PsiQ`` into.
        """
        a, o, q, v = p["a"], p["o"], p["q"], p["v"]
        ra = r[:, :, None, :, None] * a[:, None, :, :, ts]  # (b, R, H, S, tc)
        c = ra.sum(3)
        w = ra.transpose(-1, -2) @ q[:, None]  # (b, R, H, tc, dh)
        if "oq" not in p:
            p["oq"] = (o[..., :, None] * q[..., None, :]).flatten(-2)  # (b, H, S, dh * dh)
        X = (ra.transpose(-1, -2) @ p["oq"][:, None]).unflatten(-1, (o.shape[-1], -1))
        X = torch.sub(v[:, None, :, ts, :, None] * w[..., None, :], X, out=X)
        out_k, out_q = (None, None) if out is None else out
        psi_k = self._rot(X, ts, 3, True, out=out_k)
        rq = r[:, :, None, ts, None, None]
        Pt = P[:, None, :, ts]
        psi_q = rq * Pt if out_q is None else torch.mul(rq, Pt, out=out_q)
        return c, psi_k, psi_q

    def _query_part(self, p: dict[str, Tensor]) -> Tensor:
        """``sum_k a_htk (v_hk - o_ht) k_hk^T R_t`` ``(b, H, T, dh, dh)``: ``PsiQ`` over ``r_t``."""
        a, o, v, k = p["a"], p["o"], p["v"], p["k"]
        vk = (v[..., :, None] * k[..., None, :]).flatten(-2)  # (b, H, T, dh * dh)
        P = (a @ vk).unflatten(-1, (v.shape[-1], -1)) - o[..., None] * (a @ k)[..., None, :]
        return self._rot(P, slice(0, P.shape[2]), 2, True)

    # -- the Gram matrix of LIB -------------------------------------------------------------
    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        """``sum J^T J`` over samples, output rows and input positions ``>= skip`` (float64).

        ``J = jacobian(z, sources)`` restricted to columns ``>= start``; without sources the
        output positions ``s >= skip`` (one source row each, so ``T`` times the work). Never
        forms ``J``: per token and source row about ``3 H^2 dh^3`` multiply-adds for the
        key/query blocks of ``sum_t M_t^T G M_t`` (half of the head pairs, by symmetry), the
        value blocks ``c I`` in closed form; ``N^T (.) N`` once per call.
        """
        B, T, n = z.shape
        H, dh = self.H, self.dh
        f64 = torch.float64
        if self._G is None or self._G.dtype != z.dtype:
            Ucat = self.U.permute(2, 0, 1).reshape(-1, H * dh)
            self._G = (Ucat.T @ Ucat).reshape(H * dh, H, dh).permute(1, 0, 2).contiguous()
        Gb = self._G  # (H_g, H dh, dh): the columns of G of head g
        # M_nh = [c_nh I | X_nh], X = [PsiK | PsiQ] (dh x 2 dh). The blocks of
        # sum_n M_n^T G M_n: VV = (sum_n c_nh c_ng) G_hg, VX = G_hg sum_n c_nh X_ng, and
        # XX = sum_n X_nh^T G_hg X_ng, the only one that needs GEMMs per token.
        KX = torch.zeros(H, H, 2 * dh, 2 * dh, dtype=f64, device=z.device)
        KXc = z.new_zeros(H, H, 2 * dh, 2 * dh)  # per chunk of sequences, in z's dtype
        CC = torch.zeros(H, H, dtype=f64, device=z.device)
        Sig = torch.zeros(H, H, dh, 2 * dh, dtype=f64, device=z.device)
        Msum_c = torch.zeros(H, dtype=f64, device=z.device)
        Msum_x = torch.zeros(H, dh, 2 * dh, dtype=f64, device=z.device)
        Ns = self.N[:, start:]
        gram = torch.zeros(n - start, n - start, dtype=f64, device=z.device)
        rr = 0.0
        el = z.element_size()
        per_token = 2 * H * dh * 2 * dh * el  # the X chunk and one head's Y
        Tk = T - skip
        R = None if sources is None else sources.shape[1]
        if Tk <= 0:
            return gram
        for seqs, rows in self._rows(B, T, R, skip, Tk * per_token):
            zb = z[seqs]
            p = self._parts(zb)
            P = self._query_part(p)
            r = self._row_weights(z, sources, seqs, rows, skip)
            b, Rc = r.shape[:2]
            tc = max(1, min(Tk, _budget() // max(1, b * Rc * per_token)))
            mu = []  # the value-path covector Q^T q through M, per token
            for t0 in range(skip, T, tc):
                ts = slice(t0, min(T, t0 + tc))
                nt = ts.stop - ts.start
                N = b * Rc * nt
                X = torch.empty(H, dh, b, Rc, nt, 2 * dh, dtype=z.dtype, device=z.device)
                views = (X[..., :dh].permute(2, 3, 0, 4, 1, 5),  # as (b, R, H, t, m, k)
                         X[..., dh:].permute(2, 3, 0, 4, 1, 5))
                c, _, _ = self._psi(p, r, ts, P, out=views)
                X = X.reshape(H, dh, N, 2 * dh)
                cn = c.permute(0, 1, 3, 2).reshape(N, H)  # tokens (b, R, t) in X's order
                XT = X.reshape(H, dh * N, 2 * dh).transpose(1, 2)  # (H, 2 dh, dh N)
                for g in range(H):  # XX[h, g] for h >= g; the rest by symmetry
                    Y = torch.matmul(Gb[g, g * dh :], X[g].reshape(dh, N * 2 * dh))
                    Y = Y.reshape(H - g, dh * N, 2 * dh)  # G_hg X_ng for h >= g
                    torch.baddbmm(KXc[g, g:], XT[g:], Y, out=KXc[g, g:])
                CC += (cn.T @ cn).to(f64)
                Sig += torch.einsum("nh,gmnx->hgmx", cn, X).to(f64)
                rt = r[..., ts].reshape(N)
                Msum_c += (rt @ cn).to(f64)
                Msum_x += torch.einsum("n,hmnx->hmx", rt, X).to(f64)
                rr += float(rt.double().pow(2).sum())
                if self.q is not None:
                    m_x = torch.einsum("hm,hmnx->nhx", self.Uq, X)
                    m_v = cn[:, :, None] * self.Uq
                    mu.append(torch.cat([m_v, m_x], dim=-1).reshape(b, Rc, nt, -1))
            KX += KXc
            KXc.zero_()
            if self.q is not None:
                # Rows (b, R, t) of the fixed covector Q^T q and of the scale, t >= skip.
                Ju = torch.cat(mu, dim=2).reshape(b * Rc * Tk, -1) @ Ns
                Ju += r[..., skip:].reshape(-1, 1) * self.L0q[start:]
                Jw = self._scale_row(p, r)[:, :, skip:, start:].reshape(Ju.shape)
                Ju, Jw = Ju.to(f64), Jw.to(f64)
                cross = Ju.T @ Jw
                gram += cross + cross.T
                gram += float(self.q.double() @ self.q.double()) * (Jw.T @ Jw)
        lower = torch.tril_indices(H, H, -1, device=z.device)  # (g, h) with h < g
        KX[lower[0], lower[1]] = KX[lower[1], lower[0]].transpose(-1, -2)
        G4 = self._G.to(f64).permute(1, 0, 2).reshape(H, dh, H, dh)  # G4[h, k, g, l]
        K4 = torch.empty(H, 3 * dh, H, 3 * dh, dtype=f64, device=z.device)
        K4[:, :dh, :, :dh] = CC[:, None, :, None] * G4
        VX = torch.einsum("hkgl,hglx->hkgx", G4, Sig)
        K4[:, :dh, :, dh:] = VX
        K4[:, dh:, :, :dh] = VX.permute(2, 3, 0, 1)
        K4[:, dh:, :, dh:] = KX.permute(1, 2, 0, 3)
        Kfull = K4.reshape(3 * H * dh, 3 * H * dh)
        Msum = torch.cat([Msum_c[:, None, None] * torch.eye(dh, dtype=f64, device=z.device),
                          Msum_x], dim=-1)  # (H, dh, 3 dh)
        Ns, L0 = Ns.to(f64), self.L0[:, start:].to(f64)
        E = torch.einsum("hmi,hmx->ihx", self.U.to(f64), Msum).reshape(-1, 3 * H * dh)
        cross = L0.T @ (E @ Ns)
        gram += Ns.T @ (Kfull @ Ns) + cross + cross.T + rr * (L0.T @ L0)
        return gram

    # -- integrated-gradient attributions ---------------------------------------------------
    def attributions(self, z: Tensor, alphas, weights, sources: Tensor | None = None,
                     skip: int = 0) -> tuple[Tensor, Tensor]:
        """``A[b, r|s, i, j] = sum_a w_a sum_t J(alpha_a z)[b, r|s, i, t, j] z[b, t, j]``.

        Returns ``(A, A_kept)``, ``A_kept`` the same over input positions ``t >= skip`` only
        (and without sources only the output positions ``s >= skip``); ``A_kept is A`` when
        ``skip == 0``. The position sum is contracted inside the heads,
        ``sum_t Psi_ht[m, k] z_tj`` as one GEMM per head, then with the key and query
        weights; the Jacobian is never formed.
        """
        alphas = torch.as_tensor(alphas, dtype=torch.float64).tolist()
        weights = torch.as_tensor(weights, dtype=torch.float64).tolist()
        B, T, n = z.shape
        H, dh = self.H, self.dh
        n_out = self.n_out
        R = None if sources is None else sources.shape[1]
        rows_total = R if R is not None else T
        A = z.new_zeros(B, rows_total, n_out, n)
        A_kept = A if skip == 0 else z.new_zeros(B, rows_total, n_out, n)
        el = z.element_size()
        per_row = (4 * T * H * dh * dh + H * T * T + 2 * H * dh * n + 3 * n_out * n) * el
        ranges = [slice(0, T)] if skip == 0 else [slice(skip, T), slice(0, skip)]
        # All output rows without sources (A_kept is sliced at the end).
        for seqs, rows in self._rows(B, T, R, 0, per_row):
            zb = z[seqs]
            r = self._row_weights(z, sources, seqs, rows, 0)
            parts = [torch.zeros_like(A[seqs, rows]) for _ in ranges]
            for alpha, weight in zip(alphas, weights):
                p = self._parts(alpha * zb)
                P = self._query_part(p)
                c, psi_k, psi_q = self._psi(p, r, slice(0, T), P)
                Jw = self._scale_row(p, r) if self.q is not None else None
                for acc, ts in zip(parts, ranges):
                    acc.add_(self._attribution_part(c, psi_k, psi_q, Jw, r, zb, ts),
                             alpha=weight)
            A[seqs, rows] = parts[0] if skip == 0 else parts[0] + parts[1]
            if skip:
                A_kept[seqs, rows] = parts[0]
        if skip > 0 and sources is None:
            A_kept = A_kept[:, skip:]
        return A, A_kept

    def _attribution_part(self, c: Tensor, psi_k: Tensor, psi_q: Tensor, Jw: Tensor | None,
                          r: Tensor, z: Tensor, ts: slice) -> Tensor:
        """``sum_{t in ts} J^r_t[i, j] z_tj`` ``(b, R, n_out, n_in)`` at one quadrature point.

        ``J^r_t = r_t L0 + sum_h U_h^T (c_ht WV_h^T + PsiK_ht WK_h^T + PsiQ_ht WQ_h^T)``.
        """
        zt = z[:, ts]  # (b, tc, n)
        b, R = r.shape[:2]
        H, dh = self.H, self.dh
        n = zt.shape[-1]
        if self._WKQ is None or self._WKQ.dtype != z.dtype:
            self._WKQ = torch.cat([self.WK, self.WQ], dim=2).transpose(1, 2).contiguous()
        # Values: sum_t c_ht z_tj WV_h[j, m].
        cz = torch.einsum("brht,btj->brhj", c[..., ts], zt)
        W = cz[:, :, :, None, :] * self.WV.transpose(1, 2)  # (b, R, H, dh, n)
        # Keys and queries: Omega[m, x, j] = sum_t Psi_t[m, x] z_tj, then with [WK; WQ].
        per_head = b * R * dh * 2 * dh * n * z.element_size()
        hc = max(1, min(H, _budget() // max(1, per_head)))
        for h0 in range(0, H, hc):
            hs = slice(h0, min(H, h0 + hc))
            psi = torch.cat([psi_k[:, :, hs, ts], psi_q[:, :, hs, ts]], dim=-1)
            psi = psi.permute(0, 1, 2, 4, 5, 3)  # (b, R, hc, dh, 2 dh, tc)
            psi = psi.reshape(b, -1, psi.shape[-1])  # (b, R hc dh 2dh, tc)
            omega = torch.bmm(psi, zt).reshape(b, R, -1, dh, 2 * dh, n)
            W[:, :, hs] += (omega * self._WKQ[hs, None]).sum(-2)
        out = torch.einsum("hmi,brhmj->brij", self.U, W)
        out += torch.einsum("brt,btj->brj", r[..., ts], zt)[:, :, None, :] * self.L0
        if Jw is not None:
            jz = torch.einsum("brtj,btj->brj", Jw[:, :, ts], zt)
            out += self.q[:, None] * jz[:, :, None, :]
        return out

    # -- ablation --------------------------------------------------------------------------
    def _row_elements(self, T: int, k: int, R: int, complement: bool) -> int:
        """Elements per sequence and mask, over the budget factor: the ablation's chunks may
        take ``_BUDGET_FACTOR`` times the closed forms' budget, like the Gram's."""
        H, dh = self.H, self.dh
        extra = 3 * T * self.d if self.q is not None else 0
        n = T * k + 7 * H * T * dh + 2 * H * T * T + 2 * T * R + extra
        return max(1, n // _BUDGET_FACTOR)

    def _width_cost(self, T: int, k: int, complement: bool) -> float:
        return k

    def _ablated_block(self, z: Tensor, masks: Tensor, chunks: list) -> Tensor:
        """Per distinct mask: queries, keys and values from the kept (or dropped) columns,
        rotated after the projection; with a norm after, ``x'`` and its scale only for the
        masks of outputs that read the scale."""
        B, T, _ = z.shape
        H, dh = self.H, self.dh
        pos = slice(0, T)
        # Outputs first, so adding the outputs of a chunk is a row gather: (n_out, B, T).
        out = (masks * self.L0) @ z.reshape(B * T, -1).T  # the residual and biases
        out = out.reshape(-1, B, T)
        allowed = self._allowed(T, z.device)
        if self._W3 is None or self._W3.dtype != z.dtype:
            self._W3 = torch.cat([self.WQ, self.WK, self.WV], dim=2).transpose(0, 1).contiguous()
            self._residT = self.resid.T.contiguous()  # (n_in, d)
            self._Uo = self.U.permute(2, 0, 1).reshape(self.n_out, -1).contiguous()
        W3 = self._W3  # (n_in, H, 3 dh)
        full = None
        for idx, valid, outs, complement in chunks:
            C = idx.shape[0]
            zg = (z[..., idx] * valid).permute(0, 2, 1, 3)  # (B, C, T, k): kept or dropped
            Wg = W3[idx].permute(0, 2, 1, 3)  # (C, H, k, 3 dh)
            qkv = torch.matmul(zg[:, :, None], Wg)  # (B, C, H, T, 3 dh)
            f0 = zg @ self.a0[idx][..., None]  # (B, C, T, 1)
            if complement:
                if full is None:
                    full = (torch.einsum("btj,jhx->bhtx", z, W3)[:, None],
                            (z @ self.a0)[:, None, :, None], (z @ self._residT)[:, None])
                qkv = torch.sub(full[0], qkv, out=qkv)
                f0 = full[1] - f0
            q = self._rot(qkv[..., :dh], pos, 3)
            k = self._rot(qkv[..., dh : 2 * dh], pos, 3)
            scores = q @ k.transpose(-1, -2)  # (B, C, H, T, T)
            if allowed is not None:
                scores.masked_fill_(~allowed, float("-inf"))
            o = torch.softmax(scores, dim=-1) @ qkv[..., 2 * dh :]  # (B, C, H, T, dh)
            o = o.transpose(2, 3).reshape(B, C, T, H * dh)
            Ug = self._Uo[outs].transpose(1, 2)  # (C, H dh, R)
            val = o @ Ug  # (B, C, T, R)
            out[outs.reshape(-1)] += val.permute(1, 3, 0, 2).reshape(-1, B, T)
            if self.q is not None:
                qs = self.q[outs]  # (C, R)
                sel = torch.nonzero((qs != 0).any(1)).squeeze(1)
                if sel.numel() == C:  # every mask of the chunk (no copies)
                    sel = slice(None)
                elif not sel.numel():
                    continue
                xs = zg[:, sel] @ self._residT[idx[sel]]  # (B, Cs, T, d)
                if complement:
                    xs = torch.sub(full[2], xs, out=xs)
                xs += o[:, sel] @ self.W_O.reshape(H * dh, -1)
                if self.norm.center:
                    xs -= xs.mean(-1, keepdim=True)
                var = xs.pow_(2).mean(-1) + self.norm.eps * f0[:, sel, :, 0].pow(2)
                add = var.sqrt_()[..., None] * qs[sel][:, None, :]  # (B, Cs, T, R)
                out[outs[sel].reshape(-1)] += add.permute(1, 3, 0, 2).reshape(-1, B, T)
        return out.permute(1, 2, 0)

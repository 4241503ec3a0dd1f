"""Closed-form composite segments over the position-wise norm-split cuts of language models.

With the paper's cuts (appendix A.4) every segment of a language model except attention is
position-wise: output position ``s`` reads input position ``s`` only. Its Jacobian at a row
(one sample, one position) ``z_s`` of basis coordinates is a constant matrix plus terms that are
linear in a few per-row coefficient vectors:

- :class:`NormOutComposite` ("ln out", ``[f0, x, scale] -> [f0, x, h]`` or ``-> [f0, h]``,
  ``h = w * x_c / scale + b f0``): ``J_s = L0 + C1 / s_s + u_s sigma^T``, ``u_s = -Qh (w * x_c,s)
  / s_s^2``, with ``L0 = o0 a0^T + Qx P + Qh b a0^T``, ``C1 = Qh diag(w) Pc P`` (``Pc`` centres for
  LayerNorm), ``sigma`` the scale row of ``in_map``; ``0 / 0`` reads as 0 as in ``_normalize``;
- :class:`NormInComposite` ("ln in", ``[f0, x] -> [f0, x, scale]``): ``J_s = L0 + q rho_s^T``,
  ``rho_s = P^T x_c,s / (d s_s) + a0 eps f0_s / s_s`` (``q`` the scale column of ``out_map``);
- :class:`NormMLPComposite` (an MLP reading the normed ``h`` or the residual ``x``, plain or
  gated, optionally followed by the next "ln in"): ``J_s = L0 + sum_k A diag(g_k,s) B_k
  [+ q rho_s^T]`` with ``A = Q W_out^T``; plain: ``g = act'(B z)``; gated: ``g_1 = act'(gate)
  * pre`` on ``B_1`` (gate) and ``g_2 = act(gate)`` on ``B_2`` (``W_in``); with the norm after
  it, ``rho_s = Lx^T w_s + a0 e_s + sum_k B_k^T (g_k,s * W_out w_s)``, ``w_s = x'_c / (d s')``,
  ``e_s = eps f0 / s'``;
- :class:`LinearComposite` (the unembedding from the final norm's output): ``J = Gmat``.

Since ``J`` is linear in the coefficients, ``sum_a weights[a] J(alphas[a] z)`` is the same
expression with the coefficients summed over the quadrature, which gives the integrated-gradient
attributions without per-row ``(n_out, n_in)`` matrices when sources mix the positions. The
Jacobian Gram matrix is expanded in the coefficients (sums of their outer products over rows,
then a few products with the constant matrices). Every bias multiplies ``f0``, which enters
through the constant row ``a0`` of ``in_map``. Outputs keeping only the last position are not
covered (:func:`norm_closed_form` returns ``None``, the generic composite serves them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sklearn_lib.adapters import _transformer_closed_forms as _cf
from sklearn_lib.adapters._transformer_closed_forms import (
    UnembedComposite,
    _activation_and_derivative,
    _FoldedComposite,
    _mask_chunks,
    _masked_product,
)

__all__ = [
    "LinearComposite",
    "NormInComposite",
    "NormMLPComposite",
    "NormOutComposite",
    "norm_closed_form",
]

_F64 = torch.float64


def norm_closed_form(weights, ops, in_layout: str, out_layout: str, last: bool,
                     segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor):
    """The closed-form composite of the position-wise ``ops`` between two cuts, or ``None``.

    Covered: ``[ln_out]`` (scaled -> normed or final), ``[ln_in]`` (resid -> scaled),
    ``[mlp]`` (normed -> resid, or resid -> resid for an MLP without norm, gated included),
    ``[mlp, ln_in]`` (the same, then the next norm's scale: -> scaled) and ``[unembed]``
    (final -> logits). ``None`` for anything else, for parallel blocks and when the output
    cut keeps only the last position (``last``).
    """
    from sklearn_lib.adapters._transformer_sequential import _norm_of

    if last or not ops:
        return None
    d = weights.d_model
    widths = {"resid": 1 + d, "scaled": 2 + d, "normed": 1 + 2 * d, "final": 1 + d,
              "logits": 1 + weights.d_vocab_out}
    if widths.get(in_layout) != in_map.shape[0] or widths.get(out_layout) != out_map.shape[1]:
        return None
    kinds = [op.kind for op in ops]
    if kinds == ["ln_out"] and in_layout == "scaled" and out_layout in ("normed", "final"):
        return NormOutComposite(_norm_of(weights, ops[0]), segment, in_map, out_map,
                                final=out_layout == "final")
    if kinds == ["ln_in"] and in_layout == "resid" and out_layout == "scaled":
        return NormInComposite(_norm_of(weights, ops[0]), segment, in_map, out_map)
    if kinds == ["unembed"] and in_layout == "final" and out_layout == "logits":
        return LinearComposite(weights.W_U, weights.b_U, segment, in_map, out_map)
    if kinds in (["mlp"], ["mlp", "ln_in"]):
        mlp = weights.blocks[ops[0].block].mlp
        reads_h = ops[0].norm is not None
        after = _norm_of(weights, ops[1]) if len(ops) == 2 else None
        if mlp is None or in_layout != ("normed" if reads_h else "resid") or out_layout != (
            "resid" if after is None else "scaled"
        ):
            return None
        return NormMLPComposite(mlp, after, segment, in_map, out_map, reads_h=reads_h)
    return None


def _centred(x: Tensor, center: bool) -> Tensor:
    return x - x.mean(-1, keepdim=True) if center else x


def _centred_rows(P: Tensor, center: bool) -> Tensor:
    """``Pc P``: the map from basis coordinates to the centred ``x`` (rows of ``P`` centred)."""
    return P - P.mean(0, keepdim=True) if center else P


class _PositionwiseComposite(_FoldedComposite):
    """A position-wise composite whose Jacobian is linear in per-row coefficients.

    Subclasses give ``_point(rows)`` (the coefficients at rows of ``z``, a tuple of tensors
    with the row first), ``_row_matrices(total, coeffs)`` (``total * L0`` plus the coefficient
    terms: ``(N, n_out, n_in)``), ``_mixed(total, coeffs, c, rows)`` (``sum_n c[r, n] J_n *
    z_n``: ``(R, n_out, n_in)``), ``_gram_stats(rows, cw)`` (weighted float64 sums over rows)
    and ``_gram_finish(stats, start)``; ``_row_bytes`` sizes the row chunks.
    """

    def __init__(self, segment: Callable[[Tensor], Tensor], in_map: Tensor,
                 out_map: Tensor) -> None:
        super().__init__(segment, in_map, out_map, last=False)
        self._cache: dict[str, Tensor] = {}

    # -- subclass interface --------------------------------------------------------------
    def _point(self, rows: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _row_matrices(self, total: float, coeffs: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def _mixed(self, total: float, coeffs: Sequence[Tensor], c: Tensor, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def _gram_stats(self, rows: Tensor, cw: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def _gram_finish(self, stats: list[Tensor], start: int) -> Tensor:
        raise NotImplementedError

    def _row_bytes(self, element_size: int) -> int:
        """Bytes of the temporaries of ``_point`` and ``_gram_stats`` per row."""
        return 4 * self.n_in * element_size

    # -- shared machinery ----------------------------------------------------------------
    def _f64(self, name: str, make: Callable[[], Tensor]) -> Tensor:
        """A float64 constant made on first use and kept."""
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def _averaged(self, rows: Tensor, alphas: Sequence[float],
                  weights: Sequence[float]) -> tuple[float, list[Tensor]]:
        """``sum_a weights[a]`` and the coefficients summed as ``sum_a weights[a] c(alphas[a] z)``
        (the Jacobian is linear in them)."""
        acc: list[Tensor] | None = None
        for a, w in zip(alphas, weights):
            point = self._point(rows * a)
            if acc is None:
                acc = [p * w for p in point]
            else:
                for x, p in zip(acc, point):
                    x.add_(p, alpha=w)
        return float(sum(weights)), acc

    def _step(self, per_row_bytes: int, n: int) -> int:
        """Rows per chunk within the memory budget, the chunks of (about) equal size."""
        step = _cf._chunk(per_row_bytes, n)
        return -(-n // -(-n // step))

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """Per-sample Jacobians ``(B, S|R, n_out, T, n_in)`` (block diagonal in positions)."""
        B, T, n_in = z.shape
        rows = z.reshape(B * T, n_in)
        X = z.new_empty(B * T, self.n_out, n_in)
        step = self._step(self._row_bytes(z.element_size())
                          + 2 * self.n_out * n_in * z.element_size(), B * T)
        for lo in range(0, B * T, step):
            total, coeffs = self._averaged(rows[lo : lo + step], [1.0], [1.0])
            X[lo : lo + step] = self._row_matrices(total, coeffs)
        X = X.reshape(B, T, self.n_out, n_in)
        return self._place_diagonal(X, T, None if sources is None else sources.to(z.dtype))

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        r"""``sum J^T J`` over samples, sources (or output positions) and input positions
        ``t >= skip``, on columns ``>= start``, without forming the Jacobians (float64).

        The map is position-wise, so ``J[b, r, i, t, j] = c[b, r, t] J_t[i, j]`` with ``c =
        sources / sqrt(R)``, and the Gram matrix is ``sum_{b, t >= skip} w_{b,t} J_t^T J_t``
        with row weights ``w = sum_r c**2`` (1 without sources).
        """
        B, T, n_in = z.shape
        if sources is None:
            cw = torch.ones(B, T, dtype=_F64, device=z.device)
        else:
            cw = sources.to(_F64).pow(2).sum(1) / sources.shape[1]
        cw[:, :skip] = 0.0
        cw = cw.reshape(-1)
        keep = torch.nonzero(cw).squeeze(1)
        rows, cw = z.reshape(-1, n_in)[keep], cw[keep]
        stats: list[Tensor] | None = None
        step = self._step(self._row_bytes(z.element_size()), max(1, rows.shape[0]))
        for lo in range(0, rows.shape[0], step):
            part = self._gram_stats(rows[lo : lo + step], cw[lo : lo + step])
            if stats is None:
                stats = part
            else:
                for x, p in zip(stats, part):
                    x.add_(p)
        if stats is None:
            return torch.zeros(n_in - start, n_in - start, dtype=_F64, device=z.device)
        return self._gram_finish(stats, start)

    def attributions(self, z: Tensor, alphas, weights, sources: Tensor | None = None,
                     skip: int = 0) -> tuple[Tensor, Tensor]:
        """Integrated-gradient attributions ``(A, A_kept)``.

        ``A[b, r|s, i, j] = sum_a weights[a] sum_t J(alphas[a] z)[b, r|s, i, t, j] z[b, t, j]``;
        ``A_kept`` keeps input positions ``t >= skip`` (without sources: output positions
        ``s >= skip``, shape ``(B, S - skip, n_out, n_in)``). ``A_kept is A`` when ``skip == 0``.
        """
        alphas = [float(a) for a in torch.as_tensor(alphas).reshape(-1).tolist()]
        weights = [float(w) for w in torch.as_tensor(weights).reshape(-1).tolist()]
        B, T, n_in = z.shape
        n_out, size = self.n_out, z.element_size()
        if sources is None:
            A = z.new_empty(B, T, n_out, n_in)
            flat, rows = A.view(B * T, n_out, n_in), z.reshape(B * T, n_in)
            step = self._step(self._row_bytes(size) * (1 + len(alphas))
                              + 2 * n_out * n_in * size, B * T)
            for lo in range(0, B * T, step):
                part = rows[lo : lo + step]
                total, coeffs = self._averaged(part, alphas, weights)
                flat[lo : lo + step] = self._row_matrices(total, coeffs).mul_(part[:, None, :])
            return A, (A if skip == 0 else A[:, skip:])
        R = sources.shape[1]
        c = sources.to(z.dtype) / R**0.5  # (B, R, T)
        if skip:  # rows t >= skip first, the rest after: A = kept + early
            early = torch.arange(T, device=z.device) < skip
            c = torch.cat([c.masked_fill(early, 0.0), c.masked_fill(~early, 0.0)], dim=1)
        out = z.new_zeros(B, c.shape[1], n_out, n_in)
        step = self._step(self._row_bytes(size) * (1 + len(alphas)), T)
        for b in range(B):
            for lo in range(0, T, step):
                part = z[b, lo : lo + step]
                total, coeffs = self._averaged(part, alphas, weights)
                out[b] += self._mixed(total, coeffs, c[b, :, lo : lo + step], part)
        if not skip:
            return out, out
        kept = out[:, :R]
        return kept + out[:, R:], kept

    def _scales_of_masks(self, z: Tensor, masks: Tensor, norm, x_of_mask) -> Tensor:
        """``scale(x(z * m), f0(z * m))`` of the norm, per mask: ``(B, T, n_masks)``.

        ``x_of_mask(rows, zg, idx, valid, complement, cache) -> (C, N, d)`` gives ``x`` of each
        mask of a chunk from its needed columns (``f0`` is read through ``a0``); rows are taken
        in blocks that keep one mask's temporaries within the memory budget.
        """
        B, T, n_in = z.shape
        rows_all = z.reshape(B * T, n_in)
        a0 = self.in_map[0]
        per = self._scale_row_elements() + self._d + n_in
        block = _cf._chunk(per * z.element_size(), B * T)
        out = z.new_empty(B * T, masks.shape[0])
        for lo in range(0, B * T, block):
            rows = rows_all[lo : lo + block]
            N = rows.shape[0]
            zT = rows.T.contiguous()
            cache: dict = {}
            chunks = _mask_chunks(masks, lambda k, R, comp: N * (per + k) * z.element_size())
            for idx, valid, outs, complement in chunks:
                zg = zT[idx] * valid[..., None]  # (C, k, N)
                x = x_of_mask(rows, zg, idx, valid, complement, cache)
                f0 = _masked_product(rows, zg, idx, complement, cache, "f0", a0[:, None])[..., 0]
                xc = _centred(x, norm.center)
                scale = torch.sqrt(xc.pow(2).mean(-1) + norm.eps * f0.pow(2))  # (C, N)
                R = outs.shape[1]
                out[lo : lo + N, outs.reshape(-1)] = (
                    scale[:, None, :].expand(-1, R, -1).reshape(-1, N).T)
        return out.reshape(B, T, -1)

    def _scale_row_elements(self) -> int:
        return self._d


# -- ln out ------------------------------------------------------------------------------------
class NormOutComposite(_PositionwiseComposite):
    """"ln out": ``[f0, x, scale] -> [f0, x, h]`` (or ``[f0, h]`` for the final norm).

    ``J_s = L0 + C1 / s_s + u_s sigma^T`` with ``u_s = -Qh v_s``, ``v_s = w * x_c,s / s_s**2``
    (zero where ``s_s == 0``, as in ``_normalize``).
    """

    def __init__(self, norm, segment, in_map: Tensor, out_map: Tensor, *, final: bool) -> None:
        super().__init__(segment, in_map, out_map)
        d = self._d = in_map.shape[0] - 2
        a0, P, self.sigma = in_map[0], in_map[1 : 1 + d], in_map[1 + d]
        o0 = out_map[:, 0]
        Qx = None if final else out_map[:, 1 : 1 + d]
        Qh = self.Qh = out_map[:, 1:] if final else out_map[:, 1 + d :]
        w = norm.w if norm.w is not None else torch.ones_like(P[:, 0])
        self.w = w
        self.Pc = _centred_rows(P, norm.center)  # (d, n_in): x_c per z
        self.L0 = torch.outer(o0, a0)
        if Qx is not None:
            self.L0 = self.L0 + Qx @ P
        if norm.b is not None:
            self.L0 = self.L0 + torch.outer(Qh @ norm.b, a0)
        self.C1 = (Qh * w) @ self.Pc  # (n_out, n_in)

    def _point(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        s = rows @ self.sigma
        nonzero = s != 0
        inv = torch.where(nonzero, 1.0 / torch.where(nonzero, s, torch.ones_like(s)),
                          torch.zeros_like(s))
        v = (rows @ self.Pc.T) * self.w * inv.pow(2)[:, None]  # (N, d)
        return inv, v

    def _row_matrices(self, total, coeffs):
        inv, v = coeffs
        X = self.C1 * inv[:, None, None]
        X += total * self.L0
        X -= (v @ self.Qh.T)[:, :, None] * self.sigma
        return X

    def _mixed(self, total, coeffs, c, rows):
        inv, v = coeffs
        out = (total * self.L0) * (c @ rows)[:, None, :]
        out += self.C1 * (c @ (rows * inv[:, None]))[:, None, :]
        U = v @ self.Qh.T  # (n, n_out): -u_s
        out -= torch.matmul((c[:, :, None] * U).transpose(1, 2), rows) * self.sigma
        return out

    def _row_bytes(self, element_size: int) -> int:
        return (4 * self._d + 2 * self.n_in + self.n_out) * element_size

    def _gram_stats(self, rows, cw):
        inv, v = (t.to(_F64) for t in self._point(rows))
        ci = cw * inv
        return [cw.sum(), ci.sum(), (ci * inv).sum(), v.T @ cw, v.T @ ci, (v * cw[:, None]).T @ v]

    def _constants(self) -> dict[str, Tensor]:
        def make():
            L0, C1 = self.L0.to(_F64), self.C1.to(_F64)
            Qh = self.Qh.to(_F64)
            LC = L0.T @ C1
            return dict(LL=L0.T @ L0, LC=LC + LC.T, CC=C1.T @ C1, LQ=L0.T @ Qh, CQ=C1.T @ Qh,
                        H=Qh.T @ Qh, sigma=self.sigma.to(_F64))

        if "c" not in self._cache:
            self._cache["c"] = make()
        return self._cache["c"]

    def _gram_finish(self, stats, start):
        n, s1, s2, sv, siv, VV = stats
        k = self._constants()
        gram = n * k["LL"] + s1 * k["LC"] + s2 * k["CC"]
        t = -(k["LQ"] @ sv) - k["CQ"] @ siv  # sum_s (L0 + C1 / s)^T u_s
        sigma = k["sigma"]
        gram += torch.outer(t, sigma) + torch.outer(sigma, t)
        gram += (k["H"] * VV).sum() * torch.outer(sigma, sigma)
        return gram[start:, start:]

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out_i = (m_i * L0_i) z + (m_i * C1_i) z / (m_i * sigma) z`` (``0 / 0 -> 0``): the
        normalised part of every output is a ratio of two linear forms of the masked input."""
        masks = masks.to(dtype=z.dtype, device=z.device)
        num = z @ (masks * self.C1).T
        den = z @ (masks * self.sigma).T
        nonzero = den != 0
        ratio = torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)),
                            torch.zeros_like(num))
        return z @ (masks * self.L0).T + ratio


# -- ln in -------------------------------------------------------------------------------------
class NormInComposite(_PositionwiseComposite):
    """"ln in": ``[f0, x] -> [f0, x, scale]``, ``J_s = L0 + q rho_s^T``."""

    def __init__(self, norm, segment, in_map: Tensor, out_map: Tensor) -> None:
        super().__init__(segment, in_map, out_map)
        d = self._d = in_map.shape[0] - 1
        self.norm = norm
        self.a0, self.P = in_map[0], in_map[1:]
        self.Pc = _centred_rows(self.P, norm.center)
        self.q = out_map[:, 1 + d]
        self.L0 = torch.outer(out_map[:, 0], self.a0) + out_map[:, 1 : 1 + d] @ self.P

    def _point(self, rows: Tensor) -> tuple[Tensor]:
        f0 = rows @ self.a0
        xc = rows @ self.Pc.T
        s = torch.sqrt(xc.pow(2).mean(-1) + self.norm.eps * f0.pow(2))
        rho = (xc / (self._d * s)[:, None]) @ self.P + (self.norm.eps * f0 / s)[:, None] * self.a0
        return (rho,)

    def _row_matrices(self, total, coeffs):
        (rho,) = coeffs
        return total * self.L0 + self.q[:, None] * rho[:, None, :]

    def _mixed(self, total, coeffs, c, rows):
        (rho,) = coeffs
        return ((total * self.L0) * (c @ rows)[:, None, :]
                + self.q[:, None] * (c @ (rho * rows))[:, None, :])

    def _gram_stats(self, rows, cw):
        (rho,) = self._point(rows)
        rho = rho.to(_F64)
        return [cw.sum(), rho.T @ cw, (rho * cw[:, None]).T @ rho]

    def _gram_finish(self, stats, start):
        n, sR, RR = stats
        L0, q = self._f64("L0", lambda: self.L0.to(_F64)), self.q.to(_F64)
        LL = self._f64("LL", lambda: L0.T @ L0)
        ell = L0.T @ q
        gram = n * LL + torch.outer(ell, sR) + torch.outer(sR, ell) + (q @ q) * RR
        return gram[start:, start:]

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """The linear part for every output; the scale of the masked input only for the
        outputs that read it (``q_i != 0``), one per distinct mask."""
        masks = masks.to(dtype=z.dtype, device=z.device)
        out = z @ (masks * self.L0).T
        sel = torch.nonzero(self.q).squeeze(1)
        if sel.numel():
            PT = self.P.T.contiguous()

            def x_of_mask(rows, zg, idx, valid, complement, cache):
                return _masked_product(rows, zg, idx, complement, cache, "x", PT)  # (C, N, d)

            scales = self._scales_of_masks(z, masks[sel], self.norm, x_of_mask)
            out[..., sel] += self.q[sel] * scales
        return out


# -- MLP (reading the normed input or the residual), optionally followed by "ln in" ------------
class NormMLPComposite(_PositionwiseComposite):
    """``x' = x + mlp(h)`` (``h`` the normed input, or ``x`` itself for an MLP without norm),
    plain or gated, output ``[f0, x']`` or, followed by the next norm's "ln in",
    ``[f0, x', scale(x')]``.

    ``J_s = L0 + sum_k A diag(g_k,s) B_k (+ q rho_s^T)`` with ``L0 = o0 a0^T + Q Lx``, ``Lx = P
    + (b_out + W_out^T b_post) a0^T``, ``A = Q W_out^T``, ``B_k`` the pre-activations per ``z``.
    """

    def __init__(self, mlp, norm_after, segment, in_map: Tensor, out_map: Tensor, *,
                 reads_h: bool) -> None:
        super().__init__(segment, in_map, out_map)
        d = self._d = mlp.W_in.shape[0]
        self.mlp, self.norm = mlp, norm_after
        a0, P = self.a0, self.P = in_map[0], in_map[1 : 1 + d]
        Ph = in_map[1 + d : 1 + 2 * d] if reads_h else P
        o0, Q = out_map[:, 0], out_map[:, 1 : 1 + d]
        self.q = None if norm_after is None else out_map[:, 1 + d]
        bias = mlp.b_out if mlp.b_post is None else mlp.b_out + mlp.W_out.T @ mlp.b_post
        self.Lx = P + torch.outer(bias, a0)  # (d, n_in): x' less the hidden part
        self.L0 = torch.outer(o0, a0) + Q @ self.Lx
        self.A = Q @ mlp.W_out.T  # (n_out, d_mlp)
        B_in = mlp.W_in.T @ Ph + torch.outer(mlp.b_in, a0)
        self.gated = mlp.W_gate is not None
        if self.gated:
            B_gate = mlp.W_gate.T @ Ph
            if mlp.b_gate is not None:
                B_gate = B_gate + torch.outer(mlp.b_gate, a0)
            self.Bs = (B_gate, B_in)
        else:
            self.Bs = (B_in,)
        self.act, self.act_prime = _activation_and_derivative(mlp.act_fn)

    @property
    def _d_mlp(self) -> int:
        return self.A.shape[1]

    def _hidden(self, pres: Sequence[Tensor]) -> Tensor:
        """The activation part of the hidden layer (its bias ``b_post f0`` is in ``Lx``)."""
        return self.act(pres[0]).mul_(pres[1]) if self.gated else self.act(pres[0])

    def _point(self, rows: Tensor) -> tuple[Tensor, ...]:
        pres = [rows @ B.T for B in self.Bs]
        if self.gated:
            gate, pre = pres
            act = self.act(gate)
            g = [self.act_prime(gate) * pre, act]
            hidden = act * pre
        else:
            g = [self.act_prime(pres[0])]
            hidden = self.act(pres[0]) if self.q is not None else None
        if self.q is None:
            return tuple(g)
        norm, d = self.norm, self._d
        f0 = rows @ self.a0
        xc = _centred(rows @ self.Lx.T + hidden @ self.mlp.W_out, norm.center)
        s = torch.sqrt(xc.pow(2).mean(-1) + norm.eps * f0.pow(2))
        w = xc / (d * s)[:, None]
        omega = w @ self.mlp.W_out.T  # (N, d_mlp)
        rho = w @ self.Lx + (norm.eps * f0 / s)[:, None] * self.a0
        for gk, B in zip(g, self.Bs):
            rho = rho + (gk * omega) @ B
        return (*g, rho)

    def _row_bytes(self, element_size: int) -> int:
        K = len(self.Bs)
        return (4 * K * self._d_mlp + 3 * self._d + 3 * self.n_in) * element_size

    def _row_matrices(self, total, coeffs):
        K = len(self.Bs)
        X = (total * self.L0).expand(coeffs[0].shape[0], -1, -1).clone()
        for gk, B in zip(coeffs[:K], self.Bs):
            if self.n_in <= self.n_out:
                X += torch.matmul(self.A, gk[:, :, None] * B)
            else:
                X += torch.matmul(self.A * gk[:, None, :], B)
        if self.q is not None:
            X += self.q[:, None] * coeffs[K][:, None, :]
        return X

    def _mixed(self, total, coeffs, c, rows):
        K = len(self.Bs)
        out = (total * self.L0) * (c @ rows)[:, None, :]
        for gk, B in zip(coeffs[:K], self.Bs):
            W = torch.matmul((c[:, :, None] * gk).transpose(1, 2), rows)  # (R, d_mlp, n_in)
            out += torch.matmul(self.A, W.mul_(B))
        if self.q is not None:
            out += self.q[:, None] * (c @ (coeffs[K] * rows))[:, None, :]
        return out

    def _gram_stats(self, rows, cw):
        K = len(self.Bs)
        coeffs = [t.to(_F64) for t in self._point(rows)]
        g = coeffs[:K]
        stats = [cw.sum()]
        stats += [gk.T @ cw for gk in g]
        cg = [gk * cw[:, None] for gk in g]
        stats += [cg[k].T @ g[m] for k in range(K) for m in range(k, K)]
        if self.q is not None:
            rho = coeffs[K]
            alpha = self._f64("alpha", lambda: self.A.to(_F64).T @ self.q.to(_F64))
            stats += [rho.T @ cw, (rho * cw[:, None]).T @ rho]
            stats += [(cgk * alpha).T @ rho for cgk in cg]
        return stats

    def _gram_finish(self, stats, start):
        r"""Assemble ``sum_rows J^T J`` from the row sums of the coefficients.

        With ``K = A^T A``, ``X_km = sum c g_k g_m^T``, ``sg_k = sum c g_k`` and (norm after)
        ``Y_k = sum c (g_k * A^T q) rho^T``, ``sR = sum c rho``, ``RR = sum c rho rho^T``:
        ``gram = n L0^T L0 + sum_m B_m^T Z_m + (.)^T + ell sR^T + sR ell^T + |q|^2 RR`` with
        ``Z_m = sum_k (K o X_mk) B_k / 2 + sg_m (L0^T A)^T + Y_m`` and ``ell = L0^T q``: one
        ``(d_mlp x d_mlp) (d_mlp x n_in)`` product per pair of terms and one ``n_in x n_in``
        product per term.
        """
        K = len(self.Bs)
        L0 = self._f64("L0", lambda: self.L0.to(_F64))
        A = self._f64("A", lambda: self.A.to(_F64))
        LL = self._f64("LL", lambda: L0.T @ L0)
        AL = self._f64("AL", lambda: A.T @ L0)  # (d_mlp, n_in)
        Kmat = self._f64("K", lambda: A.T @ A)
        Bs = [self._f64(f"B{k}", lambda k=k: self.Bs[k].to(_F64))[:, start:] for k in range(K)]
        n, sg = stats[0], stats[1 : 1 + K]
        pairs = iter(stats[1 + K : 1 + K + K * (K + 1) // 2])
        Z = [torch.mul(AL[:, start:], sg[m][:, None]) for m in range(K)]
        for k in range(K):
            for m in range(k, K):
                KX = next(pairs).mul_(Kmat)  # K o X_km (the stats are not used again)
                if m == k:
                    Z[k].addmm_(KX, Bs[k], alpha=0.5)
                else:
                    Z[k].addmm_(KX, Bs[m], alpha=0.5)
                    Z[m].addmm_(KX.T, Bs[k], alpha=0.5)
        gram = n * LL[start:, start:]
        if self.q is not None:
            sR, RR, *Y = stats[1 + K + K * (K + 1) // 2 :]
            q = self.q.to(_F64)
            ell = (L0.T @ q)[start:]
            for m in range(K):
                Z[m] += Y[m][:, start:]
            half = torch.outer(ell, sR[start:])
            gram += (q @ q) * RR[start:, start:]
        else:
            half = torch.zeros_like(gram)
        for m in range(K):
            half.addmm_(Bs[m].T, Z[m])
        gram += half + half.T
        return gram

    # -- ablation ------------------------------------------------------------------------
    def _row_elements(self, T: int, k: int, R: int, complement: bool) -> int:
        return T * (3 * len(self.Bs) * self._d_mlp + k + 2 * R)

    def _masked_pres(self, rows, zg, idx, complement, cache) -> list[Tensor]:
        """Pre-activations ``(C, N, d_mlp)`` of each mask of a chunk."""
        if "BT" not in cache:
            cache["BT"] = [B.T.contiguous() for B in self.Bs]
        return [_masked_product(rows, zg, idx, complement, cache, ("pre", i), BT)
                for i, BT in enumerate(cache["BT"])]

    def _ablated_block(self, z: Tensor, masks: Tensor, chunks: list) -> Tensor:
        """``out_i = L0_i (z * m_i) + A_i hidden(z * m_i)``, one hidden layer per distinct mask,
        from the columns it keeps (or the unablated pre-activations less those it drops)."""
        B, S, n_in = z.shape
        N = B * S
        rows = z.reshape(N, n_in)
        zT = rows.T.contiguous()
        out = (rows @ (masks * self.L0).T).T.contiguous()  # (n_out, N)
        cache: dict = {}
        for idx, valid, outs, complement in chunks:
            zg = zT[idx] * valid[..., None]  # (C, k, N)
            hidden = self._hidden(self._masked_pres(rows, zg, idx, complement, cache))
            val = torch.matmul(hidden, self.A[outs].transpose(1, 2))  # (C, N, R)
            out[outs.reshape(-1)] += val.transpose(1, 2).reshape(-1, N)
        return out.T.reshape(B, S, self.n_out)

    def _scale_row_elements(self) -> int:
        return 3 * len(self.Bs) * self._d_mlp + self._d

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out[..., i] = G(z * masks[i])[..., i]``: the MLP part per distinct mask; with the
        norm after it, the scale of ``x'`` only for the outputs that read it (``q_i != 0``)."""
        masks = masks.to(dtype=z.dtype, device=z.device)
        out = super().ablated(z, masks)
        if self.q is None:
            return out
        sel = torch.nonzero(self.q).squeeze(1)
        if sel.numel():
            LxT = self.Lx.T.contiguous()

            def x_of_mask(rows, zg, idx, valid, complement, cache):
                x = _masked_product(rows, zg, idx, complement, cache, "x", LxT)  # (C, N, d)
                hidden = self._hidden(self._masked_pres(rows, zg, idx, complement, cache))
                return x + hidden @ self.mlp.W_out

            scales = self._scales_of_masks(z, masks[sel], self.norm, x_of_mask)
            out[..., sel] += self.q[sel] * scales
        return out


# -- unembedding from the final norm's output --------------------------------------------------
class LinearComposite(_PositionwiseComposite, UnembedComposite):
    """``G(z) = Gmat z`` per position (the unembedding from ``[f0, h]``): ``J = Gmat``."""

    def __init__(self, W_U: Tensor, b_U: Tensor, segment, in_map: Tensor,
                 out_map: Tensor) -> None:
        UnembedComposite.__init__(self, W_U, b_U, segment, in_map, out_map, last=False)
        self._cache = {}
        self._d = W_U.shape[0]

    __call__ = UnembedComposite.__call__
    ablated = UnembedComposite.ablated

    def _point(self, rows):
        return ()

    def _row_matrices(self, total, coeffs):
        return (total * self.Gmat).expand(1, -1, -1)

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        return UnembedComposite.jacobian(self, z, sources)

    def _mixed(self, total, coeffs, c, rows):
        return (total * self.Gmat) * (c @ rows)[:, None, :]

    def attributions(self, z: Tensor, alphas, weights, sources: Tensor | None = None,
                     skip: int = 0) -> tuple[Tensor, Tensor]:
        if sources is not None:
            return super().attributions(z, alphas, weights, sources, skip)
        total = float(torch.as_tensor(weights).sum())
        A = (total * self.Gmat) * z[:, :, None, :]
        return A, (A if skip == 0 else A[:, skip:])

    def _gram_stats(self, rows, cw):
        return [cw.sum()]

    def _gram_finish(self, stats, start):
        G = self._f64("G", lambda: self.Gmat.to(_F64))[:, start:]
        return stats[0] * (G.T @ G)

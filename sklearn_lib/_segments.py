"""A segment between two bases: ``G(z) = out_map @ seg(in_map @ z)``, its Jacobians, its ablation.

Every computation of the method on a layer pair goes through this object: the Jacobian Gram
matrix of LIB (``in_map`` the right inverse of the whitening, ``out_map`` the next basis), the
integrated-gradient edges and the edge-ablation forward passes. The generic version below uses
``torch.func``; an adapter can supply a faster one with closed forms (see
``docs/adapters.md``) by defining ``composite_segment(layer, in_map, out_map, *, dtype,
device)`` that returns an object with the same three methods.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sklearn_lib._jacobian import batched_jacobian, per_sample

__all__ = [
    "ChainedComposite",
    "CompositeSegment",
    "ablate_by_masks",
    "attributions_from_jacobian",
    "gram_from_jacobian",
    "make_composite",
    "pin_positions",
    "segment_attributions",
    "segment_gram",
]

#: Bytes of the largest link Jacobian of one chunk of a :class:`ChainedComposite` (its
#: batch is processed in chunks of samples: small enough to stay in cache, large enough
#: for efficient batched GEMMs).
_CHAIN_BUDGET = 2 * 2**20


class CompositeSegment:
    """``G(z) = seg(z @ in_map.T) @ out_map.T`` on ``Float[Tensor, "batch pos n_in"]``.

    Parameters
    ----------
    segment : callable
        Pure batched map between node layers (activation coordinates, constant first).
    in_map : Tensor of shape (1 + d_in, n_in)
        From basis coordinates of the input layer back to its activations.
    out_map : Tensor of shape (n_out, 1 + d_out)
        From activations of the output layer to its basis.
    chunk_size : int, default=None
        VJPs (reverse mode) or JVPs (forward mode) vectorised at once, a memory knob
        (default: what fits 64 MiB). The whole Jacobian is never held.
    """

    def __init__(self, segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor,
                 chunk_size: int | None = None) -> None:
        self.segment = segment
        self.in_map = in_map
        self.out_map = out_map
        self.chunk_size = chunk_size

    def __call__(self, z: Tensor) -> Tensor:
        return self.segment(z @ self.in_map.T) @ self.out_map.T

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """Per-sample Jacobians ``(batch, S, n_out, T_in, n_in)`` of ``G`` at ``z``.

        ``S`` is the number of output positions, or, with ``sources`` of shape
        ``(batch, R, T_out)``, the ``R`` combinations ``sum_s r_s G_s / sqrt(R)``.
        """
        single = per_sample(self)
        with torch.no_grad():
            t_out, n_out = self(z[:1]).shape[1:]
        if sources is None:
            return batched_jacobian(single, z, out_numel=t_out * n_out,
                                    chunk_size=self.chunk_size)
        R = sources.shape[1]

        def mixed(zb: Tensor, rb: Tensor) -> Tensor:
            return (rb @ single(zb)) / R**0.5

        return batched_jacobian(mixed, z, sources, out_numel=R * n_out,
                                chunk_size=self.chunk_size)

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        """``sum_{b,s,i,t} J_(i,s),(j,t) J_(i,s),(j',t)`` over the batch, float64.

        ``j, j' >= start`` (the fixed coordinates left out) and input positions ``t >= skip``
        (with ``sources``, which are zero on output positions ``s < skip``; without them also
        ``s >= skip``): the batch's share of the Jacobian Gram matrix ``M`` of LIB
        (DESIGN.md section 5). The whole Jacobian is never held: VJPs (one per output
        feature and source, or output position) or JVPs (one per input coordinate), whichever
        are fewer, run ``chunk_size`` at a time and each chunk is added to the Gram at once,
        so memory grows with the chunk and linearly with the positions. Closed forms override
        it.
        """
        if type(self).jacobian is not CompositeSegment.jacobian:  # a closed-form Jacobian
            return gram_from_jacobian(self, z, sources, start, skip)
        k = z.shape[-1] - start
        gram = torch.zeros(k, k, dtype=torch.float64, device=z.device)
        t_out, n_out = self._out_shape(z)
        n_vjp = (sources.shape[1] if sources is not None else t_out - skip) * n_out
        if self._prefer_jvp((z.shape[1] - skip) * k, n_vjp):
            # Columns (t, j) of the Jacobian, grouped by input position t: the Gram pairs
            # columns of the same position only.
            positions = list(range(skip, z.shape[1]))
            per = max(1, self._chunk(z, n_out) // k)
            for lo in range(0, len(positions), per):
                ts = positions[lo : lo + per]
                cols = self._jvp_columns(z, ts, start, sources, skip)  # (|ts|, k, rows)
                cols = cols.to(torch.float64)
                gram += torch.einsum("tjr,tkr->jk", cols, cols)
            return gram
        for g in self._vjp_rows(z, sources, skip, n_out):  # (C, B, T, n_in)
            rows = g[:, :, skip:, start:].to(torch.float64).reshape(-1, k)
            gram += rows.T @ rows
        return gram

    def attributions(self, z: Tensor, alphas, weights, sources: Tensor | None = None,
                     skip: int = 0) -> tuple[Tensor, Tensor]:
        """Integrated-gradient attributions ``A`` and the part ``A_kept`` that counts for edges.

        ``A[b, s, i, j] = sum_a weights[a] sum_t J(alphas[a] z)_(i,s),(j,t) z[b, t, j]``, with
        ``s`` the output positions or, with ``sources`` of shape ``(batch, R, T_out)``, the
        ``R`` mixtures (as in :meth:`jacobian`). ``A_kept`` sums over input positions
        ``t >= skip`` only and, without sources, keeps output positions ``s >= skip`` only
        (``A_kept is A`` when ``skip == 0``).

        The Jacobian is contracted with ``z`` as it is computed, never held whole: forward
        mode needs one JVP per input feature (the tangent is ``z`` itself on that feature at
        every position, which sums over ``t`` inside the JVP), reverse mode one VJP per
        output feature and source; the cheaper runs, ``chunk_size`` at a time.
        """
        alphas, weights = _floats(alphas), _floats(weights)
        if type(self).jacobian is not CompositeSegment.jacobian:  # a closed-form Jacobian
            return attributions_from_jacobian(self, z, alphas, weights, sources, skip)
        B, T, n_in = z.shape
        t_out, n_out = self._out_shape(z)
        n_vjp = (sources.shape[1] if sources is not None else t_out) * n_out
        if self._prefer_jvp(n_in * (2 if skip else 1), n_vjp):
            # (before, kept): sums over t < skip and over t >= skip (one part when skip = 0)
            parts = None
            for alpha, w in zip(alphas, weights):
                step = self._jvp_contracted(alpha * z, z, sources, skip, n_out)
                parts = ([w * p for p in step] if parts is None
                         else [a + w * p for a, p in zip(parts, step)])
            if not skip:
                return parts[0], parts[0]
            before, A_kept = parts
            return before + A_kept, (A_kept if sources is not None else A_kept[:, skip:])
        A = A_kept = None
        for alpha, w in zip(alphas, weights):
            pieces, kept = [], []
            for g in self._vjp_rows(alpha * z, sources, 0, n_out):  # (C, B, T, n_in)
                pieces.append(torch.einsum("cbtj,btj->bcj", g, z))
                if skip:
                    kept.append(torch.einsum("cbtj,btj->bcj", g[:, :, skip:], z[:, skip:]))
            a = w * torch.cat(pieces, 1)
            A = a if A is None else A + a
            if skip:
                k = w * torch.cat(kept, 1)
                A_kept = k if A_kept is None else A_kept + k
        A = A.reshape(B, -1, n_out, n_in)  # (B, S|R, n_out, n_in): cotangents in (s|r, i) order
        if not skip:
            return A, A
        A_kept = A_kept.reshape(B, -1, n_out, n_in)
        return A, (A_kept if sources is not None else A_kept[:, skip:])

    # -- streaming helpers -----------------------------------------------------------------
    #: Bytes the tangents, cotangents and results of one chunk may take when ``chunk_size``
    #: is not set (the VJPs and JVPs of a chunk keep a few activations of this size each).
    chunk_bytes = 64 * 2**20

    def _out_shape(self, z: Tensor) -> tuple[int, int]:
        """Output positions and features ``(T_out, n_out)``, from one sample."""
        with torch.no_grad():
            t_out, n_out = self(z[:1]).shape[1:]
        return int(t_out), int(n_out)

    @staticmethod
    def _prefer_jvp(n_jvp: int, n_vjp: int) -> bool:
        """Forward mode when it needs no more JVPs than reverse mode needs VJPs."""
        return n_jvp <= n_vjp

    def _chunk(self, z: Tensor, n_out: int) -> int:
        """VJPs or JVPs per vectorised chunk: ``chunk_size`` or what fits ``chunk_bytes``."""
        if self.chunk_size is not None:
            return int(self.chunk_size)
        B, T, n_in = z.shape
        per = 4 * B * T * max(n_in, n_out) * z.element_size()
        return max(1, self.chunk_bytes // max(per, 1))

    def _vjp_rows(self, z: Tensor, sources: Tensor | None, skip: int, n_out: int):
        """Yield chunks of the Jacobian's rows, ``(C, batch, T_in, n_in)``.

        Rows are in the order (source ``r`` or output position ``s``, output feature ``i``);
        with sources, row ``(r, i)`` is ``sum_s r_s J_(i,s) / sqrt(R)``. Output positions
        ``s < skip`` are left out when there are no sources.
        """
        from torch.func import vjp, vmap

        y, pull = vjp(self, z)
        B, t_out, _ = y.shape
        if sources is not None:
            mix = sources.to(z.dtype) / sources.shape[1] ** 0.5  # (B, R, T_out)
            n_first, offset = sources.shape[1], 0  # rows (r, i)
        else:
            n_first, offset = t_out - skip, skip  # rows (s, i), s >= skip
        step = self._chunk(z, n_out)
        eye = torch.eye(n_out, dtype=z.dtype, device=z.device)
        for lo in range(0, n_first * n_out, step):
            key = torch.arange(lo, min(lo + step, n_first * n_out), device=z.device)
            first, feat = key // n_out + offset, key % n_out
            if sources is not None:  # (C, B, T_out, n_out) = r_(b, s) e_i
                ct = mix[:, first].permute(1, 0, 2)[..., None] * eye[feat][:, None, None, :]
            else:
                ct = torch.zeros(len(key), B, t_out, n_out, dtype=z.dtype, device=z.device)
                ct[torch.arange(len(key)), :, first, feat] = 1
            yield vmap(pull)(ct)[0]

    def _jvp_columns(self, z: Tensor, positions: list[int], start: int,
                     sources: Tensor | None, skip: int) -> Tensor:
        """Columns ``(t, j)`` of the Jacobian for ``t`` in ``positions``, ``j >= start``.

        Returns ``(len(positions), n_in - start, rows)`` with rows the flattened (batch,
        source or output position ``s >= skip``, output feature).
        """
        from torch.func import jvp, vmap

        B, T, n_in = z.shape
        k = n_in - start
        n = len(positions) * k
        tangents = torch.zeros(n, B, T, n_in, dtype=z.dtype, device=z.device)
        idx = torch.arange(n, device=z.device)
        tpos = torch.tensor(positions, device=z.device).repeat_interleave(k)
        feat = torch.arange(start, n_in, device=z.device).repeat(len(positions))
        tangents[idx, :, tpos, feat] = 1
        out = vmap(lambda v: jvp(self, (z,), (v,))[1])(tangents)  # (n, B, T_out, n_out)
        if sources is not None:
            R = sources.shape[1]
            out = torch.einsum("brs,nbsi->nbri", sources.to(z.dtype), out) / R**0.5
        else:
            out = out[:, :, skip:]
        return out.reshape(len(positions), k, -1)

    def _jvp_contracted(self, point: Tensor, z: Tensor, sources: Tensor | None,
                        skip: int, n_out: int) -> list[Tensor]:
        """``sum_t J(point)_(.,.),(j,t) z[t, j]`` for every input feature ``j``, by JVPs.

        The tangent of feature ``j`` is ``z`` on that feature at every position, so one JVP
        sums over ``t``. Returns ``(B, S|R, n_out, n_in)`` tensors: one summing every
        position when ``skip == 0``, else two, over ``t < skip`` and over ``t >= skip``.
        """
        from torch.func import jvp, vmap

        B, T, n_in = z.shape
        spans = [(skip, T)] if not skip else [(0, skip), (skip, T)]
        parts = []
        step = self._chunk(z, n_out)
        for lo_t, hi_t in spans:
            cols = []
            for lo in range(0, n_in, step):
                feats = torch.arange(lo, min(n_in, lo + step), device=z.device)
                tangents = torch.zeros(len(feats), B, T, n_in, dtype=z.dtype, device=z.device)
                tangents[torch.arange(len(feats)), :, lo_t:hi_t, feats] = (
                    z[:, lo_t:hi_t, feats].permute(2, 0, 1))
                out = vmap(lambda v: jvp(self, (point,), (v,))[1])(tangents)  # (c, B, S, n_out)
                if sources is not None:
                    R = sources.shape[1]
                    out = torch.einsum("brs,cbsi->cbri", sources.to(z.dtype), out) / R**0.5
                cols.append(out)
            parts.append(torch.cat(cols).permute(1, 2, 3, 0))  # (B, S|R, n_out, n_in)
        return parts

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out[..., i] = G(z * masks[i])[..., i]``, one forward pass per distinct mask.

        ``masks`` of shape ``(n_out, n_in)`` zero the sources of each output's ablated edges at
        every position; returns ``(batch, T_out, n_out)``.
        """
        return ablate_by_masks(self, z, masks, mask_chunk)


def _floats(values) -> list[float]:
    """Quadrature nodes or weights (array, tensor or sequence) as Python floats, unrounded."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def gram_from_jacobian(G, z: Tensor, sources: Tensor | None = None, start: int = 0,
                       skip: int = 0) -> Tensor:
    """:meth:`CompositeSegment.jacobian_gram` from ``G.jacobian`` (formed whole, float64)."""
    jac = G.jacobian(z, sources)[..., start:]
    jac = jac[:, :, :, skip:] if sources is not None else jac[:, skip:, :, skip:]
    rows = jac.to(torch.float64).reshape(-1, jac.shape[-1])
    return rows.T @ rows


def attributions_from_jacobian(G, z: Tensor, alphas, weights, sources: Tensor | None = None,
                               skip: int = 0) -> tuple[Tensor, Tensor]:
    """:meth:`CompositeSegment.attributions` from ``G.jacobian`` (formed whole)."""
    jbar = None
    for alpha, w in zip(_floats(alphas), _floats(weights)):
        J = G.jacobian(alpha * z, sources)
        jbar = w * J if jbar is None else jbar + w * J
    A = torch.einsum("bsitj,btj->bsij", jbar, z)
    if not skip:
        return A, A
    A_kept = torch.einsum("bsitj,btj->bsij", jbar[..., skip:, :], z[:, skip:])
    return A, (A_kept if sources is not None else A_kept[:, skip:])


def pin_positions(z: Tensor, acts: Tensor, in_map: Tensor, skip: int) -> tuple[Tensor, Tensor]:
    """Hold the first ``skip`` positions at their exact activations (e.g. an attention sink).

    Returns ``(z', in_map')`` with ``z' @ in_map'.T`` equal to ``acts`` on positions ``t <
    skip`` and to ``z @ in_map.T`` on the others, so a composite built on ``in_map'`` sees the
    model's own activations where the bases do not apply (they were fitted without those
    positions, and their truncation would otherwise change what later positions attend to).
    One coordinate is appended per skipped (sample, position): its column of ``in_map'`` is
    that activation, and ``z'`` is 1 on it there and 0 elsewhere; ``z'`` is 0 on the basis
    coordinates of skipped positions. The appended coordinates scale with ``z'`` like any
    other (an integrated-gradient path still runs from 0 to the input, so completeness holds
    over all coordinates), are never ablated, and results for the bases are read from the
    first ``z.shape[-1]`` coordinates.

    Parameters
    ----------
    z : Tensor of shape (batch, pos, n_in)
        Basis coordinates of a batch.
    acts : Tensor of shape (batch, pos, 1 + d)
        The same batch's activations (constant first), whose first ``skip`` positions are kept.
    in_map : Tensor of shape (1 + d, n_in)
        From basis coordinates back to activations.
    skip : int
        Positions held (``0`` returns ``z`` and ``in_map`` as they are).

    Returns
    -------
    z_pinned : Tensor of shape (batch, pos, n_in + batch * skip)
    in_map_pinned : Tensor of shape (1 + d, n_in + batch * skip)
    """
    if not skip:
        return z, in_map
    B, T, n = z.shape
    K = B * skip
    anchors = acts[:, :skip].reshape(K, -1).to(in_map.dtype)
    in_pinned = torch.cat([in_map, anchors.T], 1)
    z_pinned = z.new_zeros(B, T, n + K)
    z_pinned[:, skip:, :n] = z[:, skip:]
    rows = torch.arange(B, device=z.device).repeat_interleave(skip)
    pos = torch.arange(skip, device=z.device).repeat(B)
    z_pinned[rows, pos, n + torch.arange(K, device=z.device)] = 1
    return z_pinned, in_pinned


def segment_gram(G, z: Tensor, sources: Tensor | None = None, start: int = 0,
                 skip: int = 0) -> Tensor:
    """``G.jacobian_gram`` when ``G`` has it (closed forms, :class:`CompositeSegment`), else
    from ``G.jacobian`` (an adapter's composite with only the required methods)."""
    if hasattr(G, "jacobian_gram"):
        return G.jacobian_gram(z, sources, start, skip)
    return gram_from_jacobian(G, z, sources, start, skip)


def segment_attributions(G, z: Tensor, alphas, weights, sources: Tensor | None = None,
                         skip: int = 0) -> tuple[Tensor, Tensor]:
    """``G.attributions`` when ``G`` has it, else from ``G.jacobian``."""
    if hasattr(G, "attributions"):
        return G.attributions(z, alphas, weights, sources, skip)
    return attributions_from_jacobian(G, z, alphas, weights, sources, skip)


def ablate_by_masks(G: Callable[[Tensor], Tensor], z: Tensor, masks: Tensor,
                    mask_chunk: int = 16) -> Tensor:
    """``out[..., i] = G(z * masks[i])[..., i]`` for any batched map ``G``.

    Outputs sharing a mask share one forward pass; ``mask_chunk`` masks run at once.
    """
    unique, inverse = torch.unique(masks, dim=0, return_inverse=True)
    B, T, n_in = z.shape
    out = None
    for lo in range(0, unique.shape[0], mask_chunk):
        chunk = unique[lo : lo + mask_chunk]  # (U, n_in)
        y = G((z.unsqueeze(0) * chunk[:, None, None, :]).reshape(-1, T, n_in))
        y = y.reshape(chunk.shape[0], B, *y.shape[1:])  # (U, B, T_out, n_out)
        if out is None:
            out = torch.empty(B, y.shape[2], y.shape[3], dtype=y.dtype, device=y.device)
        rows = torch.nonzero((inverse >= lo) & (inverse < lo + chunk.shape[0])).squeeze(1)
        out[:, :, rows] = y[inverse[rows] - lo, :, :, rows].permute(1, 2, 0)
    return out


class ChainedComposite(CompositeSegment):
    """Several composite segments in a row: ``G = G_K o ... o G_1`` (GIB spans).

    Each link maps activation coordinates to activation coordinates (identity maps), except
    the first, which reads the basis ``in_map``, and the last, which writes ``out_map``.
    Jacobians come from the links' per-sample Jacobians (closed forms where the adapter has
    them) by the chain rule, ``J = J_K ... J_1``, evaluated along the forward pass; stochastic
    sources mix the output positions of the last link only. The product runs from the output
    back (the rows of ``out_map`` pulled through each link: one batched GEMM per link), and
    :meth:`jacobian_gram` forms it for a chunk of samples at a time (``_CHAIN_BUDGET``).
    """

    def __init__(self, links: list[CompositeSegment]) -> None:
        self.links = links
        self.in_map = links[0].in_map
        self.out_map = links[-1].out_map
        self.chunk_size = links[0].chunk_size
        self._chunk_key = None
        self._chunk_rows = 1

        def chained(f: Tensor) -> Tensor:
            for link in links:
                f = link.segment(f)
            return f

        self.segment = chained

    def __call__(self, z: Tensor) -> Tensor:
        for link in self.links:
            z = link(z)
        return z

    def _points(self, z: Tensor) -> list[Tensor]:
        """The input of every link along the forward pass."""
        points = [z]
        with torch.no_grad():
            for link in self.links[:-1]:
                points.append(link(points[-1]))
        return points

    def _chain(self, points: list[Tensor], sources: Tensor | None) -> Tensor:
        """``J_K ... J_1`` from the last link back, one batched GEMM per link.

        A link Jacobian laid out by input position (``(B, U, k, T, n)`` strided so that each
        position is a matrix, as the attention closed form makes it) is multiplied position by
        position, without a copy; the product is then stored position first (a permuted view
        is returned).
        """
        jac = self.links[-1].jacobian(points[-1], sources)
        for i in range(len(self.links) - 2, -1, -1):
            inner = self.links[i].jacobian(points[i])  # (B, U, k, T, n)
            B, S, n_out, U, K = jac.shape
            T, n = inner.shape[3:]
            left = jac.reshape(B, S * n_out, U * K)
            if inner.is_contiguous():
                jac = torch.bmm(left, inner.view(B, U * K, T * n)).view(B, S, n_out, T, n)
                continue
            out = torch.empty(T, B, S * n_out, n, dtype=left.dtype, device=left.device)
            for t in range(T):
                torch.bmm(left, inner[:, :, :, t, :].reshape(B, U * K, n), out=out[t])
            jac = out.view(T, B, S, n_out, n).permute(1, 2, 3, 0, 4)
        return jac

    def _rows_per_chunk(self, z: Tensor, sources: Tensor | None) -> int:
        """Samples per chunk: the largest link Jacobian of a chunk within ``_CHAIN_BUDGET``."""
        key = (tuple(z.shape[1:]), None if sources is None else tuple(sources.shape[1:]))
        if self._chunk_key != key:
            points = self._points(z[:1])
            src = None if sources is None else sources[:1]
            sizes = [self.links[-1].jacobian(points[-1], src).numel()]
            sizes += [link.jacobian(p).numel() for link, p in zip(self.links, points)]
            self._chunk_key = key
            self._chunk_rows = max(1, _CHAIN_BUDGET // (max(sizes) * z.element_size()))
        return self._chunk_rows

    def jacobian(self, z: Tensor, sources: Tensor | None = None) -> Tensor:
        """``(batch, S, n_out, T_in, n_in)``: the product of the links' Jacobians."""
        return self._chain(self._points(z), sources)

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None, start: int = 0,
                      skip: int = 0) -> Tensor:
        """As :meth:`CompositeSegment.jacobian_gram`, over chunks of the batch.

        Each chunk's chained Jacobian is formed and reduced at once, so no more than a chunk
        (``_CHAIN_BUDGET`` bytes of the widest link Jacobian) is ever held and the
        temporaries stay in cache.
        """
        step = self._rows_per_chunk(z, sources)
        points = self._points(z)
        gram = None
        for lo in range(0, z.shape[0], step):
            chunk = [p[lo : lo + step] for p in points]
            src = None if sources is None else sources[lo : lo + step]
            jac = self._chain(chunk, src)
            if skip:  # positions left out (an attention sink): input t, and output s unmixed
                jac = jac[:, :, :, skip:] if src is not None else jac[:, skip:, :, skip:]
            if not jac.is_contiguous():  # stored position first: its rows, in another order
                jac = jac.permute(3, 0, 1, 2, 4)
            rows = jac.reshape(-1, jac.shape[-1]).to(torch.float64)
            part = rows.T @ rows
            gram = part if gram is None else gram.add_(part)
        return gram[start:, start:]  # the fixed coordinates left out


def make_composite(adapter, layers: list[str], in_map: Tensor, out_map: Tensor, *,
                   dtype: torch.dtype, device: torch.device,
                   chunk_size: int | None = None) -> CompositeSegment:
    """The composite segment from ``layers[0]`` through ``layers[-1]`` (one or more segments).

    Uses the adapter's ``composite_segment`` when it has one. A span of several segments is a
    :class:`ChainedComposite` of single ones in activation coordinates (the adapter's closed
    forms where it has them, the generic composite otherwise), differentiated by the chain
    rule.
    """
    if len(layers) > 2:
        links = []
        d_in = in_map.shape[0]  # activation width of the link's input layer
        for k in range(len(layers) - 1):
            seg = adapter.segment(layers[k], dtype=dtype, device=device)
            with torch.no_grad():  # the width of the next layer, from F(0) = 0
                d_out = seg(torch.zeros(1, 1, d_in, dtype=dtype, device=device)).shape[-1]
            a = in_map if k == 0 else torch.eye(d_in, dtype=dtype, device=device)
            last = k == len(layers) - 2
            b = out_map if last else torch.eye(d_out, dtype=dtype, device=device)
            links.append(_single(adapter, layers[k], seg, a, b, dtype=dtype, device=device,
                                 chunk_size=chunk_size))
            d_in = d_out
        # A linear last link (an output layer) folds into the out_map of the one before, so
        # no Jacobian is formed in the wide activation coordinates of the layer between.
        while len(links) > 1 and _foldable(links[-2], links[-1]):
            k = len(links) - 2
            seg = adapter.segment(layers[k], dtype=dtype, device=device)
            links[k:] = [_single(adapter, layers[k], seg, links[k].in_map, links[-1].Gmat,
                                 dtype=dtype, device=device, chunk_size=chunk_size)]
        return links[0] if len(links) == 1 else ChainedComposite(links)
    seg = adapter.segment(layers[0], dtype=dtype, device=device)
    return _single(adapter, layers[0], seg, in_map, out_map, dtype=dtype, device=device,
                   chunk_size=chunk_size)


def _foldable(before: CompositeSegment, linear: CompositeSegment) -> bool:
    """Whether ``linear`` is a constant matrix ``Gmat`` that can become ``before``'s out_map.

    A link that keeps only the last position can be folded only where the link before it
    already outputs one position (it keeps the last position too).
    """
    if not isinstance(getattr(linear, "Gmat", None), Tensor):
        return False
    return not getattr(linear, "last", False) or bool(getattr(before, "last", False))


def _single(adapter, layer: str, seg, in_map: Tensor, out_map: Tensor, *,
            dtype: torch.dtype, device: torch.device,
            chunk_size: int | None) -> CompositeSegment:
    """One segment: the adapter's closed form when it has one, else the generic composite."""
    if hasattr(adapter, "composite_segment"):
        fast = adapter.composite_segment(layer, in_map, out_map, dtype=dtype, device=device)
        if fast is not None:
            return fast
    return CompositeSegment(seg, in_map, out_map, chunk_size)

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

import torch
from torch import Tensor

from sklearn_lib._jacobian import batched_jacobian, per_sample

__all__ = ["ChainedComposite", "CompositeSegment", "ablate_by_masks", "make_composite"]

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
        Reverse-mode Jacobians: VJPs vectorised at once.
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

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None,
                      start: int = 0) -> Tensor:
        """``sum_{b,s,i,t} J_(i,s),(j,t) J_(i,s),(j',t)`` over the batch, float64.

        ``j, j' >= start`` (the fixed coordinates left out): the batch's share of the
        Jacobian Gram matrix ``M`` of LIB (DESIGN.md section 5). Closed forms may override it
        without forming the Jacobians.
        """
        jac = self.jacobian(z, sources)[..., start:]  # (B, S, n_out, T, k)
        rows = jac.to(torch.float64).reshape(-1, jac.shape[-1])  # contiguous: one GEMM
        return rows.T @ rows

    def ablated(self, z: Tensor, masks: Tensor, mask_chunk: int = 16) -> Tensor:
        """``out[..., i] = G(z * masks[i])[..., i]``, one forward pass per distinct mask.

        ``masks`` of shape ``(n_out, n_in)`` zero the sources of each output's ablated edges at
        every position; returns ``(batch, T_out, n_out)``.
        """
        return ablate_by_masks(self, z, masks, mask_chunk)


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

    def jacobian_gram(self, z: Tensor, sources: Tensor | None = None,
                      start: int = 0) -> Tensor:
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

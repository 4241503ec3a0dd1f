"""Batched Jacobians of per-sample maps through ``torch.func`` (no Python loop over outputs)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import jacfwd, jacrev, vmap

__all__ = ["per_sample", "batched_jacobian"]


def per_sample(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Turn a batched map ``(batch, pos, d) -> (batch, pos', d')`` into a per-sample one."""

    def single(z: Tensor) -> Tensor:
        return fn(z.unsqueeze(0)).squeeze(0)

    return single


def batched_jacobian(
    fn: Callable[..., Tensor],
    z: Tensor,
    *extra: Tensor,
    out_numel: int,
    chunk_size: int | None = None,
) -> Tensor:
    """Jacobian of a per-sample ``fn(z_b, *extra_b)`` w.r.t. ``z_b`` for every sample ``b``.

    Returns ``Float[Tensor, "batch *out_shape *in_shape"]``. Forward mode (one JVP per input
    coordinate) is used when the input is smaller than the output, reverse mode (one VJP per
    output coordinate, ``chunk_size`` at a time) otherwise.
    """
    in_numel = z[0].numel()
    if in_numel <= out_numel:
        jac = jacfwd(fn, argnums=0)
    else:
        jac = jacrev(fn, argnums=0, chunk_size=chunk_size)
    return vmap(jac)(z, *extra)

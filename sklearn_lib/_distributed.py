"""Data parallelism through ``torch.distributed``: shards and all-reduced sums.

Every sum the method needs (activation moments, the Jacobian Gram matrix ``M``, edge sums of
squares, ablation metric sums) is a sum over data points. When the script runs under
``torchrun`` and ``torch.distributed`` is initialised (gloo on CPU, NCCL on GPU), rank ``r``
reads its contiguous shard of the batches and the partial sums are all-reduced, so every rank
ends with the sums one process would have computed (up to the order of the additions). In a
single process (``torch.distributed`` not initialised) every helper here is the identity.

Only :mod:`sklearn_lib._stream` calls these helpers; no estimator knows about processes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sklearn_lib._linalg import MomentAccumulator

__all__ = [
    "all_reduce_moments",
    "all_reduce_sum",
    "batch_shard",
    "is_distributed",
    "rank_and_world",
]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and initialised with several ranks."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` in a single process."""
    if not is_distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def batch_shard(n_batches: int) -> range:
    """The contiguous range of batch indices this rank reads.

    Batches, not samples, are split, so that every batch is the one a single process would
    read: per-batch sums are then identical and only their order of addition differs.
    """
    rank, world = rank_and_world()
    lo = (n_batches * rank) // world
    hi = (n_batches * (rank + 1)) // world
    return range(lo, hi)


def _reduce_device(t: Tensor) -> torch.device:
    """Where the collective runs: NCCL needs CUDA tensors (this rank's GPU), gloo CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return t.device if t.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Sum each tensor over ranks; returns new tensors (on the input's device and dtype).

    In a single process the inputs are returned unchanged.
    """
    if not is_distributed():
        return tensors
    out = []
    for t in tensors:
        buf = t.detach().to(_reduce_device(t)).clone().contiguous()
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        out.append(buf.to(t.device))
    return tuple(out)


def all_reduce_moments(acc: MomentAccumulator) -> MomentAccumulator:
    """Merge every rank's accumulator, in rank order, into one that is the same on every rank.

    Ranks hold the moments of their shards; the result equals what one process merging the
    shards in order gets (``MomentAccumulator.merge``). The mean and scatter of every rank are
    gathered (a ``d x d`` matrix per rank, small next to the data).
    """
    if not is_distributed():
        return acc
    rank, world = rank_and_world()
    # Every rank must know the dimension even where its shard was empty.
    dim = torch.tensor([acc.mean.shape[0] if acc.count else -1], dtype=torch.float64)
    (dims,) = _gather(dim)
    d = int(dims.max())
    if d < 0:
        return acc
    count = torch.tensor([float(acc.count)], dtype=torch.float64)
    mean = acc.mean.to(torch.float64) if acc.count else torch.zeros(d, dtype=torch.float64)
    scatter = acc.scatter.to(torch.float64) if acc.count else torch.zeros(d, d,
                                                                          dtype=torch.float64)
    device = mean.device
    counts, means, scatters = _gather(count, mean, scatter)
    merged = MomentAccumulator()
    for r in range(world):
        part = MomentAccumulator()
        part.count = int(counts[r].item())
        if part.count:
            part.mean, part.scatter = means[r].to(device), scatters[r].to(device)
            merged.merge(part)
    return merged


def _gather(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``all_gather`` of each tensor: a stacked ``(world, *shape)`` tensor per input."""
    _, world = rank_and_world()
    out = []
    for t in tensors:
        local = t.detach().to(_reduce_device(t)).contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        torch.distributed.all_gather(parts, local)
        out.append(torch.stack(parts))
    return tuple(out)

"""Data parallelism through ``torch.distributed``: shards and all-reduced sums.

Every sum the method needs (activation moments, the Jacobian Gram matrix ``M``, edge sums of
squares, ablation metric sums) is a sum over data points. When the script runs under
``torchrun`` and ``torch.distributed`` is initialised (gloo on CPU, NCCL on GPU), rank ``r``
reads its contiguous shard of the batches and the partial sums are all-reduced, so every rank
ends with the sums one process would have computed (up to the order of the additions). In a
single process (``torch.distributed`` not initialised) every helper here is the identity.

Only :mod:`sklearn_lib._stream` calls these helpers; no estimator knows about processes.

A rank that raises must not leave the others waiting in a collective. Every collective here
is *guarded*: it first exchanges one flag per rank (did it fail?). A rank that raises while
reading or computing its shard of a pass (between :func:`open_pass` and
:func:`close_pass`, or the next collective) reports the failure (:func:`report_failure`) at the collective the other ranks
wait in, then raises its own error; the others raise :class:`RankFailedError` naming the
failing rank and its error. Errors raised in the stream itself (reading, validating or
computing a batch) are reported at once; an error raised elsewhere during a pass (an
estimator's own per-batch step) is reported when it ends the process (an uncaught
exception, through ``sys.excepthook``). A rank that catches such an error and carries on
leaves the others waiting; let it propagate.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from sklearn_lib._linalg import MomentAccumulator

__all__ = [
    "RankFailedError",
    "all_reduce_moments",
    "all_reduce_sum",
    "batch_shard",
    "close_pass",
    "is_distributed",
    "open_pass",
    "rank_and_world",
    "report_failure",
]


class RankFailedError(RuntimeError):
    """Another rank raised during a data-parallel pass; this rank stops too."""


#: ``open``: this rank is inside a sharded pass whose next collective is a guarded one (the
#: other ranks will wait there); ``hook``: the ``sys.excepthook`` that reports is installed.
_state = {"open": False, "hook": False}


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
    _check_ranks()
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
    _check_ranks()
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


# -- failures ------------------------------------------------------------------------------------
def open_pass() -> None:
    """Mark this rank inside a sharded pass: its next collective is a guarded one.

    Until then, an error on this rank is reported to the others (:func:`report_failure`).
    A no-op in a single process.
    """
    if is_distributed():
        _install_excepthook()
        _state["open"] = True


def close_pass() -> None:
    """This rank has read its whole shard: an error from here on is not reported.

    A pass may be followed by no collective (and an error after it must not wait for one),
    so only an error while the shard is being read is reported.
    """
    _state["open"] = False


def report_failure(exc: BaseException) -> None:
    """Tell the other ranks, at the collective they wait in, that this rank raised ``exc``.

    Called by the rank that failed, which then raises its own error. Only inside a pass
    (after :func:`open_pass`, before the next collective): elsewhere the other ranks are not
    waiting in a guarded collective, and nothing is sent.
    """
    if not (_state["open"] and is_distributed()) or isinstance(exc, RankFailedError):
        return
    _state["open"] = False
    _exchange(f"{type(exc).__name__}: {exc}")


def _check_ranks() -> None:
    """The guard of every collective: raise :class:`RankFailedError` if another rank failed."""
    _state["open"] = False
    _exchange(None)


def _exchange(failure: str | None) -> None:
    """One flag per rank; where some rank failed, its message to every rank, then raise.

    The rank that failed (``failure`` given) returns and raises its own error; the others
    raise :class:`RankFailedError`.
    """
    rank, world = rank_and_world()
    (flags,) = _gather(torch.tensor([0.0 if failure is None else 1.0], dtype=torch.float64))
    failed = [r for r in range(world) if flags[r].item()]
    if not failed:
        return
    messages: list = [None] * world
    torch.distributed.all_gather_object(messages, failure)
    if failure is None:
        detail = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
        which = f"Rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))}"
        raise RankFailedError(
            f"{which} of {world} raised during a data-parallel pass ({detail}); "
            f"rank {rank} stops too. Fix the error the failing rank reports in its log and "
            "relaunch."
        )


def _install_excepthook() -> None:
    """Report an uncaught exception raised inside a pass before the process ends."""
    if _state["hook"]:
        return
    previous = sys.excepthook

    def hook(tp, value, tb):
        previous(tp, value, tb)  # the traceback first: it is what the user needs
        try:
            report_failure(value)
        except Exception:  # the others already gone: nothing left to tell
            pass

    sys.excepthook = hook
    _state["hook"] = True

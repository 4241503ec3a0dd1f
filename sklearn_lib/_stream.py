"""The one streaming path: read model inputs batch by batch, compute, check and project activations.

Every estimator that runs the model over data (the activation moments, the Jacobian Gram
matrix of LIB/GIB, the IG edge sums, the ablation scores, graph features) goes through
:class:`ActivationStream`. It

- reads the data batch by batch: a NumPy array or tensor, a memory-mapped array
  (``np.memmap``, read slice by slice), a map-style torch ``Dataset`` (items collated per
  batch) or a ``DataLoader`` (its own batches); data that does not fit in memory is never
  copied, and inputs that arrive batch by batch are validated batch by batch;
- computes the requested node-layer activations with the adapter, checks they are finite and
  optionally projects them onto a basis (``z = f @ C.T``);
- keeps the activations of a run of passes in memory when they fit a memory budget
  (:data:`ACTIVATION_CACHE_BYTES`), so that the LIB layers and the probes of an ablation search
  do not recompute them from the model input; otherwise the batch bounds memory;
- shards the batches across ranks when ``torch.distributed`` is initialised (launched with
  ``torchrun``) and all-reduces the sums the estimators accumulate
  (:meth:`ActivationStream.reduce_sum`, :meth:`ActivationStream.reduce_moments`), so every
  rank ends with the single-process result. In one process nothing changes.

It also holds the one "is this the graph I was fitted on?" check (:func:`check_same_graph`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sklearn_lib._common import check_finite
from sklearn_lib._distributed import (
    all_reduce_moments,
    all_reduce_sum,
    batch_shard,
    close_pass,
    open_pass,
    rank_and_world,
    report_failure,
)
from sklearn_lib._linalg import MomentAccumulator

__all__ = [
    "ACTIVATION_CACHE_BYTES",
    "ActivationStream",
    "Batch",
    "batch_generator",
    "check_data",
    "check_same_graph",
    "first_inputs",
    "is_streamed",
    "n_samples",
]

#: Bytes of activations an :class:`ActivationStream` may keep in memory (per process) to
#: reuse them across passes over the same data (the layers of LIB, the probes of an ablation
#: search). Above it every pass recomputes them from the model inputs and the batch bounds
#: memory. Set the module attribute (``sklearn_lib._stream.ACTIVATION_CACHE_BYTES = 0``) to
#: turn the cache off.
ACTIVATION_CACHE_BYTES = 512 * 2**20


# -- data ---------------------------------------------------------------------------------------
def _torch_data():
    from torch.utils.data import DataLoader, Dataset

    return Dataset, DataLoader


def is_streamed(X: Any) -> bool:
    """Whether ``X`` is read batch by batch (Dataset, DataLoader, memory-mapped array)."""
    Dataset, DataLoader = _torch_data()
    return isinstance(X, (Dataset, DataLoader, np.memmap))


def _dataset_of(X: Any):
    Dataset, DataLoader = _torch_data()
    return X.dataset if isinstance(X, DataLoader) else X


def n_samples(X: Any) -> int:
    """Number of model inputs in ``X`` (array, tensor, memmap, Dataset or DataLoader)."""
    Dataset, DataLoader = _torch_data()
    if isinstance(X, (Dataset, DataLoader)):
        return len(_dataset_of(X))
    return int(X.shape[0])


def _inputs_of(item: Any) -> Any:
    """The model input of a Dataset item or DataLoader batch: ``x`` or the first of ``(x, y)``."""
    return item[0] if isinstance(item, (tuple, list)) else item


def check_data(adapter: Any, X: Any, owner: str = "This estimator") -> Any:
    """Validate model inputs; streamed data is returned as it is (a reference, not a copy).

    Arrays and tensors go through ``adapter.check_input`` at once. A memory-mapped array, a
    map-style ``Dataset`` or a ``DataLoader`` is validated batch by batch as it is read (its
    first batch here, so that wrong data fails early).
    """
    Dataset, DataLoader = _torch_data()
    if not is_streamed(X):
        from sklearn_lib._common import check_array_input

        return adapter.check_input(check_array_input(X, owner))
    if isinstance(X, DataLoader):
        from torch.utils.data import SequentialSampler

        if X.batch_size is None:
            raise ValueError(
                f"{owner} reads a DataLoader batch by batch; got one with batch_size=None "
                "(single samples). Build it with a batch_size."
            )
        if not isinstance(X.sampler, SequentialSampler) or (
            type(X.batch_sampler).__name__ != "BatchSampler"
        ):
            raise ValueError(
                f"{owner} reads a DataLoader in order (labels and shards are matched to the "
                f"samples by position); got one with {type(X.sampler).__name__}. Build it with "
                "shuffle=False and no custom sampler."
            )
    data = _dataset_of(X)
    try:
        n = len(data)
    except TypeError:
        raise TypeError(
            f"{owner} reads a torch Dataset by index and needs its length; got "
            f"{type(data).__name__} without __len__ (an IterableDataset?). Use a map-style "
            "Dataset, or a np.memmap of the inputs."
        ) from None
    if n == 0:
        raise ValueError("Found 0 samples in the model inputs; at least 1 is required.")
    if isinstance(X, DataLoader):  # the first sample only, through the loader's collate
        first = _inputs_of(X.collate_fn([data[0]]))
    else:
        first = next(_raw_batches(X, batch_size=1, batches=range(1)))[2]
    adapter.check_input(first)
    return X


def first_inputs(adapter: Any, X: Any, batch_size: int) -> Any:
    """The model inputs of the first batch of ``X`` (validated if streamed)."""
    xb = next(_raw_batches(X, batch_size, range(1)))[2]
    return adapter.check_input(xb) if is_streamed(X) else xb


def _collate(items: list) -> Any:
    from torch.utils.data import default_collate

    return default_collate([_inputs_of(item) for item in items])


def _raw_batches(X: Any, batch_size: int, batches: range) -> Iterator[tuple[int, int, Any]]:
    """``(index, start, inputs)`` of the batches in ``batches`` (not validated)."""
    Dataset, DataLoader = _torch_data()
    if isinstance(X, DataLoader):
        shard = _shard_loader(X, batches) if batches.start > 0 else None
        if shard is not None:  # this rank's samples only, in the loader's own batches
            start = batches.start * X.batch_size  # the batches before it are full
            for offset, batch in enumerate(shard):
                inputs = _inputs_of(batch)
                yield batches.start + offset, start, inputs
                start += len(inputs)
            return
        # The loader's own batches from the first: where it cannot be rebuilt over this
        # rank's samples (see _shard_loader), the batches before the shard are read and
        # skipped.
        start = 0
        for index, batch in enumerate(itertools.islice(X, batches.stop)):
            inputs = _inputs_of(batch)
            if index >= batches.start:
                yield index, start, inputs
            start += len(inputs)
        return
    n = n_samples(X)
    for index in batches:
        lo, hi = index * batch_size, min(n, (index + 1) * batch_size)
        if isinstance(X, Dataset):
            yield index, lo, _collate([X[i] for i in range(lo, hi)])
        elif isinstance(X, np.memmap):
            yield index, lo, np.array(X[lo:hi])  # reads (copies) this slice only
        else:
            yield index, lo, X[lo:hi]


def _shard_loader(loader: Any, batches: range) -> Any:
    """A DataLoader like ``loader`` over the samples of ``batches`` only, or ``None``.

    Built for a plain ``DataLoader`` over a map-style Dataset read in order (a
    ``SequentialSampler`` in a ``BatchSampler``, what :func:`check_data` accepts): a
    ``Subset`` of the batches' sample range with the same batch size, collate function,
    workers and options, so the batches are the ones the whole loader yields there. ``None``
    (the caller reads and skips the batches before the shard) for a DataLoader subclass, an
    iterable dataset or another sampler, whose batches cannot be rebuilt from the samples.
    """
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        IterableDataset,
        SequentialSampler,
        Subset,
    )

    if (type(loader) is not DataLoader or isinstance(loader.dataset, IterableDataset)
            or type(loader.sampler) is not SequentialSampler
            or type(loader.batch_sampler) is not BatchSampler or not loader.batch_size):
        return None
    size = loader.batch_size
    lo, hi = batches.start * size, min(len(loader.dataset), batches.stop * size)
    options = {}
    if loader.num_workers > 0:
        options.update(prefetch_factor=loader.prefetch_factor,
                       persistent_workers=loader.persistent_workers)
    return DataLoader(
        Subset(loader.dataset, range(lo, hi)), batch_size=size, shuffle=False,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        pin_memory_device=loader.pin_memory_device, in_order=loader.in_order, **options,
    )


def _n_batches(X: Any, batch_size: int) -> int:
    Dataset, DataLoader = _torch_data()
    if isinstance(X, DataLoader):
        return len(X)
    return -(-n_samples(X) // batch_size)


def batch_generator(seed: int | None, index: int) -> torch.Generator | None:
    """A CPU generator for batch ``index``, derived from ``seed`` (``None``: no generator).

    Random draws (the stochastic sources) depend on the seed and the batch, not on which
    process reads the batch or in which order, so a sharded run draws what one process draws.
    """
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


# -- the stream ---------------------------------------------------------------------------------
@dataclass
class Batch:
    """One batch of a pass: where it sits in the data and its activations.

    Attributes
    ----------
    index : int
        Batch number in the whole data (the same on every rank).
    start : int
        Index of its first sample in the whole data.
    size : int
        Samples in the batch.
    acts : dict of str to Tensor of shape (size, pos, 1 + d_l)
        Activations of the requested layers (finite), constant first.
    z : dict of str to Tensor of shape (size, pos, n_l)
        Their projections ``f @ C.T`` for the layers given a projection.
    """

    index: int
    start: int
    size: int
    acts: dict
    z: dict


class ActivationStream:
    """Passes over model inputs that yield checked (and projected) node-layer activations.

    Parameters
    ----------
    adapter : ModelAdapter
    X : array-like, Tensor, np.memmap, torch Dataset or DataLoader
        Validated model inputs (:func:`check_data`).
    batch_size : int
        Samples per batch (a DataLoader keeps its own batches).
    dtype, device
        Of the forward passes.
    keep : sequence of str, default=()
        Layers whose activations later passes will ask for again: the first pass computes
        them all and, if they fit :data:`ACTIVATION_CACHE_BYTES`, keeps them for later passes.
    shard : bool, default=True
        Under ``torch.distributed``, read only this rank's batches (for sums that are then
        all-reduced). ``False``: every rank reads every batch (for per-sample outputs).
    verbose : bool, default=False
        Progress bars.
    """

    def __init__(self, adapter: Any, X: Any, *, batch_size: int, dtype: torch.dtype,
                 device: torch.device, keep: Sequence[str] = (), shard: bool = True,
                 verbose: bool = False) -> None:
        self.adapter = adapter
        self.X = X
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.device = device
        self.keep = tuple(keep)
        self.verbose = verbose
        self.n_samples = n_samples(X)
        self.n_batches = _n_batches(X, self.batch_size)
        self.shard = batch_shard(self.n_batches) if shard else range(self.n_batches)
        self._sharded = bool(shard)
        self._cache: list[Batch] | None = None
        self._cache_failed = False
        self._validate = is_streamed(X)

    @property
    def rank_and_world(self) -> tuple[int, int]:
        return rank_and_world()

    def inputs(self) -> Iterator[tuple[int, int, Any]]:
        """``(index, start, inputs)`` of this rank's batches, validated if streamed."""
        for index, start, xb in _raw_batches(self.X, self.batch_size, self.shard):
            if self._validate:
                xb = self.adapter.check_input(xb)
            yield index, start, xb

    def batches(self, layers: Sequence[str], *,
                projections: Mapping[str, Tensor] | None = None,
                desc: str | None = None) -> Iterator[Batch]:
        """One pass over this rank's batches with the activations of ``layers``.

        ``projections`` maps some of the layers to a matrix ``C``; their ``Batch.z`` is
        ``f @ C.T``. Activations are checked finite (the error names the batch).
        """
        layers = tuple(layers)
        projections = dict(projections or {})
        if self._sharded:  # a pass over this rank's shard: its sums are reduced next
            open_pass()
        if self._cache is not None and set(layers) <= set(self.keep):
            iterator = iter(self._cache)
        else:
            iterator = self._computed(layers)
        bar = iter(tqdm(iterator, total=len(self.shard), desc=desc, leave=False,
                        disable=not self.verbose))
        while True:
            try:  # reading, validating, computing and projecting this rank's next batch
                batch = next(bar)
                acts = {layer: batch.acts[layer] for layer in layers}
                z = {layer: acts[layer] @ C.T for layer, C in projections.items()}
            except StopIteration:  # read to the end: nothing of this pass can fail here now
                close_pass()
                return
            except Exception as exc:  # the other ranks must not wait for this one
                if self._sharded:
                    report_failure(exc)
                raise
            yield Batch(batch.index, batch.start, batch.size, acts, z)

    def _computed(self, layers: tuple[str, ...]) -> Iterator[Batch]:
        keeping = (not self._cache_failed and bool(self.keep)
                   and set(layers) <= set(self.keep) and ACTIVATION_CACHE_BYTES > 0)
        compute = self.keep if keeping else layers
        kept: list[Batch] = []
        # Samples this rank reads (a DataLoader's batches: estimated from the first).
        n_local = sum(min(self.n_samples, (i + 1) * self.batch_size) - i * self.batch_size
                      for i in self.shard)
        for index, start, xb in self.inputs():
            acts = self.adapter.activations(xb, compute, dtype=self.dtype, device=self.device)
            for layer in compute:
                check_finite(acts[layer], f"Activations of layer {layer!r}", start)
            batch = Batch(index, start, int(acts[compute[0]].shape[0]), acts, {})
            if keeping:
                if not kept:  # decide on the first batch whether the whole shard fits
                    per_sample = sum(a[0].numel() * a.element_size() for a in acts.values())
                    if isinstance(self.X, _torch_data()[1]):
                        n_local = batch.size * len(self.shard)
                    expected = per_sample * n_local
                    if expected > ACTIVATION_CACHE_BYTES:
                        keeping, self._cache_failed = False, True
                if keeping:
                    kept.append(batch)
            yield batch
        if keeping:
            self._cache = kept

    # -- sums across ranks ----------------------------------------------------------------
    @staticmethod
    def reduce_sum(*tensors: Tensor) -> tuple[Tensor, ...]:
        """Sum over ranks (identity in one process)."""
        return all_reduce_sum(*tensors)

    @staticmethod
    def reduce_count(count: int | float) -> float:
        """A scalar count or sum, summed over ranks (identity in one process)."""
        (t,) = all_reduce_sum(torch.tensor(float(count), dtype=torch.float64))
        return float(t)

    @staticmethod
    def reduce_moments(acc: MomentAccumulator) -> MomentAccumulator:
        """Merge the ranks' moment accumulators (identity in one process)."""
        return all_reduce_moments(acc)


# -- "is this the graph I was fitted on?" -------------------------------------------------------
def _same_arrays(a, b) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b)
    )


def check_same_graph(current: Sequence[np.ndarray] | None, fitted: Sequence[np.ndarray] | None,
                     *, what: str, owner: str, hint: str = "refit.") -> None:
    """Raise if a graph's ``what`` (bases or edges) differ from those ``owner`` was fitted on.

    ``transform`` of a fitted step attaches its results to a graph; they belong to the graph
    it was fitted on (same bases, same edges).
    """
    if not _same_arrays(current, fitted):
        raise ValueError(
            f"This graph's {what} differ from the ones {owner} was fitted on; {hint}"
        )

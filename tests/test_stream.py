"""The one streaming path: data kinds, per-batch validation, the activation cache, sharding.

Arrays, memory-mapped arrays, torch Datasets and DataLoaders must give the same batches and
the same graph; streamed data is validated batch by batch and kept by reference; the cache
reuses activations across passes without changing results; the shards of several ranks
cover every batch once; stochastic sources depend on the batch, not on the process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import sklearn_lib._distributed as distributed
import sklearn_lib._stream as stream_module
from conftest import gaussian_data, model_labels, random_mlp
from sklearn_lib import (
    EdgeAblationSearch,
    IGEdgeScorer,
    LocalInteractionBasis,
)
from sklearn_lib._stream import (
    ActivationStream,
    batch_generator,
    check_data,
    check_same_graph,
    first_inputs,
    n_samples,
)
from sklearn_lib.adapters import MLPAdapter

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))


class ArrayDataset(Dataset):
    """Items are NumPy rows (or ``(row, label)`` pairs), as a user's Dataset might return."""

    def __init__(self, X, y=None):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] if self.y is None else (self.X[i], self.y[i])


def as_memmap(X: np.ndarray, tmp_path) -> np.memmap:
    mm = np.memmap(tmp_path / "inputs.dat", dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    return np.memmap(tmp_path / "inputs.dat", dtype=X.dtype, mode="r", shape=X.shape)


@pytest.fixture
def problem():
    model = random_mlp([4, 6, 5, 3], seed=1)
    X = gaussian_data(150, 4, seed=1)
    return MLPAdapter(model), X, model_labels(model, X)


def kinds(X, tmp_path):
    y = np.zeros(len(X), dtype=np.int64)
    return {
        "array": X,
        "tensor": torch.as_tensor(X),
        "memmap": as_memmap(X, tmp_path),
        "dataset": ArrayDataset(X),
        "pairs": ArrayDataset(X, y),
        "tensordataset": TensorDataset(torch.as_tensor(X), torch.as_tensor(y)),
        "loader": DataLoader(ArrayDataset(X), batch_size=40),
    }


def test_every_kind_of_data_gives_the_same_activations(problem, tmp_path):
    adapter, X, _ = problem
    expected = adapter.activations(X, ["1", "3"], **F64)
    for name, data in kinds(X, tmp_path).items():
        data = check_data(adapter, data)
        assert n_samples(data) == len(X)
        s = ActivationStream(adapter, data, batch_size=40, **F64)
        C = torch.eye(7, dtype=torch.float64)[:3]
        got = list(s.batches(["1", "3"], projections={"1": C}))
        assert [b.start for b in got] == [0, 40, 80, 120], name
        assert [b.index for b in got] == [0, 1, 2, 3], name
        for layer in ("1", "3"):
            torch.testing.assert_close(torch.cat([b.acts[layer] for b in got]),
                                       expected[layer], rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b.z["1"] for b in got]),
                                   expected["1"] @ C.T, rtol=0, atol=0)


def test_streamed_data_is_kept_by_reference(problem, tmp_path):
    adapter, X, _ = problem
    for name in ("memmap", "dataset", "loader"):
        data = kinds(X, tmp_path)[name]
        assert check_data(adapter, data) is data


def test_edges_on_streamed_data_equal_arrays(problem, tmp_path):
    adapter, X, _ = problem
    graph = LocalInteractionBasis(adapter, batch_size=64).fit_transform(X)
    expected = IGEdgeScorer(batch_size=64).fit(graph).edges_
    for name, data in kinds(X, tmp_path).items():
        got = IGEdgeScorer(batch_size=64).fit(graph.replace(X=check_data(adapter, data)))
        for E, E1 in zip(got.edges_, expected):
            np.testing.assert_allclose(E, E1, rtol=1e-12, atol=0, err_msg=name)
        assert got.n_samples_ == len(X)


def test_streamed_batches_are_validated_one_by_one(problem, tmp_path):
    adapter, X, _ = problem
    bad = X.copy()
    bad[100, 2] = np.nan
    for data in (ArrayDataset(bad), as_memmap(bad, tmp_path)):
        data = check_data(adapter, data)  # the first batch is fine
        s = ActivationStream(adapter, data, batch_size=40, **F64)
        with pytest.raises(ValueError, match="Model inputs contain NaN or inf"):
            list(s.batches(["1"]))
    wrong = ArrayDataset(gaussian_data(10, 3))
    with pytest.raises(ValueError, match=r"Model inputs must have shape \(n_samples, 4\)"):
        check_data(adapter, wrong)


def test_datasets_without_length_or_samples_are_refused(problem):
    adapter, X, _ = problem

    class Rows(IterableDataset):
        def __iter__(self):
            return iter(X)

    with pytest.raises(TypeError, match="needs its length; got Rows without __len__"):
        check_data(adapter, Rows(), "LocalInteractionBasis")
    with pytest.raises(ValueError, match="Found 0 samples in the model inputs"):
        check_data(adapter, ArrayDataset(X[:0]))
    shuffled = DataLoader(ArrayDataset(X), batch_size=10, shuffle=True)
    with pytest.raises(ValueError, match="reads a DataLoader in order .* got one with "
                                         "RandomSampler. Build it with shuffle=False"):
        check_data(adapter, shuffled, "IGEdgeScorer")
    with pytest.raises(ValueError, match="got one with batch_size=None"):
        check_data(adapter, DataLoader(ArrayDataset(X), batch_size=None))


def test_cache_reuses_activations_without_changing_results(problem, monkeypatch):
    adapter, X, _ = problem
    adapter.activations(X[:2], ["1"], **F64)  # the adapter's one-off first-batch check
    calls = []
    activations = adapter.activations

    def counting(Xb, layers, **kw):
        calls.append(tuple(layers))
        return activations(Xb, layers, **kw)

    monkeypatch.setattr(adapter, "activations", counting)
    s = ActivationStream(adapter, X, batch_size=64, keep=["input", "1"], **F64)
    first = [b.acts["1"] for b in s.batches(["1"])]
    n_first = len(calls)
    again = [b.acts["input"] for b in s.batches(["input"])]
    assert len(calls) == n_first == 3  # the second pass read the cache
    assert calls[0] == ("input", "1")
    torch.testing.assert_close(torch.cat(again), activations(X, ["input"], **F64)["input"])
    torch.testing.assert_close(torch.cat(first), activations(X, ["1"], **F64)["1"])
    list(s.batches(["3"]))  # not kept: computed
    assert len(calls) == 6

    # Over the budget: every pass recomputes, and LIB is unchanged.
    monkeypatch.setattr(stream_module, "ACTIVATION_CACHE_BYTES", 100)
    calls.clear()
    s = ActivationStream(adapter, X, batch_size=64, keep=["input", "1"], **F64)
    list(s.batches(["1"]))
    list(s.batches(["1"]))
    assert len(calls) == 6
    small = LocalInteractionBasis(adapter, batch_size=64).fit(X)
    monkeypatch.setattr(stream_module, "ACTIVATION_CACHE_BYTES", 2**30)
    large = LocalInteractionBasis(adapter, batch_size=64).fit(X)
    for a, b in zip(small.bases_, large.bases_):
        np.testing.assert_array_equal(a.C, b.C)


@settings(max_examples=30, deadline=None)
@given(n_batches=st.integers(0, 50), world=st.integers(1, 6))
def test_shards_cover_every_batch_once(n_batches, world):
    shards = []
    for rank in range(world):
        original = distributed.rank_and_world
        distributed.rank_and_world = lambda: (rank, world)  # noqa: B023
        try:
            shards.append(distributed.batch_shard(n_batches))
        finally:
            distributed.rank_and_world = original
    covered = [i for shard in shards for i in shard]
    assert covered == list(range(n_batches))  # contiguous, in rank order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_stream_reads_its_batches(problem, monkeypatch):
    adapter, X, _ = problem
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (1, 2))
    s = ActivationStream(adapter, X, batch_size=40, **F64)
    assert [b.start for b in s.batches(["1"])] == [80, 120]
    loader = DataLoader(ArrayDataset(X), batch_size=40)
    s = ActivationStream(adapter, loader, batch_size=7, **F64)
    assert [(b.index, b.start, b.size) for b in s.batches(["1"])] == [(2, 80, 40), (3, 120, 30)]
    s = ActivationStream(adapter, X, batch_size=40, shard=False, **F64)
    assert [b.start for b in s.batches(["1"])] == [0, 40, 80, 120]


def test_first_inputs(problem, tmp_path):
    adapter, X, _ = problem
    for name, data in kinds(X, tmp_path).items():
        first = np.asarray(first_inputs(adapter, data, 25))
        expected = X[:40] if name == "loader" else X[:25]  # a DataLoader keeps its batches
        np.testing.assert_array_equal(first, expected, err_msg=name)


def test_single_process_reductions_are_identities():
    t = torch.arange(4.0)
    (out,) = ActivationStream.reduce_sum(t)
    assert out is t
    assert ActivationStream.reduce_count(7) == 7.0


def test_batch_generator_depends_on_seed_and_batch_only():
    assert batch_generator(None, 3) is None
    draw = lambda g: torch.randint(0, 1000, (5,), generator=g)  # noqa: E731
    assert torch.equal(draw(batch_generator(1, 3)), draw(batch_generator(1, 3)))
    assert not torch.equal(draw(batch_generator(1, 3)), draw(batch_generator(1, 4)))
    assert not torch.equal(draw(batch_generator(1, 3)), draw(batch_generator(2, 3)))


def test_check_same_graph():
    a = [np.eye(2), np.ones(3)]
    check_same_graph(a, [np.eye(2), np.ones(3)], what="edges", owner="X")
    with pytest.raises(ValueError, match="This graph's edges differ from the ones Step was "
                                         "fitted on; refit."):
        check_same_graph(a, [np.eye(2), np.zeros(3)], what="edges", owner="Step")
    with pytest.raises(ValueError, match="bases differ from the ones Step was fitted on; go"):
        check_same_graph(a, None, what="bases", owner="Step", hint="go")


def test_pipeline_on_streamed_data_equals_arrays(problem, tmp_path):
    """LIB, PCA, edges and the ablation search on a memmap, Dataset or DataLoader: the same
    graph as on the array, and the graph keeps the data object itself."""
    from sklearn_lib import PCAWhitener

    adapter, X, y = problem
    X_eval, y_eval = X[:90], y[:90]

    def run(data, data_eval, basis):
        graph = basis.fit_transform(data)
        graph = IGEdgeScorer(batch_size=40).fit_transform(graph)
        search = EdgeAblationSearch(batch_size=40).fit(graph, X_eval=data_eval, y_eval=y_eval)
        return graph, search

    for make in (lambda: LocalInteractionBasis(adapter, batch_size=40),
                 lambda: PCAWhitener(adapter, batch_size=40)):
        expected, expected_search = run(X, X_eval, make())
        for name, data in kinds(X, tmp_path).items():
            if name in ("tensor", "array"):
                continue
            data_eval = ArrayDataset(X_eval) if name != "memmap" else X_eval
            graph, search = run(data, data_eval, make())
            assert graph.X is data, name
            for a, b in zip(graph.bases, expected.bases):
                np.testing.assert_allclose(a.C, b.C, rtol=1e-12, atol=1e-12, err_msg=name)
            for E, E1 in zip(graph.edges, expected.edges):
                np.testing.assert_allclose(E, E1, rtol=1e-12, atol=1e-14, err_msg=name)
            assert search.n_edges_needed_ == expected_search.n_edges_needed_, name
            assert search.n_samples_eval_ == len(X_eval)
            np.testing.assert_allclose(graph.features("1"), expected.features("1"), rtol=1e-12,
                                       atol=1e-12)

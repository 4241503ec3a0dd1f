"""The full pipeline under ``torchrun --nproc-per-node 2`` (gloo, CPU) equals one process.

The test launches this file as a ``torch.distributed`` worker on two ranks. Each rank fits
LIB, IG edges, the ablation search and Leiden on its shard of the data (the streams shard the
batches and all-reduce the sums) and writes what it got; the test compares both ranks with a
single-process run: equal bases and edges (to 1e-12 relative, float64), equal ablation counts
and communities. The worker also counts the model inputs each rank reads, to show the data
really were split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
N_SAMPLES, BATCH = 300, 32  # 10 batches: ranks read 5 each


def _problem():
    from sklearn_lib.adapters import MLPAdapter

    gen = torch.Generator().manual_seed(3)
    layers = []
    sizes = [5, 12, 10, 4]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(1.5 * torch.randn(b, a, generator=gen, dtype=torch.float64) / a**0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=torch.float64))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).double().eval()
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N_SAMPLES, sizes[0])) * np.linspace(1.5, 0.5, sizes[0])
    with torch.no_grad():
        y = model(torch.as_tensor(X)).argmax(-1).numpy()
    return MLPAdapter(model), X, y


def run_pipeline(adapter, X, y) -> dict:
    """LIB (with stochastic sources, to check they are drawn the same), edges, ablation, Leiden."""
    from sklearn_lib import (
        EdgeAblationSearch,
        IGEdgeScorer,
        LeidenModularity,
        LocalInteractionBasis,
    )

    graph = LocalInteractionBasis(adapter, batch_size=BATCH, n_stochastic_sources=2,
                                  random_state=0).fit_transform(X)
    graph = IGEdgeScorer(batch_size=BATCH, integration="gauss-legendre",
                         n_steps=2).fit_transform(graph)
    graph = EdgeAblationSearch(batch_size=BATCH, tolerance=0.02).fit_transform(graph, y)
    graph = LeidenModularity(random_state=0).fit_transform(graph)
    return {
        "C": [b.C.tolist() for b in graph.bases],
        "edges": [E.tolist() for E in graph.edges],
        "needed": [r.n_edges_needed for r in graph.ablation],
        "probes": [list(map(list, r.probes)) for r in graph.ablation],
        "communities": [c.tolist() for c in graph.communities],
        "modularity": graph.modularity,
    }


def run_counting(X=None) -> dict:
    """:func:`run_pipeline` on the problem (or other inputs ``X``), counting the inputs read."""
    adapter, X_problem, y = _problem()
    X = X_problem if X is None else X
    rows = []
    activations = adapter.activations

    def counting(Xb, layers, **kw):
        rows.append(len(Xb))
        return activations(Xb, layers, **kw)

    adapter.activations = counting
    result = run_pipeline(adapter, X, y)
    result["rows_total"] = sum(rows)
    return result


class CountingDataset(torch.utils.data.Dataset):
    """Rows of ``X`` by index; records every index read."""

    def __init__(self, X):
        self.X, self.read = X, []

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.X[i]


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    result = run_counting()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    # The same inputs memory-mapped: read batch by batch, sharded the same way.
    mapped = run_counting(np.load(Path(out_dir, "X.npy"), mmap_mode="r"))
    Path(out_dir, f"rank{rank}_memmap.json").write_text(json.dumps(mapped))
    # A DataLoader over a map-style Dataset: each rank reads its own batches only.
    data = CountingDataset(_problem()[1])
    loaded = run_counting(torch.utils.data.DataLoader(data, batch_size=BATCH))
    loaded["read"] = sorted(set(data.read))
    Path(out_dir, f"rank{rank}_loader.json").write_text(json.dumps(loaded))
    torch.distributed.destroy_process_group()


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def test_two_ranks_equal_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    np.save(tmp_path / "X.npy", _problem()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}{kind}.json").read_text())
             for r in range(2) for kind in ("", "_memmap", "_loader")]

    single = run_counting()
    for got in ranks:
        for C, C1 in zip(got["C"], single["C"]):
            assert _rel(C, C1) < 1e-12
        for E, E1 in zip(got["edges"], single["edges"]):
            assert _rel(E, E1) < 1e-12
        assert got["needed"] == single["needed"]
        assert got["probes"] == single["probes"]
        assert got["communities"] == single["communities"]
        assert got["modularity"] == pytest.approx(single["modularity"], rel=1e-12)
    # The ranks split the data: each read about half the inputs of one process (plus the
    # adapter's one-off check and the ablation's label check on a first batch).
    for got in ranks:
        assert got["rows_total"] < 0.5 * single["rows_total"] + 4 * BATCH
    # Through the DataLoader, rank 1 reads its own shard (batches 5-9) and, of rank 0's, only
    # the first batch, which every rank reads once for its checks (inputs and labels).
    read = json.loads((tmp_path / "rank1_loader.json").read_text())["read"]
    assert set(read) == set(range(BATCH)) | set(range(5 * BATCH, N_SAMPLES))


def test_dataloader_shard_reads_only_its_samples(monkeypatch):
    """Rank 1 of 2 (in one process): the stream reads the items of its batches and no other,
    in the loader's batches; a DataLoader subclass falls back to reading and skipping."""
    from torch.utils.data import DataLoader

    from sklearn_lib import _distributed
    from sklearn_lib._stream import ActivationStream

    adapter, X, _ = _problem()
    F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
    whole = [b.acts["1"] for b in ActivationStream(
        adapter, DataLoader(CountingDataset(X), batch_size=BATCH), batch_size=7, **F64
    ).batches(["1"])]
    monkeypatch.setattr(_distributed, "rank_and_world", lambda: (1, 2))

    class Loader(DataLoader):
        pass

    for cls, expected_read in ((DataLoader, range(5 * BATCH, N_SAMPLES)),
                               (Loader, range(N_SAMPLES))):
        data = CountingDataset(X)
        stream = ActivationStream(adapter, cls(data, batch_size=BATCH), batch_size=7, **F64)
        got = list(stream.batches(["1"]))
        assert sorted(data.read) == list(expected_read)
        assert [(b.index, b.start, b.size) for b in got] == [
            (i, i * BATCH, min(BATCH, N_SAMPLES - i * BATCH)) for i in range(5, 10)]
        for b in got:
            torch.testing.assert_close(b.acts["1"], whole[b.index], rtol=0, atol=0)


# -- a rank that raises ---------------------------------------------------------------------
def _failing_worker(out_dir: str) -> None:
    """Rank 1 raises inside a pass, twice: on bad data in its shard (every rank catches the
    error, records it and fits clean data again, in step), then in the estimator's own
    per-batch step (uncaught: reported as the process ends)."""
    from sklearn_lib import LocalInteractionBasis

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    adapter, X, _ = _problem()
    bad = np.array(X)
    bad[N_SAMPLES - 3] = np.nan  # in the last batch: rank 1's shard only
    path = Path(out_dir, f"bad{rank}.npy")
    np.save(path, bad)
    try:
        LocalInteractionBasis(adapter, batch_size=BATCH).fit(np.load(path, mmap_mode="r"))
    except Exception as exc:
        Path(out_dir, f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    lib = LocalInteractionBasis(adapter, batch_size=BATCH).fit(X)  # the ranks are in step
    Path(out_dir, f"clean{rank}.json").write_text(json.dumps([b.C.tolist() for b in lib.bases_]))
    if rank == 1:
        import sklearn_lib._interaction as interaction

        def broken(*args, **kwargs):
            raise RuntimeError("injected failure in rank 1's step")

        interaction.sample_sources = broken
    LocalInteractionBasis(adapter, batch_size=BATCH, n_stochastic_sources=2,
                          random_state=0).fit(X)


def test_a_rank_that_raises_stops_every_rank(tmp_path):
    """NaN inputs in rank 1's shard: rank 1 raises the input error, rank 0 a RankFailedError
    naming rank 1 and its error (no rank waits), and both can go on fitting in step. Then an
    uncaught error in the estimator's per-batch step on rank 1 is reported as that process
    ends: rank 0 raises RankFailedError naming it instead of waiting, and both exit non-zero."""
    from sklearn_lib import LocalInteractionBasis

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(Path(__file__).resolve()), str(tmp_path), "fail"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    errors = [(tmp_path / f"error{r}.txt").read_text() for r in range(2)]
    assert errors[1].startswith("ValueError: Model inputs contain NaN"), errors[1]
    assert errors[0].startswith("RankFailedError: Rank 1 of 2 raised"), errors[0]
    assert "rank 1: ValueError: Model inputs contain NaN" in errors[0]
    adapter, X, _ = _problem()
    single = LocalInteractionBasis(adapter, batch_size=BATCH).fit(X)
    for r in range(2):
        got = json.loads((tmp_path / f"clean{r}.json").read_text())
        for C, b in zip(got, single.bases_):
            assert _rel(C, b.C) < 1e-12
    assert "RuntimeError: injected failure in rank 1's step" in proc.stderr
    assert ("RankFailedError: Rank 1 of 2 raised during a data-parallel pass (rank 1: "
            "RuntimeError: injected failure in rank 1's step)") in proc.stderr


if __name__ == "__main__":
    if len(sys.argv) > 2:
        _failing_worker(sys.argv[1])
    else:
        _worker(sys.argv[1])

"""``device="cuda"`` end to end: the same bases, edges and ablation counts as on CPU.

Marked ``gpu`` (deselected by default; run with ``-m gpu``) and skipped without CUDA.
float64 on the GPU must match the CPU to round-off; float32 must stay close (edges to 1e-3, ablation
counts within a few edges).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import gaussian_data, model_labels, random_mlp
from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    LocalInteractionBasis,
)
from sklearn_lib._segments import CompositeSegment, make_composite
from sklearn_lib._stream import ActivationStream
from sklearn_lib.adapters import MLPAdapter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def pipeline(device: str, dtype: str, basis=LocalInteractionBasis):
    model = random_mlp([6, 10, 8, 3], nn.ReLU, seed=2)
    X = gaussian_data(300, 6, seed=2)
    y = model_labels(model, X)
    adapter = MLPAdapter(model)
    kw = dict(batch_size=64, dtype=dtype, device=device)
    graph = basis(adapter, n_stochastic_sources=2, random_state=0, **kw).fit_transform(X)
    graph = IGEdgeScorer(integration="gauss-legendre", n_steps=2, **kw).fit_transform(graph)
    search = EdgeAblationSearch(**kw).fit(graph, y)
    return graph, search


@pytest.mark.parametrize("basis", [LocalInteractionBasis, GlobalInteractionBasis])
def test_cuda_float64_equals_cpu(basis):
    cpu, cpu_search = pipeline("cpu", "float64", basis)
    gpu, gpu_search = pipeline("cuda", "float64", basis)
    for a, b in zip(gpu.bases, cpu.bases):
        np.testing.assert_allclose(a.C, b.C, rtol=1e-9, atol=1e-9 * np.abs(b.C).max())
    for E, E1 in zip(gpu.edges, cpu.edges):
        np.testing.assert_allclose(E, E1, rtol=1e-9, atol=1e-12)
    assert gpu_search.n_edges_needed_ == cpu_search.n_edges_needed_


def test_cuda_float32_close_to_cpu():
    cpu, cpu_search = pipeline("cpu", "float64")
    gpu, gpu_search = pipeline("cuda", "float32")
    for E, E1 in zip(gpu.edges, cpu.edges):
        np.testing.assert_allclose(E, E1, rtol=1e-3, atol=1e-4 * E1.max())
    # Counts may move where a borderline prediction flips in float32: compare loosely.
    for key, n in cpu_search.n_edges_needed_.items():
        assert abs(gpu_search.n_edges_needed_[key] - n) <= max(2, n // 10)


def test_cuda_closed_forms_equal_generic():
    model = random_mlp([4, 6, 3], nn.GELU, seed=3)
    adapter = MLPAdapter(model)
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    in_map = torch.randn(5, 5, generator=gen, dtype=torch.float64).to(dev)
    out_map = torch.randn(4, 7, generator=gen, dtype=torch.float64).to(dev)
    fast = make_composite(adapter, ["input", "1"], in_map, out_map, dtype=torch.float64,
                          device=dev)
    generic = CompositeSegment(adapter.segment("input", dtype=torch.float64, device=dev),
                               in_map, out_map)
    z = torch.randn(9, 1, 5, generator=gen, dtype=torch.float64).to(dev)
    assert fast.jacobian(z).device.type == "cuda"
    torch.testing.assert_close(fast.jacobian(z), generic.jacobian(z), rtol=1e-12, atol=1e-12)


def test_cuda_stream_keeps_activations_on_the_device():
    model = random_mlp([4, 6, 3], nn.ReLU, seed=3)
    X = gaussian_data(50, 4)
    s = ActivationStream(MLPAdapter(model), X, batch_size=16, dtype=torch.float32,
                         device=torch.device("cuda"), keep=["1"])
    for _ in range(2):  # computed, then from the cache
        batches = list(s.batches(["1"]))
        assert all(b.acts["1"].device.type == "cuda" for b in batches)

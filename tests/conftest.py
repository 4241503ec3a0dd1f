"""Shared fixtures: seeds, offline hub, single-threaded torch, tiny known-weight models.

Everything here is small (widths 3-12, a few hundred samples, float64) so that the default suite
runs in seconds on two cores.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

from sklearn_lib.adapters import MLPAdapter

torch.set_num_threads(1)

# Property tests draw the same examples on every run (derandomize), so a failure reproduces
# from the test name alone. CI (the CI variable set, as CI services do) adds no example
# database and prints the failing example's reproduction blob.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same torch and numpy global seeds."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def random_mlp(
    sizes, activation=nn.ReLU, *, seed=0, bias=True, scale=1.5, bias_scale=0.1
) -> nn.Sequential:
    """``Linear -> activation`` per hidden layer, then a final ``Linear``; float64, seeded."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, bias=bias).double()
        with torch.no_grad():
            lin.weight.copy_(scale * torch.randn(b, a, generator=gen, dtype=torch.float64) / a**0.5)
            if bias:
                lin.bias.copy_(bias_scale * torch.randn(b, generator=gen, dtype=torch.float64))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double().eval()


def gaussian_data(n, d, *, seed=0, scale=None) -> np.ndarray:
    """Anisotropic Gaussian inputs (distinct variances keep eigenvalues non-degenerate)."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(1.5, 0.5, d) if scale is None else np.asarray(scale)
    return rng.normal(size=(n, d)) * scale


def model_labels(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """The model's own argmax predictions (so the unablated accuracy is 1)."""
    with torch.no_grad():
        return model(torch.as_tensor(X, dtype=torch.float64)).argmax(-1).numpy()


@pytest.fixture
def relu_mlp() -> nn.Sequential:
    """4 -> 6 -> 5 -> 3 ReLU MLP with biases (node layers input, "1", "3", "4")."""
    return random_mlp([4, 6, 5, 3], nn.ReLU, seed=1)


@pytest.fixture
def relu_data() -> np.ndarray:
    return gaussian_data(200, 4, seed=1)


@pytest.fixture
def relu_adapter(relu_mlp) -> MLPAdapter:
    return MLPAdapter(relu_mlp)

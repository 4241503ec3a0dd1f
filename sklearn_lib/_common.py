"""Shared helpers: dtype/device resolution, batching, checks on adapters and activations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sklearn_lib.adapters import ModelAdapter

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'float32' or 'float64'. Got {dtype!r} instead.")


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available; use device='cpu'."
        )
    return device


def check_adapter(adapter: Any, owner: str) -> ModelAdapter:
    if adapter is None:
        raise ValueError(
            f"{owner} needs a model adapter: pass adapter=MLPAdapter(model) (or another "
            "sklearn_lib.adapters adapter)."
        )
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(
            f"The adapter of {owner} must implement sklearn_lib.adapters.ModelAdapter "
            "(node_layers, check_input, activations, segment, forward_from, fixed_features); "
            f"got {type(adapter).__name__}. Wrap an nn.Sequential with MLPAdapter."
        )
    return adapter


def check_layers(adapter: ModelAdapter, layers: Any, owner: str) -> tuple[str, ...]:
    """The node layers an estimator works on: all of the adapter's, or a checked subset."""
    available = tuple(adapter.node_layers)
    if layers is None:
        return available
    layers = tuple(str(layer) for layer in layers)
    unknown = [layer for layer in layers if layer not in available]
    if unknown:
        raise ValueError(
            f"Unknown layer names {unknown} for {owner}; the adapter's node layers are "
            f"{list(available)}."
        )
    order = [available.index(layer) for layer in layers]
    if len(layers) < 2 or order != sorted(set(order)):
        raise ValueError(
            f"The layers of {owner} must be at least two distinct node layers in forward "
            f"order; got {list(layers)}."
        )
    if any(b != a + 1 for a, b in zip(order, order[1:])):
        raise ValueError(
            f"The layers of {owner} must be consecutive node layers of the adapter (segments "
            f"join adjacent node layers); got {list(layers)} of {list(available)}. Choose the "
            "node layers when building the adapter instead."
        )
    return layers


def n_samples(X: Any) -> int:
    return int(X.shape[0])


def iter_batches(X: Any, batch_size: int) -> Iterator[tuple[int, Any]]:
    for start in range(0, n_samples(X), batch_size):
        yield start, X[start : start + batch_size]


def check_finite(t: Tensor, what: str, start: int) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{what} contain NaN or inf (batch starting at sample {start}). Check the model "
            "inputs and weights, or compute in dtype='float64'."
        )


def torch_generator(random_state) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a scikit-learn ``random_state``."""
    from sklearn.utils import check_random_state

    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    return torch.Generator().manual_seed(seed)


def same_arrays(a, b) -> bool:
    """Whether two sequences of arrays have the same length, shapes and values."""
    return a is not None and b is not None and len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b)
    )

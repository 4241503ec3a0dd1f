"""Shared helpers: dtype/device resolution, checks on adapters, inputs and activations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # imported where used: sklearn_lib.adapters imports this module
    from sklearn_lib.adapters._protocol import ModelAdapter

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'float32' or 'float64'. Got {dtype!r} instead.")


def resolve_device(device: Any, owner: str | None = None) -> torch.device:
    """The ``device`` parameter as a usable ``torch.device``; a clear ``ValueError`` otherwise.

    Accepts a ``torch.device`` or a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``...);
    ``owner`` names the estimator in the message. Checked by allocating an empty tensor there,
    so a device this machine lacks fails at fit time, not deep inside a forward pass.
    """
    where = f" of {owner}" if owner else ""
    given = device
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            pass
    if not isinstance(device, torch.device):
        raise ValueError(
            f"The 'device' parameter{where} must be a torch.device or a device string such as "
            f"'cpu', 'cuda' or 'cuda:0'. Got {given!r} instead."
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available; use device='cpu'."
        )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError, AssertionError) as exc:
        raise ValueError(
            f"device={str(device)!r}{where} cannot be used on this machine "
            f"({str(exc).splitlines()[0][:120]}); use device='cpu'."
        ) from None
    return device


def check_array_input(X: Any, owner: str) -> Any:
    """Screen inputs before an adapter (or ``validate_data``) sees them.

    Sparse matrices and complex numbers are rejected with the fix in the message; NumPy arrays
    with negative strides or that are read-only are copied (torch cannot wrap the first and
    warns on the second). Other inputs pass through unchanged.
    """
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(
            f"{owner} does not accept sparse matrices (got {type(X).__name__}); pass a dense "
            "array instead, e.g. X.toarray()."
        )
    if isinstance(X, Tensor):
        if X.is_complex():
            raise ValueError(
                f"Complex data not supported by {owner} (got a {X.dtype} tensor); pass the real "
                "part (X.real), or real and imaginary parts as separate features."
            )
        return X
    if not isinstance(X, np.ndarray):
        if hasattr(X, "__array__") or isinstance(X, (list, tuple)):
            try:
                X = np.asarray(X)
            except (ValueError, TypeError):
                return X  # ragged or odd inputs: the adapter's own check names them
        else:
            return X
    if np.iscomplexobj(X):
        raise ValueError(
            f"Complex data not supported by {owner} (got dtype {X.dtype}); pass the real part "
            "(X.real), or real and imaginary parts as separate features."
        )
    if not X.flags.writeable or any(stride < 0 for stride in X.strides):
        X = np.array(X, copy=True, order="C")
    return X


def check_adapter(adapter: Any, owner: str) -> ModelAdapter:
    if adapter is None:
        raise ValueError(
            f"{owner} needs a model adapter: pass adapter=MLPAdapter(model) (or another "
            "sklearn_lib.adapters adapter)."
        )
    from sklearn_lib.adapters._protocol import ModelAdapter

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

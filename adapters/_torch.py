"""Adapter for torch MLPs: an ``nn.Sequential`` of ``Linear`` layers and elementwise activations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals
from torch.nn.utils import parametrize

from sklearn_lib.adapters._check import verify_forward

__all__ = ["MLPAdapter"]

#: Rows of the first batch that :meth:`MLPAdapter.activations` checks against the model.
_VERIFY_ROWS = 1024

# Elementwise activations with act(0) == 0, so that folding biases keeps F(0) == 0.
_ELEMENTWISE: dict[type, Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    nn.ReLU: lambda m: torch.relu,
    nn.GELU: lambda m: (lambda x: nn.functional.gelu(x, approximate=m.approximate)),
    nn.Tanh: lambda m: torch.tanh,
    nn.SiLU: lambda m: nn.functional.silu,
    nn.ELU: lambda m: (lambda x: nn.functional.elu(x, alpha=m.alpha)),
    nn.LeakyReLU: lambda m: (lambda x: nn.functional.leaky_relu(x, m.negative_slope)),
    nn.Identity: lambda m: (lambda x: x),
    nn.Dropout: lambda m: (lambda x: x),  # evaluation mode: the identity
}


def _folded_step(module: nn.Module, dtype: torch.dtype, device: torch.device):
    """One module acting on ``f = [f_0, x]`` with its bias multiplied by ``f_0``."""
    if isinstance(module, nn.Linear):
        weight = module.weight.detach().to(device=device, dtype=dtype)
        bias = None if module.bias is None else module.bias.detach().to(device=device, dtype=dtype)

        def linear(f: Tensor) -> Tensor:
            const = f[..., :1]
            out = f[..., 1:] @ weight.T
            if bias is not None:
                out = out + const * bias
            return torch.cat([const, out], dim=-1)

        return linear
    act = _ELEMENTWISE[_elementwise_base(module)](module)

    def elementwise(f: Tensor) -> Tensor:
        return torch.cat([f[..., :1], act(f[..., 1:])], dim=-1)

    return elementwise


def _elementwise_base(module: nn.Module) -> type | None:
    """The supported activation class ``module`` is (a subclass of), or ``None``."""
    return next((cls for cls in type(module).__mro__ if cls in _ELEMENTWISE), None)


def _check_faithful(model: nn.Sequential) -> None:
    """Refuse what the folded steps would not reproduce: the model must be what its weights say.

    Raises ``TypeError`` for a ``Linear`` or activation subclass that overrides ``forward``
    and for parametrized modules, ``ValueError`` for forward hooks (on the sequential, a child
    or global) and for dropout with ``p > 0`` in training mode.
    """
    if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
        raise ValueError(
            "A global forward hook is registered (torch.nn.modules.module."
            "register_module_forward_hook or register_module_forward_pre_hook); it would change "
            "the model's outputs behind MLPAdapter's folded segments. Remove it first."
        )
    for name, module in [("the sequential", model)] + [
        (f"module {n!r}", m) for n, m in model.named_modules() if n
    ]:
        kind = type(module).__name__
        if module._forward_hooks or module._forward_pre_hooks:
            raise ValueError(
                f"{name[0].upper()}{name[1:]} ({kind}) has forward hooks or forward pre-hooks; "
                "MLPAdapter rebuilds the network from its weights and would ignore what they "
                "do. Remove them (handle.remove()) before building the adapter."
            )
        if parametrize.is_parametrized(module):
            raise TypeError(
                f"{name[0].upper()}{name[1:]} ({kind}) is parametrized (e.g. weight_norm, "
                "spectral_norm, orthogonal). Bake the weights in first: "
                "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight', "
                "leave_parametrized=True)."
            )
        if module is model:
            if type(model).forward is not nn.Sequential.forward:
                raise TypeError(
                    f"The model is a {kind}, a subclass of nn.Sequential that overrides "
                    "forward; MLPAdapter chains the children in order and would analyse a "
                    "different model. Use nn.Sequential itself, or write an adapter "
                    "(docs/adapters.md)."
                )
            continue
        base = nn.Linear if isinstance(module, nn.Linear) else _elementwise_base(module)
        if base is not None and type(module).forward is not base.forward:
            raise TypeError(
                f"{name[0].upper()}{name[1:]} is a {kind}, a subclass of nn.{base.__name__} "
                f"that overrides forward; MLPAdapter computes nn.{base.__name__}'s function "
                f"from the weights and would analyse a different model. Use nn.{base.__name__} "
                "itself, or write an adapter for this model (docs/adapters.md)."
            )
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            raise ValueError(
                f"{name[0].upper()}{name[1:]} is Dropout(p={module.p}) in training mode: its "
                "output is random, while MLPAdapter treats dropout as the identity of "
                "evaluation mode. Call model.eval() first."
            )


def _compose(steps: Sequence[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    def run(f: Tensor) -> Tensor:
        for step in steps:
            f = step(f)
        return f

    return run


def cast_forward(model: nn.Module, X: Any, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``model(X)`` itself (its ``forward``, hooks and all) with parameters and buffers cast.

    Runs through ``torch.func.functional_call``, so the caller's model is not modified; the
    reference the adapters' first-batch check compares their folded segments with.
    """
    x = torch.as_tensor(X).to(device=device, dtype=dtype)
    tensors = {
        name: t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    with torch.no_grad():
        return torch.func.functional_call(model, tensors, (x,))


class MLPAdapter:
    """Present an ``nn.Sequential`` MLP to the LIB estimators.

    Node layers are named ``"input"`` (the model input) and by the names of the sequential's
    children whose *output* is a node layer (``"1"``, ``"3"``, ... for an unnamed sequential).
    Biases are folded through a leading constant coordinate, so every segment satisfies
    ``F(0) = 0``.

    The segments are rebuilt from the weights, so the adapter refuses models whose output the
    weights do not determine: ``Linear`` or activation subclasses that override ``forward``,
    parametrized modules (``TypeError``), forward hooks and forward pre-hooks on the sequential
    or a child, global forward hooks, and ``Dropout`` with ``p > 0`` in training mode
    (``ValueError``; call ``model.eval()``). On the first batch :meth:`activations` sees, it
    repeats these checks and compares the chained segments with the model's own forward
    (:func:`~sklearn_lib.adapters.verify_forward`, on at most 1024 rows), raising
    ``ValueError`` with the largest difference.

    Parameters
    ----------
    model : nn.Sequential
        ``Linear`` layers and elementwise activations with ``act(0) = 0`` (ReLU, GELU, Tanh,
        SiLU, ELU, LeakyReLU, Identity, and Dropout in evaluation mode), or subclasses of
        them that do not override ``forward``.
    node_layers : sequence of str, default=None
        Names of the node layers, input side first. Default: ``"input"``, the output of every
        activation and the output of the last module.
    metric : {"accuracy", "loss"}, default="accuracy"
        The score the edge-ablation search uses unless told otherwise.

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> MLPAdapter(model).node_layers
    ('input', '1', '2')
    """

    def __init__(
        self,
        model: nn.Sequential,
        node_layers: Sequence[str] | None = None,
        metric: str = "accuracy",
    ) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                f"MLPAdapter needs a torch.nn.Sequential; got {type(model).__name__}. Wrap the "
                "layers in nn.Sequential, or write an adapter (docs/adapters.md)."
            )
        children = list(model.named_children())
        if not children:
            raise ValueError("MLPAdapter got an empty nn.Sequential.")
        for name, module in children:
            if isinstance(module, nn.Linear) or _elementwise_base(module) is not None:
                continue
            supported = ", ".join(sorted(t.__name__ for t in _ELEMENTWISE))
            raise TypeError(
                f"MLPAdapter does not support module {name!r} of type {type(module).__name__}. "
                f"Supported: Linear and the elementwise activations {supported} (all with "
                "act(0) = 0, which bias folding needs). Write an adapter for other models."
            )
        if not any(isinstance(m, nn.Linear) for _, m in children):
            raise ValueError("MLPAdapter needs at least one nn.Linear in the sequential.")
        _check_faithful(model)
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss'. Got {metric!r} instead.")
        self.model = model
        self.default_metric = metric
        self._names = [name for name, _ in children]
        self._modules = [module for _, module in children]
        # Position of each node layer: the number of modules applied to reach it.
        available = {"input": 0, **{name: i + 1 for i, name in enumerate(self._names)}}
        if node_layers is None:
            node_layers = ["input"] + [
                name
                for i, (name, m) in enumerate(children)
                if not isinstance(m, nn.Linear) and i + 1 < len(children)
            ] + [self._names[-1]]
        node_layers = [str(n) for n in node_layers]
        for name in node_layers:
            if name not in available:
                raise ValueError(
                    f"Unknown node layer {name!r}. Available: {sorted(available, key=available.get)}."
                )
        positions = [available[n] for n in node_layers]
        if len(node_layers) < 2 or any(b <= a for a, b in zip(positions, positions[1:])):
            raise ValueError(
                "node_layers must name at least two distinct layers in forward order; got "
                f"{node_layers}."
            )
        self.node_layers = tuple(node_layers)
        self._positions = dict(zip(node_layers, positions))
        first_linear = next(m for m in self._modules if isinstance(m, nn.Linear))
        self.n_features_in_ = first_linear.in_features
        self._forward_verified = False

    def __sklearn_clone__(self) -> "MLPAdapter":
        return self

    def __repr__(self) -> str:
        return f"MLPAdapter(node_layers={list(self.node_layers)})"

    # -- the protocol ------------------------------------------------------------------------
    def check_input(self, X: Any) -> np.ndarray | Tensor:
        if isinstance(X, Tensor):
            X_arr = X.detach()
            finite = bool(torch.isfinite(X_arr).all()) if X_arr.is_floating_point() else True
        else:
            X_arr = np.asarray(X)
            if X_arr.dtype == object or not np.issubdtype(X_arr.dtype, np.number):
                raise ValueError(f"Model inputs must be numeric; got dtype {X_arr.dtype}.")
            finite = bool(np.isfinite(X_arr).all())
        if X_arr.ndim != 2 or X_arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"Model inputs must have shape (n_samples, {self.n_features_in_}); got "
                f"{tuple(X_arr.shape)}."
            )
        if X_arr.shape[0] == 0:
            raise ValueError("Found 0 samples in the model inputs; at least 1 is required.")
        if not finite:
            raise ValueError("Model inputs contain NaN or inf; remove or impute them first.")
        return X_arr

    def _steps(self, start: int, stop: int, dtype: torch.dtype, device: torch.device):
        return [_folded_step(m, dtype, device) for m in self._modules[start:stop]]

    def _index(self, layer: str) -> int:
        try:
            return self.node_layers.index(layer)
        except ValueError:
            raise ValueError(
                f"Unknown node layer {layer!r}. This adapter's node layers: {list(self.node_layers)}."
            ) from None

    def activations(
        self, X: Any, layers: Sequence[str], *, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        wanted = {self._positions[self.node_layers[self._index(n)]]: n for n in layers}
        x = torch.as_tensor(X).to(device=device, dtype=dtype)
        f = torch.cat([torch.ones_like(x[:, :1]), x], dim=1)[:, None, :]
        out = {}
        if 0 in wanted:
            out[wanted[0]] = f
        last = max(wanted)
        for i, step in enumerate(self._steps(0, last, dtype, device), start=1):
            f = step(f)
            if i in wanted:
                out[wanted[i]] = f
        if not self._forward_verified:
            self._verify_first_batch(X, dtype, device)
        return out

    def _verify_first_batch(self, X: Any, dtype: torch.dtype, device: torch.device) -> None:
        """Check the model once more and compare the chain with its forward on this batch."""
        self._forward_verified = True  # verify_forward calls activations itself
        try:
            _check_faithful(self.model)
            verify_forward(self, X[:_VERIFY_ROWS], dtype=dtype, device=device)
        except Exception:
            self._forward_verified = False
            raise

    def reference_forward(self, X: Any, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The model's own forward on ``X``, with its parameters cast to ``dtype``.

        Runs ``model(X)`` itself (its ``forward``, hooks and all) through
        ``torch.func.functional_call``, so that a model the folded segments do not reproduce
        shows up as a difference. Used by :func:`~sklearn_lib.adapters.verify_forward`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Model inputs.
        dtype, device
            Of the computation and the result.

        Returns
        -------
        logits : Tensor of shape (n_samples, n_outputs)
        """
        return cast_forward(self.model, X, dtype=dtype, device=device)

    def segment(self, layer: str, *, dtype: torch.dtype, device: torch.device):
        i = self._index(layer)
        if i == len(self.node_layers) - 1:
            raise ValueError(f"{layer!r} is the last node layer; it has no segment after it.")
        start, stop = self._positions[layer], self._positions[self.node_layers[i + 1]]
        return _compose(self._steps(start, stop, dtype, device))

    def composite_segment(self, layer: str, in_map: Tensor, out_map: Tensor, *,
                          dtype: torch.dtype, device: torch.device):
        """A closed-form :class:`~sklearn_lib._segments.CompositeSegment`, or ``None``.

        ``G(z) = segment(z @ in_map.T) @ out_map.T`` from ``layer`` to the next node layer,
        with Jacobians and ablated forward passes in closed form when the segment is one
        ``Linear`` followed by elementwise activations (``adapters/_mlp_closed_forms.py``);
        ``None`` otherwise (the caller uses the generic ``torch.func`` composite).
        """
        from sklearn_lib.adapters._mlp_closed_forms import mlp_closed_form

        i = self._index(layer)
        if i == len(self.node_layers) - 1:
            return None
        device = torch.device(device)
        start, stop = self._positions[layer], self._positions[self.node_layers[i + 1]]
        return mlp_closed_form(self._modules[start:stop], _ELEMENTWISE,
                               self.segment(layer, dtype=dtype, device=device), in_map,
                               out_map, dtype=dtype, device=device)

    def forward_from(self, layer: str, *, dtype: torch.dtype, device: torch.device):
        self._index(layer)
        run = _compose(self._steps(self._positions[layer], len(self._modules), dtype, device))

        def output(f: Tensor) -> Tensor:
            return run(f)[:, 0, 1:]  # MLP node layers have one position

        return output

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        self._index(layer)
        return (0,)

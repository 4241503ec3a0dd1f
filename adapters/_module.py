"""Adapter for any traceable torch module: node layers by module path, segments by ``torch.fx``.

The model is traced once with :mod:`torch.fx` (``symbolic_trace``). A node layer is the output
of a module, named by its dotted path in ``model.named_modules()`` (``"blocks.0"``,
``"features.3"``, ``"fc1"``), or ``"input"`` (the model input) or ``"output"`` (the model
output). The maps between node layers are *our own interpretation* of the traced graph, node by
node, so that every bias is multiplied by the constant coordinate ``f_0`` (bias folding,
DESIGN.md section 4) and every segment satisfies ``F(0) = 0``.

Layout of an activation ``(batch, ...)`` as a node layer ``(batch, pos, 1 + d)``:

- ``(batch, d)``: one position, ``d`` features;
- ``(batch, T, d)`` produced by ``Linear``/``LayerNorm``/... (features last): ``T`` positions;
- ``(batch, C, H, W)`` or ``(batch, C, L)`` produced by ``Conv``/``BatchNorm``/pooling
  (channels first): positions are the ``H * W`` (or ``L``) spatial locations in row-major order
  (position ``h * W + w``), features are the ``C`` channels.

Inside a segment the constant is one number per sample, the mean of the input layer's constant
coordinates over positions (1 on real data); it multiplies every bias and is copied to every
position of the output layer.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

from sklearn_lib.adapters._check import verify_forward
from sklearn_lib.adapters._torch import cast_forward

__all__ = ["ModuleAdapter"]

_ACTIVATIONS: dict[type, Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    nn.ReLU: lambda m: torch.relu,
    nn.GELU: lambda m: (lambda x: F.gelu(x, approximate=m.approximate)),
    nn.Tanh: lambda m: torch.tanh,
    nn.SiLU: lambda m: F.silu,
    nn.ELU: lambda m: (lambda x: F.elu(x, alpha=m.alpha)),
    nn.LeakyReLU: lambda m: (lambda x: F.leaky_relu(x, m.negative_slope)),
}
_NORMS = (nn.LayerNorm, nn.RMSNorm)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
# Parameter-free modules that are positively homogeneous (max pooling) or linear.
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d)
_PASS = (nn.Identity, nn.Dropout)
_SUPPORTED = (nn.Linear, *_CONVS, *_NORMS, *_BATCHNORMS, *_POOLS, nn.Flatten, *_PASS,
              *_ACTIVATIONS)
_SUPPORTED_TEXT = (
    "Linear, Conv1d, Conv2d, LayerNorm, RMSNorm, BatchNorm1d/2d (eval), MaxPool1d/2d, "
    "AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten, Identity, Dropout (eval), ReLU, GELU, Tanh, "
    "SiLU, ELU, LeakyReLU, nested Sequential and custom modules built from these, + and - of "
    "activations, reshape/view/flatten, indexing, and scaling by constants"
)

# torch functions and tensor methods, keyed by what fx records as the node target.
_FN_ACTIVATIONS = {
    torch.relu: "relu", F.relu: "relu", "relu": "relu", torch.tanh: "tanh", "tanh": "tanh",
    F.gelu: "gelu", F.silu: "silu", F.elu: "elu", F.leaky_relu: "leaky_relu",
}
_ADD = {operator.add: 1, operator.iadd: 1, torch.add: 1, "add": 1,
        operator.sub: -1, operator.isub: -1, torch.sub: -1, "sub": -1}
_SCALE = {operator.mul, operator.imul, torch.mul, "mul", operator.truediv, operator.itruediv,
          torch.div, "div", operator.neg, torch.neg, "neg"}
_RESHAPE = {torch.flatten, "flatten", torch.reshape, "reshape", "view"}
_META_METHODS = {"size", "dim"}
_CF = "channels_first"
_LAST = "features_last"
_CONTINUE = object()  # a walk from the input goes on past this node


def _label(node: fx.Node) -> str:
    """Where a graph node comes from, for messages: its module path or the enclosing module."""
    if node.op == "call_module":
        return f"module {node.target!r}"
    stack = node.meta.get("nn_module_stack") or {}
    name = getattr(node.target, "__name__", str(node.target))
    if stack:
        path = list(stack.values())[-1][0]
        return f"{name!r} in module {path!r}"
    return f"{name!r} in the model's forward"


class _Tracer(fx.Tracer):
    """``symbolic_trace`` that keeps supported modules (and their plain subclasses) as leaves
    and records which graph node every module call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, fx.Node | None] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _SUPPORTED) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        name = self.path_of_module(m)
        node = out.node if isinstance(out, fx.Proxy) else None
        # A module called twice has no single output: mark it as ambiguous.
        self.module_outputs[name] = None if name in self.module_outputs else node
        return out


def _supported_class(module: nn.Module) -> type | None:
    """The supported class whose forward ``module`` runs, or ``None``."""
    for cls in _SUPPORTED:
        if isinstance(module, cls):
            return cls if type(module).forward is cls.forward else None
    return None


def _check_eval(module: nn.Module, path: str) -> None:
    if module.training and (isinstance(module, _BATCHNORMS) or
                            (isinstance(module, nn.Dropout) and module.p > 0)):
        raise ValueError(
            f"Module {path!r} ({type(module).__name__}) is in training mode; ModuleAdapter "
            "folds its evaluation-mode map. Call model.eval() first."
        )


def _norm_dims(module: nn.Module) -> tuple[int, ...]:
    return tuple(range(-len(module.normalized_shape), 0))


def _norm_scale(module: nn.Module, x: Tensor, cb: Tensor) -> Tensor:
    """``sqrt(mean(x_c ** 2) + eps * f_0 ** 2)`` over the normalised dims (kept as size 1).

    Folding ``eps`` with ``f_0 ** 2`` makes the scale homogeneous of degree 1 in ``(f_0, x)``;
    on real data (``f_0 = 1``) it is the norm's own scale.
    """
    dims = _norm_dims(module)
    xc = x - x.mean(dims, keepdim=True) if isinstance(module, nn.LayerNorm) else x
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    return torch.sqrt(xc.pow(2).mean(dims, keepdim=True) + eps * cb.pow(2))


class _Ctx:
    """What a node's rule sees while a segment runs: the constant, casts and norm scales."""

    def __init__(self, c: Tensor, dtype: torch.dtype, device: torch.device,
                 shapes: dict[fx.Node, tuple[int, ...]], carried: dict[fx.Node, Tensor],
                 cache: dict[int, tuple[Tensor, Tensor]]):
        self.c = c  # (batch,)
        self.batch = c.shape[0]
        self.dtype, self.device = dtype, device
        self.shapes = shapes
        self.carried = carried
        self._cache = cache  # id(weight) -> (weight, cast copy), shared by a segment's calls

    def cb(self, x: Tensor) -> Tensor:
        """The constant shaped to broadcast against ``x`` of shape (batch, ...)."""
        return self.c.reshape(self.batch, *([1] * (x.dim() - 1)))

    def cast(self, t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        hit = self._cache.get(id(t))
        if hit is None or hit[0] is not t:
            cast = t.detach().to(device=self.device)
            hit = (t, cast.to(self.dtype) if cast.is_floating_point() else cast)
            self._cache[id(t)] = hit
        return hit[1]


class ModuleAdapter:
    """Present any ``torch.fx``-traceable module to the LIB estimators, node layers by module path.

    The model is traced with ``torch.fx``; node layers are module outputs named by their dotted
    path in ``model.named_modules()`` (as captum and transformer_lens users name them), plus
    ``"input"`` and ``"output"``. Segments between node layers interpret the traced graph with
    every bias multiplied by the constant coordinate, so ``F(0) = 0`` for every segment.

    Activations have shape ``(batch, pos, 1 + d (+ n_norms))``, constant first:

    - ``(batch, d)`` activations have one position;
    - features-last ``(batch, T, d)`` activations (from ``Linear``, ``LayerNorm``, reshapes)
      have ``T`` positions;
    - channels-first maps ``(batch, C, H, W)`` / ``(batch, C, L)`` (from ``Conv``,
      ``BatchNorm``, pooling) have the ``H * W`` (``L``) spatial locations as positions, in
      row-major order (position ``h * W + w``), and the ``C`` channels as features;
    - a node layer whose output feeds a ``LayerNorm``/``RMSNorm`` (normalising the feature
      dimension) appends that norm's scale ``sqrt(var + eps)`` per position as one extra
      coordinate ("ln in", the paper's appendix A); the next segment divides by it ("ln out").
      :meth:`fixed_features` reports it, so bases keep it out of their rotations. Such a
      division is homogeneous of degree 0, so integrated-gradient completeness does not hold on
      that segment; it holds on the others (up to quadrature error).

    Every node layer must be a causal cut: everything downstream depends on the model input
    only through it (a residual connection must not jump over it). On the first batch the
    chained segments are checked against ``model(x)``.

    Parameters
    ----------
    model : nn.Module
        A module that ``torch.fx.symbolic_trace`` can trace, taking one tensor and returning
        one tensor, in evaluation mode. Supported operations: ``Linear``, ``Conv1d``,
        ``Conv2d``, ``LayerNorm``, ``RMSNorm``, ``BatchNorm1d/2d`` (eval), max/average pooling,
        ``Flatten``, ``Identity``, ``Dropout`` (eval), ReLU, GELU, Tanh, SiLU, ELU, LeakyReLU
        (modules, functions or plain subclasses), ``+``/``-`` of activations (residual
        connections), adding or scaling by constants, ``reshape``/``view``/``flatten``, and
        indexing; nested ``Sequential`` and custom modules made of these are traced through.
    node_layers : sequence of str
        Node layers, input side first: ``"input"``, module paths, ``"output"``.
    metric : {"accuracy", "loss"}, default="accuracy"
        The score the edge-ablation search uses unless told otherwise.
    example_input : array-like or Tensor of shape (n_samples, ...), default=None
        A batch of model inputs fixing the input shape. Without it the shape is read from the
        first ``Linear`` (``(n_samples, in_features)``) or fixed by the first batch; for
        convolutional models pass it to call :meth:`segment` before any activations.

    Attributes
    ----------
    node_layers : tuple of str
    default_metric : str
    input_shape_ : tuple of int or None
        Shape of one model input, once known.

    See Also
    --------
    MLPAdapter : the same for a flat ``nn.Sequential`` MLP.
    HookedTransformerAdapter : transformer_lens transformers.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_lib.adapters import ModuleAdapter
    >>> model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(6, 4), nn.ReLU()),
    ...                       nn.Linear(4, 2)).double()
    >>> adapter = ModuleAdapter(model, ["input", "1", "output"],
    ...                         example_input=torch.zeros(1, 2, 3))
    >>> acts = adapter.activations(torch.randn(5, 2, 3), adapter.node_layers,
    ...                            dtype=torch.float64, device="cpu")
    >>> {name: tuple(a.shape) for name, a in acts.items()}
    {'input': (5, 2, 4), '1': (5, 1, 5), 'output': (5, 1, 3)}
    >>> seg = adapter.segment("input", dtype=torch.float64, device="cpu")
    >>> bool((seg(torch.zeros(3, 2, 4, dtype=torch.float64)) == 0).all())  # F(0) = 0
    True
    """

    def __init__(
        self,
        model: nn.Module,
        node_layers: Sequence[str],
        *,
        metric: str = "accuracy",
        example_input: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"ModuleAdapter needs a torch.nn.Module; got {type(model).__name__}."
            )
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss'. Got {metric!r} instead.")
        if isinstance(node_layers, str) or node_layers is None:
            raise TypeError(
                "node_layers must be a sequence of names such as ['input', 'fc1', 'output']; "
                f"got {node_layers!r}."
            )
        self.model = model
        self.default_metric = metric
        self.example_input = example_input
        self._trace(model)
        self._compile()
        self.node_layers = self._resolve_layers([str(n) for n in node_layers])
        self._check_cuts()
        self._norm_consumers = {self._layer_nodes[n]: self._norms_fed_by(n)
                                for n in self.node_layers}
        self._verified = False
        self._shapes: dict[fx.Node, tuple[int, ...]] | None = None
        self.input_shape_: tuple[int, ...] | None = None
        if example_input is not None:
            x = self.check_input(example_input)
            self._record_shapes(tuple(x.shape[1:]))

    # -- tracing and compiling --------------------------------------------------------------
    def _trace(self, model: nn.Module) -> None:
        tracer = _Tracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # fx raises many types; all mean "cannot trace"
            raise ValueError(
                f"ModuleAdapter could not trace {type(model).__name__} with torch.fx "
                f"({type(exc).__name__}: {exc}). Data-dependent control flow cannot be traced; "
                "write an adapter (docs/adapters.md)."
            ) from exc
        self._graph = graph
        self._nodes = list(graph.nodes)
        self._index = {n: i for i, n in enumerate(self._nodes)}
        self._module_outputs = tracer.module_outputs
        placeholders = [n for n in self._nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(
                f"ModuleAdapter needs a model whose forward takes one tensor; "
                f"{type(model).__name__}.forward takes {len(placeholders)} arguments. Wrap it "
                "in a module with a single input."
            )
        self._input = placeholders[0]
        out = next(n for n in self._nodes if n.op == "output")
        if not isinstance(out.args[0], fx.Node):
            raise ValueError(
                f"ModuleAdapter needs a model that returns one tensor; {type(model).__name__} "
                "returns a tuple or a container. Wrap it to return the logits only."
            )
        self._output = out.args[0]

    def _compile(self) -> None:
        """Classify every graph node and check that each input-dependent one is supported."""
        self._meta: set[fx.Node] = set()
        self._dep: set[fx.Node] = {self._input}
        self._layout: dict[fx.Node, str] = {}
        for node in self._nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            inputs = node.all_input_nodes
            if self._is_meta(node):
                self._meta.add(node)
                continue
            if not any(n in self._dep for n in inputs):
                continue  # a constant: evaluated as written
            self._dep.add(node)
            self._check_supported(node)
            self._layout[node] = self._layout_of(node)
        self._layout[self._input] = self._input_layout()

    def _is_meta(self, node: fx.Node) -> bool:
        """Shape queries (``x.size(0)``, ``x.shape``, ``x.dim()``, ``x.dtype``, ``x.device``)
        and what is computed from them alone (``x.size(-1) ** -0.5``, ``torch.ones(...,
        dtype=x.dtype)``): evaluated from recorded shapes, never from activations."""
        if node.op == "call_method" and node.target in _META_METHODS:
            return True
        if node.op == "call_function" and node.target is getattr and node.args[1] in (
                "shape", "ndim", "dtype", "device"):
            return True
        inputs = node.all_input_nodes
        return bool(inputs) and any(n in self._meta for n in inputs) and all(
            n in self._meta or n not in self._dep for n in inputs)

    def _module(self, node: fx.Node) -> nn.Module:
        return self.model.get_submodule(node.target)

    @staticmethod
    def _unsupported(what: str) -> ValueError:
        return ValueError(
            f"ModuleAdapter cannot fold biases through {what}; supported: {_SUPPORTED_TEXT}. "
            "Write an adapter (docs/adapters.md)."
        )

    def _check_supported(self, node: fx.Node) -> None:
        if node.op == "call_module":
            module = self._module(node)
            cls = _supported_class(module)
            if cls is None:
                raise self._unsupported(
                    f"module {node.target!r} of type {type(module).__name__}"
                    + (" (its forward overrides the supported class's)"
                       if isinstance(module, _SUPPORTED) else ""))
            _check_eval(module, node.target)
            if getattr(module, "return_indices", False):
                raise self._unsupported(f"module {node.target!r} with return_indices=True")
            if isinstance(module, _BATCHNORMS) and module.running_mean is None:
                raise self._unsupported(
                    f"module {node.target!r} without running statistics "
                    "(track_running_stats=False normalises by batch statistics)")
            return
        target = node.target
        dep_args = [a for a in node.args if isinstance(a, fx.Node) and a in self._dep]
        if target in _ADD:
            return
        if target in _SCALE:
            if target in (operator.neg, torch.neg, "neg"):
                return
            if len(dep_args) == 1 and (target not in (operator.truediv, operator.itruediv,
                                                      torch.div, "div")
                                       or node.args[0] is dep_args[0]):
                return
            raise self._unsupported(
                f"{_label(node)} (a product or quotient of two activations, or division "
                "by an activation)")
        if target in _FN_ACTIVATIONS or target in _RESHAPE or target in (
                "contiguous", operator.getitem):
            if target == operator.getitem and any(
                    isinstance(a, fx.Node) and a in self._dep for a in node.args[1:]):
                raise self._unsupported(f"{_label(node)} (indexing by an activation)")
            return
        raise self._unsupported(_label(node))

    def _layout_of(self, node: fx.Node) -> str:
        if node.op == "call_module":
            module = self._module(node)
            if isinstance(module, (*_CONVS, *_BATCHNORMS, *_POOLS)):
                return _CF
            if isinstance(module, (nn.Linear, *_NORMS, nn.Flatten)):
                return _LAST
        elif node.target in _RESHAPE or node.target == operator.getitem:
            return _LAST
        first = next(a for a in node.all_input_nodes if a in self._dep)
        return self._layout[first]

    def _first_from_input(self, visit: Callable[[fx.Node], Any]) -> Any:
        """Walk the graph breadth-first from the input; return the first ``visit`` result.

        ``visit(node)`` returns ``_CONTINUE`` to go on past the node (to its users), anything
        else to stop there with that value. ``None`` when the walk ends without a stop.
        """
        frontier, seen = list(self._input.users), set()
        while frontier:
            node = frontier.pop(0)
            if node in seen or node not in self._dep:
                continue
            seen.add(node)
            found = visit(node)
            if found is not _CONTINUE:
                return found
            frontier.extend(node.users)
        return None

    def _input_layout(self) -> str:
        """Channels first when the input first meets a convolution, batch norm or pooling."""

        def visit(node: fx.Node) -> Any:
            if node.op == "call_module":
                module = self._module(node)
                if isinstance(module, (*_CONVS, *_BATCHNORMS, *_POOLS)):
                    return _CF
                return _CONTINUE if isinstance(module, (*_PASS, *_ACTIVATIONS)) else _LAST
            if node.target in _RESHAPE or node.target == operator.getitem:
                return _LAST
            return _CONTINUE

        return self._first_from_input(visit) or _LAST

    # -- node layers and cuts -------------------------------------------------------------
    def _available(self) -> str:
        names = ["input"] + [n for n, node in self._module_outputs.items()
                             if node is not None and node in self._dep] + ["output"]
        return ", ".join(repr(n) for n in names)

    def _resolve_layers(self, names: list[str]) -> tuple[str, ...]:
        nodes = {}
        for name in names:
            if name == "input":
                nodes[name] = self._input
            elif name == "output":
                nodes[name] = self._output
            elif name in self._module_outputs:
                node = self._module_outputs[name]
                if node is None:
                    raise ValueError(
                        f"Module {name!r} is called more than once in the model's forward, so "
                        "its output is not one node layer. Name the modules of one call, or a "
                        "module around it."
                    )
                if node not in self._dep:
                    raise ValueError(f"The output of module {name!r} does not depend on the "
                                     "model input, so it cannot be a node layer.")
                nodes[name] = node
            else:
                known = {n for n, _ in self.model.named_modules()}
                why = ("it is not called in the model's forward" if name in known
                       else "no module has this path in model.named_modules()")
                raise ValueError(
                    f"Unknown node layer {name!r}: {why}. Available: {self._available()}."
                )
        order = [self._index[nodes[n]] for n in names]
        if len(names) < 2 or any(b <= a for a, b in zip(order, order[1:])):
            raise ValueError(
                "node_layers must name at least two distinct node layers in forward order "
                f"(a module and the container whose output it is are the same node layer); "
                f"got {names}."
            )
        self._layer_nodes = nodes
        return tuple(names)

    def _data_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if n in self._dep]

    def _check_cuts(self) -> None:
        """Every node layer must separate the model input from the output in the data graph."""
        for name in self.node_layers:
            cut = self._layer_nodes[name]
            if cut is self._input:
                continue
            # Nodes reachable from the input without passing through the cut.
            reach = {self._input}
            for node in self._nodes:
                if node in self._dep and node is not cut and node is not self._input and any(
                        a in reach for a in self._data_inputs(node)):
                    reach.add(node)
            below = {cut}
            for node in self._nodes:
                if any(a in below for a in self._data_inputs(node)):
                    below.add(node)
            if self._output not in below:
                raise ValueError(
                    f"Node layer {name!r} is not a causal cut: the model output does not depend "
                    "on it. Choose modules on the path from the input to the output."
                )
            if self._output in reach:
                skip = next(
                    (a, node) for node in self._nodes if node in below and node is not cut
                    for a in self._data_inputs(node) if a in reach and a not in below
                )
                raise ValueError(
                    f"Node layer {name!r} is not a causal cut: {_label(skip[1])} reads "
                    f"{self._value_name(skip[0])}, which reaches it without passing through "
                    f"{name!r} (a residual or skip connection jumps over it). Choose node layers "
                    "on the residual stream, e.g. the output of the enclosing block."
                )

    def _value_name(self, node: fx.Node) -> str:
        if node is self._input:
            return "the model input"
        if node.op == "call_module":
            return repr(node.target)
        return f"the output of {_label(node)}"

    def _norms_fed_by(self, name: str) -> list[fx.Node]:
        """Norm modules reading node layer ``name`` directly: their scale is carried with it.

        Whether each normalises the node layer's feature dimension alone is checked once the
        shapes are known (:meth:`_record_shapes`).
        """
        node = self._layer_nodes[name]
        norms = [user for user in node.users
                 if user.op == "call_module" and isinstance(self._module(user), _NORMS)]
        return sorted(norms, key=self._index.get)

    def __sklearn_clone__(self) -> "ModuleAdapter":
        return self

    def __repr__(self) -> str:
        return (f"ModuleAdapter(model={type(self.model).__name__}, "
                f"node_layers={list(getattr(self, 'node_layers', []))}, "
                f"metric={self.default_metric!r})")

    # -- shapes ----------------------------------------------------------------------------
    def _param_dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _record_shapes(self, sample_shape: tuple[int, ...]) -> None:
        """Per-sample shape of every graph node, from running the traced graph on zeros."""
        if self._shapes is not None:
            return
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros((2, *sample_shape), dtype=self._param_dtype(), device=device)
        shapes: dict[fx.Node, tuple[int, ...]] = {}
        gm = fx.GraphModule(self.model, self._graph)

        class _Recorder(fx.Interpreter):
            def call_module(self, target, args, kwargs):
                # forward, not __call__: the trace does not see hooks, so neither do the shapes.
                return self.fetch_attr(target).forward(*args, **kwargs)

            def run_node(self, n):
                out = super().run_node(n)
                if isinstance(out, Tensor):
                    shapes[n] = tuple(out.shape)
                return out

        try:
            with torch.no_grad():
                _Recorder(gm).run(x)
        except Exception as exc:
            raise ValueError(
                f"The model fails on inputs of shape (n_samples, "
                f"{', '.join(map(str, sample_shape))}) "
                f"({type(exc).__name__}: {exc}); check the input shape."
            ) from exc
        for node, shape in shapes.items():
            if node in self._dep and (len(shape) == 0 or shape[0] != 2):
                raise self._unsupported(f"{_label(node)} (it mixes or drops the batch "
                                              "dimension)")
        self._shapes = {n: s[1:] for n, s in shapes.items()}
        self.input_shape_ = tuple(sample_shape)
        for name in self.node_layers:
            node = self._layer_nodes[name]
            for norm in self._norm_consumers[node]:
                module = self._module(norm)
                shape = self._shapes[node]
                ok = (len(module.normalized_shape) == 1 and len(shape) >= 1
                      and (self._layout[node] == _LAST or len(shape) == 1))
                if not ok:
                    self._shapes = None
                    self.input_shape_ = None
                    raise ValueError(
                        f"Node layer {name!r} feeds {_label(norm)}, which does not normalise "
                        "the feature dimension of the node layer alone, so its scale cannot be "
                        "carried as one feature per position. Choose the norm's output as the "
                        "node layer instead."
                    )

    def _require_shapes(self) -> dict[fx.Node, tuple[int, ...]]:
        if self._shapes is None:
            expected = self._expected_input()
            if expected[0] is None:
                raise ValueError(
                    "ModuleAdapter does not know the model's input shape yet (the first layer "
                    "is a convolution, or takes more than (n_samples, n_features)). Pass "
                    "example_input=... or call activations() first."
                )
            self._record_shapes(expected[0])
        return self._shapes

    def _first_typed_consumer(self) -> nn.Module | None:
        """The first module after the input that is not elementwise (None past other ops)."""

        def visit(node: fx.Node) -> Any:
            if node.op == "call_module":
                module = self._module(node)
                return _CONTINUE if isinstance(module, (*_PASS, *_ACTIVATIONS)) else module
            if node.target not in _FN_ACTIVATIONS and node.target not in ("contiguous",):
                return None
            return _CONTINUE

        return self._first_from_input(visit)

    def _expected_input(self) -> tuple[tuple[int, ...] | None, int | None, int | None]:
        """(full sample shape if known, ndim if fixed, channel/feature size on its axis)."""
        if self.input_shape_ is not None:
            return self.input_shape_, len(self.input_shape_) + 1, None
        module = self._first_typed_consumer()
        if isinstance(module, nn.Linear):
            return (module.in_features,), None, module.in_features
        if isinstance(module, _CONVS):
            return None, 3 if isinstance(module, nn.Conv1d) else 4, module.in_channels
        return None, None, None

    # -- the protocol ----------------------------------------------------------------------
    def check_input(self, X: Any) -> np.ndarray | Tensor:
        """Validate model inputs: numeric, finite, of the model's input shape.

        Parameters
        ----------
        X : array-like or Tensor of shape (n_samples, ...)

        Returns
        -------
        X : ndarray or Tensor
            The input (numpy arrays as ``np.asarray``), unchanged otherwise.
        """
        if isinstance(X, Tensor):
            X_arr: np.ndarray | Tensor = X.detach()
            if X_arr.dtype == torch.bool or X_arr.is_complex():
                raise ValueError(f"Model inputs must be real numbers; got dtype {X_arr.dtype}.")
            finite = bool(torch.isfinite(X_arr).all()) if X_arr.is_floating_point() else True
        else:
            X_arr = np.asarray(X)
            if X_arr.dtype == object or not np.issubdtype(X_arr.dtype, np.number) or \
                    np.issubdtype(X_arr.dtype, np.complexfloating):
                raise ValueError(f"Model inputs must be real numbers; got dtype {X_arr.dtype}.")
            finite = bool(np.isfinite(X_arr).all())
        shape = tuple(X_arr.shape)
        full, ndim, size = self._expected_input()
        if full is not None and self.input_shape_ is not None:
            if shape[1:] != full:
                raise ValueError(
                    f"Model inputs must have shape (n_samples, {', '.join(map(str, full))}); "
                    f"got {shape}."
                )
        elif len(shape) < 2 or (ndim is not None and len(shape) != ndim) or (
                size is not None and shape[1 if ndim is not None else -1] != size):
            what = ("(n_samples, ..., %d)" % size if ndim is None and size is not None
                    else "(n_samples, %d, ...) with %d dimensions" % (size, ndim)
                    if size is not None else "(n_samples, ...)")
            raise ValueError(f"Model inputs must have shape {what}; got {shape}.")
        if shape[0] == 0:
            raise ValueError("Found 0 samples in the model inputs; at least 1 is required.")
        if not finite:
            raise ValueError("Model inputs contain NaN or inf; remove or impute them first.")
        return X_arr

    def _node_of(self, layer: str) -> fx.Node:
        if layer not in self.node_layers:
            raise ValueError(
                f"Unknown node layer {layer!r}. This adapter's node layers: "
                f"{list(self.node_layers)}."
            )
        return self._layer_nodes[layer]

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        """``(0,)``, plus the coordinates of the norm scales carried by ``layer``."""
        node = self._node_of(layer)
        n_norms = len(self._norm_consumers[node])
        if not n_norms:
            return (0,)
        d = self._fold_dims(node, self._require_shapes())[1]
        return (0, *range(1 + d, 1 + d + n_norms))

    def activations(
        self, X: Any, layers: Sequence[str], *, dtype: torch.dtype, device: torch.device | str
    ) -> dict[str, Tensor]:
        """Activations ``(n_samples, pos, 1 + d (+ norm scales))`` of the named node layers.

        The first call checks that the chained segments reproduce ``model(x)``.
        """
        for layer in layers:
            self._node_of(layer)
        X = self.check_input(X)
        if not layers:
            return {}
        device = torch.device(device)
        self._record_shapes(tuple(X.shape[1:]))
        x = torch.as_tensor(X).to(device=device, dtype=dtype)
        if not self._verified:
            self._verify(x[:64], dtype, device)
        wanted = sorted({self.node_layers.index(n) for n in layers})
        out: dict[int, Tensor] = {}
        with torch.no_grad():
            f = self._fold(self._input, x, torch.ones_like(x.reshape(x.shape[0], -1)[:, 0]))
            cut = self._input
            for i in range(wanted[-1] + 1):
                node = self._layer_nodes[self.node_layers[i]]
                if node is not cut:
                    f = self._runner(cut, node, dtype, device, fold=True)(f)
                    cut = node
                out[i] = f
        return {name: out[self.node_layers.index(name)] for name in layers}

    def segment(self, layer: str, *, dtype: torch.dtype,
                device: torch.device | str) -> Callable[[Tensor], Tensor]:
        """The map from node layer ``layer`` to the next node layer, as a pure torch function.

        Shape ``(batch, pos_in, 1 + d) -> (batch, pos_out, 1 + d')``; every bias is multiplied
        by the constant, so ``F(0) = 0``.
        """
        node = self._node_of(layer)
        i = self.node_layers.index(layer)
        if i == len(self.node_layers) - 1:
            raise ValueError(f"{layer!r} is the last node layer; it has no segment after it.")
        stop = self._layer_nodes[self.node_layers[i + 1]]
        return self._runner(node, stop, dtype, torch.device(device), fold=True)

    def forward_from(self, layer: str, *, dtype: torch.dtype,
                     device: torch.device | str) -> Callable[[Tensor], Tensor]:
        """The rest of the network: node layer ``layer`` to the model output (model's shape)."""
        node = self._node_of(layer)
        return self._runner(node, self._output, dtype, torch.device(device), fold=False)

    # -- layouts ---------------------------------------------------------------------------
    def _fold_dims(self, node: fx.Node, shapes) -> tuple[int, int]:
        """(positions, features) of a node's activation."""
        shape = shapes[node]
        if len(shape) == 0:
            return 1, 1
        if self._layout[node] == _CF:
            return math.prod(shape[1:]), shape[0]
        return math.prod(shape[:-1]), shape[-1]

    def _fold(self, node: fx.Node, x: Tensor, c: Tensor) -> Tensor:
        """Model layout ``(batch, ...)`` -> ``(batch, pos, 1 + d (+ scales))``, constant first."""
        B = x.shape[0]
        if x.dim() == 1:
            feats = x.reshape(B, 1, 1)
        elif self._layout[node] == _CF:
            feats = x.reshape(B, x.shape[1], -1).transpose(1, 2)
        else:
            feats = x.reshape(B, -1, x.shape[-1])
        parts = [c.reshape(B, 1, 1).expand(B, feats.shape[1], 1), feats]
        cb = c.reshape(B, *([1] * (x.dim() - 1)))
        for norm in self._norm_consumers.get(node, ()):
            parts.append(_norm_scale(self._module(norm), x, cb).reshape(B, -1, 1))
        return torch.cat(parts, dim=-1)

    def _unfold(self, node: fx.Node, f: Tensor, shapes) -> tuple[Tensor, dict]:
        """``(batch, pos, 1 + d (+ scales))`` -> model layout, and the carried norm scales."""
        B = f.shape[0]
        shape = shapes[node]
        d = self._fold_dims(node, shapes)[1]
        feats = f[..., 1 : 1 + d]
        if self._layout[node] == _CF and len(shape) > 1:
            x = feats.transpose(1, 2).reshape(B, *shape)
        else:
            x = feats.reshape(B, *shape)
        carried = {}
        for k, norm in enumerate(self._norm_consumers.get(node, ())):
            carried[norm] = f[..., 1 + d + k].reshape(B, *shape[:-1], 1)
        return x, carried

    # -- the interpreter -------------------------------------------------------------------
    def _needed(self, start: fx.Node, stop: fx.Node) -> list[fx.Node]:
        """Graph nodes to evaluate for ``stop`` given ``start``, in graph order."""
        needed, stack = set(), [stop]
        while stack:
            node = stack.pop()
            if node in needed or node is start:
                continue
            needed.add(node)
            for a in node.all_input_nodes:
                if node in self._meta and a in self._dep:
                    continue  # shape queries read recorded shapes, not values
                stack.append(a)
        bad = [n for n in needed if n in self._dep and self._index[n] <= self._index[start]]
        if bad:  # excluded by _check_cuts; kept as a guard for graph surgery
            raise RuntimeError(f"internal error: {bad[0]} is upstream of {start}")
        return sorted(needed, key=self._index.get)

    def _runner(self, start: fx.Node, stop: fx.Node, dtype: torch.dtype,
                device: torch.device, *, fold: bool) -> Callable[[Tensor], Tensor]:
        shapes = self._require_shapes()
        nodes = self._needed(start, stop)
        for node in nodes:
            if node.op == "call_module":
                _check_eval(self._module(node), node.target)
        if start is stop:
            if fold:
                raise RuntimeError("internal error: empty segment")

            def identity_out(f: Tensor) -> Tensor:
                return self._unfold(start, f, shapes)[0]

            return identity_out
        cache: dict[int, tuple[Tensor, Tensor]] = {}

        def run(f: Tensor) -> Tensor:
            c = f[..., 0].mean(dim=1)
            x, carried = self._unfold(start, f, shapes)
            ctx = _Ctx(c, dtype, device, shapes, carried, cache)
            env: dict[fx.Node, Any] = {start: x}
            for node in nodes:
                env[node] = self._eval(node, env, ctx)
            y = env[stop]
            return self._fold(stop, y, c) if fold else y

        return run

    def _eval(self, node: fx.Node, env: dict, ctx: _Ctx) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n] if n in env else None)
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n] if n in env else None)
        if node.op == "get_attr":
            obj: Any = self.model
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return ctx.cast(obj)
        if node in self._meta:
            return self._eval_meta(node, args, kwargs, ctx)
        if node not in self._dep:  # input-independent: as written
            if node.op == "call_module":
                return self._module(node).forward(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)
        if node.op == "call_module":
            return self._eval_module(node, self._module(node), args[0], ctx)
        return self._eval_function(node, args, kwargs, ctx)

    def _eval_meta(self, node: fx.Node, args, kwargs, ctx: _Ctx) -> Any:
        if node.op == "call_method" and node.target in _META_METHODS:
            src = node.args[0]
            shape = torch.Size((ctx.batch, *ctx.shapes[src]))
            if node.target == "dim":
                return len(shape)
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return shape if dim is None else shape[dim]
        if node.op == "call_function" and node.target is getattr and args[1] in (
                "dtype", "device"):
            return ctx.dtype if args[1] == "dtype" else ctx.device
        if node.op == "call_function" and node.target is getattr and args[1] in (
                "shape", "ndim"):
            shape = torch.Size((ctx.batch, *ctx.shapes[node.args[0]]))
            return shape if args[1] == "shape" else len(shape)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _eval_module(self, node: fx.Node, m: nn.Module, x: Tensor, ctx: _Ctx) -> Tensor:
        if isinstance(m, nn.Linear):
            out = x @ ctx.cast(m.weight).T
            return out if m.bias is None else out + ctx.cb(out) * ctx.cast(m.bias)
        if isinstance(m, _CONVS):
            out = m._conv_forward(x, ctx.cast(m.weight), None)
            if m.bias is None:
                return out
            bias = ctx.cast(m.bias).reshape(-1, *([1] * (out.dim() - 2)))
            return out + ctx.cb(out) * bias
        if isinstance(m, _BATCHNORMS):
            # Evaluation mode: x * s + (b - mean * s), s = w / sqrt(var + eps); the shift is a bias.
            mean, var = ctx.cast(m.running_mean), ctx.cast(m.running_var)
            s = 1.0 / torch.sqrt(var + m.eps)
            shift = -mean * s
            if m.weight is not None:
                s = s * ctx.cast(m.weight)
                shift = shift * ctx.cast(m.weight)
            if m.bias is not None:
                shift = shift + ctx.cast(m.bias)
            shape = (-1, *([1] * (x.dim() - 2)))
            return x * s.reshape(shape) + ctx.cb(x) * shift.reshape(shape)
        if isinstance(m, _NORMS):
            cb = ctx.cb(x)
            dims = _norm_dims(m)
            xc = x - x.mean(dims, keepdim=True) if isinstance(m, nn.LayerNorm) else x
            scale = ctx.carried.get(node)
            if scale is None:
                scale = _norm_scale(m, x, cb)
            # "ln out": 0 / 0 read as 0 so that F(0) = 0; the double where keeps gradients
            # finite where the scale vanishes.
            nonzero = scale != 0
            safe = torch.where(nonzero, scale, torch.ones_like(scale))
            h = torch.where(nonzero, xc / safe, torch.zeros_like(xc))
            if m.weight is not None:
                h = h * ctx.cast(m.weight)
            if getattr(m, "bias", None) is not None:
                h = h + cb * ctx.cast(m.bias)
            return h
        if isinstance(m, nn.Flatten):
            return x.flatten(m.start_dim, m.end_dim)
        if isinstance(m, _PASS):
            return x
        if isinstance(m, _POOLS):
            return m.forward(x)  # no parameters, no in-place option; forward skips hooks
        for cls, make in _ACTIVATIONS.items():
            if isinstance(m, cls):
                return make(m)(x)
        raise RuntimeError(f"internal error: no rule for {type(m).__name__}")  # pragma: no cover

    def _eval_function(self, node: fx.Node, args, kwargs, ctx: _Ctx) -> Tensor:
        target = node.target
        is_act = [isinstance(a, fx.Node) and a in self._dep for a in node.args]
        if target in _FN_ACTIVATIONS:
            x, kind = args[0], _FN_ACTIVATIONS[target]
            if kind == "relu":
                return torch.relu(x)
            if kind == "tanh":
                return torch.tanh(x)
            if kind == "silu":
                return F.silu(x)
            if kind == "gelu":
                return F.gelu(x, approximate=kwargs.get("approximate",
                                                        args[1] if len(args) > 1 else "none"))
            if kind == "elu":
                return F.elu(x, alpha=kwargs.get("alpha", args[1] if len(args) > 1 else 1.0))
            return F.leaky_relu(x, kwargs.get("negative_slope",
                                              args[1] if len(args) > 1 else 0.01))
        if target in _ADD:
            sign = _ADD[target]
            a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
            alpha = kwargs.get("alpha", 1)
            other = node.args[1] if len(node.args) > 1 else node.kwargs["other"]
            b_act = isinstance(other, fx.Node) and other in self._dep
            # A constant added to an activation is a bias: multiply it by the constant f_0.
            ref = a if is_act[0] else b
            if not is_act[0]:
                a = ctx.cb(ref) * a
            if not b_act:
                b = ctx.cb(ref) * b
            return a + sign * alpha * b
        if target in _SCALE:
            if target in (operator.neg, torch.neg, "neg"):
                return -args[0]
            if target in (operator.truediv, operator.itruediv, torch.div, "div"):
                return args[0] / (args[1] if len(args) > 1 else kwargs["other"])
            return args[0] * (args[1] if len(args) > 1 else kwargs["other"])
        if target == "contiguous":
            return args[0]
        if target == operator.getitem:
            return args[0][args[1]]
        if target in (torch.flatten, "flatten"):
            return torch.flatten(args[0], *args[1:], **kwargs)
        if target in (torch.reshape, "reshape", "view"):
            shape = args[1:] if target != torch.reshape else (args[1],)
            if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
                shape = tuple(shape[0])
            if "shape" in kwargs:
                shape = tuple(kwargs["shape"])
            return args[0].reshape(*shape)
        raise RuntimeError(f"internal error: no rule for {target}")  # pragma: no cover

    # -- the first-batch check -------------------------------------------------------------
    def reference_forward(self, X: Any, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``model(X)`` itself, parameters cast to ``dtype``: what the segments must reproduce.

        Used by :func:`~sklearn_lib.adapters.verify_forward` on the first batch and by
        :func:`~sklearn_lib.adapters.check_adapter`.
        """
        # A copy: an in-place first module must not overwrite the caller's inputs.
        return cast_forward(self.model, torch.as_tensor(X).clone(), dtype=dtype, device=device)

    def _verify(self, x: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        """The chained segments and ``forward_from`` must reproduce ``model(x)``."""
        self._verified = True  # verify_forward reads activations(), which must not re-enter
        try:
            verify_forward(self, x, dtype=dtype, device=device)
        except ValueError as err:
            self._verified = False
            raise ValueError(f"ModuleAdapter (torch.fx trace of the model): {err}") from None

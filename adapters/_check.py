"""The adapter contract as executable checks: :func:`check_adapter` and :func:`verify_forward`.

In the spirit of scikit-learn's ``check_estimator``: :func:`check_adapter` runs every promise of
:class:`~sklearn_lib.adapters.ModelAdapter` on a few samples and raises
:class:`AdapterContractError` naming the check, the layer and the largest difference.
:func:`verify_forward` is the one check every adapter runs on the first batch it sees: the
chained segments must reproduce the model's own forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, vmap

from sklearn_lib._common import resolve_dtype
from sklearn_lib._jacobian import per_sample
from sklearn_lib._segments import CompositeSegment, ablate_by_masks

__all__ = [
    "CHECKS",
    "AdapterContractError",
    "CheckResult",
    "check_adapter",
    "verify_forward",
]

#: The checks of :func:`check_adapter`, in the order they run.
CHECKS = (
    "protocol",
    "clone",
    "check_input",
    "activations",
    "constant",
    "fixed_features",
    "segments",
    "bias_folding",
    "batched",
    "forward_from",
    "reference_forward",
    "jacobian",
    "composite_segment",
)

_REQUIRED_METHODS = ("check_input", "activations", "segment", "forward_from", "fixed_features",
                     "__sklearn_clone__")
#: Samples at which the Jacobians are compared (each costs a few per-sample Jacobians).
_N_JACOBIAN_SAMPLES = 2


class AdapterContractError(ValueError):
    """An adapter breaks the :class:`~sklearn_lib.adapters.ModelAdapter` contract.

    Parameters
    ----------
    check : str
        The name of the failed check (one of :data:`CHECKS`).
    message : str
        What differs, and how to fix it.
    layer : str, default=None
        The node layer where the check failed, if it is about one.
    max_diff : float, default=None
        The largest absolute difference found, if the check compares numbers.

    Attributes
    ----------
    check, layer, max_diff
        As given.
    """

    def __init__(self, check: str, message: str, *, layer: str | None = None,
                 max_diff: float | None = None) -> None:
        self.check = check
        self.layer = layer
        self.max_diff = max_diff
        where = "" if layer is None else f" at layer {layer!r}"
        super().__init__(f"Adapter check {check!r} failed{where}: {message}")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of :func:`check_adapter` that did not fail.

    Attributes
    ----------
    name : str
        The check's name (one of :data:`CHECKS`).
    status : {"passed", "skipped"}
        Whether it ran.
    detail : str
        For a passed check, the largest difference relative to its tolerance; for a skipped
        one, the reason.
    """

    name: str
    status: str
    detail: str


# -- helpers -----------------------------------------------------------------------------------
def default_rtol(dtype: torch.dtype) -> float:
    """``sqrt(eps)`` of ``dtype``: two computations of one function agree to half its digits.

    ``1.5e-8`` for float64, ``3.5e-4`` for float32. Differences are measured relative to the
    largest magnitude of the expected tensor, so the tolerance does not depend on units.
    """
    return math.sqrt(torch.finfo(dtype).eps)


def _where(diff: Tensor) -> tuple[int, ...]:
    flat = int(torch.argmax(diff.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, tuple(diff.shape)))


def _max_diff(actual: Tensor, expected: Tensor) -> tuple[float, tuple[int, ...]]:
    """Largest absolute difference (NaN or inf where either side is not finite) and where."""
    diff = (actual.detach() - expected.detach()).abs().to(torch.float64)
    diff = torch.where(torch.isfinite(actual) & torch.isfinite(expected), diff,
                       torch.full_like(diff, math.inf))
    both_same = (actual == expected) | (torch.isnan(actual) & torch.isnan(expected))
    diff = torch.where(both_same, torch.zeros_like(diff), diff)  # equal infinities agree
    if diff.numel() == 0:
        return 0.0, ()
    where = _where(diff)
    return float(diff[where]), where


class _Compare:
    """Tolerance ``atol + rtol * scale`` with ``scale`` the largest finite magnitude expected."""

    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol = rtol
        self.atol = atol
        self.worst: dict[str, float] = {}

    def __call__(self, check: str, layer: str | None, actual: Any, expected: Tensor, what: str,
                 *, scale: float | None = None, hint: str = "") -> float:
        if not isinstance(actual, Tensor):
            raise AdapterContractError(
                check, f"{what} must be a torch.Tensor; got {type(actual).__name__}.",
                layer=layer)
        if tuple(actual.shape) != tuple(expected.shape):
            raise AdapterContractError(
                check, f"{what} has shape {tuple(actual.shape)}; expected "
                f"{tuple(expected.shape)}. {hint}".rstrip(), layer=layer)
        if scale is None:
            finite = expected[torch.isfinite(expected)]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
        tol = self.atol + self.rtol * scale
        diff, where = _max_diff(actual, expected.to(actual.dtype))
        ratio = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
        self.worst[check] = max(self.worst.get(check, 0.0), ratio)
        if not diff <= tol:
            raise AdapterContractError(
                check, f"{what} differs by {diff:.3g} (largest absolute difference, at index "
                f"{where}); tolerance {tol:.3g} = atol + rtol * {scale:.3g}. {hint}".rstrip(),
                layer=layer, max_diff=diff)
        return diff


def _reference_of(adapter: Any, reference_forward: Callable | None) -> Callable | None:
    if reference_forward is not None:
        return reference_forward
    return getattr(adapter, "reference_forward", None)


def _chain_output(adapter: Any, X: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``forward_from(last)`` of the chained segments from the first node layer's activations."""
    layers = tuple(adapter.node_layers)
    with torch.no_grad():
        f = adapter.activations(X, [layers[0]], dtype=dtype, device=device)[layers[0]]
        for layer in layers[:-1]:
            f = adapter.segment(layer, dtype=dtype, device=device)(f)
        return adapter.forward_from(layers[-1], dtype=dtype, device=device)(f)


# -- verify_forward ----------------------------------------------------------------------------
def verify_forward(adapter: Any, X: Any, *, dtype: torch.dtype | str = torch.float64,
                   device: torch.device | str = "cpu", rtol: float | None = None,
                   reference_forward: Callable | None = None) -> float:
    """Check that the adapter's chained segments reproduce the model's own forward pass.

    The activations of the first node layer are pushed through every ``segment`` and the
    final ``forward_from``; the result must equal ``reference_forward(X, dtype=, device=)``
    (the model's own forward on the inputs) within ``rtol`` times the output's largest
    magnitude. Adapters call it on the first batch they see, so that a model the adapter
    does not reproduce (an overridden ``forward``, a hook, dropout in training mode) fails
    before any result is computed from it.

    Parameters
    ----------
    adapter : ModelAdapter
        The adapter to check.
    X : array-like
        Model inputs (already validated by ``adapter.check_input``); one batch.
    dtype : {"float32", "float64"} or torch.dtype, default=torch.float64
        Computation dtype of both sides.
    device : str or torch.device, default="cpu"
        Computation device of both sides.
    rtol : float, default=None
        Relative tolerance; default ``sqrt(eps)`` of ``dtype`` (1.5e-8 for float64).
    reference_forward : callable, default=None
        ``reference_forward(X, *, dtype, device)`` returning what ``forward_from`` returns.
        Default: the adapter's own ``reference_forward`` method.

    Returns
    -------
    max_diff : float
        The largest absolute difference found.

    Raises
    ------
    ValueError
        If the outputs differ by more than the tolerance, or have different shapes.
    TypeError
        If there is no reference forward to compare with.

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib.adapters import MLPAdapter, verify_forward
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
    ...                             torch.nn.Linear(4, 2)).double()
    >>> diff = verify_forward(MLPAdapter(model), torch.randn(5, 3, dtype=torch.float64))
    >>> diff < 1e-12
    True
    """
    dtype = resolve_dtype(dtype)
    device = torch.device(device)
    ref_fn = _reference_of(adapter, reference_forward)
    if ref_fn is None:
        raise TypeError(
            f"{type(adapter).__name__} has no reference_forward(X, *, dtype, device) to compare "
            "its chained segments with; define it (docs/adapters.md) or pass reference_forward=."
        )
    out = _chain_output(adapter, X, dtype, device)
    with torch.no_grad():
        ref = torch.as_tensor(ref_fn(X, dtype=dtype, device=device))
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(
            f"The adapter's chained segments give outputs of shape {tuple(out.shape)} but the "
            f"model's own forward gives {tuple(ref.shape)}; forward_from must return what the "
            "model returns (at the labelled position)."
        )
    rtol = default_rtol(dtype) if rtol is None else rtol
    finite = ref[torch.isfinite(ref)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    diff, where = _max_diff(out, ref.to(out.dtype))
    tol = rtol * max(scale, torch.finfo(dtype).tiny)
    if not diff <= tol:
        raise ValueError(
            f"The adapter's chained segments differ from the model's own forward by {diff:.3g} "
            f"at output index {where} (largest output magnitude {scale:.3g}, tolerance "
            f"{tol:.3g}): the adapter would analyse a different function from the model. "
            "Check that the model is in evaluation mode (model.eval()), has no forward hooks "
            "and uses only modules the adapter supports (docs/adapters.md)."
        )
    return diff


# -- check_adapter -----------------------------------------------------------------------------
class _Context:
    """What the checks share: the adapter, the samples, the activations (computed once)."""

    def __init__(self, adapter, X, dtype, device, compare, generator, reference_forward):
        self.adapter = adapter
        self.X = X
        self.dtype = dtype
        self.device = device
        self.compare = compare
        self.generator = generator
        self.reference_forward = reference_forward
        self._acts: dict[str, Tensor] | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.adapter.node_layers)

    @property
    def acts(self) -> dict[str, Tensor]:
        if self._acts is None:
            with torch.no_grad():
                self._acts = self.adapter.activations(self.X, list(self.layers), **self.kw)
        return self._acts

    @property
    def kw(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "device": self.device}

    def pairs(self):
        return list(zip(self.layers[:-1], self.layers[1:]))

    def segment(self, layer: str) -> Callable[[Tensor], Tensor]:
        return self.adapter.segment(layer, **self.kw)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64).to(
            dtype=self.dtype, device=self.device)

    def random_point(self, layer: str) -> Tensor:
        """The data plus noise of the data's scale; fixed features (constant, scales) kept."""
        f = self.acts[layer]
        n = min(_N_JACOBIAN_SAMPLES, f.shape[0])
        f = f[:n]
        spread = float(f[..., 1:].std())
        noise = self.randn(*f.shape) * (spread if math.isfinite(spread) and spread > 0 else 1.0)
        noise[..., list(self.adapter.fixed_features(layer))] = 0
        return f + noise


def _check_protocol(ctx: _Context) -> None:
    adapter = ctx.adapter
    for name in ("node_layers", "default_metric", *_REQUIRED_METHODS):
        if not hasattr(adapter, name):
            raise AdapterContractError(
                "protocol", f"{type(adapter).__name__} has no {name!r}; every adapter needs "
                "node_layers, default_metric, " + ", ".join(_REQUIRED_METHODS) +
                " (docs/adapters.md).")
    for name in (*_REQUIRED_METHODS, "composite_segment", "reference_forward"):
        if hasattr(adapter, name) and not callable(getattr(adapter, name)):
            raise AdapterContractError("protocol", f"{name!r} must be a method.")
    layers = adapter.node_layers
    if (not isinstance(layers, tuple) or len(layers) < 2
            or not all(isinstance(n, str) for n in layers) or len(set(layers)) != len(layers)):
        raise AdapterContractError(
            "protocol", f"node_layers must be a tuple of at least two distinct str; got "
            f"{layers!r}.")
    if adapter.default_metric not in ("accuracy", "loss"):
        raise AdapterContractError(
            "protocol", f"default_metric must be 'accuracy' or 'loss'; got "
            f"{adapter.default_metric!r}.")


def _check_clone(ctx: _Context) -> None:
    if ctx.adapter.__sklearn_clone__() is not ctx.adapter:
        raise AdapterContractError(
            "clone", "__sklearn_clone__() must return self, so that cloning an estimator "
            "never copies the model.")


def _checked_samples(adapter: Any, X: Any, n_samples: int, *, verify: bool) -> Any:
    """The first ``n_samples`` of ``check_input(X)``; with ``verify``, the ``check_input`` check."""
    checked = adapter.check_input(X)
    if not verify:
        return checked[:n_samples]
    try:
        n = len(checked)
        part = checked[:n_samples]
        n_part = len(part)
    except Exception as exc:  # noqa: BLE001 - any failure here is the contract's failure
        raise AdapterContractError(
            "check_input", f"check_input must return data that supports len() and slicing; "
            f"its {type(checked).__name__} raised {type(exc).__name__}: {exc}") from exc
    if n_part != min(n_samples, n):
        raise AdapterContractError(
            "check_input", f"slicing the checked input ([:{n_samples}]) gave {n_part} samples, "
            f"not {min(n_samples, n)}.")
    return part


def _check_check_input(ctx: _Context) -> None:
    try:
        ctx.adapter.activations(ctx.X[:1], [ctx.layers[0]], **ctx.kw)
    except Exception as exc:  # noqa: BLE001
        raise AdapterContractError(
            "check_input", f"activations() fails on a slice of check_input's output: "
            f"{type(exc).__name__}: {exc}") from exc


def _check_activations(ctx: _Context) -> None:
    acts, n = ctx.acts, len(ctx.X)
    if not isinstance(acts, Mapping) or set(acts) != set(ctx.layers):
        got = sorted(acts) if isinstance(acts, Mapping) else type(acts).__name__
        raise AdapterContractError(
            "activations", f"activations(X, node_layers) must return a dict with exactly the "
            f"requested layers {list(ctx.layers)}; got {got}.")
    for layer in ctx.layers:
        f = acts[layer]
        if not isinstance(f, Tensor) or f.ndim != 3 or f.shape[0] != n or f.shape[2] < 2:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise AdapterContractError(
                "activations", f"activations must be tensors of shape (batch={n}, pos, 1 + d) "
                f"with d >= 1; got {shape}.", layer=layer)
        if f.dtype != ctx.dtype or f.device.type != ctx.device.type:
            raise AdapterContractError(
                "activations", f"activations must have the requested dtype {ctx.dtype} and "
                f"device {ctx.device}; got {f.dtype} on {f.device}.", layer=layer)
        if not bool(torch.isfinite(f).all()):
            raise AdapterContractError("activations", "activations contain NaN or inf.",
                                       layer=layer)
    # Asking for one layer gives that layer alone, and the same values.
    for layer in ctx.layers:
        with torch.no_grad():
            alone = ctx.adapter.activations(ctx.X, [layer], **ctx.kw)
        if set(alone) != {layer}:
            raise AdapterContractError(
                "activations", f"activations(X, [{layer!r}]) returned {sorted(alone)}; it must "
                "return the requested layers only.", layer=layer)
        ctx.compare("activations", layer, alone[layer], acts[layer],
                    "the activations requested alone (vs. with every layer)")


def _check_constant(ctx: _Context) -> None:
    for layer in ctx.layers:
        const = ctx.acts[layer][..., 0]
        bad = const != 1
        if bool(bad.any()):
            where = _where(bad.to(torch.float64))
            raise AdapterContractError(
                "constant", f"the constant coordinate f[..., 0] must be exactly 1 (bias "
                f"folding); it is {float(const[where]):.6g} at index {where}.", layer=layer,
                max_diff=float((const - 1).abs().max()))


def _check_fixed_features(ctx: _Context) -> None:
    for layer in ctx.layers:
        fixed = ctx.adapter.fixed_features(layer)
        width = ctx.acts[layer].shape[-1]
        ok = (isinstance(fixed, tuple) and len(fixed) >= 1
              and all(isinstance(j, (int, np.integer)) and not isinstance(j, bool)
                      for j in fixed))
        if not ok or fixed[0] != 0:
            raise AdapterContractError(
                "fixed_features", f"fixed_features must be a tuple of int starting with 0 (the "
                f"constant); got {fixed!r}.", layer=layer)
        if len(set(fixed)) != len(fixed) or not all(0 <= j < width for j in fixed):
            raise AdapterContractError(
                "fixed_features", f"fixed_features {fixed!r} must be distinct coordinates in "
                f"[0, {width}) (the activations have 1 + d = {width}).", layer=layer)


def _check_segments(ctx: _Context) -> None:
    for layer, nxt in ctx.pairs():
        with torch.no_grad():
            out = ctx.segment(layer)(ctx.acts[layer])
        ctx.compare("segments", layer, out, ctx.acts[nxt],
                    f"segment({layer!r})(activations[{layer!r}]) vs. activations[{nxt!r}]",
                    hint="The segment must compute the next node layer from this one.")
        if out.dtype != ctx.dtype:
            raise AdapterContractError(
                "segments", f"the segment returns {out.dtype}; expected {ctx.dtype}.",
                layer=layer)


def _check_bias_folding(ctx: _Context) -> None:
    for layer, nxt in ctx.pairs():
        f = ctx.acts[layer]
        with torch.no_grad():
            out = ctx.segment(layer)(torch.zeros_like(f))
        scale = float(ctx.acts[nxt].abs().max())
        ctx.compare("bias_folding", layer, out, torch.zeros_like(ctx.acts[nxt]),
                    f"segment({layer!r})(0)", scale=scale,
                    hint="Every bias must be multiplied by the constant f[..., :1], so that "
                    "F(0) = 0.")


def _check_batched(ctx: _Context) -> None:
    for layer, _ in ctx.pairs():
        seg, f = ctx.segment(layer), ctx.acts[layer]
        with torch.no_grad():
            full = seg(f)
            one_by_one = torch.cat([seg(f[b : b + 1]) for b in range(f.shape[0])])
            ctx.compare("batched", layer, one_by_one, full,
                        "the segment applied sample by sample vs. on the batch",
                        hint="Samples must not interact inside a segment.")
            try:
                mapped = vmap(per_sample(seg))(f)
            except Exception as exc:  # noqa: BLE001
                raise AdapterContractError(
                    "batched", f"the segment fails under torch.func.vmap: "
                    f"{type(exc).__name__}: {exc}. Avoid in-place operations, .item() and "
                    "data-dependent control flow.", layer=layer) from exc
            ctx.compare("batched", layer, mapped, full,
                        "the segment under torch.func.vmap vs. on the batch")


def _check_forward_from(ctx: _Context) -> None:
    layers, acts = ctx.layers, ctx.acts
    with torch.no_grad():
        expected = ctx.adapter.forward_from(layers[0], **ctx.kw)(acts[layers[0]])
        if not isinstance(expected, Tensor) or expected.ndim not in (2, 3) or (
                expected.shape[0] != len(ctx.X)):
            shape = tuple(expected.shape) if isinstance(expected, Tensor) else type(expected)
            raise AdapterContractError(
                "forward_from", f"forward_from must return logits of shape (batch, n_classes) "
                f"or (batch, pos, n_classes); got {shape}.", layer=layers[0])
        for layer in layers[1:]:
            out = ctx.adapter.forward_from(layer, **ctx.kw)(acts[layer])
            ctx.compare("forward_from", layer, out, expected,
                        f"forward_from({layer!r})(activations[{layer!r}]) vs. "
                        f"forward_from({layers[0]!r})(activations[{layers[0]!r}])")
        chained = _chain_output(ctx.adapter, ctx.X, ctx.dtype, ctx.device)
        ctx.compare("forward_from", layers[-1], chained, expected,
                    "forward_from of the chained segments vs. forward_from of the first layer")


def _check_reference_forward(ctx: _Context) -> str | None:
    ref_fn = _reference_of(ctx.adapter, ctx.reference_forward)
    if ref_fn is None:
        return (f"{type(ctx.adapter).__name__} has no reference_forward and none was passed, "
                "so the chain is not compared with the model's own forward")
    out = _chain_output(ctx.adapter, ctx.X, ctx.dtype, ctx.device)
    with torch.no_grad():
        ref = torch.as_tensor(ref_fn(ctx.X, dtype=ctx.dtype, device=ctx.device))
    ctx.compare("reference_forward", ctx.layers[-1], out, ref,
                "the chained segments and forward_from vs. the model's own forward",
                hint="The adapter analyses a different function from the model.")
    return None


def _magnitude(f: Tensor) -> float:
    """``max|f|`` over the non-constant coordinates (1 if they are all 0): the input's units."""
    return float(f[..., 1:].abs().max()) or 1.0


def _directional_fd(g: Callable[[Tensor], Tensor], f: Tensor, v: Tensor) -> tuple[Tensor, float]:
    """Central difference of ``g`` at ``f`` along ``v``, step ``h = sqrt(eps) * max|f[..., 1:]|``.

    Its error, round-off ``eps |g| / h`` plus truncation ``h^2 |g'''|``, is of the order
    ``sqrt(eps) * |g| / max|f|`` (free of units; the constant coordinate does not set the
    scale). The step is smaller than the optimal ``eps^(1/3) * max|f|`` so that a
    piecewise-linear segment (ReLU) almost never has a kink within it.
    """
    h = torch.finfo(f.dtype).eps ** 0.5 * _magnitude(f)
    with torch.no_grad():
        deriv = (g(f + h * v) - g(f - h * v)) / (2 * h)
    return deriv, h


def _check_jacobian(ctx: _Context) -> None:
    for layer, _ in ctx.pairs():
        seg = ctx.segment(layer)
        g = per_sample(seg)
        f_data = ctx.acts[layer][:_N_JACOBIAN_SAMPLES]
        for point, f in (("the data", f_data), ("a random point", ctx.random_point(layer))):
            try:
                J_fwd = vmap(jacfwd(g))(f)
            except Exception as exc:  # noqa: BLE001
                raise AdapterContractError(
                    "jacobian", f"torch.func.jacfwd of the segment fails: {type(exc).__name__}: "
                    f"{exc}. Segments must be pure torch functions.", layer=layer) from exc
            J_revs = []
            for b in range(f.shape[0]):
                J_rev = jacrev(g)(f[b])
                J_revs.append(J_rev)
                ctx.compare("jacobian", layer, J_fwd[b], J_rev,
                            f"vmap(jacfwd) vs. jacrev of the segment at {point} (sample {b})")
                if point == "the data":
                    continue  # data can sit on a kink (a bias-free ReLU layer that is all 0)
                # Finite differences at a generic point: the autodiff graph must describe the
                # function (no detach, no custom backward that disagrees with the forward).
                v = ctx.randn(*f[b].shape)
                deriv, h = _directional_fd(g, f[b], v)
                Jv = torch.einsum("...ij,ij->...", J_rev, v)
                with torch.no_grad():
                    g_scale = float(g(f[b]).abs().max()) / _magnitude(f[b])
                eps = torch.finfo(ctx.dtype).eps
                tol = 1e2 * eps**0.5 * max(g_scale, float(Jv.abs().max()))
                ctx.compare("jacobian", layer, deriv, Jv,
                            f"central finite differences vs. jacrev along a random direction "
                            f"at {point} (sample {b}, step {h:.2g})",
                            scale=tol / ctx.compare.rtol,
                            hint="The autodiff graph must describe the segment (no detach(), "
                            "no custom backward that disagrees with the forward).")
            # The generic composite (identity bases) through the library's batched Jacobians.
            eye_in = torch.eye(f.shape[-1], dtype=ctx.dtype, device=ctx.device)
            with torch.no_grad():
                width_out = seg(f[:1]).shape[-1]
            eye_out = torch.eye(width_out, dtype=ctx.dtype, device=ctx.device)
            J_lib = CompositeSegment(seg, eye_in, eye_out).jacobian(f)
            ctx.compare("jacobian", layer, J_lib, torch.stack(J_revs),
                        f"the library's batched Jacobian vs. jacrev at {point}")


def _random_maps(ctx: _Context, layer: str, nxt: str) -> tuple[Tensor, Tensor]:
    """Bases like the library's: fixed features map to themselves, the mean enters column 0.

    ``in_map`` of shape ``(1 + d_in, n_in)`` keeps one direction fewer than the layer has
    free ones (as truncation does); ``out_map`` has shape ``(n_out, 1 + d_out)``.
    """
    def build(width: int, fixed: tuple[int, ...], n_free: int) -> Tensor:
        free = [j for j in range(width) if j not in fixed]
        M = torch.zeros(width, len(fixed) + n_free, dtype=torch.float64)
        for k, j in enumerate(fixed):
            M[j, k] = 1.0
        M[free, len(fixed):] = (torch.eye(len(free), n_free, dtype=torch.float64)
                                + torch.randn(len(free), n_free, generator=ctx.generator,
                                              dtype=torch.float64) / len(free) ** 0.5)
        M[free, 0] = torch.randn(len(free), generator=ctx.generator, dtype=torch.float64)
        return M.to(dtype=ctx.dtype, device=ctx.device)

    w_in, w_out = ctx.acts[layer].shape[-1], ctx.acts[nxt].shape[-1]
    fx_in, fx_out = tuple(ctx.adapter.fixed_features(layer)), tuple(ctx.adapter.fixed_features(nxt))
    n_free_in = w_in - len(fx_in)
    in_map = build(w_in, fx_in, max(1, n_free_in - 1) if n_free_in > 0 else 0)
    out_map = build(w_out, fx_out, w_out - len(fx_out)).T.contiguous()
    return in_map, out_map


def _check_composite_segment(ctx: _Context) -> str | None:
    adapter = ctx.adapter
    if not hasattr(adapter, "composite_segment"):
        return (f"{type(adapter).__name__} has no composite_segment; the generic torch.func "
                "composite is used (checked under 'jacobian')")
    n_checked = 0
    for layer, nxt in ctx.pairs():
        in_map, out_map = _random_maps(ctx, layer, nxt)
        G = adapter.composite_segment(layer, in_map, out_map, **ctx.kw)
        if G is None:
            continue
        n_checked += 1
        for name in ("__call__", "jacobian", "ablated"):
            if not callable(getattr(G, name, None)):
                raise AdapterContractError(
                    "composite_segment", f"composite_segment returned {type(G).__name__}, "
                    f"which has no {name}.", layer=layer)
        seg = ctx.segment(layer)
        pinv = torch.linalg.pinv(in_map)
        z_data = ctx.acts[layer][:_N_JACOBIAN_SAMPLES] @ pinv.T
        z_rand = ctx.random_point(layer) @ pinv.T
        with torch.no_grad():
            out = G(z_data)
            ctx.compare("composite_segment", layer, out, seg(z_data @ in_map.T) @ out_map.T,
                        "composite(z) vs. segment(z @ in_map.T) @ out_map.T")
        single = per_sample(G)
        for point, z in (("the data", z_data), ("a random point", z_rand)):
            J = G.jacobian(z)
            J_ref = torch.stack([jacrev(single)(z[b]) for b in range(z.shape[0])])
            ctx.compare("composite_segment", layer, J, J_ref,
                        f"composite.jacobian(z) vs. jacrev of composite(z) at {point}")
            R = 3
            sources = ctx.randn(z.shape[0], R, out.shape[1])
            ctx.compare("composite_segment", layer, G.jacobian(z, sources),
                        torch.einsum("brs,bsitj->britj", sources, J_ref) / R**0.5,
                        f"composite.jacobian(z, sources) vs. the source-weighted sum of "
                        f"jacrev at {point}")
        n_out, n_in = out_map.shape[0], in_map.shape[1]
        with torch.no_grad():
            ones = torch.ones(n_out, n_in, dtype=ctx.dtype, device=ctx.device)
            ctx.compare("composite_segment", layer, G.ablated(z_data, ones), out,
                        "composite.ablated(z, all-ones masks) vs. composite(z)")
            masks = (torch.rand(n_out, n_in, generator=ctx.generator, dtype=torch.float64)
                     < 0.5).to(ctx.dtype).to(ctx.device)
            masks[:, 0] = 1.0  # edges from the constant are always kept
            masks[: n_out // 2] = masks[0]  # shared masks take the shared-pass path
            ctx.compare("composite_segment", layer, G.ablated(z_data, masks, 3),
                        ablate_by_masks(G, z_data, masks, 3),
                        "composite.ablated(z, masks) vs. composite(z * mask) per output")
    if n_checked == 0:
        return "composite_segment returned None for every layer (the generic composite is used)"
    return None


_RUNNERS: dict[str, Callable[[_Context], str | None]] = {
    "protocol": _check_protocol,
    "clone": _check_clone,
    "check_input": _check_check_input,
    "activations": _check_activations,
    "constant": _check_constant,
    "fixed_features": _check_fixed_features,
    "segments": _check_segments,
    "bias_folding": _check_bias_folding,
    "batched": _check_batched,
    "forward_from": _check_forward_from,
    "reference_forward": _check_reference_forward,
    "jacobian": _check_jacobian,
    "composite_segment": _check_composite_segment,
}


def check_adapter(adapter: Any, X: Any, *, rtol: float | None = None, atol: float = 0.0,
                  dtype: str | torch.dtype = "float64", device: str | torch.device = "cpu",
                  n_samples: int = 8, skip: Mapping[str, str] | None = None,
                  reference_forward: Callable | None = None,
                  random_state: int = 0) -> list[CheckResult]:
    """Run the :class:`~sklearn_lib.adapters.ModelAdapter` contract on a few samples.

    The checks, in order (their names are those of ``skip`` and of the results):

    - ``protocol``: every member exists; ``node_layers`` is a tuple of at least two names;
      ``default_metric`` is "accuracy" or "loss";
    - ``clone``: ``__sklearn_clone__()`` returns the adapter itself;
    - ``check_input``: the checked inputs support ``len`` and slicing, and a slice is accepted
      by ``activations``;
    - ``activations``: a dict with exactly the requested layers, tensors of shape
      ``(batch, pos, 1 + d)`` in the requested dtype and device, finite; a layer requested
      alone has the same values;
    - ``constant``: ``f[..., 0] == 1`` exactly on every layer;
    - ``fixed_features``: a tuple of distinct ints starting with 0, within ``[0, 1 + d)``;
    - ``segments``: ``segment(l)(activations[l]) == activations[l + 1]``;
    - ``bias_folding``: ``segment(l)(0) == 0``;
    - ``batched``: segments treat samples independently, also under ``torch.func.vmap``;
    - ``forward_from``: ``forward_from(l)(activations[l])`` is the same for every layer and
      equals ``forward_from`` of the chained segments;
    - ``reference_forward``: the chained segments and ``forward_from`` reproduce the model's
      own forward (skipped when there is none);
    - ``jacobian``: at the data and at a random point, per-sample ``jacfwd`` under ``vmap``,
      ``jacrev`` and the library's batched Jacobian of the generic composite agree; at the
      random point (where a ReLU network is differentiable almost surely) so do central
      finite differences along a random direction;
    - ``composite_segment``: for adapters that have the closed-form hook, on random bases
      like the library's: ``__call__`` equals ``segment(z @ in_map.T) @ out_map.T``;
      ``jacobian`` (with and without stochastic sources) equals ``jacrev`` of ``__call__`` at
      the data and at a random point; ``ablated`` with all-ones masks equals ``__call__``
      and with random masks equals one forward per mask.

    Numbers are compared as ``|actual - expected| <= atol + rtol * scale`` with ``scale`` the
    largest magnitude of the expected tensor, so the result does not depend on units.

    Parameters
    ----------
    adapter : ModelAdapter
        The adapter to check.
    X : array-like
        Model inputs; the first ``n_samples`` (after ``check_input``) are used.
    rtol : float, default=None
        Relative tolerance; default ``sqrt(eps)`` of ``dtype`` (1.5e-8 for float64, 3.5e-4
        for float32). Finite differences get their own, looser tolerance.
    atol : float, default=0.0
        Absolute tolerance added to every comparison.
    dtype : {"float32", "float64"} or torch.dtype, default="float64"
        The dtype every check computes in.
    device : str or torch.device, default="cpu"
        The device every check computes on.
    n_samples : int, default=8
        How many samples to check on (the Jacobians use the first two).
    skip : dict of str to str, default=None
        Checks not to run, each with the reason (e.g. ``{"jacobian": "too large"}``).
    reference_forward : callable, default=None
        ``reference_forward(X, *, dtype, device)``, the model's own forward returning what
        ``forward_from`` returns; default the adapter's ``reference_forward`` if it has one.
    random_state : int, default=0
        Seed of the random points, directions, bases and masks.

    Returns
    -------
    results : list of CheckResult
        One per check, in order: "passed" (with the largest difference relative to its
        tolerance) or "skipped" (with the reason).

    Raises
    ------
    AdapterContractError
        A ``ValueError`` naming the first failed check, the layer and the largest difference.

    See Also
    --------
    verify_forward : the first-batch check every adapter runs.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib.adapters import MLPAdapter, check_adapter
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                             torch.nn.Linear(4, 2)).double()
    >>> X = np.random.default_rng(0).normal(size=(8, 3))
    >>> results = check_adapter(MLPAdapter(model), X, skip={"batched": "an example"})
    >>> statuses = {r.name: r.status for r in results}
    >>> statuses["segments"], statuses["reference_forward"], statuses["batched"]
    ('passed', 'passed', 'skipped')
    >>> check_adapter(MLPAdapter(model), X, rtol=1e-3)[0]
    CheckResult(name='protocol', status='passed', detail='exact')
    """
    dtype = resolve_dtype(dtype)
    device = torch.device(device)
    skip = dict(skip or {})
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"Unknown checks {unknown} in skip; the checks are {list(CHECKS)}.")
    for name, reason in skip.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"skip[{name!r}] must be a non-empty reason (str); got {reason!r}.")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or (
            n_samples < 1):
        raise ValueError(f"n_samples must be an int >= 1. Got {n_samples!r} instead.")
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"rtol must be a positive float or None. Got {rtol!r} instead.")
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"atol must be a float >= 0. Got {atol!r} instead.")
    compare = _Compare(default_rtol(dtype) if rtol is None else float(rtol), float(atol))
    generator = torch.Generator().manual_seed(random_state)

    results: list[CheckResult] = []
    ctx = _Context(adapter, X, dtype, device, compare, generator, reference_forward)
    for name in CHECKS:
        if name == "check_input":  # the samples every later check uses
            ctx.X = _checked_samples(adapter, X, n_samples, verify=name not in skip)
        if name in skip:
            results.append(CheckResult(name, "skipped", skip[name]))
            continue
        reason = _RUNNERS[name](ctx)
        results.append(_passed(name, compare) if reason is None
                       else CheckResult(name, "skipped", reason))
    return results


def _passed(name: str, compare: _Compare) -> CheckResult:
    if name in compare.worst:
        detail = f"largest difference {compare.worst[name]:.2g} times the tolerance"
    else:
        detail = "exact"
    return CheckResult(name, "passed", detail)

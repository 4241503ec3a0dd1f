"""Closed-form composite segments for :class:`MLPAdapter`.

A segment of an MLP between two node layers is, in the common case, one ``Linear`` layer
followed by elementwise activations (``Linear -> ReLU``) or a ``Linear`` layer alone (the
output layer). With the bias folded through the constant ``f_0`` the linear layer is
``pre = [b | W] f`` and, in basis coordinates (``f = in_map z``, output ``out_map f'``),

.. math::

    G(z) = o_0 (a_0 \\cdot z) + Q\\, \\mathrm{act}(B z), \\qquad
    J(z) = o_0 a_0^T + Q\\, \\mathrm{diag}(\\mathrm{act}'(B z))\\, B,

with ``a_0 = in_map[0]``, ``B = [b | W] in_map``, ``o_0 = out_map[:, 0]`` and
``Q = out_map[:, 1:]``: the composite :class:`~adapters._transformer_closed_forms.MLPComposite`
with ``L0 = o_0 a_0^T`` and ``A = Q``. Its ablation computes one hidden layer per distinct
mask from the columns the mask keeps (or the unablated pre-activations less the columns it
drops), not one forward pass per output feature. A segment without activation is linear,
``G(z) = (o_0 a_0^T + Q B) z``.

:func:`mlp_closed_form` returns ``None`` for other spans (two linear layers, an activation
before the linear layer), and the caller falls back to the generic ``torch.func`` composite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sklearn_lib.adapters._transformer_closed_forms import (
    MLPComposite,
    UnembedComposite,
    _FoldedComposite,
)

__all__ = ["LinearSegmentComposite", "MLPSegmentComposite", "mlp_closed_form"]


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, (nn.Identity, nn.Dropout))


def _activation(modules: Sequence[nn.Module], elementwise: dict):
    """The composed activation, its derivative and an in-place version (ReLU only)."""
    fns = [elementwise[type(m)](m) for m in modules if not _is_identity(m)]
    if not fns:
        return None, None, None

    def act(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    if len(fns) == 1 and all(isinstance(m, nn.ReLU) for m in modules if not _is_identity(m)):
        # The derivative autograd uses: 0 at the kink.
        return act, (lambda x: (x > 0).to(x.dtype)), torch.relu_

    def derivative(x: Tensor) -> Tensor:
        # Elementwise: the forward-mode derivative along ones is the derivative.
        return torch.func.jvp(act, (x,), (torch.ones_like(x),))[1]

    return act, derivative, None


class MLPSegmentComposite(MLPComposite):
    """``G(z) = o0 (a0 . z) + Q act(B z)``: a folded ``Linear -> activation`` segment."""

    def __init__(self, weight: Tensor, bias: Tensor | None, act, act_prime, act_inplace,
                 segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor) -> None:
        _FoldedComposite.__init__(self, segment, in_map, out_map, last=False)
        a0 = in_map[0]
        o0, Q = out_map[:, 0], out_map[:, 1:]
        self.Bm = weight @ in_map[1:]  # (d_hidden, n_in)
        if bias is not None:
            self.Bm = self.Bm + torch.outer(bias, a0)
        self.L0 = torch.outer(o0, a0)  # the constant passes through
        self.A = Q.contiguous()  # (n_out, d_hidden)
        self.act, self.act_prime, self.act_ = act, act_prime, act_inplace


class LinearSegmentComposite(UnembedComposite):
    """``G(z) = Gmat z`` with ``Gmat = o0 a0 + Q B``: a folded ``Linear`` segment."""

    def __init__(self, weight: Tensor, bias: Tensor | None,
                 segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor) -> None:
        _FoldedComposite.__init__(self, segment, in_map, out_map, last=False)
        a0 = in_map[0]
        o0, Q = out_map[:, 0], out_map[:, 1:]
        B = weight @ in_map[1:]
        if bias is not None:
            B = B + torch.outer(bias, a0)
        self.Gmat = torch.outer(o0, a0) + Q @ B  # (n_out, n_in)


def mlp_closed_form(modules: Sequence[nn.Module], elementwise: dict,
                    segment: Callable[[Tensor], Tensor], in_map: Tensor, out_map: Tensor, *,
                    dtype: torch.dtype, device: torch.device) -> _FoldedComposite | None:
    """The closed-form composite of a segment made of ``modules``, or ``None``.

    Covered: one ``nn.Linear`` followed by any number of the adapter's elementwise
    activations (``Identity`` and ``Dropout`` in evaluation are skipped). ``elementwise``
    maps module types to their functions (the adapter's table).
    """
    if not modules or not isinstance(modules[0], nn.Linear):
        return None
    rest = list(modules[1:])
    if any(isinstance(m, nn.Linear) or type(m) not in elementwise for m in rest):
        return None
    linear = modules[0]
    weight = linear.weight.detach().to(device=device, dtype=dtype)
    bias = None if linear.bias is None else linear.bias.detach().to(device=device, dtype=dtype)
    if in_map.shape[0] != 1 + weight.shape[1] or out_map.shape[1] != 1 + weight.shape[0]:
        return None
    in_map = in_map.to(device=device, dtype=dtype)
    out_map = out_map.to(device=device, dtype=dtype)
    act, act_prime, act_inplace = _activation(rest, elementwise)
    if act is None:
        return LinearSegmentComposite(weight, bias, segment, in_map, out_map)
    return MLPSegmentComposite(weight, bias, act, act_prime, act_inplace, segment, in_map,
                               out_map)

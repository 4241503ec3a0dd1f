"""MLPAdapter: node layers, folded segments, activations and Jacobians against the plain model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from torch import nn
from torch.func import jacrev

from sklearn_lib import LocalInteractionBasis
from sklearn_lib.adapters import MLPAdapter, ModelAdapter

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity,
               "silu": nn.SiLU, "leaky": nn.LeakyReLU}


def _with_constant(x: torch.Tensor) -> torch.Tensor:
    """Node-layer form of model inputs: (batch, 1 position, 1 + d), constant first."""
    return torch.cat([torch.ones_like(x[:, :1]), x], dim=1)[:, None, :]


def _chain(adapter: MLPAdapter, f: torch.Tensor) -> torch.Tensor:
    for layer in adapter.node_layers[:-1]:
        f = adapter.segment(layer, **F64)(f)
    return f


mlp_specs = st.tuples(
    st.lists(st.integers(3, 8), min_size=1, max_size=3),  # hidden widths
    st.sampled_from(sorted(ACTIVATIONS)),
    st.integers(0, 10_000),  # seed
    st.booleans(),  # bias
)


@settings(max_examples=20, deadline=None)
@given(spec=mlp_specs)
def test_chained_segments_reproduce_model_and_jacobian(spec):
    hidden, act, seed, bias = spec
    model = random_mlp([4, *hidden, 3], ACTIVATIONS[act], seed=seed, bias=bias)
    adapter = MLPAdapter(model)
    x = torch.as_tensor(np.random.default_rng(seed).normal(size=(6, 4)))
    out = _chain(adapter, _with_constant(x))
    assert out.shape == (6, 1, 4)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), 1.0)
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(out[:, 0, 1:].numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    for b in range(x.shape[0]):
        J_model = jacrev(model)(x[b]).detach()  # (3, 4)
        J_chain = jacrev(lambda f: _chain(adapter, f[None])[0])(_with_constant(x[b : b + 1])[0])
        # (1, 4, 1, 5): drop the constant coordinate of both output and input.
        np.testing.assert_allclose(J_chain[0, 1:, 0, 1:].numpy(), J_model.numpy(),
                                   rtol=1e-10, atol=1e-12)
        # The constant output depends only on the constant input, with derivative 1.
        np.testing.assert_allclose(J_chain[0, 0, 0].numpy(), np.eye(5)[0])


@settings(max_examples=15, deadline=None)
@given(spec=mlp_specs)
def test_segments_vanish_at_zero_and_are_batched(spec):
    hidden, act, seed, bias = spec
    model = random_mlp([4, *hidden, 3], ACTIVATIONS[act], seed=seed, bias=bias)
    adapter = MLPAdapter(model)
    acts = adapter.activations(np.random.default_rng(seed).normal(size=(5, 4)),
                               adapter.node_layers, **F64)
    for layer, nxt in zip(adapter.node_layers[:-1], adapter.node_layers[1:]):
        seg = adapter.segment(layer, **F64)
        zero = torch.zeros_like(acts[layer])
        np.testing.assert_array_equal(seg(zero).numpy(), 0.0)  # F(0) = 0 (bias folding)
        np.testing.assert_allclose(seg(acts[layer]).numpy(), acts[nxt].numpy(), rtol=1e-12,
                                   atol=1e-12)
        # Per-sample evaluation equals the batched one.
        single = torch.cat([seg(acts[layer][b : b + 1]) for b in range(5)])
        np.testing.assert_allclose(single.numpy(), seg(acts[layer]).numpy(), rtol=1e-12,
                                   atol=1e-13)


def test_bias_is_multiplied_by_the_constant():
    model = random_mlp([3, 4, 2], nn.ReLU, seed=3)
    adapter = MLPAdapter(model)
    seg = adapter.segment("input", **F64)
    f = torch.tensor([[[0.5, 1.0, -2.0, 0.3]]], dtype=torch.float64)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    expected = torch.relu(W @ f[0, 0, 1:] + 0.5 * b)
    np.testing.assert_allclose(seg(f)[0, 0].numpy(), [0.5, *expected.numpy()], rtol=1e-12)


def test_default_node_layers():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    assert MLPAdapter(m).node_layers == ("input", "1", "3", "4")
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.ReLU())
    assert MLPAdapter(m).node_layers == ("input", "1", "3")
    assert MLPAdapter(nn.Sequential(nn.Linear(3, 2))).node_layers == ("input", "0")
    named = nn.Sequential()
    named.add_module("fc1", nn.Linear(3, 4))
    named.add_module("act", nn.ReLU())
    named.add_module("out", nn.Linear(4, 2))
    assert MLPAdapter(named).node_layers == ("input", "act", "out")
    # Dropout (evaluation) is an activation-like module: its output is a node layer.
    m = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    assert MLPAdapter(m).node_layers == ("input", "1", "2")


def test_custom_node_layers():
    model = random_mlp([4, 5, 6, 3], nn.ReLU, seed=2)  # modules 0..4
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(7, 4)))
    # Pre-activations as node layers, and a segment spanning two hidden layers.
    adapter = MLPAdapter(model, node_layers=["input", "0", "3", "4"])
    assert adapter.node_layers == ("input", "0", "3", "4")
    acts = adapter.activations(x, adapter.node_layers, **F64)
    with torch.no_grad():
        pre0 = model[0](x)
        h3 = model[3](model[2](model[1](pre0)))
    np.testing.assert_allclose(acts["0"][:, 0, 1:].numpy(), pre0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(acts["3"][:, 0, 1:].numpy(), h3.numpy(), rtol=1e-12)
    seg = adapter.segment("0", **F64)
    np.testing.assert_allclose(seg(acts["0"]).numpy(), acts["3"].numpy(), rtol=1e-12)
    out = _chain(adapter, _with_constant(x))
    with torch.no_grad():
        np.testing.assert_allclose(out[:, 0, 1:].numpy(), model(x).numpy(), rtol=1e-12)
    # A subset of the default node layers.
    adapter = MLPAdapter(model, node_layers=["input", "4"])
    np.testing.assert_allclose(_chain(adapter, _with_constant(x))[:, 0, 1:].numpy(),
                               model(x).detach().numpy(), rtol=1e-12)


def test_activations_match_forward_hooks():
    model = random_mlp([4, 6, 5, 3], nn.GELU, seed=4)
    adapter = MLPAdapter(model)
    captured = {}
    handles = [
        module.register_forward_hook(
            lambda mod, inp, out, name=name: captured.__setitem__(name, out.detach().clone())
        )
        for name, module in model.named_children()
    ]
    try:
        x = np.random.default_rng(1).normal(size=(9, 4))
        with torch.no_grad():
            model(torch.as_tensor(x))
    finally:
        for h in handles:
            h.remove()
    acts = adapter.activations(x, adapter.node_layers, **F64)
    assert set(acts) == set(adapter.node_layers)
    np.testing.assert_allclose(acts["input"][:, 0, 1:].numpy(), x)
    for layer in adapter.node_layers:
        f = acts[layer]
        assert f.shape[:2] == (9, 1)
        np.testing.assert_array_equal(f[..., 0].numpy(), 1.0)
        if layer != "input":
            np.testing.assert_allclose(f[:, 0, 1:].numpy(), captured[layer].numpy(), rtol=1e-12)
    # Only the requested layers come back, in float32 too.
    sub = adapter.activations(x, ["3"], dtype=torch.float32, device=torch.device("cpu"))
    assert list(sub) == ["3"] and sub["3"].dtype == torch.float32
    np.testing.assert_allclose(sub["3"][:, 0, 1:].numpy(), captured["3"].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_forward_from_runs_the_rest_of_the_network():
    model = random_mlp([4, 6, 5, 3], nn.Tanh, seed=5)
    adapter = MLPAdapter(model)
    x = np.random.default_rng(2).normal(size=(8, 4))
    acts = adapter.activations(x, adapter.node_layers, **F64)
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).numpy()
    for layer in adapter.node_layers:
        out = adapter.forward_from(layer, **F64)(acts[layer])
        assert out.shape == (8, 3)
        np.testing.assert_allclose(out.numpy(), logits, rtol=1e-12, atol=1e-12)


def test_protocol_clone_and_input_checks():
    model = random_mlp([4, 5, 3], nn.ReLU)
    adapter = MLPAdapter(model, metric="loss")
    assert isinstance(adapter, ModelAdapter)
    assert adapter.default_metric == "loss"
    assert adapter.fixed_features("1") == (0,)
    assert adapter.__sklearn_clone__() is adapter
    assert clone(LocalInteractionBasis(adapter)).adapter is adapter
    assert "node_layers=['input', '1', '2']" in repr(adapter)
    X = np.random.default_rng(0).normal(size=(3, 4))
    checked = adapter.check_input(X)
    assert isinstance(checked, np.ndarray) and checked.dtype == np.float64
    np.testing.assert_array_equal(checked, X)
    t = torch.as_tensor(X)
    assert isinstance(adapter.check_input(t), torch.Tensor)
    # Integer inputs are numeric and accepted (converted on the forward pass).
    assert adapter.check_input(np.ones((2, 4), dtype=np.int64)).shape == (2, 4)


# -- faithfulness: the adapter analyses the model's own function, or refuses ---------------------
class _ScaledLinear(nn.Linear):
    """Same weights as nn.Linear, different function: the adapter must not read it as Linear."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class _PlainLinear(nn.Linear):
    """A subclass that keeps nn.Linear.forward: accepted."""


class _ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return torch.relu(x - 0.5)


class _NamedTanh(nn.Tanh):
    """A subclass that keeps nn.Tanh.forward: accepted."""


def _mlp_with(first: nn.Module, act: nn.Module | None = None) -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(first, act or nn.ReLU(), nn.Linear(6, 3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def test_overridden_linear_forward_is_refused():
    model = _mlp_with(_ScaledLinear(4, 6))
    with pytest.raises(TypeError, match=r"Module '0' is a _ScaledLinear, a subclass of "
                                        r"nn.Linear that overrides forward"):
        MLPAdapter(model)


def test_overridden_activation_forward_is_refused():
    with pytest.raises(TypeError, match=r"Module '1' is a _ShiftedReLU, a subclass of nn.ReLU "
                                        r"that overrides forward"):
        MLPAdapter(_mlp_with(nn.Linear(4, 6), _ShiftedReLU()))


def test_subclasses_that_keep_forward_are_accepted_and_faithful():
    model = _mlp_with(_PlainLinear(4, 6), _NamedTanh())
    adapter = MLPAdapter(model)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 4)))
    out = _chain(adapter, _with_constant(x))[:, 0, 1:]
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["child", "sequential"])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_forward_hooks_are_refused(where, kind):
    model = _mlp_with(nn.Linear(4, 6))
    target = model[0] if where == "child" else model
    if kind == "forward":
        target.register_forward_hook(lambda mod, inp, out: out + 1.0)
    else:
        target.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2.0,))
    name = "Module '0'" if where == "child" else "The sequential"
    with pytest.raises(ValueError, match=f"{name} .* has forward hooks or forward pre-hooks"):
        MLPAdapter(model)


def test_global_forward_hook_is_refused():
    from torch.nn.modules.module import register_module_forward_hook

    model = _mlp_with(nn.Linear(4, 6))
    handle = register_module_forward_hook(lambda mod, inp, out: out)
    try:
        with pytest.raises(ValueError, match="A global forward hook is registered"):
            MLPAdapter(model)
    finally:
        handle.remove()
    MLPAdapter(model)  # fine once removed


def test_train_mode_dropout_is_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3), nn.ReLU(), nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match=r"Module '1' is Dropout\(p=0.3\) in training mode.*"
                                         r"Call model.eval\(\) first"):
        MLPAdapter(model)
    MLPAdapter(model.eval())
    # Dropout with p = 0 is the identity in both modes.
    MLPAdapter(nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.0), nn.Linear(6, 3)).train())


def test_parametrized_module_is_refused():
    from torch.nn.utils.parametrizations import weight_norm

    model = _mlp_with(nn.Linear(4, 6))
    weight_norm(model[2])
    with pytest.raises(TypeError, match=r"Module '2' \(ParametrizedLinear\) is parametrized.*"
                                        r"remove_parametrizations"):
        MLPAdapter(model)


def test_first_batch_is_checked_against_the_model():
    """A hook added after construction changes the model: the first batch says by how much."""
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=1)
    adapter = MLPAdapter(model)
    X = np.random.default_rng(0).normal(size=(7, 4))
    handle = model[2].register_forward_hook(lambda mod, inp, out: out + 0.5)
    with pytest.raises(ValueError, match="has forward hooks"):
        adapter.activations(X, ["1"], **F64)
    handle.remove()
    # Without a hook to see, the numerical comparison still finds a changed function: here a
    # child replaced after construction (the adapter keeps the modules it was built from).
    model[0] = nn.Linear(4, 6).double()
    with pytest.raises(ValueError, match=r"chained segments differ from the model's own "
                                         r"forward by [0-9.e+-]+ at output index \(\d+, \d+\)"):
        adapter.activations(X, ["1"], **F64)
    with pytest.raises(ValueError, match="differ from the model's own forward"):
        adapter.activations(X, ["1"], **F64)  # still unverified: checked again


def test_first_batch_check_runs_once(monkeypatch):
    model = random_mlp([4, 6, 5, 3], nn.GELU, seed=2)
    adapter = MLPAdapter(model)
    calls = []
    original = adapter.reference_forward
    monkeypatch.setattr(adapter, "reference_forward",
                        lambda X, **kw: calls.append(len(X)) or original(X, **kw))
    X = np.random.default_rng(0).normal(size=(9, 4))
    for _ in range(3):
        adapter.activations(X, adapter.node_layers, **F64)
    assert calls == [9]


def test_train_mode_after_construction_is_caught_on_the_first_batch():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double().eval()
    adapter = MLPAdapter(model)
    model.train()
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\) in training mode"):
        adapter.activations(np.ones((3, 4)), ["input"], **F64)


def test_reference_forward_is_the_model_in_the_requested_dtype():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))  # float32 weights
    adapter = MLPAdapter(model)
    X = np.random.default_rng(0).normal(size=(6, 4))
    ref = adapter.reference_forward(X, **F64)
    assert ref.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_allclose(ref.numpy(), model(torch.as_tensor(X, dtype=torch.float32))
                                   .numpy(), rtol=1e-5, atol=1e-6)
    out = adapter.forward_from("input", **F64)(adapter.activations(X, ["input"], **F64)["input"])
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)


def test_sequential_subclass_with_overridden_forward_is_refused():
    class Skip(nn.Sequential):
        def forward(self, x):
            return super().forward(x) + x[:, :3]

    model = Skip(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(TypeError, match="The model is a Skip, a subclass of nn.Sequential that "
                                        "overrides forward"):
        MLPAdapter(model)

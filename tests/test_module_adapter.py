"""ModuleAdapter: any traced torch module, node layers by module path, against the plain model."""

from __future__ import annotations

import doctest
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gaussian_data, model_labels, random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from torch import nn
from torch.nn import functional as F
from torch.func import jacfwd, jacrev

from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis, quadrature
from sklearn_lib._segments import CompositeSegment
from sklearn_lib.adapters import MLPAdapter, ModelAdapter, ModuleAdapter

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
CF, LAST = "channels_first", "features_last"


# -- models ----------------------------------------------------------------------------------
def _init(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights, non-zero biases and norm affines (so that folding matters), float64."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # norm gains
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith("weight"):
                p.copy_(1.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                        / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=b.dtype))
    return model.eval()


class Block(nn.Module):
    """``x + mlp(norm(x))`` (pre-norm residual block); ``norm`` may be the identity."""

    def __init__(self, d: int, hidden: int, norm: type | None = None, act: type = nn.ReLU):
        super().__init__()
        self.norm = norm(d) if norm is not None else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class ResidualMLP(nn.Module):
    def __init__(self, d_in=4, d=5, hidden=7, n_out=3, n_blocks=2, norm=None, act=nn.ReLU):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([Block(d, hidden, norm, act) for _ in range(n_blocks)])
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def residual_mlp(seed=0, norm=None):
    return _init(ResidualMLP(norm=norm), seed)


def small_cnn(seed=0):
    return _init(nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ), seed)


def nested_flatten(seed=0):
    return _init(nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 4), nn.Tanh())),
        nn.Linear(4, 3),
    ), seed)


def layernorm_mlp(seed=0):
    return _init(nn.Sequential(
        nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(),
        nn.Linear(6, 6), nn.LayerNorm(6), nn.GELU(),
        nn.Linear(6, 3),
    ), seed)


def bn_pool_cnn(seed=0):
    return _init(nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(3, 4, 1), nn.AvgPool2d(2), nn.Flatten(),
        nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2),
    ), seed)


def seq_model(seed=0):
    """Features-last sequences (batch, T, d): Linear, RMSNorm, SiLU acting per position."""
    return _init(nn.Sequential(nn.Linear(3, 5), nn.RMSNorm(5, eps=1e-6), nn.SiLU(),
                               nn.Linear(5, 2)), seed)


# name -> (model factory, node layers, input sample shape, {layer: (module path, layout)})
CASES = {
    "residual": (residual_mlp, ["input", "embed", "blocks.0", "blocks.1", "head"], (4,),
                 {"embed": ("embed", LAST), "blocks.0": ("blocks.0", LAST),
                  "blocks.1": ("blocks.1", LAST), "head": ("head", LAST)}),
    "residual-layernorm": (lambda s=0: residual_mlp(s, nn.LayerNorm),
                           ["input", "embed", "blocks.0", "blocks.1", "output"], (4,),
                           {"embed": ("embed", LAST), "blocks.0": ("blocks.0", LAST),
                            "blocks.1": ("blocks.1", LAST), "output": ("head", LAST)}),
    "cnn": (small_cnn, ["input", "1", "3", "5"], (2, 5, 5),
            {"input": (None, CF), "1": ("1", CF), "3": ("3", CF), "5": ("5", LAST)}),
    "nested-flatten": (nested_flatten, ["input", "1.1", "1.2", "2"], (2, 3),
                       {"input": (None, LAST), "1.1": ("1.1", LAST), "1.2": ("1.2", LAST),
                        "2": ("2", LAST)}),
    "layernorm": (layernorm_mlp, ["input", "0", "2", "3", "5", "6"], (4,),
                  {n: (n, LAST) for n in ["0", "2", "3", "5", "6"]}),
    "bn-pool": (bn_pool_cnn, ["input", "2", "3", "5", "9"], (1, 4, 4),
                {"input": (None, CF), "2": ("2", CF), "3": ("3", CF), "5": ("5", CF),
                 "9": ("9", LAST)}),
    "sequence": (seq_model, ["input", "0", "2", "3"], (4, 3),
                 {"input": (None, LAST), "0": ("0", LAST), "2": ("2", LAST),
                  "3": ("3", LAST)}),
}
# The norms whose scale each layer carries (module paths), for the Jacobian test.
NORMS = {"residual-layernorm": {"embed": "blocks.0.norm", "blocks.0": "blocks.1.norm"},
         "layernorm": {"0": "1", "3": "4"}, "sequence": {"0": "1"}}


def build(case: str, seed: int = 0):
    factory, layers, shape, _ = CASES[case]
    model = factory(seed)
    X = np.random.default_rng(seed).normal(size=(12, *shape))
    adapter = ModuleAdapter(model, layers, example_input=X[:2])
    return model, adapter, X


def fold_index(shape: tuple[int, ...], layout: str) -> np.ndarray:
    """Flat model-layout index of every (position, feature) in the documented node layout."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    if len(shape) == 1:
        return idx[None, :]
    if layout == CF:
        return idx.reshape(shape[0], -1).T
    return idx.reshape(-1, shape[-1])


def plain_outputs(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """Module outputs of the model's own forward, by forward hooks."""
    captured, handles = {}, []
    for path in paths:
        handles.append(model.get_submodule(path).register_forward_hook(
            lambda m, i, o, path=path: captured.__setitem__(path, o.detach().clone())))
    try:
        with torch.no_grad():
            captured["output"] = model(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def chain(adapter: ModuleAdapter, f: torch.Tensor) -> torch.Tensor:
    for layer in adapter.node_layers[:-1]:
        f = adapter.segment(layer, **F64)(f)
    return f


# -- reproduction ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_reproduces_model_and_its_module_outputs(case):
    model, adapter, X = build(case)
    _, layers, shape, spec = CASES[case]
    x = torch.as_tensor(X)
    plain = plain_outputs(model, x, [p for p, _ in spec.values() if p is not None])
    acts = adapter.activations(X, adapter.node_layers, **F64)
    for layer in layers:
        f = acts[layer]
        path, layout = spec.get(layer, (None, LAST))
        value = x if path is None else plain[path]
        idx = fold_index(tuple(value.shape[1:]), layout)
        expected = value.reshape(len(X), -1)[:, idx]  # (batch, pos, d)
        np.testing.assert_array_equal(f[..., 0].numpy(), 1.0)
        np.testing.assert_allclose(f[..., 1 : 1 + idx.shape[1]].numpy(), expected.numpy(),
                                   rtol=1e-10, atol=1e-10)
        # The rest of the network from every node layer gives the model output.
        out = adapter.forward_from(layer, **F64)(f)
        np.testing.assert_allclose(out.numpy(), plain["output"].numpy(), rtol=1e-10, atol=1e-10)
    # Chained segments from the input equal the model, and each segment maps layer to layer.
    out = chain(adapter, acts[layers[0]])
    np.testing.assert_allclose(adapter.forward_from(layers[-1], **F64)(out).numpy(),
                               plain["output"].numpy(), rtol=1e-10, atol=1e-10)
    for a, b in zip(layers[:-1], layers[1:]):
        np.testing.assert_allclose(adapter.segment(a, **F64)(acts[a]).numpy(), acts[b].numpy(),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_conv_padding_modes(mode):
    # (Jacobians through these paddings are not taken here: torch's first one costs seconds.)
    model = _init(nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, padding_mode=mode), nn.Tanh(),
                                nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(6, 2)), 1)
    X = np.random.default_rng(0).normal(size=(5, 2, 6))
    adapter = ModuleAdapter(model, ["input", "1", "2", "4"], example_input=X)
    acts = adapter.activations(X, adapter.node_layers, **F64)
    assert acts["1"].shape == (5, 6, 4) and acts["2"].shape == (5, 2, 4)
    with torch.no_grad():
        np.testing.assert_allclose(chain(adapter, acts["input"])[:, 0, 1:].numpy(),
                                   model(torch.as_tensor(X)).numpy(), rtol=1e-10, atol=1e-10)
        for layer in adapter.node_layers[:-1]:
            seg = adapter.segment(layer, **F64)
            np.testing.assert_array_equal(seg(torch.zeros_like(acts[layer])).numpy(), 0.0)


@settings(max_examples=10, deadline=None)
@given(d=st.integers(2, 5), hidden=st.integers(2, 6), n_blocks=st.integers(1, 3),
       norm=st.sampled_from([None, nn.LayerNorm, nn.RMSNorm]),
       act=st.sampled_from([nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, nn.LeakyReLU]),
       seed=st.integers(0, 10_000))
def test_random_residual_architectures(d, hidden, n_blocks, norm, act, seed):
    model = _init(ResidualMLP(3, d, hidden, 2, n_blocks, norm, act), seed)
    layers = ["input", "embed", *[f"blocks.{i}" for i in range(n_blocks)], "output"]
    adapter = ModuleAdapter(model, layers)
    X = np.random.default_rng(seed).normal(size=(5, 3))
    acts = adapter.activations(X, layers, **F64)
    plain = plain_outputs(model, torch.as_tensor(X), layers[1:-1])
    for layer in layers[1:]:
        np.testing.assert_allclose(acts[layer][:, 0, 1 : 1 + (2 if layer == "output" else d)],
                                   plain[layer], rtol=1e-10, atol=1e-10)
        # The norm scale rides along exactly where a norm reads the layer.
        n_fixed = 2 if norm is not None and layer in layers[1:-2] else 1
        assert len(adapter.fixed_features(layer)) == n_fixed
    for a, b in zip(layers[:-1], layers[1:]):
        seg = adapter.segment(a, **F64)
        np.testing.assert_allclose(seg(acts[a]).numpy(), acts[b].numpy(), rtol=1e-10,
                                   atol=1e-10)
        np.testing.assert_array_equal(seg(torch.zeros_like(acts[a])).numpy(), 0.0)


def test_conv_positions_are_spatial_locations_row_major():
    model, adapter, X = build("cnn")
    acts = adapter.activations(X, ["input", "1", "3"], **F64)
    conv = plain_outputs(model, torch.as_tensor(X), ["1"])["1"]  # (12, 3, 5, 5)
    assert acts["input"].shape == (12, 25, 3) and acts["1"].shape == (12, 25, 4)
    assert acts["3"].shape == (12, 9, 5)  # stride 2: 3 x 3 locations, 4 channels
    h, w, c = 2, 4, 1
    np.testing.assert_allclose(acts["1"][:, h * 5 + w, 1 + c].numpy(), conv[:, c, h, w].numpy(),
                               rtol=1e-12)


def test_norm_scale_is_carried_as_a_fixed_feature():
    model, adapter, X = build("layernorm")
    acts = adapter.activations(X, ["0", "2", "3"], **F64)
    assert adapter.fixed_features("0") == (0, 7) and adapter.fixed_features("3") == (0, 7)
    assert adapter.fixed_features("2") == (0,) and adapter.fixed_features("input") == (0,)
    pre = plain_outputs(model, torch.as_tensor(X), ["0"])["0"]
    scale = torch.sqrt(pre.var(-1, unbiased=False) + model[1].eps)
    np.testing.assert_allclose(acts["0"][:, 0, 7].numpy(), scale.numpy(), rtol=1e-12)
    assert acts["2"].shape == (12, 1, 7)
    # Per position for sequences (RMSNorm: the root mean square, no centring).
    model, adapter, X = build("sequence")
    f = adapter.activations(X, ["0"], **F64)["0"]
    pre = plain_outputs(model, torch.as_tensor(X), ["0"])["0"]
    np.testing.assert_allclose(f[..., 6].numpy(),
                               torch.sqrt(pre.pow(2).mean(-1) + 1e-6).numpy(), rtol=1e-12)
    assert adapter.fixed_features("0") == (0, 6)


def test_norms_inside_a_segment_and_two_norms_on_one_layer():
    # Norms not read directly by a node layer compute their own scale inside the segment.
    model, _, X = build("layernorm")
    adapter = ModuleAdapter(model, ["input", "2", "6"])
    acts = adapter.activations(X, adapter.node_layers, **F64)
    assert all(adapter.fixed_features(n) == (0,) for n in adapter.node_layers)
    with torch.no_grad():
        np.testing.assert_allclose(chain(adapter, acts["input"])[:, 0, 1:].numpy(),
                                   model(torch.as_tensor(X)).numpy(), rtol=1e-10, atol=1e-10)
    for layer in ["input", "2"]:
        seg = adapter.segment(layer, **F64)
        np.testing.assert_array_equal(seg(torch.zeros_like(acts[layer])).numpy(), 0.0)
    # A layer read by two norms carries both scales, in graph order.
    class TwoNorms(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln, self.rms = nn.Linear(3, 4), nn.LayerNorm(4), nn.RMSNorm(4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            return self.out(self.ln(h) + 2.0 * self.rms(h))

    model = _init(TwoNorms(), 4)
    adapter = ModuleAdapter(model, ["input", "fc", "output"])
    X = np.random.default_rng(4).normal(size=(6, 3))
    f = adapter.activations(X, ["fc", "output"], **F64)
    assert adapter.fixed_features("fc") == (0, 5, 6) and f["fc"].shape == (6, 1, 7)
    h = plain_outputs(model, torch.as_tensor(X), ["fc"])["fc"]
    np.testing.assert_allclose(f["fc"][:, 0, 5].numpy(),
                               torch.sqrt(h.var(-1, unbiased=False) + 1e-5).numpy(), rtol=1e-12)
    rms_eps = torch.finfo(torch.float64).eps  # RMSNorm(eps=None)
    np.testing.assert_allclose(f["fc"][:, 0, 6].numpy(),
                               torch.sqrt(h.pow(2).mean(-1) + rms_eps).numpy(), rtol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(f["output"][:, 0, 1:].numpy(), model(torch.as_tensor(X)),
                                   rtol=1e-10, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(case=st.sampled_from(sorted(CASES)), seed=st.integers(0, 1000), scale=st.floats(0.1, 3))
def test_segments_vanish_at_zero(case, seed, scale):
    model, adapter, X = build(case, seed)
    acts = adapter.activations(X * scale, adapter.node_layers, **F64)
    for layer in adapter.node_layers[:-1]:
        seg = adapter.segment(layer, **F64)
        zero = torch.zeros_like(acts[layer])
        np.testing.assert_array_equal(seg(zero).numpy(), 0.0)  # F(0) = 0 (bias folding)
        # Batched evaluation equals per-sample evaluation.
        single = torch.cat([seg(acts[layer][b : b + 1]) for b in range(3)])
        np.testing.assert_allclose(single.numpy(), seg(acts[layer][:3]).numpy(), rtol=1e-12,
                                   atol=1e-13)


def test_bias_is_multiplied_by_the_constant():
    model, adapter, X = build("cnn")
    f = adapter.activations(X[:2], ["input"], **F64)["input"]
    seg = adapter.segment("input", **F64)
    zero_x = f.clone()
    zero_x[..., 1:] = 0.0
    conv = model[0]
    expected = torch.relu(0.5 * conv.bias.detach())  # only the bias, times the constant 0.5
    out = seg(0.5 * zero_x)
    np.testing.assert_allclose(out[..., 0].numpy(), 0.5)
    np.testing.assert_allclose(out[..., 1:].numpy(),
                               expected.expand(2, 25, 3).numpy(), rtol=1e-12)


# -- Jacobians against the model's own forward -----------------------------------------------
def plain_path(model, x, in_path, out_path):
    """``h -> output of out_path`` with ``h`` replacing the output of ``in_path`` (hooks)."""

    def run(h):
        captured = {}
        handles = []
        if in_path is not None:
            handles.append(model.get_submodule(in_path).register_forward_hook(
                lambda m, i, o: h[None]))
        target = model if out_path == "output" else model.get_submodule(out_path)
        handles.append(target.register_forward_hook(
            lambda m, i, o: captured.__setitem__("out", o)))
        try:
            model(x[:1] if in_path is not None else h[None])
        finally:
            for handle in handles:
                handle.remove()
        return captured["out"][0]

    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_segment_jacobians_equal_jacrev_of_the_plain_model(case):
    model, adapter, X = build(case)
    _, layers, shape, spec = CASES[case]
    x = torch.as_tensor(X)
    norms = NORMS.get(case, {})
    acts = adapter.activations(X[:3], layers, **F64)
    paths = {layer: spec.get(layer, (None, LAST))[0] for layer in layers}
    plain = plain_outputs(model, x[:3], [p for p in paths.values() if p is not None])
    for a, b in zip(layers[:-1], layers[1:]):
        seg = adapter.segment(a, **F64)
        (pa, la), (pb, lb) = spec.get(a, (None, LAST)), spec[b]
        for n in range(2):
            h = x[n] if pa is None else plain[pa][n]
            J_plain = jacrev(plain_path(model, x, pa, pb if b != "output" else "output"))(h)
            out_shape = tuple(J_plain.shape[: J_plain.dim() - h.dim()])
            io, ii = fold_index(out_shape, lb), fold_index(tuple(h.shape), la)
            J_plain = J_plain.reshape(int(np.prod(out_shape)), -1)[io.ravel()][:, ii.ravel()]
            J_plain = J_plain.reshape(*io.shape, *ii.shape)
            f = acts[a][n]
            J = jacrev(lambda v: seg(v[None])[0])(f)  # (P_out, D_out, P_in, D_in)
            # Forward mode (used when a layer is narrower than the next) agrees.
            np.testing.assert_allclose(jacfwd(lambda v: seg(v[None])[0])(f).numpy(), J.numpy(),
                                       rtol=1e-12, atol=1e-13)
            d_in, d_out = ii.shape[1], io.shape[1]
            J_feat = J[:, 1 : 1 + d_out, :, 1 : 1 + d_in]
            if a in norms:  # the carried scale also moves with the features: chain rule
                norm = model.get_submodule(norms[a])
                hf = h.reshape(-1)[ii]  # (P_in, d_in)
                xc = hf - hf.mean(-1, keepdim=True) if isinstance(norm, nn.LayerNorm) else hf
                s = f[:, 1 + d_in]
                ds = xc / (d_in * s[:, None])  # d scale_t / d x_(t, j)
                J_scale = J[:, 1 : 1 + d_out, :, 1 + d_in]  # (P_out, d_out, P_in)
                J_feat = J_feat + J_scale[..., None] * ds[None, None]
            np.testing.assert_allclose(J_feat.detach().numpy(), J_plain.detach().numpy(),
                                       rtol=1e-9, atol=1e-10)
            # The constant output depends only on the constant inputs, summing to 1.
            np.testing.assert_allclose(J[:, 0, :, 1:].detach().numpy(), 0.0)
            np.testing.assert_allclose(J[:, 0, :, 0].sum(-1).detach().numpy(), 1.0)


# -- the estimators --------------------------------------------------------------------------
def _pipeline(adapter, X, y):
    graph = LocalInteractionBasis(adapter).fit_transform(X)
    graph = IGEdgeScorer().fit_transform(graph)
    return EdgeAblationSearch().fit_transform(graph, y)


@pytest.mark.parametrize("case", ["residual", "cnn", "nested-flatten", "layernorm", "bn-pool",
                                  "sequence"])
def test_lib_edges_and_ablation_run(case):
    model, adapter, _ = build(case)
    _, layers, shape, _ = CASES[case]
    X = np.random.default_rng(1).normal(size=(40, *shape))
    y = model_labels(model, X)
    graph = _pipeline(adapter, X, y)
    assert graph.layers == tuple(layers)
    assert len(graph.edges) == len(layers) - 1
    for basis, layer in zip(graph.bases, layers):
        assert basis.n_fixed == len(adapter.fixed_features(layer))
    for result in graph.ablation:
        assert 0 <= result.n_edges_needed <= result.n_edges_total
        assert result.base_score == 1.0  # the model's own labels
        assert result.score_at_needed >= 1.0 - result.tolerance


def test_agrees_with_mlp_adapter():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X = gaussian_data(80, 4, seed=6)
    y = model_labels(model, X)
    ref = MLPAdapter(model)
    ours = ModuleAdapter(model, ref.node_layers)
    a, b = _pipeline(ref, X, y), _pipeline(ours, X, y)
    assert a.layers == b.layers
    for ba, bb in zip(a.bases, b.bases):
        np.testing.assert_allclose(bb.C, ba.C, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(bb.eigenvalues, ba.eigenvalues, rtol=1e-9, atol=1e-12)
    for ea, eb in zip(a.edges, b.edges):
        np.testing.assert_allclose(eb, ea, rtol=1e-9, atol=1e-12)
    assert [r.n_edges_needed for r in a.ablation] == [r.n_edges_needed for r in b.ablation]
    assert [r.epsilon for r in a.ablation] == pytest.approx([r.epsilon for r in b.ablation])


@pytest.mark.parametrize("case", ["residual", "cnn", "layernorm", "residual-layernorm"])
def test_ig_completeness_on_segments_without_norm_division(case):
    model, adapter, X = build(case)
    graph = LocalInteractionBasis(adapter).fit_transform(X)
    alphas, weights = quadrature("endpoint", 1)
    scorer = IGEdgeScorer()
    checked = failed = 0
    for p, layer in enumerate(graph.layers[:-1]):
        C_in = torch.as_tensor(graph.bases[p].C)
        F = CompositeSegment(adapter.segment(layer, **F64), torch.as_tensor(graph.bases[p].C_pinv),
                             torch.as_tensor(graph.bases[p + 1].C))
        z = adapter.activations(X, [layer], **F64)[layer] @ C_in.T
        A = scorer._attributions(F, z, alphas, weights, (0, 0, 0),
                                 torch.float64, torch.device("cpu"))
        error = np.abs(A.sum(-1).numpy() - F(z).detach().numpy()).max()
        if adapter.fixed_features(layer) == (0,):
            # ReLU segments with folded biases (and appended norm scales) are positively
            # homogeneous of degree 1, so the endpoint rule is exact.
            assert error < 1e-9
            checked += 1
        else:  # dividing by the carried scale is homogeneous of degree 0: not complete
            assert error > 1e-3
            failed += 1
    assert checked >= 2 and (failed > 0) == (case in NORMS)


# -- protocol, clone, repr, inputs -----------------------------------------------------------
def test_protocol_clone_repr_and_inputs():
    model, adapter, X = build("cnn")
    assert isinstance(adapter, ModelAdapter)
    assert adapter.__sklearn_clone__() is adapter
    assert clone(LocalInteractionBasis(adapter)).adapter is adapter
    assert repr(adapter) == ("ModuleAdapter(model=Sequential, node_layers=['input', '1', '3', "
                             "'5'], metric='accuracy')")
    assert ModuleAdapter(model, ["input", "5"], metric="loss").default_metric == "loss"
    assert adapter.input_shape_ == (2, 5, 5)
    assert isinstance(adapter.check_input(torch.as_tensor(X)), torch.Tensor)
    # Pickling keeps a working adapter over its own copy of the model.
    before = adapter.activations(X, ["5"], **F64)["5"]
    twin = pickle.loads(pickle.dumps(adapter))
    with torch.no_grad():
        model[5].bias.add_(1.0)
    np.testing.assert_allclose(twin.activations(X, ["5"], **F64)["5"].numpy(), before.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(adapter.activations(X, ["5"], **F64)["5"][..., 1:].numpy(),
                               before[..., 1:].numpy() + 1.0, rtol=1e-12)
    # Without example_input: the channel count is checked, the spatial size fixed by a batch.
    lazy = ModuleAdapter(model, ["input", "3", "5"])
    with pytest.raises(ValueError, match=r"does not know the model's input shape.*example_input"):
        lazy.segment("input", **F64)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2, \.\.\.\) with 4 dimensions"):
        lazy.check_input(np.zeros((3, 1, 5, 5)))
    lazy.activations(X, ["3"], **F64)
    assert lazy.input_shape_ == (2, 5, 5)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2, 5, 5\); got \(3, 2, 6, 6\)"):
        lazy.check_input(np.zeros((3, 2, 6, 6)))
    # Linear-first models know their input shape.
    mlp = ModuleAdapter(random_mlp([4, 5, 3]), ["input", "1", "2"])
    assert mlp.segment("input", **F64)(torch.zeros(2, 1, 5, dtype=torch.float64)).shape == (
        2, 1, 6)
    with pytest.raises(ValueError, match=r"shape \(n_samples, \.\.\., 4\); got \(3, 5\)"):
        ModuleAdapter(random_mlp([4, 5, 3]), ["input", "2"]).check_input(np.zeros((3, 5)))


@pytest.mark.parametrize("X,match", [
    (np.zeros((0, 4)), "Found 0 samples"),
    (np.full((2, 4), np.nan), "NaN or inf"),
    (torch.full((2, 4), float("inf")), "NaN or inf"),
    (np.array([["a"] * 4]), "real numbers"),
    (torch.zeros(2, 4, dtype=torch.bool), "real numbers"),
    (np.zeros((3, 5)), r"shape \(n_samples, 4\); got \(3, 5\)"),
])
def test_check_input_errors(X, match):
    adapter = ModuleAdapter(random_mlp([4, 5, 3]), ["input", "2"], example_input=np.zeros((1, 4)))
    with pytest.raises(ValueError, match=match):
        adapter.check_input(X)


def test_docs_example_runs():
    """The code in docs/module_adapter.md runs as written."""
    text = (Path(__file__).parents[1] / "docs" / "module_adapter.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/module_adapter.md", "exec"), namespace)
    graph = namespace["graph"]
    assert graph.layers == ("input", "embed", "blocks.0", "blocks.1", "head")
    assert all(r.score_at_needed >= r.base_score - r.tolerance for r in graph.ablation)


def test_doctests():
    import sklearn_lib.adapters._module as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# -- errors ----------------------------------------------------------------------------------
class AttnBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 1, batch_first=True)

    def forward(self, x):
        return x + self.attn(x, x, x)[0]


class Wrap(nn.Module):
    """``head(body(x))`` with a configurable ``body`` written as a function of ``self``."""

    def __init__(self, body, **modules):
        super().__init__()
        for name, m in modules.items():
            self.add_module(name, m)
        self.body = body

    def forward(self, x):
        return self.body(self, x)


class OverridingReLU(nn.ReLU):
    def forward(self, x):
        return torch.relu(x) + 1.0


class PlainReLU(nn.ReLU):
    pass


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(AttnBlock(4), AttnBlock(4)))
    with pytest.raises(ValueError, match=r"cannot fold biases through module '1\.0\.attn' of type "
                                         r"MultiheadAttention; supported: Linear.*docs/adapters"):
        ModuleAdapter(model, ["input", "0"])
    with pytest.raises(ValueError, match=r"module '1' of type OverridingReLU \(its forward "
                                         "overrides"):
        ModuleAdapter(nn.Sequential(nn.Linear(3, 4), OverridingReLU()), ["input", "1"])
    # A subclass that keeps ReLU's forward is fine.
    model = _init(nn.Sequential(nn.Linear(3, 4), PlainReLU(), nn.Linear(4, 2)), 0)
    adapter = ModuleAdapter(model, ["input", "1", "2"])
    np.testing.assert_allclose(adapter.activations(np.ones((2, 3)), ["2"], **F64)["2"][:, 0, 1:],
                               model(torch.ones(2, 3, dtype=torch.float64)).detach())
    with pytest.raises(ValueError, match=r"through 'sigmoid' in the model's forward"):
        ModuleAdapter(Wrap(lambda s, x: torch.sigmoid(s.fc(x)), fc=nn.Linear(3, 2)),
                      ["input", "fc"])
    with pytest.raises(ValueError, match="product or quotient of two activations"):
        ModuleAdapter(Wrap(lambda s, x: s.fc(x) * x, fc=nn.Linear(3, 3)),
                      ["input", "fc"])
    with pytest.raises(ValueError, match="indexing by an activation"):
        ModuleAdapter(Wrap(lambda s, x: x[s.fc(x)], fc=nn.Linear(3, 3)), ["input", "fc"])
    with pytest.raises(ValueError, match="return_indices=True"):
        ModuleAdapter(nn.Sequential(nn.MaxPool1d(2, return_indices=True)), ["input", "0"])
    bn = nn.BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="without running statistics"):
        ModuleAdapter(nn.Sequential(nn.Linear(3, 3), bn), ["input", "1"])


def test_training_mode_is_refused():
    model = bn_pool_cnn().train()
    with pytest.raises(ValueError, match=r"Module '1' \(BatchNorm2d\) is in training mode.*eval"):
        ModuleAdapter(model, ["input", "2"])
    model = bn_pool_cnn()
    adapter = ModuleAdapter(model, ["input", "2", "9"], example_input=np.zeros((1, 1, 4, 4)))
    model[8].train()  # after construction: refused when a segment is built
    with pytest.raises(ValueError, match=r"Module '8' \(Dropout\) is in training mode"):
        adapter.segment("2", **F64)


def test_unknown_and_misordered_node_layers():
    model = residual_mlp()
    with pytest.raises(ValueError, match=r"Unknown node layer 'blocks\.7': no module has this "
                                         r"path.*Available: 'input', 'embed'"):
        ModuleAdapter(model, ["input", "blocks.7"])
    model.unused = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'unused': it is not called in the model's forward"):
        ModuleAdapter(model, ["input", "unused"])
    with pytest.raises(ValueError, match="at least two distinct node layers in forward order"):
        ModuleAdapter(model, ["blocks.0", "embed"])
    with pytest.raises(ValueError, match="at least two distinct node layers in forward order"):
        ModuleAdapter(model, ["head", "output"])  # the same node layer twice
    with pytest.raises(ValueError, match="at least two distinct"):
        ModuleAdapter(model, ["input"])
    with pytest.raises(TypeError, match="node_layers must be a sequence of names"):
        ModuleAdapter(model, "input")
    adapter = ModuleAdapter(model, ["input", "blocks.1", "head"])
    with pytest.raises(ValueError, match=r"Unknown node layer 'blocks\.0'\. This adapter's"):
        adapter.segment("blocks.0", **F64)
    with pytest.raises(ValueError, match="'head' is the last node layer"):
        adapter.segment("head", **F64)


def test_non_cut_node_layer_names_the_skip_connection():
    model = residual_mlp()
    with pytest.raises(ValueError, match=r"'blocks\.0\.mlp\.0' is not a causal cut: 'add' in "
                                         r"module 'blocks\.0' reads 'embed'.*residual"):
        ModuleAdapter(model, ["input", "blocks.0.mlp.0", "head"])
    # The block's output is a cut.
    ModuleAdapter(model, ["input", "blocks.0.mlp.0", "head"][:1] + ["blocks.0", "head"])
    side = Wrap(lambda s, x: (s.side(x), s.fc(x))[1], side=nn.Linear(3, 3), fc=nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'side' is not a causal cut: the model output does "
                                         "not depend on it"):
        ModuleAdapter(side, ["input", "side", "output"])


def test_model_structure_errors():
    with pytest.raises(TypeError, match="needs a torch.nn.Module; got list"):
        ModuleAdapter([nn.Linear(2, 2)], ["input", "0"])
    with pytest.raises(ValueError, match="metric must be 'accuracy' or 'loss'. Got 'f1'"):
        ModuleAdapter(nn.Linear(2, 2), ["input", "output"], metric="f1")

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ValueError, match="forward takes 2 arguments"):
        ModuleAdapter(TwoInputs(), ["input", "output"])
    with pytest.raises(ValueError, match="returns a tuple"):
        ModuleAdapter(Wrap(lambda s, x: (s.fc(x), x), fc=nn.Linear(2, 2)), ["input", "fc"])

    def branchy(s, x):
        return s.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="could not trace Wrap with torch.fx.*control flow"):
        ModuleAdapter(Wrap(branchy, fc=nn.Linear(2, 2)), ["input", "fc"])
    twice = Wrap(lambda s, x: s.fc(s.fc(x)), fc=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'fc' is called more than once"):
        ModuleAdapter(twice, ["input", "fc"])
    const = Wrap(lambda s, x: s.fc(x) + s.k(s.fc.weight[0]), fc=nn.Linear(2, 2), k=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="output of module 'k' does not depend on the model"):
        ModuleAdapter(const, ["input", "k"])
    flat = Wrap(lambda s, x: s.fc(x).reshape(-1), fc=nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'reshape' in the model's forward \(it mixes or drops "
                                         "the batch dimension"):
        ModuleAdapter(flat, ["input", "fc"], example_input=np.zeros((2, 2)))
    with pytest.raises(ValueError,
                       match=r"fails on inputs of shape \(n_samples, 3\) \(RuntimeError"):
        ModuleAdapter(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)), ["input", "1"],
                      example_input=np.zeros((2, 3)))
    norm2d = nn.Sequential(nn.Linear(3, 6), nn.Unflatten(1, (2, 3)), nn.LayerNorm((2, 3)))
    with pytest.raises(ValueError, match="module '1' of type Unflatten"):
        ModuleAdapter(norm2d, ["input", "0"])
    ln_cf = nn.Sequential(nn.Conv1d(2, 3, 1), nn.LayerNorm(4))  # normalises length, not channels
    with pytest.raises(ValueError, match=r"Node layer '0' feeds module '1', which does not "
                                         "normalise the feature dimension"):
        ModuleAdapter(ln_cf, ["input", "0", "1"], example_input=np.zeros((1, 2, 4)))


def test_first_batch_check_names_the_largest_difference():
    model = residual_mlp()
    adapter = ModuleAdapter(model, ["input", "blocks.0", "head"])
    handle = model.blocks[1].mlp[0].register_forward_hook(lambda m, i, o: 2 * o)  # fx cannot see
    try:
        with pytest.raises(ValueError, match=r"differ from the model's own forward by .* at "
                                             r"output index \(\d+, \d+\).*forward hooks"):
            adapter.activations(np.ones((3, 4)), ["input"], **F64)
        adapter = ModuleAdapter(model, ["input", "head"])
        handle.remove()
        handle = model.head.register_forward_hook(lambda m, i, o: o[:, :1])
        with pytest.raises(ValueError, match=r"outputs of shape \(3, 3\) but the model's own "
                                             r"forward gives \(3, 1\)"):
            adapter.activations(np.ones((3, 4)), ["input"], **F64)
    finally:
        handle.remove()
    adapter.activations(np.ones((3, 4)), ["input"], **F64)  # checked once, then fine


def test_constants_added_and_scaled_are_folded():
    """``x * 2 + offset`` (a buffer), ``x - 1`` and a tensor made from ``x``'s shape, dtype
    and device: the added constants are biases."""
    model = Wrap(lambda s, x: torch.relu(s.fc(x) * 2.0 + s.offset) - 1.0 + (-s.fc2(x)) / 4
                 + torch.ones(4, dtype=x.dtype, device=x.device) * x.size(-1) ** -0.5,
                 fc=nn.Linear(3, 4), fc2=nn.Linear(3, 4))
    model.register_buffer("offset", torch.tensor([0.5, -0.5, 1.0, 0.0]))
    model = _init(model, 3)
    model.offset = model.offset.double()
    adapter = ModuleAdapter(model, ["input", "output"])
    X = np.random.default_rng(0).normal(size=(5, 3))
    f = adapter.activations(X, ["input", "output"], **F64)
    with torch.no_grad():
        np.testing.assert_allclose(f["output"][:, 0, 1:].numpy(), model(torch.as_tensor(X)),
                                   rtol=1e-12)
    seg = adapter.segment("input", **F64)
    np.testing.assert_array_equal(seg(torch.zeros_like(f["input"])).numpy(), 0.0)


def test_float32_and_float32_models():
    model, adapter, X = build("residual-layernorm")
    f64 = adapter.activations(X, adapter.node_layers, **F64)
    f32 = adapter.activations(X, adapter.node_layers, dtype=torch.float32, device="cpu")
    for layer in adapter.node_layers:
        assert f32[layer].dtype == torch.float32
        np.testing.assert_allclose(f32[layer].numpy(), f64[layer].numpy(), rtol=1e-4, atol=1e-5)
    # A float32 model, computed in float64: the first-batch check tolerates float32 rounding.
    model32 = small_cnn().float()
    X = np.random.default_rng(0).normal(size=(6, 2, 5, 5)).astype(np.float32)
    adapter = ModuleAdapter(model32, ["input", "3", "5"])
    out = adapter.activations(X, ["5"], **F64)["5"][:, 0, 1:]
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model32(torch.as_tensor(X)).numpy(), rtol=1e-5,
                                   atol=1e-5)


def test_functional_ops_reshapes_and_shape_queries():
    """``view(x.size(0), -1)``, ``reshape(x.shape[0], ...)``, ``torch.flatten``, indexing,
    ``torch.add(..., alpha=)``, ``torch.sub`` and functional activations, traced and folded."""

    def body(s, x):  # x: (batch, 2, 3, 4)
        h = s.conv(x)  # (batch, 3, 3, 4)
        h = torch.add(h, F.leaky_relu(h, 0.2), alpha=0.5)
        h = h.view(h.size(0), -1)  # (batch, 36)
        h = torch.sub(s.fc(h), F.gelu(s.fc(h)))  # (batch, 6)
        h = h.reshape(h.shape[0], 2, 3)  # features last: 2 positions of 3
        h = F.elu(s.fc2(h))[:, -1]  # the last position: (batch, 3)
        out = torch.flatten(h.tanh(), 1)
        return out + s.fc3(x[:, 0, 0].relu()) if s.skip else out

    model = _init(Wrap(body, conv=nn.Conv2d(2, 3, 1), fc=nn.Linear(36, 6), fc2=nn.Linear(3, 3),
                       fc3=nn.Linear(4, 3)), 2)
    model.skip = False
    X = np.random.default_rng(2).normal(size=(7, 2, 3, 4))
    adapter = ModuleAdapter(model, ["input", "conv", "fc2", "output"], example_input=X)
    acts = adapter.activations(X, adapter.node_layers, **F64)
    assert acts["conv"].shape == (7, 12, 4) and acts["fc2"].shape == (7, 2, 4)
    with torch.no_grad():
        np.testing.assert_allclose(acts["output"][:, 0, 1:].numpy(),
                                   model(torch.as_tensor(X)).numpy(), rtol=1e-10, atol=1e-10)
    for layer in adapter.node_layers[:-1]:
        seg = adapter.segment(layer, **F64)
        np.testing.assert_array_equal(seg(torch.zeros_like(acts[layer])).numpy(), 0.0)
    # With fc3 reading the input directly, "conv" is not a cut.
    model.skip = True
    with pytest.raises(ValueError, match="'conv' is not a causal cut: 'add' in the model's "
                                         "forward reads 'fc3'"):
        ModuleAdapter(model, ["input", "conv", "output"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_passes_the_adapter_contract_checks(case):
    """Every checked model passes ``check_adapter`` (the public contract kit), forward included."""
    from sklearn_lib.adapters import check_adapter

    _, adapter, X = build(case)
    results = {r.name: r.status for r in check_adapter(adapter, X, n_samples=4)}
    assert results["reference_forward"] == "passed"
    assert results["jacobian"] == "passed" and results["bias_folding"] == "passed"
    assert "failed" not in results.values()

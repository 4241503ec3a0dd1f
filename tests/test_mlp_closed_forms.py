"""Closed-form MLP segments and chained (GIB) Jacobians against the generic torch.func path.

``MLPAdapter.composite_segment`` (adapters/_mlp_closed_forms.py) must give the same ``G(z)``,
per-sample Jacobians (``jacrev``), stochastic-source Jacobians and ablated forward passes as
``CompositeSegment(adapter.segment(layer), in_map, out_map)``; a span of several segments
(GIB) differentiated by the chain rule must equal the generic Jacobian of the whole span.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import gaussian_data, random_mlp
from sklearn_lib import GlobalInteractionBasis
from sklearn_lib._segments import ChainedComposite, CompositeSegment, ablate_by_masks, make_composite
from sklearn_lib.adapters import MLPAdapter
from sklearn_lib.adapters._mlp_closed_forms import (
    LinearSegmentComposite,
    MLPSegmentComposite,
)

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
ACTIVATIONS = [nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, nn.LeakyReLU]


def maps(d_in: int, d_out: int, n_in: int, n_out: int, seed: int):
    """``in_map`` keeping the constant the constant, dense ``out_map``."""
    gen = torch.Generator().manual_seed(seed)
    in_map = torch.randn(1 + d_in, n_in, generator=gen, dtype=torch.float64)
    in_map[0] = 0.0
    in_map[0, 0] = 1.0
    out_map = torch.randn(n_out, 1 + d_out, generator=gen, dtype=torch.float64)
    return in_map, out_map


def both(adapter, layer, in_map, out_map):
    fast = adapter.composite_segment(layer, in_map, out_map, **F64)
    generic = CompositeSegment(adapter.segment(layer, **F64), in_map, out_map)
    return fast, generic


def points(n_in: int, seed: int, batch: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 100)
    z = torch.randn(batch, 1, n_in, generator=gen, dtype=torch.float64)
    z[..., 0] = 1.0
    return z


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hidden_segment_equals_generic(activation):
    model = random_mlp([4, 6, 3], activation, seed=2)
    adapter = MLPAdapter(model)
    in_map, out_map = maps(4, 6, 5, 4, seed=0)
    fast, generic = both(adapter, "input", in_map, out_map)
    assert isinstance(fast, MLPSegmentComposite)
    z = points(5, 0)
    torch.testing.assert_close(fast(z), generic(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.jacobian(z), generic.jacobian(z), rtol=1e-12, atol=1e-12)
    # Against reverse mode explicitly, sample by sample: (1, n_out, 1, n_in) each.
    rev = torch.stack([torch.func.jacrev(lambda zb: generic(zb[None])[0])(zb) for zb in z])
    torch.testing.assert_close(fast.jacobian(z), rev, rtol=1e-12, atol=1e-12)
    sources = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64).expand(7, 2, 1)
    torch.testing.assert_close(fast.jacobian(z, sources), generic.jacobian(z, sources),
                               rtol=1e-12, atol=1e-12)


def test_output_segment_is_linear_and_equals_generic():
    model = random_mlp([4, 6, 3], nn.ReLU, seed=2)
    adapter = MLPAdapter(model)
    in_map, out_map = maps(6, 3, 7, 4, seed=1)
    fast, generic = both(adapter, "1", in_map, out_map)
    assert isinstance(fast, LinearSegmentComposite)
    z = points(7, 1)
    torch.testing.assert_close(fast(z), generic(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.jacobian(z), generic.jacobian(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.jacobian_gram(z, None, 1), generic.jacobian_gram(z, None, 1),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), bias=st.booleans(), n_in=st.integers(2, 8),
       n_out=st.integers(1, 8), act=st.sampled_from(ACTIVATIONS))
def test_closed_form_jacobian_and_ablation_property(seed, bias, n_in, n_out, act):
    """Jacobians equal jacrev and ablation equals one forward per mask, for random maps."""
    model = random_mlp([3, 5, 2], act, seed=seed % 50, bias=bias)
    adapter = MLPAdapter(model)
    in_map, out_map = maps(3, 5, n_in, n_out, seed)
    fast, generic = both(adapter, "input", in_map, out_map)
    z = points(n_in, seed)
    torch.testing.assert_close(fast.jacobian(z), generic.jacobian(z), rtol=1e-10, atol=1e-10)
    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n_out, n_in, generator=gen) < 0.5).to(torch.float64)
    masks[:, 0] = 1.0
    torch.testing.assert_close(fast.ablated(z, masks), ablate_by_masks(generic, z, masks),
                               rtol=1e-10, atol=1e-10)


def test_spans_not_covered_fall_back():
    """A segment of two Linear layers has no closed form: None, and the generic composite."""
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=0)
    adapter = MLPAdapter(model, node_layers=["input", "3", "4"])  # input -> "3": L, R, L, R
    in_map, out_map = maps(4, 5, 5, 6, seed=0)
    assert adapter.composite_segment("input", in_map, out_map, **F64) is None
    assert adapter.composite_segment("4", in_map, out_map, **F64) is None  # the last layer
    G = make_composite(adapter, ["input", "3"], in_map, out_map, **F64)
    assert type(G) is CompositeSegment


def test_dropout_and_identity_are_skipped():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Tanh(), nn.Identity(),
                          nn.Linear(4, 2)).double().eval()
    adapter = MLPAdapter(model, node_layers=["input", "3", "4"])
    in_map, out_map = maps(3, 4, 4, 3, seed=5)
    fast, generic = both(adapter, "input", in_map, out_map)
    assert isinstance(fast, MLPSegmentComposite)
    z = points(4, 5)
    torch.testing.assert_close(fast.jacobian(z), generic.jacobian(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_sources", [False, True])
def test_chained_jacobian_equals_generic_span(with_sources):
    """GIB: the chain rule through closed forms equals jacrev of the whole span."""
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=4)
    adapter = MLPAdapter(model)
    layers = list(adapter.node_layers)  # input, 1, 3, 4
    in_map, out_map = maps(4, 3, 5, 3, seed=2)
    chained = make_composite(adapter, layers, in_map, out_map, **F64)
    assert isinstance(chained, ChainedComposite)
    assert all(not type(link) is CompositeSegment for link in chained.links)
    segments = [adapter.segment(layer, **F64) for layer in layers[:-1]]

    def span(f):
        for seg in segments:
            f = seg(f)
        return f

    generic = CompositeSegment(span, in_map, out_map)
    z = points(5, 3)
    sources = None
    if with_sources:
        sources = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64).reshape(1, 3, 1)
        sources = sources.expand(7, 3, 1)
    torch.testing.assert_close(chained(z), generic(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chained.jacobian(z, sources), generic.jacobian(z, sources),
                               rtol=1e-12, atol=1e-12)


def test_gib_fit_equals_generic_path(monkeypatch):
    """The whole GIB fit through chained closed forms equals the generic torch.func path."""
    model = random_mlp([4, 6, 5, 3], nn.Tanh, seed=6)
    X = gaussian_data(150, 4, seed=6)
    fast = GlobalInteractionBasis(MLPAdapter(model), batch_size=64).fit(X)

    class Plain(MLPAdapter):  # the same model without closed forms
        def composite_segment(self, *args, **kwargs):
            return None

    import sklearn_lib._interaction as interaction

    def generic_composite(adapter, layers, in_map, out_map, *, dtype, device, chunk_size=None):
        segments = [adapter.segment(layer, dtype=dtype, device=device) for layer in layers[:-1]]

        def span(f):
            for seg in segments:
                f = seg(f)
            return f

        return CompositeSegment(span, in_map, out_map, chunk_size)

    monkeypatch.setattr(interaction, "make_composite", generic_composite)
    slow = GlobalInteractionBasis(Plain(model), batch_size=64).fit(X)
    for a, b in zip(fast.bases_, slow.bases_):
        np.testing.assert_allclose(a.C, b.C, rtol=1e-9, atol=1e-9 * np.abs(b.C).max())


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
@pytest.mark.parametrize("last_only", [False, True])
def test_chained_transformer_jacobian_equals_generic_span(last_only):
    """GIB on a transformer: attention, MLP and unembedding closed forms chained."""
    tl = pytest.importorskip("transformer_lens")
    from sklearn_lib.adapters import HookedTransformerAdapter

    cfg = tl.HookedTransformerConfig(
        n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=12, n_ctx=3, d_vocab=7,
        act_fn="relu", normalization_type=None, seed=0, dtype=torch.float64, device="cpu",
        initializer_range=0.4)
    adapter = HookedTransformerAdapter(tl.HookedTransformer(cfg).eval(),
                                       **({"last_position_from": "blocks.0.hook_resid_mid"} if last_only else {}))
    layers = list(adapter.node_layers)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (5, 3), generator=gen)
    acts = adapter.activations(tokens, [layers[0], layers[-1]], **F64)
    d_in, d_out = acts[layers[0]].shape[-1], acts[layers[-1]].shape[-1]
    in_map, out_map = maps(d_in - 1, d_out - 1, 6, 5, seed=7)
    chained = make_composite(adapter, layers, in_map, out_map, **F64)
    assert isinstance(chained, ChainedComposite)
    segments = [adapter.segment(layer, **F64) for layer in layers[:-1]]

    def span(f):
        for seg in segments:
            f = seg(f)
        return f

    generic = CompositeSegment(span, in_map, out_map)
    z = torch.einsum("btd,dn->btn", acts[layers[0]], torch.linalg.pinv(in_map).T)
    torch.testing.assert_close(chained(z), generic(z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chained.jacobian(z), generic.jacobian(z), rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), start=st.integers(0, 2),
       act=st.sampled_from(ACTIVATIONS + [nn.Identity]))
def test_closed_form_jacobian_gram_equals_generic(seed, start, act):
    """The Gram matrix of the Jacobians without forming them equals the einsum over J."""
    model = random_mlp([3, 5, 2], act, seed=seed % 50)
    adapter = MLPAdapter(model)
    in_map, out_map = maps(3, 5, 4, 3, seed)
    fast, generic = both(adapter, "input", in_map, out_map)
    z = points(4, seed, batch=9)
    sources = torch.ones(9, 2, 1, dtype=torch.float64)
    sources[:, 1] = -1.0
    expected = generic.jacobian_gram(z, None, start)
    torch.testing.assert_close(fast.jacobian_gram(z, None, start), expected, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(fast.jacobian_gram(z, sources, start), expected, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(generic.jacobian_gram(z, sources, start), expected, rtol=1e-10,
                               atol=1e-10)


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
@pytest.mark.parametrize("last_only", [False, True])
def test_transformer_mlp_jacobian_gram_equals_generic(last_only):
    """The transformer MLP sublayer's closed-form Gram (residual in L0) equals the einsum."""
    tl = pytest.importorskip("transformer_lens")
    from sklearn_lib.adapters import HookedTransformerAdapter

    cfg = tl.HookedTransformerConfig(
        n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=12, n_ctx=3, d_vocab=7,
        act_fn="gelu", normalization_type=None, seed=0, dtype=torch.float64, device="cpu",
        initializer_range=0.4)
    kw = {"last_position_from": "blocks.0.hook_resid_mid"} if last_only else {}
    adapter = HookedTransformerAdapter(tl.HookedTransformer(cfg).eval(), **kw)
    layer = "blocks.0.hook_resid_mid"
    in_map, out_map = maps(8, 8, 6, 5, seed=3)
    fast = adapter.composite_segment(layer, in_map, out_map, **F64)
    generic = CompositeSegment(adapter.segment(layer, **F64), in_map, out_map)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, 6, generator=gen, dtype=torch.float64)
    t_out = 1 if last_only else 3
    sources = (2 * torch.randint(0, 2, (5, 2, t_out), generator=gen) - 1).to(torch.float64)
    expected = generic.jacobian_gram(z, None, 1)
    for s in (None, sources):
        torch.testing.assert_close(fast.jacobian_gram(z, s, 1), expected, rtol=1e-10,
                                   atol=1e-10)

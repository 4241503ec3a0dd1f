"""The chained composite of GIB spans against the generic ``torch.func`` composite of the span.

:func:`~sklearn_lib._segments.make_composite` over several segments chains the links' closed
forms (``ChainedComposite``: reverse order, one batched GEMM per link, the batch in chunks).
Its map, Jacobians (with and without stochastic sources) and Jacobian Gram matrix must equal
those of ``CompositeSegment(seg_K o ... o seg_1, in_map, out_map)`` differentiated by
``torch.func``, to round-off in float64, for transformers and MLPs, in any chunking. The
ReLU Jacobians gathered through the units that are on (or off) must equal the dense product.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_lib import GlobalInteractionBasis
from sklearn_lib import _segments
from sklearn_lib._segments import ChainedComposite, CompositeSegment, make_composite
from sklearn_lib.adapters import MLPAdapter
from sklearn_lib.adapters._transformer_closed_forms import _gated_products

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer is deprecated:DeprecationWarning"
)


def assert_same(fast, slow, what):
    tol = 1e-10 * float(slow.abs().max().clamp_min(1e-300))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=tol, msg=lambda m: f"{what}: {m}")


def transformer_adapter(last=None, **overrides):
    pytest.importorskip("transformer_lens")
    from test_transformer_closed_forms import make_model

    from sklearn_lib.adapters import HookedTransformerAdapter

    return HookedTransformerAdapter(make_model(**overrides), last_position_from=last)


def reference(adapter, span, in_map, out_map) -> CompositeSegment:
    """The generic composite of the whole span: one function, differentiated by torch.func."""
    segments = [adapter.segment(layer, **F64) for layer in span[:-1]]

    def chained(f):
        for seg in segments:
            f = seg(f)
        return f

    return CompositeSegment(chained, in_map, out_map)


def maps_and_points(adapter, span, X, n_in, n_out, gen):
    """A random ``in_map`` (constant kept), a dense ``out_map`` and points ``z`` near the data."""
    acts = adapter.activations(torch.as_tensor(X), [span[0], span[-1]], **F64)
    d_in, d_out = acts[span[0]].shape[-1], acts[span[-1]].shape[-1]
    in_map = torch.randn(d_in, n_in, generator=gen, dtype=torch.float64) / d_in**0.5
    in_map[0] = 0.0
    in_map[0, 0] = 1.0
    out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64) / d_out**0.5
    # z with in_map z close to the activations: least squares, then the constant exactly 1.
    f = acts[span[0]].double()
    z = torch.linalg.lstsq(in_map, f.reshape(-1, d_in).T).solution.T.reshape(*f.shape[:2], n_in)
    z = z + 0.1 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
    z[..., 0] = 1.0
    return in_map, out_map, z


def check_span(adapter, span, X, *, n_in=6, n_out=5, seed=0, chained=True):
    gen = torch.Generator().manual_seed(seed)
    in_map, out_map, z = maps_and_points(adapter, span, X, n_in, n_out, gen)
    fast = make_composite(adapter, span, in_map, out_map, **F64)
    assert isinstance(fast, ChainedComposite) == chained, type(fast)
    slow = reference(adapter, span, in_map, out_map)
    with torch.no_grad():
        y = slow(z)
        assert_same(fast(z), y, f"{span} G(z)")
        J = slow.jacobian(z)
        assert_same(fast.jacobian(z), J, f"{span} jacobian")
        sources = torch.randint(0, 2, (z.shape[0], 3, y.shape[1]), generator=gen).double() * 2 - 1
        J_src = slow.jacobian(z, sources)
        assert_same(fast.jacobian(z, sources), J_src, f"{span} jacobian with sources")
        for jac, src in ((J, None), (J_src, sources)):
            rows = jac[..., 1:].reshape(-1, n_in - 1)
            assert_same(fast.jacobian_gram(z, src, 1), rows.T @ rows, f"{span} gram")
        if y.shape[1] == z.shape[1] > 1:  # every position kept: leave the first one out
            src = sources.clone()
            src[..., :1] = 0
            for jac, s_, cut in ((J, None, J[:, 1:, :, 1:]), (slow.jacobian(z, src), src, None)):
                kept = cut if cut is not None else jac[:, :, :, 1:]
                rows = kept[..., 1:].reshape(-1, n_in - 1)
                assert_same(fast.jacobian_gram(z, s_, 1, 1), rows.T @ rows, f"{span} skip")
    return fast, slow, z, sources


TRANSFORMERS = {
    # name: (model overrides, last_position_from, input positions)
    "modadd-like": (dict(n_heads=4, d_head=4), "blocks.0.hook_resid_mid", 3),
    "2 layers relu, all positions": (dict(n_layers=2), None, 3),
    "2 layers gelu, last from block 1": (dict(n_layers=2, act_fn="gelu", n_ctx=4),
                                         "blocks.1.hook_resid_mid", 4),
    "attention only": (dict(n_layers=2, attn_only=True), None, 3),
}


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_transformer_chain_matches_generic(name):
    overrides, last, n_pos = TRANSFORMERS[name]
    adapter = transformer_adapter(last, **overrides)
    X = np.random.default_rng(0).integers(0, 9, size=(7, n_pos))
    layers = list(adapter.node_layers)
    for l in range(len(layers) - 2):  # every GIB span of two or more segments
        span = layers[l:]
        # A span that ends in the unembedding after one sublayer folds into that sublayer.
        check_span(adapter, span, X, chained=len(span) > 3 or "logits" not in span)


def test_mlp_chain_matches_generic():
    adapter = MLPAdapter(random_mlp([5, 8, 7, 4]))
    X = np.random.default_rng(1).normal(size=(9, 5))
    layers = list(adapter.node_layers)
    check_span(adapter, layers, X, n_in=5, n_out=4, chained=True)  # 3 segments, 2 links
    check_span(adapter, layers[1:], X, n_in=6, n_out=4, chained=False)  # the linear one folds


def test_chunks_of_one_sample_give_the_same(monkeypatch):
    adapter = transformer_adapter(n_layers=2)
    X = np.random.default_rng(2).integers(0, 9, size=(6, 3))
    span = list(adapter.node_layers)
    fast, slow, z, sources = check_span(adapter, span, X)
    whole = fast.jacobian_gram(z, sources, 1)
    monkeypatch.setattr(_segments, "_CHAIN_BUDGET", 1)
    fast._chunk_key = None
    assert fast._rows_per_chunk(z, sources) == 1
    assert_same(fast.jacobian_gram(z, sources, 1), whole, "gram in chunks of one sample")


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), fraction_on=st.floats(0.0, 1.0),
       n_rows=st.integers(1, 40))
def test_gated_products_equal_the_dense_product(seed, fraction_on, n_rows):
    """Through the units that are on or (L0 + A Bm less) the ones that are off: the same."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 11, generator=gen, dtype=torch.float64)
    Bm = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    L0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    # Rows on either side of half the units, with all-on and all-off rows among them.
    p = torch.rand(n_rows, 1, generator=gen, dtype=torch.float64) * fraction_on
    g = (torch.rand(n_rows, 11, generator=gen, dtype=torch.float64) < 2 * p).double()
    g[0] = 1.0 if fraction_on > 0.5 else 0.0
    dense = L0 + torch.einsum("ok,rk,ki->roi", A, g, Bm)
    assert_same(_gated_products(SimpleNamespace(A=A, Bm=Bm, L0=L0), g), dense,
                "gated products")


def test_gib_same_with_and_without_closed_forms(monkeypatch):
    """GIB bases through the chained closed forms equal the generic torch.func ones."""
    from sklearn_lib.adapters import HookedTransformerAdapter

    adapter = transformer_adapter("blocks.0.hook_resid_mid", n_heads=4, d_head=4)
    X = np.random.default_rng(3).integers(0, 9, size=(200, 3))

    def fit():
        return GlobalInteractionBasis(adapter, rotate_final=False, batch_size=64).fit(X)

    fast = fit()
    monkeypatch.setattr(HookedTransformerAdapter, "composite_segment",
                        lambda self, *a, **k: None)
    slow = fit()
    for a, b in zip(fast.bases_, slow.bases_):
        assert a.C.shape == b.C.shape
        np.testing.assert_allclose(a.C, b.C, rtol=1e-9, atol=1e-10 * np.abs(b.C).max())


def test_gated_relu_jacobians_in_chains(monkeypatch):
    """Small ReLU MLPs take the dense product; forced through the gathered units (as wide
    ones are), chains and single segments are the same."""
    from sklearn_lib.adapters import _transformer_closed_forms as closed_forms

    monkeypatch.setattr(closed_forms, "_GATE_MIN_PRODUCT", 0)
    calls = []
    original = closed_forms._gated_products
    monkeypatch.setattr(closed_forms, "_gated_products",
                        lambda *a: calls.append(1) or original(*a))
    overrides, last, n_pos = TRANSFORMERS["modadd-like"]
    adapter = transformer_adapter(last, **overrides)
    X = np.random.default_rng(4).integers(0, 9, size=(7, n_pos))
    check_span(adapter, list(adapter.node_layers), X)
    mlp = MLPAdapter(random_mlp([5, 8, 7, 4]))
    check_span(mlp, list(mlp.node_layers), np.random.default_rng(5).normal(size=(9, 5)),
               n_in=5, n_out=4)
    assert calls

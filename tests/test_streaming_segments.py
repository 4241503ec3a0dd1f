"""The generic composite streams its Jacobians: Gram matrix and attributions by chunks.

``CompositeSegment.jacobian_gram`` and ``CompositeSegment.attributions`` never hold the whole
``(batch, S, n_out, T, n_in)`` Jacobian: they run VJPs or JVPs a chunk at a time and add each
chunk to the Gram matrix or contract it with the activations at once. Each must equal the
computation from the whole Jacobian (``gram_from_jacobian``, ``attributions_from_jacobian``),
in both modes, with and without stochastic sources, skipped positions and fixed columns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from sklearn_lib import IGEdgeScorer, LocalInteractionBasis  # noqa: E402
from sklearn_lib._edges import quadrature  # noqa: E402
from sklearn_lib._segments import (  # noqa: E402
    CompositeSegment,
    attributions_from_jacobian,
    gram_from_jacobian,
)
from sklearn_lib.adapters import TransformerAdapter  # noqa: E402

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
T = 6


def tiny_llama(**adapter_kw):
    """One Llama block (RMSNorm, gated SiLU, grouped queries, rotary) in float64."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=8, intermediate_size=12,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    return TransformerAdapter.from_hf(model, **adapter_kw)


@pytest.fixture(scope="module")
def llama():
    adapter = tiny_llama()
    X = torch.randint(0, 40, (3, T), generator=torch.Generator().manual_seed(1)).numpy()
    return adapter, X


def composite(adapter, X, layer, seed, chunk_size=None):
    """A generic composite from ``layer`` with random maps, and its input coordinates."""
    gen = torch.Generator().manual_seed(seed)
    i = adapter.node_layers.index(layer)
    f = adapter.activations(X, [layer], **F64)[layer]
    seg = adapter.segment(layer, **F64)
    with torch.no_grad():
        d_out = seg(f).shape[-1]
    n_in, n_out = f.shape[-1] - 2, d_out - 1  # narrower than the layers: maps of full rank
    in_map = torch.randn(f.shape[-1], n_in, generator=gen, dtype=torch.float64)
    out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64)
    z = torch.linalg.lstsq(in_map, f.reshape(-1, f.shape[-1]).T).solution.T.reshape(
        *f.shape[:2], n_in)
    assert i < len(adapter.node_layers) - 1
    return CompositeSegment(seg, in_map, out_map, chunk_size=chunk_size), z


def sources_for(z, R, skip, seed):
    if R is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 2, (z.shape[0], R, z.shape[1]), generator=gen).double() * 2 - 1
    r[..., :skip] = 0
    return r


@pytest.fixture(params=["forward", "reverse"])
def mode(request, monkeypatch):
    """Force JVPs or VJPs, whatever their counts."""
    forward = request.param == "forward"
    monkeypatch.setattr(CompositeSegment, "_prefer_jvp",
                        staticmethod(lambda n_jvp, n_vjp: forward))
    return request.param


@pytest.mark.parametrize("layer_index", [0, 1, 2, 3])
@pytest.mark.parametrize("R, skip, start, chunk", [
    (None, 0, 0, None), (None, 1, 2, 1), (2, 0, 1, 3), (2, 1, 0, None), (1, 2, 2, 5),
])
def test_streamed_gram_equals_the_gram_of_the_whole_jacobian(llama, mode, layer_index, R, skip,
                                                            start, chunk):
    adapter, X = llama
    layer = adapter.node_layers[layer_index]
    G, z = composite(adapter, X, layer, seed=layer_index, chunk_size=chunk)
    sources = sources_for(z, R, skip, seed=layer_index)
    streamed = G.jacobian_gram(z, sources, start, skip)
    whole = gram_from_jacobian(G, z, sources, start, skip)
    assert streamed.dtype == torch.float64 and streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=1e-10, atol=1e-10 * whole.abs().max())


@pytest.mark.parametrize("layer_index", [0, 1, 2, 3])
@pytest.mark.parametrize("R, skip, chunk", [(None, 0, None), (None, 1, 2), (3, 0, 1),
                                            (2, 1, None)])
def test_streamed_attributions_equal_those_of_the_whole_jacobian(llama, mode, layer_index, R,
                                                                skip, chunk):
    adapter, X = llama
    layer = adapter.node_layers[layer_index]
    G, z = composite(adapter, X, layer, seed=10 + layer_index, chunk_size=chunk)
    sources = sources_for(z, R, skip, seed=layer_index)
    alphas, weights = quadrature("gauss-legendre", 3)
    A, A_kept = G.attributions(z, alphas, weights, sources, skip)
    A_ref, A_kept_ref = attributions_from_jacobian(G, z, alphas, weights, sources, skip)
    assert A.shape == A_ref.shape and A_kept.shape == A_kept_ref.shape
    scale = A_ref.abs().max()
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10 * scale)
    torch.testing.assert_close(A_kept, A_kept_ref, rtol=1e-10, atol=1e-10 * scale)
    if not skip:
        assert A_kept is A


def test_streaming_never_forms_the_whole_jacobian_and_honours_chunk_size(llama, mode,
                                                                         monkeypatch):
    adapter, X = llama
    layer = adapter.node_layers[1]  # attention: positions mix
    G, z = composite(adapter, X, layer, seed=3, chunk_size=2)
    sources = sources_for(z, 2, 1, seed=3)
    ref_gram = gram_from_jacobian(G, z, sources, 1, 1)
    alphas, weights = quadrature("gauss-legendre", 2)
    ref_A = attributions_from_jacobian(G, z, alphas, weights, sources, 1)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole Jacobian was formed")

    widths = []
    vmap = torch.func.vmap

    def counting_vmap(fn, *a, **k):
        inner = vmap(fn, *a, **k)

        def run(x, *rest):
            widths.append(x.shape[0])
            return inner(x, *rest)
        return run

    monkeypatch.setattr(CompositeSegment, "jacobian", refuse)
    monkeypatch.setattr(torch.func, "vmap", counting_vmap)
    gram = G.jacobian_gram(z, sources, 1, 1)
    A = G.attributions(z, alphas, weights, sources, 1)
    torch.testing.assert_close(gram, ref_gram, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(A[1], ref_A[1], rtol=1e-10, atol=1e-12)
    assert widths and max(widths) <= 2 * (z.shape[-1] if mode == "forward" else 1)


def test_lib_and_edges_on_a_language_model_equal_the_whole_jacobian_path(monkeypatch):
    """Estimators end to end (stochastic sources, the attention sink skipped): streaming
    changes nothing but memory."""
    import sklearn_lib._edges as edges_module
    import sklearn_lib._interaction as interaction_module

    adapter = tiny_llama(skip_positions=1, label_position="next-token")
    # the generic path only: no closed forms
    monkeypatch.setattr(type(adapter), "composite_segment", lambda self, *a, **k: None)
    X = torch.randint(0, 40, (10, T), generator=torch.Generator().manual_seed(2)).numpy()

    def run():
        graph = LocalInteractionBasis(adapter, dtype="float64", n_stochastic_sources=2,
                                      random_state=0, batch_size=4).fit_transform(X)
        scorer = IGEdgeScorer(integration="gauss-legendre", n_steps=2, dtype="float64",
                              n_stochastic_sources=2, random_state=0, batch_size=4).fit(graph)
        return graph, scorer

    graph, scorer = run()
    monkeypatch.setattr(interaction_module, "segment_gram", gram_from_jacobian)
    monkeypatch.setattr(edges_module, "segment_attributions", attributions_from_jacobian)
    graph_ref, scorer_ref = run()
    for a, b in zip(graph.bases, graph_ref.bases):
        assert a.n_components == b.n_components
        np.testing.assert_allclose(np.abs(a.C), np.abs(b.C), rtol=1e-7, atol=1e-9)
    for a, b in zip(scorer.edges_, scorer_ref.edges_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * b.max())
    np.testing.assert_allclose(scorer.completeness_errors_, scorer_ref.completeness_errors_,
                               rtol=1e-6, atol=1e-12)


def test_stochastic_sources_do_not_depend_on_the_batch_size(llama):
    """Sources are drawn per sample: LIB's M and the edges are the same for any batching."""
    adapter, _ = llama
    X = torch.randint(0, 40, (7, T), generator=torch.Generator().manual_seed(5)).numpy()

    def run(batch_size):
        graph = LocalInteractionBasis(adapter, dtype="float64", n_stochastic_sources=2,
                                      random_state=3, batch_size=batch_size).fit_transform(X)
        scorer = IGEdgeScorer(integration="gauss-legendre", n_steps=2, dtype="float64",
                              n_stochastic_sources=2, random_state=3,
                              batch_size=batch_size).fit(graph)
        return graph, scorer

    (g1, s1), (g2, s2) = run(7), run(3)
    for a, b in zip(g1.bases, g2.bases):  # summation order only: round-off
        assert a.n_components == b.n_components
        np.testing.assert_allclose(a.C, b.C, rtol=0, atol=1e-8 * np.abs(a.C).max())
    for a, b in zip(s1.edges_, s2.edges_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * a.max())
    # another seed draws other sources: the edges move by far more than round-off
    other = IGEdgeScorer(integration="gauss-legendre", n_steps=2, dtype="float64",
                         n_stochastic_sources=2, random_state=4, batch_size=7).fit(g1)
    assert max(np.abs(a - b).max() / a.max() for a, b in zip(s1.edges_, other.edges_)) > 1e-4

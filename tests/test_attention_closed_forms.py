"""Closed-form attention spans of language models (adapters/_attention_closed_forms.py).

``AttentionSpanComposite`` must give the Jacobian Gram matrix, the integrated-gradient
attributions and the ablated forward passes of the generic ``CompositeSegment`` (torch.func
Jacobians, explicit einsums, one forward pass per mask) to 1e-10 in float64, on tiny random
HuggingFace GPT-2 / Llama / Mistral / GPT-NeoX models built here: LayerNorm and RMSNorm,
learned and rotary positions (full, partial, adjacent pairs), grouped-query attention, causal,
bidirectional and windowed masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklearn_lib import LocalInteractionBasis
from sklearn_lib._edges import quadrature
from sklearn_lib._segments import CompositeSegment, ablate_by_masks, make_composite
from sklearn_lib.adapters import TransformerAdapter, read_hf_model
from sklearn_lib.adapters import _transformer_closed_forms as closed_forms
from sklearn_lib.adapters._attention_closed_forms import (
    AttentionSpanComposite,
    attention_closed_form,
)
from sklearn_lib.tasks import lm_block_cuts

transformers = pytest.importorskip("transformers")

F64 = dict(dtype=torch.float64, device="cpu")
V = 23


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and biases off their defaults, so folding them is tested."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def hf(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":  # LayerNorm, gelu_new, learned positions, 3 heads of 4
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=12, n_layer=2,
                                      n_head=3, bos_token_id=0, eos_token_id=0, **kw)
        model = transformers.GPT2LMHeadModel(cfg)
    elif name == "neox":  # LayerNorm, partial rotary, sequential blocks
        cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=24,
                                         max_position_embeddings=32, rotary_pct=0.5,
                                         use_parallel_residual=False, bos_token_id=0,
                                         eos_token_id=0)
        model = transformers.GPTNeoXForCausalLM(cfg)
    else:  # RMSNorm, rotary, 4 query heads over 2 key/value heads, SiLU-gated MLP
        cls = {"llama": "Llama", "mistral": "Mistral"}[name]
        base = dict(vocab_size=V, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    bos_token_id=0, eos_token_id=0)
        if name == "llama":
            base["attention_bias"] = True
        cfg = getattr(transformers, f"{cls}Config")(**{**base, **kw})
        model = getattr(transformers, f"{cls}ForCausalLM")(cfg)
    return perturb(model.double())


def replace_attn(weights, **changes):
    """The same weights with every block's attention changed (e.g. bidirectional)."""
    blocks = tuple(dataclasses.replace(b, attn=dataclasses.replace(b.attn, **changes))
                   for b in weights.blocks)
    return dataclasses.replace(weights, blocks=blocks)


def random_maps(adapter, layer, n_in, n_out, gen, n_pos=6):
    """Dense random ``in_map`` (1 + d_in, n_in) and ``out_map`` (n_out, 1 + d_out)."""
    nxt = adapter.node_layers[adapter.node_layers.index(layer) + 1]
    acts = adapter.activations(torch.zeros(1, n_pos, dtype=torch.long), [layer, nxt], **F64)
    d_in, d_out = acts[layer].shape[-1], acts[nxt].shape[-1]
    in_map = torch.randn(d_in, n_in, generator=gen, dtype=torch.float64) / d_in**0.5
    out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64) / d_out**0.5
    return in_map, out_map


def assert_same(fast, slow, what, rtol=1e-10):
    tol = rtol * float(slow.abs().max().clamp_min(1e-300))
    torch.testing.assert_close(fast, slow, rtol=rtol, atol=tol, msg=lambda m: f"{what}: {m}")


def reference_gram(slow, z, sources, start, skip):
    J = slow.jacobian(z, sources)[..., skip:, start:]
    if sources is None:
        J = J[:, skip:]
    rows = J.reshape(-1, J.shape[-1])
    return rows.T @ rows


def reference_attributions(slow, z, alphas, weights, sources, skip):
    """Explicit ``sum_a w_a J(alpha_a z) z`` over all and over kept positions."""
    A = A_kept = 0.0
    for alpha, w in zip(alphas.tolist(), weights.tolist()):
        J = slow.jacobian(alpha * z, sources)
        A = A + w * torch.einsum("bsitj,btj->bsij", J, z)
        A_kept = A_kept + w * torch.einsum("bsitj,btj->bsij", J[..., skip:, :], z[:, skip:])
    return A, (A_kept[:, skip:] if sources is None else A_kept)


def special_masks(n_out, n_in, gen):
    """Random 0/1 masks with all-ones, all-zeros, shared, nearly full and sparse rows."""
    masks = (torch.rand(n_out, n_in, generator=gen) < 0.5).double()
    masks[0] = 1.0
    masks[1] = 0.0
    masks[3] = masks[2]
    masks[4] = 1.0
    masks[4, 1] = 0.0  # drops one column (the complement path)
    masks[5] = 0.0
    masks[5, 2] = 1.0  # keeps one
    return masks


def check_segment(adapter, layer, *, n_in=9, n_out=8, n_pos=6, batch=3, seed=0,
                  maps=None):
    """Gram, attributions and ablation of the closed form against the generic composite."""
    gen = torch.Generator().manual_seed(seed)
    in_map, out_map = maps if maps is not None else random_maps(adapter, layer, n_in, n_out,
                                                                gen, n_pos)
    n_in, n_out = in_map.shape[1], out_map.shape[0]
    fast = adapter.composite_segment(layer, in_map, out_map, **F64)
    assert isinstance(fast, AttentionSpanComposite)
    slow = CompositeSegment(adapter.segment(layer, **F64), in_map, out_map)
    z = torch.randn(batch, n_pos, n_in, generator=gen, dtype=torch.float64)
    signs = torch.randint(0, 2, (batch, 2, n_pos), generator=gen).double() * 2 - 1
    alphas, weights = quadrature("gauss-legendre", 2)
    with torch.no_grad():
        assert_same(fast(z), slow(z), f"{layer} G(z)")
        for skip in (0, 1):
            sources = signs.clone()
            sources[..., :skip] = 0.0  # as the estimators pass them
            for src in (None, sources):
                for start in (0, 2):
                    assert_same(fast.jacobian_gram(z, src, start, skip),
                                reference_gram(slow, z, src, start, skip),
                                f"{layer} gram (sources={src is not None}, skip={skip}, "
                                f"start={start})")
                A, A_kept = fast.attributions(z, alphas, weights, src, skip)
                ref, ref_kept = reference_attributions(slow, z, alphas, weights, src, skip)
                assert_same(A, ref, f"{layer} attributions (skip={skip})")
                assert_same(A_kept, ref_kept, f"{layer} kept attributions (skip={skip})")
                if skip == 0:
                    assert A_kept is A
        masks = special_masks(n_out, n_in, gen)
        assert_same(fast.ablated(z, masks), ablate_by_masks(slow, z, masks), f"{layer} ablated")
    return fast


MODELS = {
    "gpt2": lambda: TransformerAdapter.from_hf(hf("gpt2"), node_layers=lm_block_cuts(2)),
    "llama": lambda: TransformerAdapter.from_hf(hf("llama"), node_layers=lm_block_cuts(2)),
    "mistral window, multi-query": lambda: TransformerAdapter.from_hf(
        hf("mistral", sliding_window=3, num_key_value_heads=1), node_layers=lm_block_cuts(2)),
    "neox partial rotary": lambda: TransformerAdapter.from_hf(hf("neox"),
                                                              node_layers=lm_block_cuts(2)),
    "adjacent pairs, bidirectional": lambda: TransformerAdapter(
        replace_attn(read_hf_model(hf("llama")), causal=False,
                     rotary=dataclasses.replace(read_hf_model(hf("llama")).blocks[0].attn.rotary,
                                                adjacent_pairs=True)),
        node_layers=lm_block_cuts(2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_attention_then_norm_scale_matches_generic(name):
    """``attn_in -> ln2_out`` ([attn, ln_in], normed -> scaled) in every block."""
    adapter = MODELS[name]()
    for i in range(2):
        check_segment(adapter, f"blocks.{i}.attn_in", seed=i)


def test_attention_to_residual_cut_matches_generic():
    """``attn_in -> hook_resid_mid`` ([attn], normed -> resid), where users cut there."""
    adapter = TransformerAdapter.from_hf(
        hf("mistral", sliding_window=4),
        node_layers=["blocks.0.attn_in", "blocks.0.hook_resid_mid", "blocks.1.attn_in",
                     "blocks.1.hook_resid_mid", "logits"])
    for i in range(2):
        check_segment(adapter, f"blocks.{i}.attn_in", n_in=11, n_out=7, seed=3 + i)


@pytest.mark.parametrize("changes", [dict(), dict(window=2), dict(rotary=None, window=3)])
def test_residual_attention_without_norm_matches_generic(changes):
    """``hook_resid_pre -> hook_resid_mid`` of a model without norms, rotary or windowed:
    the cases ``AttentionComposite`` leaves to this module."""
    w = read_hf_model(hf("llama"))
    w = dataclasses.replace(replace_attn(w, **changes), ln_final=None, blocks=tuple(
        dataclasses.replace(b, ln1=None, ln2=None) for b in w.blocks))
    adapter = TransformerAdapter(w)
    layer = "blocks.0.hook_resid_pre"
    assert layer in adapter.node_layers
    check_segment(adapter, layer, n_in=8, n_out=9, seed=5)


def test_maps_of_a_fitted_basis():
    """Real bases (fixed constant and scale features, fewer components) instead of random."""
    adapter = TransformerAdapter.from_hf(hf("llama"), node_layers=lm_block_cuts(1))
    X = np.random.default_rng(0).integers(0, V, size=(24, 6))
    lib = LocalInteractionBasis(adapter, batch_size=24, random_state=0).fit(X)
    bases = dict(zip(lib.layers_, lib.bases_))
    maps = (torch.as_tensor(bases["blocks.0.attn_in"].C_pinv),
            torch.as_tensor(bases["blocks.0.ln2_out"].C))
    fast = check_segment(adapter, "blocks.0.attn_in", maps=maps, seed=6)
    f = adapter.activations(torch.as_tensor(X[:4]), ["blocks.0.attn_in"],
                            **F64)["blocks.0.attn_in"]
    z = f @ torch.as_tensor(bases["blocks.0.attn_in"].C).T  # activations in the basis
    slow = CompositeSegment(adapter.segment("blocks.0.attn_in", **F64), *maps)
    with torch.no_grad():
        assert_same(fast.jacobian_gram(z, None, 1, 1), reference_gram(slow, z, None, 1, 1),
                    "gram at real activations")


def test_small_memory_budget_chunks_the_same(monkeypatch):
    """One sequence, one row and one position at a time give the same numbers."""
    monkeypatch.setattr(closed_forms, "_MEMORY_BUDGET", 64)
    adapter = MODELS["llama"]()
    check_segment(adapter, "blocks.1.attn_in", batch=4, seed=7)


def test_float32_close_to_generic():
    adapter = MODELS["llama"]()
    gen = torch.Generator().manual_seed(8)
    in_map, out_map = (m.float() for m in random_maps(adapter, "blocks.0.attn_in", 9, 8, gen))
    F32 = dict(dtype=torch.float32, device="cpu")
    fast = adapter.composite_segment("blocks.0.attn_in", in_map, out_map, **F32)
    slow = CompositeSegment(adapter.segment("blocks.0.attn_in", **F32), in_map, out_map)
    z = torch.randn(3, 6, 9, generator=gen)
    gram = fast.jacobian_gram(z)
    assert gram.dtype == torch.float64
    torch.testing.assert_close(gram, reference_gram(slow, z, None, 0, 0).double(),
                               rtol=1e-4, atol=1e-5 * float(gram.abs().max()))
    alphas, weights = quadrature("gauss-legendre", 2)
    A, _ = fast.attributions(z, alphas, weights)
    assert A.dtype == torch.float32
    torch.testing.assert_close(A, reference_attributions(slow, z, alphas, weights, None, 0)[0],
                               rtol=1e-4, atol=1e-5 * float(A.abs().max()))


def test_attributions_are_complete():
    """Attention with the following norm's scale is smooth away from 0 and ``F(0) = 0``:
    the attributions sum to ``G(z)`` (mixed by the sources) up to quadrature error."""
    adapter = MODELS["llama"]()
    gen = torch.Generator().manual_seed(9)
    fast = adapter.composite_segment("blocks.0.attn_in",
                                     *random_maps(adapter, "blocks.0.attn_in", 9, 8, gen), **F64)
    z = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64)
    z[..., 0] = 1.0
    alphas, weights = quadrature("gauss-legendre", 24)
    sources = torch.randint(0, 2, (2, 3, 6), generator=gen).double() * 2 - 1
    with torch.no_grad():
        A, _ = fast.attributions(z, alphas, weights, sources)
        mixed = torch.einsum("brs,bsi->bri", sources, fast(z)) / 3**0.5
        assert_same(A.sum(-1), mixed, "completeness", rtol=1e-6)
        A, _ = fast.attributions(z, alphas, weights)
        assert_same(A.sum(-1), fast(z), "completeness without sources", rtol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), density=st.floats(0.0, 1.0), scale=st.floats(0.05, 3.0))
def test_ablation_and_gram_for_random_masks_and_scales(seed, density, scale):
    adapter = _gpt2_one_block()
    gen = torch.Generator().manual_seed(seed)
    in_map, out_map = random_maps(adapter, "blocks.0.attn_in", 7, 6, gen, 5)
    fast = adapter.composite_segment("blocks.0.attn_in", in_map, out_map, **F64)
    slow = CompositeSegment(adapter.segment("blocks.0.attn_in", **F64), in_map, out_map)
    z = scale * torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    masks = (torch.rand(6, 7, generator=gen) < density).double()
    with torch.no_grad():
        assert_same(fast.ablated(z, masks), ablate_by_masks(slow, z, masks), "ablated")
        assert_same(fast.jacobian_gram(z, None, 1), reference_gram(slow, z, None, 1, 0), "gram")


_CACHE: dict = {}


def _gpt2_one_block() -> TransformerAdapter:
    """Built once for all hypothesis examples."""
    if "gpt2" not in _CACHE:
        _CACHE["gpt2"] = TransformerAdapter.from_hf(hf("gpt2"), node_layers=lm_block_cuts(1))
    return _CACHE["gpt2"]


def test_scale_read_only_by_some_outputs():
    """A one-hot scale column (as fitted bases have): only that output needs ``x'``."""
    adapter = MODELS["gpt2"]()
    gen = torch.Generator().manual_seed(10)
    in_map, out_map = random_maps(adapter, "blocks.0.attn_in", 9, 8, gen)
    out_map[:, -1] = 0.0
    out_map[3, -1] = 1.0
    check_segment(adapter, "blocks.0.attn_in", maps=(in_map, out_map), seed=10)


def test_dispatch():
    """The closed form serves the attention spans and nothing else."""
    adapter = MODELS["llama"]()
    gen = torch.Generator().manual_seed(11)
    kinds = {}
    for layer in adapter.node_layers[:-1]:
        maps = random_maps(adapter, layer, 5, 4, gen)
        kinds[layer] = type(make_composite(
            adapter, [layer, adapter.node_layers[adapter.node_layers.index(layer) + 1]],
            *maps, **F64)).__name__
    assert kinds["blocks.0.attn_in"] == kinds["blocks.1.attn_in"] == "AttentionSpanComposite"
    assert "AttentionSpanComposite" not in {kinds[k] for k in kinds if "attn_in" not in k}
    # The output cut keeps only the last position: not covered.
    last = TransformerAdapter.from_hf(hf("llama"), node_layers=lm_block_cuts(2),
                                      last_position_from="blocks.1.ln2_out")
    maps = random_maps(last, "blocks.1.attn_in", 5, 4, gen)
    assert last.composite_segment("blocks.1.attn_in", *maps, **F64) is None
    # Other operations, layouts and widths.
    a = adapter
    w = a._weights(torch.float64, "cpu")
    ops = a._ops
    attn = [i for i, op in enumerate(ops) if op.kind == "attn"][0]
    in_map = torch.randn(33, 5, dtype=torch.float64)
    out_scaled = torch.randn(4, 18, dtype=torch.float64)
    seg = a.segment("blocks.0.attn_in", **F64)
    good = attention_closed_form(w, ops[attn : attn + 2], "normed", "scaled", False, seg,
                                 in_map, out_scaled)
    assert isinstance(good, AttentionSpanComposite)
    for args in [
        (ops[attn : attn + 2], "normed", "scaled", True, in_map, out_scaled),  # last
        (ops[attn - 1 : attn], "scaled", "normed", False, in_map, out_scaled),  # ln_out
        (ops[attn : attn + 3], "normed", "normed", False, in_map, out_scaled),  # 3 ops
        (ops[attn : attn + 1], "normed", "scaled", False, in_map, out_scaled),  # layouts
        (ops[attn : attn + 2], "resid", "scaled", False, in_map, out_scaled),  # normed attn
        (ops[attn : attn + 2], "normed", "scaled", False, in_map[:17], out_scaled),  # width
        (ops[attn : attn + 2], "normed", "scaled", False, in_map, out_scaled[:, :17]),
        ([], "normed", "scaled", False, in_map, out_scaled),
    ]:
        ops_, lin, lout, last_, im, om = args
        assert attention_closed_form(w, ops_, lin, lout, last_, seg, im, om) is None


def test_pipeline_same_with_and_without_closed_forms(monkeypatch):
    """LIB bases (exact and with stochastic sources) and IG edges agree with the generic
    composite when the attention spans take the closed form."""
    from sklearn_lib import IGEdgeScorer

    adapter = TransformerAdapter.from_hf(hf("llama"), node_layers=lm_block_cuts(1))
    X = np.random.default_rng(1).integers(0, V, size=(16, 6))
    calls = []
    original = TransformerAdapter.composite_segment

    def spy(self, layer, *args, **kwargs):
        G = original(self, layer, *args, **kwargs)
        calls.append(type(G).__name__)
        return G

    def run(**lib_kw):
        lib = LocalInteractionBasis(adapter, batch_size=8, random_state=0, **lib_kw)
        graph = IGEdgeScorer(batch_size=8).fit_transform(lib.fit_transform(X))
        return lib, graph

    for lib_kw in (dict(), dict(n_stochastic_sources=2)):
        monkeypatch.setattr(TransformerAdapter, "composite_segment", spy)
        fast_lib, fast_graph = run(**lib_kw)
        assert "AttentionSpanComposite" in calls  # the fast path was taken
        monkeypatch.setattr(TransformerAdapter, "composite_segment", lambda *a, **k: None)
        slow_lib, slow_graph = run(**lib_kw)
        for a, b in zip(fast_lib.bases_, slow_lib.bases_):
            assert a.C.shape == b.C.shape
            np.testing.assert_allclose(a.C, b.C, rtol=1e-7, atol=1e-8 * np.abs(b.C).max())
        for a, b in zip(fast_graph.edges, slow_graph.edges):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())

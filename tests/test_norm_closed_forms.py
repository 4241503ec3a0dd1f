"""Closed forms of the position-wise norm-split segments (adapters/_norm_closed_forms.py).

Tiny random HuggingFace GPT-2 (LayerNorm, gelu_new, plain MLP) and Llama (RMSNorm, SiLU-gated
MLP, grouped-query attention, rotary) models in float64. Every closed form must agree with the
generic ``CompositeSegment`` (``torch.func``) to 1e-10 relative: ``G(z)``, the Jacobian (with
and without stochastic sources), the Jacobian Gram matrix and the integrated-gradient
attributions (explicit einsums over the generic Jacobian, with and without sources, ``skip``
and ``start``), and the ablated forward passes (``ablate_by_masks``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklearn_lib import IGEdgeScorer, LocalInteractionBasis
from sklearn_lib._segments import CompositeSegment, ablate_by_masks, make_composite
from sklearn_lib.adapters import TransformerAdapter
from sklearn_lib.adapters import _norm_closed_forms as norm_forms
from sklearn_lib.adapters import _transformer_closed_forms as closed_forms

transformers = pytest.importorskip("transformers")

F64 = dict(dtype=torch.float64, device="cpu")
V, T = 23, 6
LAYERS = ["blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in", "blocks.1.ln1_out",
          "blocks.1.attn_in", "blocks.1.hook_resid_mid", "blocks.1.ln2_out", "blocks.1.mlp_in",
          "blocks.1.hook_resid_post", "ln_final_out", "unembed_in", "logits"]
#: Layer pair -> the closed form expected for it (None: not a position-wise segment).
EXPECTED = {
    "blocks.0.hook_resid_mid": "NormInComposite",  # [ln_in]
    "blocks.0.ln2_out": "NormOutComposite",  # [ln_out], scaled -> normed
    "blocks.0.mlp_in": "NormMLPComposite",  # [mlp, ln_in], normed -> scaled
    "blocks.1.ln1_out": "NormOutComposite",
    "blocks.1.attn_in": None,  # attention: not this module's
    "blocks.1.hook_resid_mid": "NormInComposite",
    "blocks.1.ln2_out": "NormOutComposite",
    "blocks.1.mlp_in": "NormMLPComposite",  # [mlp], normed -> resid
    "blocks.1.hook_resid_post": "NormInComposite",  # the final norm's ln in
    "ln_final_out": "NormOutComposite",  # scaled -> final
    "unembed_in": "LinearComposite",  # final -> logits
}


def perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Norm weights and biases off their defaults, so every fold is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def hf(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=12, n_layer=2,
                                      n_head=3, bos_token_id=0, eos_token_id=0, **kw)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=20,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=32,
                                       bos_token_id=0, eos_token_id=0, **kw)
        model = transformers.LlamaForCausalLM(cfg)
    return perturb(model.double())


@pytest.fixture(scope="module")
def adapters():
    # Llama with MLP biases: the gate's bias is folded too.
    return {name: TransformerAdapter.from_hf(hf(name, **kw), node_layers=LAYERS)
            for name, kw in (("gpt2", {}), ("llama", dict(mlp_bias=True)))}


def width(adapter, layer: str) -> int:
    X = torch.zeros(1, T, dtype=torch.long)
    return adapter.activations(X, [layer], **F64)[layer].shape[-1]


def random_maps(adapter, layer_in, layer_out, n_in, n_out, gen, one_hot_scale=False):
    """Random full ``in_map`` and ``out_map``; ``one_hot_scale``: the output's scale coordinate
    read by one basis direction only, as in fitted bases (the scale is a fixed feature)."""
    d_in, d_out = width(adapter, layer_in), width(adapter, layer_out)
    in_map = torch.randn(d_in, n_in, generator=gen, dtype=torch.float64) / d_in**0.5
    out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64) / d_out**0.5
    if one_hot_scale:
        out_map[:, -1] = 0.0
        out_map[-1, -1] = 1.0
    return in_map, out_map


def random_z(fast, batch, gen, n_pos=T) -> torch.Tensor:
    """Basis coordinates; at a scaled input cut the scale ``sigma . z`` is kept in [0.5, 1.5]
    (a random scale near 0 makes the Jacobian ill-conditioned, not wrong)."""
    z = torch.randn(batch, n_pos, fast.n_in, generator=gen, dtype=torch.float64)
    if isinstance(fast, norm_forms.NormOutComposite):
        sigma = fast.sigma.double()
        target = 0.5 + torch.rand(batch, n_pos, generator=gen, dtype=torch.float64)
        z += ((target - z @ sigma) / (sigma @ sigma))[..., None] * sigma
    return z


def special_masks(n_out, n_in, gen) -> torch.Tensor:
    """Random 0/1 masks with the rows the search produces: all ones, all zeros, shared rows,
    nearly full (the complement path), one column kept."""
    masks = (torch.rand(n_out, n_in, generator=gen) < 0.5).double()
    masks[0] = 1.0
    masks[1] = 0.0
    masks[3] = masks[2]
    masks[4] = 1.0
    masks[4, 2] = 0.0
    masks[5] = 0.0
    masks[5, 1] = 1.0
    masks[-1] = masks[2]  # shared with the scale output when it is one-hot
    return masks


def assert_same(fast, slow, what):
    tol = 1e-10 * float(slow.abs().max().clamp_min(1e-300))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=tol, msg=lambda m: f"{what}: {m}")


def reference_gram(slow, z, sources, start, skip):
    J = slow.jacobian(z, sources)
    if sources is None:
        J = J[:, skip:]
    J = J[:, :, :, skip:, start:]
    rows = J.reshape(-1, J.shape[-1])
    return rows.T @ rows


def reference_attributions(slow, z, alphas, weights, sources, skip):
    jbar = sum(w * slow.jacobian(a * z, sources) for a, w in zip(alphas, weights))
    A = torch.einsum("bsitj,btj->bsij", jbar, z)
    kept = torch.einsum("bsitj,btj->bsij", jbar[..., skip:, :], z[:, skip:])
    return A, (kept if sources is not None else kept[:, skip:])


def rademacher_sources(batch, R, n_pos, skip, gen):
    sources = torch.randint(0, 2, (batch, R, n_pos), generator=gen).double() * 2 - 1
    sources[..., :skip] = 0.0
    return sources


def check_pair(adapter, layer_in, layer_out, in_map, out_map, gen, *, batch=3, z=None,
               alphas=(0.2, 0.7), weights=(0.4, 0.6)):
    fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
    assert type(fast).__name__ == EXPECTED[layer_in]
    slow = CompositeSegment(adapter.segment(layer_in, **F64), in_map, out_map)
    z = random_z(fast, batch, gen) if z is None else z
    what = f"{layer_in} -> {layer_out}"
    with torch.no_grad():
        assert_same(fast(z), slow(z), f"{what} G(z)")
    assert_same(fast.jacobian(z), slow.jacobian(z), f"{what} jacobian")
    for skip in (0, 1):
        # Sources nonzero at t < skip too: the kept sums must leave those positions out.
        sources = rademacher_sources(z.shape[0], 2, z.shape[1], 0, gen)
        for src in (None, sources):
            for start in (0, 2):
                assert_same(fast.jacobian_gram(z, src, start=start, skip=skip),
                            reference_gram(slow, z, src, start, skip),
                            f"{what} gram (skip {skip}, start {start}, sources {src is not None})")
            A, kept = fast.attributions(z, torch.tensor(alphas, dtype=torch.float64),
                                          np.array(weights), src, skip)
            A_ref, kept_ref = reference_attributions(slow, z, alphas, weights, src, skip)
            assert_same(A, A_ref, f"{what} attributions (skip {skip})")
            assert_same(kept, kept_ref, f"{what} kept attributions (skip {skip})")
            if skip == 0:
                assert kept is A
    assert_same(fast.jacobian(z, sources), slow.jacobian(z, sources), f"{what} jac sources")
    masks = special_masks(fast.n_out, fast.n_in, gen)
    with torch.no_grad():
        assert_same(fast.ablated(z, masks), ablate_by_masks(slow, z, masks), f"{what} ablated")
    return fast


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("one_hot_scale", [False, True])
def test_closed_forms_match_generic(adapters, name, one_hot_scale):
    adapter = adapters[name]
    gen = torch.Generator().manual_seed(0)
    for layer_in, layer_out in zip(LAYERS[:-1], LAYERS[1:]):
        in_map, out_map = random_maps(adapter, layer_in, layer_out, 9, 8, gen,
                                      one_hot_scale and layer_out.endswith("_out"))
        if EXPECTED[layer_in] is None:
            fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
            assert not isinstance(fast, norm_forms._PositionwiseComposite)
            continue
        check_pair(adapter, layer_in, layer_out, in_map, out_map, gen)


def test_fast_path_is_taken_by_make_composite(adapters):
    adapter = adapters["llama"]
    assert adapter.weights.blocks[0].mlp.b_gate is not None  # folded in the tests above
    gen = torch.Generator().manual_seed(1)
    for layer_in, layer_out in zip(LAYERS[:-1], LAYERS[1:]):
        maps = random_maps(adapter, layer_in, layer_out, 5, 4, gen)
        G = make_composite(adapter, [layer_in, layer_out], *maps, **F64)
        if EXPECTED[layer_in] is not None:
            assert type(G).__name__ == EXPECTED[layer_in]


def test_small_memory_budget_chunks_the_same(adapters, monkeypatch):
    """Chunks of one row or one mask at a time give the same numbers."""
    monkeypatch.setattr(closed_forms, "_MEMORY_BUDGET", 2048)
    adapter = adapters["llama"]
    gen = torch.Generator().manual_seed(2)
    for layer_in in ("blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in",
                     "ln_final_out"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        in_map, out_map = random_maps(adapter, layer_in, layer_out, 7, 9, gen)
        check_pair(adapter, layer_in, layer_out, in_map, out_map, gen, batch=4)


def test_alpha_zero(adapters):
    """Integration rules may evaluate at alpha = 0: ``0 / 0 -> 0`` in ln out, act'(0)."""
    adapter = adapters["gpt2"]
    gen = torch.Generator().manual_seed(3)
    for layer_in in ("blocks.0.ln2_out", "blocks.1.mlp_in", "ln_final_out", "unembed_in"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        maps = random_maps(adapter, layer_in, layer_out, 6, 5, gen)
        fast = adapter.composite_segment(layer_in, *maps, **F64)
        slow = CompositeSegment(adapter.segment(layer_in, **F64), *maps)
        z = random_z(fast, 2, gen)
        zero = torch.zeros_like(z)
        assert_same(fast.jacobian(zero), slow.jacobian(zero), f"{layer_in} jacobian at 0")
        A, _ = fast.attributions(z, [0.0, 1.0], [0.5, 0.5])
        A_ref, _ = reference_attributions(slow, z, [0.0, 1.0], [0.5, 0.5], None, 0)
        assert_same(A, A_ref, f"{layer_in} attributions through 0")
        masks = torch.zeros(fast.n_out, fast.n_in, dtype=torch.float64)
        with torch.no_grad():
            assert_same(fast.ablated(z, masks), ablate_by_masks(slow, z, masks),
                        f"{layer_in} all ablated")


def weights_variant(adapter, *, affine: bool, gated_without_norm: bool):
    """The adapter's weights with norms lacking ``w``/``b`` and/or the second norm removed
    (a gated MLP between residual cuts)."""
    w = adapter.weights
    blocks = []
    for block in w.blocks:
        ln1, ln2 = block.ln1, block.ln2
        if not affine:
            ln1 = dataclasses.replace(ln1, w=None, b=None)
            ln2 = dataclasses.replace(ln2, w=None, b=None)
        if gated_without_norm:
            ln2 = None
        blocks.append(dataclasses.replace(block, ln1=ln1, ln2=ln2))
    ln_final = w.ln_final if affine else dataclasses.replace(w.ln_final, w=None, b=None)
    return dataclasses.replace(w, blocks=tuple(blocks), ln_final=ln_final)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_norms_without_affine_weights(adapters, name):
    weights = weights_variant(adapters[name], affine=False, gated_without_norm=False)
    adapter = TransformerAdapter(weights, node_layers=LAYERS)
    gen = torch.Generator().manual_seed(4)
    for layer_in in ("blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in",
                     "ln_final_out"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        check_pair(adapter, layer_in, layer_out,
                   *random_maps(adapter, layer_in, layer_out, 7, 6, gen), gen)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_mlp_between_residual_cuts(adapters, name):
    """An MLP without norm (the residual feeds it), gated or plain, then the next ln in."""
    weights = weights_variant(adapters[name], affine=True, gated_without_norm=True)
    layers = ["blocks.0.hook_resid_mid", "blocks.1.ln1_out", "blocks.1.attn_in",
              "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "logits"]
    adapter = TransformerAdapter(weights, node_layers=layers)
    gen = torch.Generator().manual_seed(5)
    # [mlp, ln_in]: resid -> scaled.
    maps = random_maps(adapter, layers[0], layers[1], 8, 7, gen)
    fast = adapter.composite_segment(layers[0], *maps, **F64)
    assert isinstance(fast, norm_forms.NormMLPComposite)
    EXPECTED_local = dict(EXPECTED, **{layers[0]: "NormMLPComposite",
                                       layers[3]: "NormMLPComposite"})
    old = dict(EXPECTED)
    EXPECTED.update(EXPECTED_local)
    try:
        check_pair(adapter, layers[0], layers[1], *maps, gen)
        # [mlp]: resid -> resid (a plain MLP there is MLPComposite's, which comes first).
        maps = random_maps(adapter, layers[3], layers[4], 8, 7, gen)
        fast = adapter.composite_segment(layers[3], *maps, **F64)
        if name == "llama":
            check_pair(adapter, layers[3], layers[4], *maps, gen)
        else:
            assert isinstance(fast, closed_forms.MLPComposite)
    finally:
        EXPECTED.clear()
        EXPECTED.update(old)


def test_not_covered_returns_none(adapters):
    """The last position only, attention spans and multi-operation spans fall back."""
    llama = adapters["llama"]
    sliced = TransformerAdapter(llama.weights, node_layers=LAYERS,
                                last_position_from="blocks.1.hook_resid_post")
    gen = torch.Generator().manual_seed(6)
    for layer_in in ("blocks.1.hook_resid_post", "ln_final_out", "unembed_in"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        maps = random_maps(sliced, layer_in, layer_out, 5, 4, gen)
        assert sliced.composite_segment(layer_in, *maps, **F64) is None
    spans = TransformerAdapter(llama.weights, node_layers=[
        "blocks.0.hook_resid_mid", "blocks.0.mlp_in", "blocks.0.hook_resid_post",
        "blocks.1.attn_in", "logits"])
    for layer_in, layer_out in (("blocks.0.hook_resid_mid", "blocks.0.mlp_in"),
                                ("blocks.0.hook_resid_post", "blocks.1.attn_in")):
        maps = random_maps(spans, layer_in, layer_out, 5, 4, gen)
        assert spans.composite_segment(layer_in, *maps, **F64) is None
    # Maps of the wrong width for the cut: not this module's to judge.
    w = llama.weights
    from sklearn_lib.adapters._transformer_sequential import _Op

    bad = torch.zeros(3, 5, dtype=torch.float64)
    assert norm_forms.norm_closed_form(w, [_Op("ln_in", 0, "ln2")], "resid", "scaled", False,
                                       None, bad, torch.zeros(4, 2 + w.d_model)) is None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), p_keep=st.floats(0.0, 1.0),
       layer_in=st.sampled_from(["blocks.0.hook_resid_mid", "blocks.0.ln2_out",
                                 "blocks.0.mlp_in", "blocks.1.mlp_in", "unembed_in"]))
def test_ablation_random_masks(adapters, seed, p_keep, layer_in):
    """Random masks of any density (kept-column and dropped-column paths, shared rows)."""
    adapter = adapters["llama"]
    gen = torch.Generator().manual_seed(seed)
    layer_out = LAYERS[LAYERS.index(layer_in) + 1]
    maps = random_maps(adapter, layer_in, layer_out, 8, 7, gen, one_hot_scale=seed % 2 == 0)
    fast = adapter.composite_segment(layer_in, *maps, **F64)
    slow = CompositeSegment(adapter.segment(layer_in, **F64), *maps)
    z = random_z(fast, 2, gen)
    masks = (torch.rand(7, 8, generator=gen) < p_keep).double()
    masks[seed % 7] = masks[(seed + 3) % 7]
    with torch.no_grad():
        assert_same(fast.ablated(z, masks), ablate_by_masks(slow, z, masks), "ablated")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.05, 20.0),
       layer_in=st.sampled_from(["blocks.0.hook_resid_mid", "blocks.0.ln2_out",
                                 "blocks.0.mlp_in"]))
def test_gram_is_the_sum_of_row_grams(adapters, seed, scale, layer_in):
    """Position-wise: the Gram matrix of a batch is the sum over its rows' (positions') Grams,
    whatever the input's scale, and +-1 sources leave it unchanged."""
    adapter = adapters["gpt2"]
    gen = torch.Generator().manual_seed(seed)
    layer_out = LAYERS[LAYERS.index(layer_in) + 1]
    fast = adapter.composite_segment(layer_in, *random_maps(adapter, layer_in, layer_out, 6,
                                                            5, gen), **F64)
    z = random_z(fast, 2, gen, n_pos=3) * (1.0 if layer_in.endswith("ln2_out") else scale)
    whole = fast.jacobian_gram(z)
    rows = sum(fast.jacobian_gram(z[b : b + 1, t : t + 1]) for b in range(2) for t in range(3))
    assert_same(whole, rows, "sum of rows")
    sources = rademacher_sources(2, 3, 3, 0, gen)
    assert_same(fast.jacobian_gram(z, sources), whole, "with sources")


def test_fitted_bases_and_pipeline_match_generic(monkeypatch):
    """Real bases (a fitted LocalInteractionBasis, scale a fixed feature) on every pair, and
    LIB and IG edges the same with and without the closed forms."""
    model = hf("llama")
    layers = ["blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in",
              "blocks.1.ln1_out"]
    adapter = TransformerAdapter.from_hf(model, node_layers=layers)
    X = np.random.default_rng(0).integers(0, V, size=(48, T))

    def run():
        lib = LocalInteractionBasis(adapter, batch_size=16, random_state=0,
                                    n_stochastic_sources=2)
        graph = IGEdgeScorer(batch_size=16, n_steps=2).fit_transform(lib.fit_transform(X))
        return lib, graph

    fast_lib, fast_graph = run()
    gen = torch.Generator().manual_seed(7)
    acts = adapter.activations(X[:3], layers, **F64)
    for l in range(len(layers) - 1):
        in_map = torch.as_tensor(fast_lib.bases_[l].C_pinv, dtype=torch.float64)
        out_map = torch.as_tensor(fast_lib.bases_[l + 1].C, dtype=torch.float64)
        z = acts[layers[l]] @ torch.linalg.pinv(in_map).T
        fast = check_pair(adapter, layers[l], layers[l + 1], in_map, out_map, gen, z=z)
        assert isinstance(fast, norm_forms._PositionwiseComposite)
    monkeypatch.setattr(TransformerAdapter, "composite_segment", lambda self, *a, **k: None)
    slow_lib, slow_graph = run()
    for a, b in zip(fast_lib.bases_, slow_lib.bases_):
        assert a.C.shape == b.C.shape
        np.testing.assert_allclose(a.C, b.C, rtol=1e-7, atol=1e-8 * np.abs(b.C).max())
    for a, b in zip(fast_graph.edges, slow_graph.edges):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())


def test_float32_close_to_generic():
    """Float32 inputs stay float32 (the Gram in float64) and agree with the generic path."""
    adapter = TransformerAdapter.from_hf(hf("llama").float(), node_layers=LAYERS)
    F32 = dict(dtype=torch.float32, device="cpu")
    gen = torch.Generator().manual_seed(8)
    for layer_in in ("blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in",
                     "unembed_in"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        in_map, out_map = (m.float() for m in random_maps(adapter, layer_in, layer_out, 7, 6,
                                                          gen))
        fast = adapter.composite_segment(layer_in, in_map, out_map, **F32)
        slow = CompositeSegment(adapter.segment(layer_in, **F32), in_map, out_map)
        z = random_z(fast, 2, gen).float()
        sources = rademacher_sources(2, 1, T, 0, gen).float()
        A, _ = fast.attributions(z, [0.3, 0.8], [0.5, 0.5], sources)
        assert A.dtype == torch.float32
        gram = fast.jacobian_gram(z, sources)
        assert gram.dtype == torch.float64
        masks = special_masks(6, 7, gen).float()
        with torch.no_grad():
            pairs = [(A, reference_attributions(slow, z, [0.3, 0.8], [0.5, 0.5], sources, 0)[0]),
                     (gram.float(), reference_gram(slow, z, sources, 0, 0)),
                     (fast.ablated(z, masks), ablate_by_masks(slow, z, masks))]
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_transformer_lens_gated_mlp_bias_after_the_product():
    """transformer_lens's gated MLP adds its bias after the product (``b_post``)."""
    tl = pytest.importorskip("transformer_lens")
    from sklearn_lib.adapters import HookedTransformerAdapter

    cfg = tl.HookedTransformerConfig(n_layers=1, d_model=12, d_head=4, n_heads=3, d_mlp=10,
                                     n_ctx=8, d_vocab=V, act_fn="gelu_new", gated_mlp=True,
                                     normalization_type="LN", seed=0, dtype=torch.float64)
    model = perturb(tl.HookedTransformer(cfg))
    adapter = HookedTransformerAdapter(model)
    assert adapter.weights.blocks[0].mlp.b_post is not None
    gen = torch.Generator().manual_seed(9)
    layer_in = "blocks.0.mlp_in"
    layer_out = adapter.node_layers[adapter.node_layers.index(layer_in) + 1]
    check_pair(adapter, layer_in, layer_out,
               *random_maps(adapter, layer_in, layer_out, 7, 6, gen), gen)


def test_sources_with_zeros(adapters):
    """Sources that are 0 at some positions weight those rows out of the Gram matrix and the
    attributions (``sum_r c**2`` per row)."""
    adapter = adapters["llama"]
    gen = torch.Generator().manual_seed(10)
    for layer_in in ("blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in"):
        layer_out = LAYERS[LAYERS.index(layer_in) + 1]
        maps = random_maps(adapter, layer_in, layer_out, 6, 5, gen)
        fast = adapter.composite_segment(layer_in, *maps, **F64)
        slow = CompositeSegment(adapter.segment(layer_in, **F64), *maps)
        z = random_z(fast, 3, gen)
        sources = torch.randint(-1, 2, (3, 2, T), generator=gen).double()
        for skip in (0, 2):
            assert_same(fast.jacobian_gram(z, sources, start=1, skip=skip),
                        reference_gram(slow, z, sources, 1, skip), f"{layer_in} gram")
            A, kept = fast.attributions(z, [0.5], [1.0], sources, skip)
            A_ref, kept_ref = reference_attributions(slow, z, [0.5], [1.0], sources, skip)
            assert_same(A, A_ref, f"{layer_in} attributions")
            assert_same(kept, kept_ref, f"{layer_in} kept attributions")


def test_parallel_blocks_fall_back():
    """GPT-NeoX: one scale for both norms; the division into two normed inputs and the
    parallel sublayers are not position-wise closed forms here."""
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=32,
                                     max_position_embeddings=32, rotary_pct=0.5,
                                     bos_token_id=0, eos_token_id=0)
    adapter = TransformerAdapter.from_hf(perturb(transformers.GPTNeoXForCausalLM(cfg).double()))
    gen = torch.Generator().manual_seed(11)
    layers = list(adapter.node_layers)
    assert "blocks.0.ln_out" in layers and "blocks.0.parallel_in" in layers
    for layer_in in ("blocks.0.ln_out", "blocks.0.parallel_in"):
        layer_out = layers[layers.index(layer_in) + 1]
        maps = random_maps(adapter, layer_in, layer_out, 5, 4, gen)
        assert not isinstance(adapter.composite_segment(layer_in, *maps, **F64),
                              norm_forms._PositionwiseComposite)

"""Closed-form composite segments of HookedTransformerAdapter against the generic torch.func ones.

``adapter.composite_segment(layer, in_map, out_map)`` (adapters/_transformer_closed_forms.py)
must give the same ``G(z)``, per-sample Jacobians (with and without stochastic sources) and
ablated forward passes as ``CompositeSegment(adapter.segment(layer), in_map, out_map)``, to
round-off, in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformer_lens")
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis  # noqa: E402
from sklearn_lib._segments import CompositeSegment, make_composite  # noqa: E402
from sklearn_lib.adapters import HookedTransformerAdapter  # noqa: E402
from sklearn_lib.adapters import _transformer_closed_forms as closed_forms  # noqa: E402
from sklearn_lib.adapters._attention_closed_forms import AttentionSpanComposite  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer is deprecated:DeprecationWarning"
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "modadd-seed0"
F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
D_VOCAB = 9


def make_model(**overrides) -> HookedTransformer:
    """A small seeded float64 model whose biases are not zero (folding would go untested)."""
    cfg = dict(
        n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=24, n_ctx=3, d_vocab=D_VOCAB,
        act_fn="relu", normalization_type=None, seed=0, dtype=torch.float64, device="cpu",
        initializer_range=0.4,
    )
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    gen = torch.Generator().manual_seed(1)
    biases = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".w", ".b")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(biases):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def random_maps(adapter, layer_in, layer_out, n_in, n_out, gen, n_pos):
    """``in_map`` (1 + d_in, n_in) keeping the constant the constant; ``out_map`` dense."""
    X = torch.zeros(1, n_pos, dtype=torch.long)
    acts = adapter.activations(X, [layer_in, layer_out], **F64)
    d_in, d_out = acts[layer_in].shape[-1], acts[layer_out].shape[-1]
    in_map = torch.randn(d_in, n_in, generator=gen, dtype=torch.float64) / d_in**0.5
    in_map[0] = 0.0
    in_map[0, 0] = 1.0
    out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64) / d_out**0.5
    return in_map, out_map


def special_masks(n_out, n_in, gen) -> torch.Tensor:
    """Random 0/1 masks (constant column kept) with the rows the search produces: all ones,
    all zeros, constant only, repeated rows, nearly full (the complement path), sparse."""
    masks = (torch.rand(n_out, n_in, generator=gen) < 0.5).double()
    masks[:, 0] = 1.0
    masks[1] = 1.0
    masks[2] = 0.0  # the constant ablated too
    masks[3, 1:] = 0.0
    masks[4, 1:] = 0.0
    masks[6] = masks[5]
    masks[7] = 1.0
    masks[7, 1] = 0.0  # drops one column
    masks[8] = 0.0
    masks[8, :2] = 1.0  # keeps one
    if n_out > 10:
        masks[9] = masks[5]
        masks[10] = 1.0
    return masks


def assert_same(fast, slow, what):
    tol = 1e-10 * float(slow.abs().max().clamp_min(1e-300))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=tol, msg=lambda m: f"{what}: {m}")


def check_pair(adapter, layer_in, layer_out, *, n_in, n_out, n_pos, gen, batch=5,
               score_paths=(None,)):
    in_map, out_map = random_maps(adapter, layer_in, layer_out, n_in, n_out, gen, n_pos)
    fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
    assert isinstance(fast, CompositeSegment) and type(fast) is not CompositeSegment
    slow = CompositeSegment(adapter.segment(layer_in, **F64), in_map, out_map)
    T_in = adapter.activations(torch.zeros(1, n_pos, dtype=torch.long), [layer_in],
                               **F64)[layer_in].shape[1]
    z = torch.randn(batch, T_in, n_in, generator=gen, dtype=torch.float64)
    z[..., 0] = 1.0
    with torch.no_grad():
        y = slow(z)
        T_out = y.shape[1]
        assert_same(fast(z), y, f"{layer_in} G(z)")
        J = slow.jacobian(z)
        assert fast.jacobian(z).shape == J.shape == (batch, T_out, n_out, T_in, n_in)
        assert_same(fast.jacobian(z), J, f"{layer_in} jacobian")
        assert_same(fast.jacobian(0.5 * z), slow.jacobian(0.5 * z), f"{layer_in} jacobian/2")
        sources = torch.randint(0, 2, (batch, 3, T_out), generator=gen).double() * 2 - 1
        assert_same(fast.jacobian(z, sources), slow.jacobian(z, sources),
                    f"{layer_in} jacobian with sources")
        masks = special_masks(n_out, n_in, gen)
        expected = slow.ablated(z, masks)
        for path in score_paths:
            if hasattr(fast, "score_path"):
                fast.score_path = path
            assert_same(fast.ablated(z, masks), expected, f"{layer_in} ablated ({path})")
    return fast


CONFIGS = {
    # name: (model overrides, last_position_from, n_pos)
    "modadd-like": (dict(n_heads=4, d_head=4), "blocks.0.hook_resid_mid", 3),
    "1 layer, all positions": (dict(), None, 3),
    "2 layers gelu_new": (dict(n_layers=2, d_model=24, n_heads=3, d_head=8, n_ctx=4,
                               act_fn="gelu_new"), None, 4),
    "2 layers gelu, MLP slices": (dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=4,
                                       act_fn="gelu"), "blocks.1.hook_resid_post", 4),
    "silu, unembed slices, short input": (dict(n_ctx=4, act_fn="silu"), "logits", 3),
    "attention only, bidirectional": (dict(n_layers=2, attn_only=True,
                                           attention_dir="bidirectional"), None, 3),
    "grouped-query attention": (dict(n_heads=4, d_head=4, n_key_value_heads=2), None, 3),
    "multi-query attention, modadd-like": (dict(n_heads=4, d_head=4, n_key_value_heads=1),
                                           "blocks.0.hook_resid_mid", 3),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_closed_forms_match_generic(name):
    overrides, last, n_pos = CONFIGS[name]
    adapter = HookedTransformerAdapter(make_model(**overrides), last_position_from=last)
    gen = torch.Generator().manual_seed(0)
    kinds = set()
    layers = adapter.node_layers
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        fast = check_pair(adapter, layer_in, layer_out, n_in=12, n_out=11, n_pos=n_pos,
                          gen=gen, score_paths=(None, "QK", "qk"))
        kinds.add(type(fast).__name__)
    expected = {"AttentionComposite", "UnembedComposite"}
    if not overrides.get("attn_only"):
        expected.add("MLPComposite")
    assert kinds == expected


def test_small_memory_budget_chunks_the_same(monkeypatch):
    """Tiny chunks (one mask, few rows at a time) give the same numbers."""
    monkeypatch.setattr(closed_forms, "_MEMORY_BUDGET", 2048)
    adapter = HookedTransformerAdapter(make_model(n_heads=4, d_head=4),
                                       last_position_from="blocks.0.hook_resid_mid")
    gen = torch.Generator().manual_seed(3)
    layers = adapter.node_layers
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        check_pair(adapter, layer_in, layer_out, n_in=10, n_out=12, n_pos=3, gen=gen,
                   batch=40)


def test_float32_close_to_generic():
    adapter = HookedTransformerAdapter(make_model(dtype=torch.float32),
                                       last_position_from="blocks.0.hook_resid_mid")
    gen = torch.Generator().manual_seed(4)
    F32 = dict(dtype=torch.float32, device=torch.device("cpu"))
    layers = adapter.node_layers
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        in_map, out_map = random_maps(adapter, layer_in, layer_out, 9, 10, gen, 3)
        in_map, out_map = in_map.float(), out_map.float()
        fast = adapter.composite_segment(layer_in, in_map, out_map, **F32)
        slow = CompositeSegment(adapter.segment(layer_in, **F32), in_map, out_map)
        T_in = 3 if layer_in.endswith("resid_pre") else 1
        z = torch.randn(4, T_in, 9, generator=gen)
        masks = special_masks(10, 9, gen).float()
        for a, b in [(fast(z), slow(z)), (fast.jacobian(z), slow.jacobian(z)),
                     (fast.ablated(z, masks), slow.ablated(z, masks))]:
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_jacobian_at_zero():
    """Integration rules may evaluate at alpha = 0: uniform attention, act'(0)."""
    for act in ("relu", "gelu_new"):
        adapter = HookedTransformerAdapter(make_model(act_fn=act))
        gen = torch.Generator().manual_seed(5)
        layers = adapter.node_layers
        for layer_in, layer_out in zip(layers[:-1], layers[1:]):
            in_map, out_map = random_maps(adapter, layer_in, layer_out, 7, 6, gen, 3)
            fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
            slow = CompositeSegment(adapter.segment(layer_in, **F64), in_map, out_map)
            z = torch.zeros(2, 3, 7, dtype=torch.float64)
            assert_same(fast.jacobian(z), slow.jacobian(z), f"{act} {layer_in} at 0")


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS"])
def test_layer_norm_models_position_wise_closed_forms(norm):
    """The norm-split cuts: the position-wise segments (ln out, the MLP with the next ln in,
    the unembedding) have closed forms (adapters/_norm_closed_forms.py, tested there)."""
    from sklearn_lib.adapters._norm_closed_forms import _PositionwiseComposite

    adapter = HookedTransformerAdapter(make_model(normalization_type=norm))
    gen = torch.Generator().manual_seed(6)
    layers = adapter.node_layers
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        in_map, out_map = random_maps(adapter, layer_in, layer_out, 5, 4, gen, 3)
        if layer_in.endswith("attn_in"):  # [attn, ln_in]: adapters/_attention_closed_forms.py
            fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
            assert isinstance(fast, AttentionSpanComposite)
            continue
        G = make_composite(adapter, [layer_in, layer_out], in_map, out_map, **F64)
        assert isinstance(G, _PositionwiseComposite)


@pytest.mark.parametrize("overrides, kind", [
    (dict(positional_embedding_type="rotary", rotary_dim=4), "attn"),
    (dict(use_local_attn=True, window_size=2, attn_types=["local"]), "attn"),
])
def test_rotary_and_local_attention_have_closed_forms(overrides, kind):
    """Rotary and local attention between residual cuts: adapters/_attention_closed_forms.py."""
    adapter = HookedTransformerAdapter(make_model(**overrides))
    layer = {"attn": "blocks.0.hook_resid_pre", "mlp": "blocks.0.hook_resid_mid"}[kind]
    nxt = adapter.node_layers[adapter.node_layers.index(layer) + 1]
    gen = torch.Generator().manual_seed(8)
    maps = random_maps(adapter, layer, nxt, 5, 4, gen, 3)
    if kind == "attn":  # served by adapters/_attention_closed_forms.py
        assert isinstance(make_composite(adapter, [layer, nxt], *maps, **F64),
                          AttentionSpanComposite)
    else:
        assert adapter.composite_segment(layer, *maps, **F64) is None
        assert type(make_composite(adapter, [layer, nxt], *maps, **F64)) is CompositeSegment
    other = "blocks.0.hook_resid_mid" if kind == "attn" else "blocks.0.hook_resid_pre"
    nxt = adapter.node_layers[adapter.node_layers.index(other) + 1]
    maps = random_maps(adapter, other, nxt, 5, 4, gen, 3)
    assert adapter.composite_segment(other, *maps, **F64) is not None  # the other sublayer


def test_gated_mlp_between_residual_cuts_has_a_closed_form():
    from sklearn_lib.adapters._norm_closed_forms import NormMLPComposite

    adapter = HookedTransformerAdapter(make_model(gated_mlp=True, act_fn="silu"))
    gen = torch.Generator().manual_seed(8)
    layer = "blocks.0.hook_resid_mid"
    nxt = adapter.node_layers[adapter.node_layers.index(layer) + 1]
    maps = random_maps(adapter, layer, nxt, 5, 4, gen, 3)
    assert isinstance(adapter.composite_segment(layer, *maps, **F64), NormMLPComposite)


def test_multi_sublayer_spans_fall_back():
    adapter = HookedTransformerAdapter(
        make_model(n_layers=2),
        node_layers=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre",
                     "blocks.1.hook_resid_mid", "logits"],
    )
    gen = torch.Generator().manual_seed(7)
    maps = random_maps(adapter, "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", 5, 4,
                       gen, 3)
    assert adapter.composite_segment("blocks.0.hook_resid_pre", *maps, **F64) is None
    maps = random_maps(adapter, "blocks.1.hook_resid_mid", "logits", 5, 4, gen, 3)
    assert adapter.composite_segment("blocks.1.hook_resid_mid", *maps, **F64) is None
    maps = random_maps(adapter, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", 5, 4,
                       gen, 3)
    fast = make_composite(adapter, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid"],
                          *maps, **F64)
    assert isinstance(fast, closed_forms.AttentionComposite)
    assert adapter.composite_segment("logits", *maps, **F64) is None  # no segment after it


def test_pipeline_same_with_and_without_closed_forms(monkeypatch):
    """LIB bases, IG edges and the ablation search agree with the torch.func fallback."""
    model = make_model(n_heads=4, d_head=4)
    adapter = HookedTransformerAdapter(model, last_position_from="blocks.0.hook_resid_mid")
    rng = np.random.default_rng(0)
    X = rng.integers(0, D_VOCAB, size=(240, 3))
    with torch.no_grad():
        y = model(torch.as_tensor(X))[:, -1].argmax(-1).numpy()

    def run():
        lib = LocalInteractionBasis(adapter, rotate_final=False, batch_size=64, random_state=0)
        graph = IGEdgeScorer(batch_size=64).fit_transform(lib.fit_transform(X))
        graph = EdgeAblationSearch(metric="accuracy", tolerance=0.02, batch_size=100)\
            .fit_transform(graph, X_eval=X, y_eval=y)
        return lib, graph

    fast_lib, fast_graph = run()
    calls = []
    original = HookedTransformerAdapter.composite_segment

    def spy(self, *args, **kwargs):
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HookedTransformerAdapter, "composite_segment", spy)
    run()
    assert len(calls) >= 3 * (len(adapter.node_layers) - 1)  # the fast path was taken
    monkeypatch.setattr(HookedTransformerAdapter, "composite_segment",
                        lambda self, *a, **k: None)
    slow_lib, slow_graph = run()
    for a, b in zip(fast_lib.bases_, slow_lib.bases_):
        assert a.C.shape == b.C.shape
        np.testing.assert_allclose(a.C, b.C, rtol=1e-7, atol=1e-8 * np.abs(b.C).max())
    for a, b in zip(fast_graph.edges, slow_graph.edges):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())
    for a, b in zip(fast_graph.ablation, slow_graph.ablation):
        assert a.n_edges_needed == b.n_edges_needed
        assert a.score_at_needed == b.score_at_needed


# -- the paper's modular-addition transformer ------------------------------------------------
@pytest.fixture(scope="module")
def modadd_adapter():
    if not (REFERENCE / "model_state_dict.pt").is_file():
        pytest.skip("the modular-addition reference checkpoint is absent")
    from sklearn_lib.adapters import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter as make

    model = load_hooked_transformer(REFERENCE / "model_state_dict.pt",
                                    REFERENCE / "config.json")
    return make(model)


def test_modadd_reference_matches_generic(modadd_adapter):
    """Realistic sizes: 128-d residual, 4 heads of 32, 512 ReLUs, 114 logits."""
    from sklearn_lib.tasks import load_modular_addition

    adapter = modadd_adapter
    data = load_modular_addition()
    X = torch.as_tensor(data.X_test[:24])
    gen = torch.Generator().manual_seed(8)
    layers = adapter.node_layers
    sizes = [(40, 30), (30, 50), (50, 115)]
    for (layer_in, layer_out), (n_in, n_out) in zip(zip(layers[:-1], layers[1:]), sizes):
        in_map, out_map = random_maps(adapter, layer_in, layer_out, n_in, n_out, gen, 3)
        fast = adapter.composite_segment(layer_in, in_map, out_map, **F64)
        slow = CompositeSegment(adapter.segment(layer_in, **F64), in_map, out_map)
        # Real activations in these coordinates (least squares through in_map).
        f = adapter.activations(X, [layer_in], **F64)[layer_in]
        z = torch.linalg.lstsq(in_map, f.reshape(-1, f.shape[-1]).T).solution.T
        z = z.reshape(f.shape[0], f.shape[1], n_in)
        with torch.no_grad():
            assert_same(fast(z), slow(z), f"{layer_in} G(z)")
            assert_same(fast.jacobian(z), slow.jacobian(z), f"{layer_in} jacobian")
            sources = torch.randint(0, 2, (z.shape[0], 2, fast(z).shape[1]),
                                    generator=gen).double() * 2 - 1
            assert_same(fast.jacobian(z, sources), slow.jacobian(z, sources),
                        f"{layer_in} jacobian with sources")
            for frac in (0.05, 0.5, 0.95):
                masks = (torch.rand(n_out, n_in, generator=gen) < frac).double()
                masks[:, 0] = 1.0
                masks[:3, 1:] = 0.0
                masks[3] = 1.0
                assert_same(fast.ablated(z, masks), slow.ablated(z, masks),
                            f"{layer_in} ablated at {frac}")

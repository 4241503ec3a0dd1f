"""Tests of the transformer_lens HookedTransformer adapter (adapters/_transformer_lens.py) and
of the sequential transformer's cuts (adapters/_transformer_sequential.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import jacfwd, jacrev, vmap

pytest.importorskip("transformer_lens")
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from sklearn_lib.adapters import (  # noqa: E402
    HookedTransformerAdapter,
    LoadedTransformer,
    ModelAdapter,
    load_hooked_transformer,
)
from sklearn_lib.adapters._transformer_lens import read_hooked_transformer  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer is deprecated:DeprecationWarning"
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "modadd-seed0"
F64 = dict(dtype=torch.float64, device="cpu")
D_VOCAB, N_CTX = 11, 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_model(dtype: torch.dtype = torch.float64, **overrides) -> HookedTransformer:
    """A small seeded model whose biases and layer-norm weights are not at their defaults."""
    cfg = dict(
        n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=N_CTX, d_vocab=D_VOCAB,
        act_fn="gelu_new", normalization_type="LN", seed=0, dtype=dtype, device="cpu",
        initializer_range=0.4,
    )
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    gen = torch.Generator().manual_seed(1)
    biases = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".w", ".b")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(biases):  # defaults are 0 (or 1): folding would go untested
                p.add_(0.3 * torch.randn(p.shape, generator=gen).to(p.dtype))
    return model.eval()


def every_cut(model, **kw) -> HookedTransformerAdapter:
    """An adapter with every cut of the sequential transformer as a node layer."""
    return HookedTransformerAdapter(model, node_layers=HookedTransformerAdapter(model).cuts, **kw)


def tokens(n: int = 6, n_pos: int = N_CTX) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (n, n_pos))


def chain(adapter: HookedTransformerAdapter, f: torch.Tensor, **kw) -> torch.Tensor:
    for layer in adapter.node_layers[:-1]:
        f = adapter.segment(layer, **kw)(f)
    return f


def first(adapter: HookedTransformerAdapter, X, **kw) -> torch.Tensor:
    """Activations of the first node layer."""
    layer = adapter.node_layers[0]
    return adapter.activations(X, [layer], **(kw or F64))[layer]


# -- reproducing the model -------------------------------------------------------------------
@pytest.mark.parametrize(
    "norm, n_layers, act_fn, last",
    [
        (None, 1, "relu", None),
        (None, 1, "relu", "blocks.0.hook_resid_mid"),
        ("LN", 2, "gelu_new", None),
        ("LN", 2, "gelu", "blocks.1.hook_resid_mid"),
        ("LNPre", 2, "silu", None),
        ("RMS", 1, "gelu_fast", "blocks.0.hook_resid_post"),
        ("RMSPre", 2, "gelu_pytorch_tanh", None),
    ],
)
def test_segments_chain_to_the_model_logits(norm, n_layers, act_fn, last):
    model = make_model(normalization_type=norm, n_layers=n_layers, act_fn=act_fn)
    adapter = HookedTransformerAdapter(model, last_position_from=last)
    X = tokens()
    first = adapter.node_layers[0]
    acts = adapter.activations(X, [first, "logits"], **F64)
    with torch.no_grad():
        expected = model(X)
    out = chain(adapter, acts[first], **F64)
    assert out.shape == (6, 1 if last else N_CTX, 1 + D_VOCAB)
    n_out = out.shape[1]
    torch.testing.assert_close(out[..., 1:], expected[:, -n_out:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, acts["logits"], rtol=1e-12, atol=1e-12)
    for layer in adapter.node_layers:
        logits = adapter.forward_from(layer, **F64)(adapter.activations(X, [layer], **F64)[layer])
        torch.testing.assert_close(logits, expected[:, -1], rtol=1e-10, atol=1e-12)


def test_float32_model_in_float32():
    model = make_model(dtype=torch.float32)
    adapter = HookedTransformerAdapter(model)
    X = tokens()
    kw = dict(dtype=torch.float32, device="cpu")
    out = chain(adapter, first(adapter, X, **kw), **kw)
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out[..., 1:], model(X), rtol=1e-5, atol=1e-5)


def test_activations_equal_the_hook_values():
    model = make_model()
    adapter = every_cut(model)
    assert adapter.cuts == (
        "blocks.0.hook_resid_pre", "blocks.0.ln1_out", "blocks.0.attn_in",
        "blocks.0.hook_resid_mid", "blocks.0.ln2_out", "blocks.0.mlp_in",
        "blocks.1.hook_resid_pre", "blocks.1.ln1_out", "blocks.1.attn_in",
        "blocks.1.hook_resid_mid", "blocks.1.ln2_out", "blocks.1.mlp_in",
        "blocks.1.hook_resid_post", "ln_final_out", "unembed_in", "logits",
    )
    X = tokens()
    acts = adapter.activations(X, adapter.node_layers, **F64)
    with torch.no_grad():
        logits, cache = model.run_with_cache(X)
    ones = torch.ones(6, N_CTX, dtype=torch.float64)
    close = dict(rtol=1e-12, atol=1e-12)
    for i in range(2):
        for resid, ln, cut in (("resid_pre", "ln1", "attn_in"), ("resid_mid", "ln2", "mlp_in")):
            hook = f"blocks.{i}.hook_{resid}"
            f = acts[hook]  # the residual stream only
            assert f.shape == (6, N_CTX, 17) and torch.equal(f[..., 0], ones)
            torch.testing.assert_close(f[..., 1:], cache[hook], **close)
            g = acts[f"blocks.{i}.{ln}_out"]  # residual and the norm's scale
            torch.testing.assert_close(g[..., 1:17], cache[hook], **close)
            torch.testing.assert_close(g[..., 17:], cache[f"blocks.{i}.{ln}.hook_scale"], **close)
            assert adapter.fixed_features(f"blocks.{i}.{ln}_out") == (0, 17)
            h = acts[f"blocks.{i}.{cut}"]  # residual and the normalised residual
            assert h.shape == (6, N_CTX, 33) and adapter.fixed_features(f"blocks.{i}.{cut}") == (0,)
            torch.testing.assert_close(h[..., 1:17], cache[hook], **close)
            torch.testing.assert_close(h[..., 17:], cache[f"blocks.{i}.{ln}.hook_normalized"]
                                       * model.blocks[i].get_submodule(ln).w
                                       + model.blocks[i].get_submodule(ln).b, **close)
    torch.testing.assert_close(acts["ln_final_out"][..., 17:], cache["ln_final.hook_scale"],
                               **close)
    torch.testing.assert_close(acts["unembed_in"][..., 1:],
                               cache["ln_final.hook_normalized"] * model.ln_final.w
                               + model.ln_final.b, **close)
    torch.testing.assert_close(acts["logits"][..., 1:], logits, **close)
    assert adapter.fixed_features("logits") == (0,)


def test_norm_divisions_are_segments_of_their_own():
    model = make_model()
    adapter = HookedTransformerAdapter(model)  # default: the ln*_out and *_in cuts
    assert adapter.node_layers == (
        "blocks.0.ln1_out", "blocks.0.attn_in", "blocks.0.ln2_out", "blocks.0.mlp_in",
        "blocks.1.ln1_out", "blocks.1.attn_in", "blocks.1.ln2_out", "blocks.1.mlp_in",
        "ln_final_out", "unembed_in", "logits",
    )
    divides = [adapter.is_norm_division(layer) for layer in adapter.node_layers]
    assert divides == [True, False] * 5 + [False]
    coarse = HookedTransformerAdapter(model, node_layers=["blocks.0.hook_resid_pre",
                                                          "blocks.0.hook_resid_mid", "logits"])
    assert [coarse.is_norm_division(n) for n in coarse.node_layers] == [True, True, False]
    plain = HookedTransformerAdapter(make_model(normalization_type=None))
    assert not any(plain.is_norm_division(n) for n in plain.node_layers)


def test_activations_with_last_position_from_keep_the_last_position():
    model = make_model()
    adapter = every_cut(model, last_position_from="blocks.1.hook_resid_mid")
    X = tokens()
    acts = adapter.activations(X, adapter.node_layers, **F64)
    with torch.no_grad():
        _, cache = model.run_with_cache(X)
    assert acts["blocks.1.attn_in"].shape[1] == N_CTX
    for layer in ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"):
        assert acts[layer].shape == (6, 1, 17)
        torch.testing.assert_close(acts[layer][:, 0, 1:17], cache[layer][:, -1])
    assert acts["blocks.1.ln2_out"].shape == (6, 1, 18)
    assert acts["logits"].shape == (6, 1, 1 + D_VOCAB)
    assert adapter.forward_from("logits", **F64)(acts["logits"]).shape == (6, D_VOCAB)


def test_no_layer_norm_has_no_scale_feature():
    adapter = HookedTransformerAdapter(make_model(normalization_type=None))
    acts = adapter.activations(tokens(), adapter.node_layers, **F64)
    for layer in adapter.node_layers:
        assert adapter.fixed_features(layer) == (0,)
    assert acts["blocks.0.hook_resid_pre"].shape[-1] == 17


def test_node_layer_subset_and_aliases():
    model = make_model()
    X = tokens()
    adapter = HookedTransformerAdapter(
        model, node_layers=["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "logits"]
    )
    with torch.no_grad():
        _, cache = model.run_with_cache(X)
    acts = adapter.activations(X, adapter.node_layers, **F64)
    post = acts["blocks.0.hook_resid_post"]  # the cut blocks.1.hook_resid_pre: residual only
    torch.testing.assert_close(post[..., 1:], cache["blocks.0.hook_resid_post"])
    out = chain(adapter, acts["blocks.0.hook_resid_pre"], **F64)
    with torch.no_grad():
        torch.testing.assert_close(out[..., 1:], model(X), rtol=1e-10, atol=1e-12)
    paper = HookedTransformerAdapter(model, node_layers=["blocks.0.ln1", "blocks.0.ln2",
                                                         "blocks.1.ln1", "ln_final", "logits"])
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre",
             "blocks.1.hook_resid_post", "logits"]
    by_alias = paper.activations(X, paper.node_layers, **F64)
    for alias, name in zip(paper.node_layers, names):
        torch.testing.assert_close(by_alias[alias][..., 1:], acts[name][..., 1:] if name in acts
                                   else cache[name] if name != "logits" else acts["logits"][..., 1:])


def test_attention_only_model():
    model = make_model(attn_only=True)
    adapter = HookedTransformerAdapter(model)
    assert adapter.node_layers == (
        "blocks.0.ln1_out", "blocks.0.attn_in", "blocks.1.ln1_out", "blocks.1.attn_in",
        "ln_final_out", "unembed_in", "logits",
    )
    plain = HookedTransformerAdapter(make_model(attn_only=True, normalization_type=None))
    assert plain.node_layers == (
        "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "logits"
    )
    X = tokens()
    for a, m in ((adapter, model), (plain, plain.model)):
        out = chain(a, first(a, X), **F64)
        with torch.no_grad():
            torch.testing.assert_close(out[..., 1:], m(X), rtol=1e-10, atol=1e-12)


def test_attention_scale_options():
    options = (
        dict(use_attn_scale=False), dict(attn_scale=2.5), dict(scale_attn_by_inverse_layer_idx=True)
    )
    for overrides in options:
        model = make_model(**overrides)
        adapter = HookedTransformerAdapter(model)
        X = tokens()
        out = chain(adapter, first(adapter, X), **F64)
        with torch.no_grad():
            torch.testing.assert_close(out[..., 1:], model(X), rtol=1e-10, atol=1e-12)


def test_label_position():
    model = make_model()
    X = tokens()
    with torch.no_grad():
        expected = model(X)
    f = first(HookedTransformerAdapter(model), X)
    layer = "blocks.0.ln1_out"
    every = HookedTransformerAdapter(model, label_position=None).forward_from(layer, **F64)
    torch.testing.assert_close(every(f), expected)
    second = HookedTransformerAdapter(model, label_position=1).forward_from(layer, **F64)
    torch.testing.assert_close(second(f), expected[:, 1])


# -- properties the estimators rely on -------------------------------------------------------
@pytest.mark.parametrize("norm", [None, "LN"])
def test_segments_vanish_at_zero_and_pass_the_constant(norm):
    model = make_model(normalization_type=norm)
    adapter = HookedTransformerAdapter(model, last_position_from="blocks.1.hook_resid_mid")
    acts = adapter.activations(tokens(), adapter.node_layers, **F64)
    for layer in adapter.node_layers[:-1]:
        seg = adapter.segment(layer, **F64)
        zero = seg(torch.zeros_like(acts[layer]))
        assert torch.equal(zero, torch.zeros_like(zero))
        for c in (1.0, 0.5, 2.0):
            out = seg(c * acts[layer])
            assert torch.isfinite(out).all()
            assert torch.equal(out[..., 0], torch.full_like(out[..., 0], c))
    rest = adapter.forward_from(adapter.node_layers[0], **F64)
    zero_logits = rest(torch.zeros(2, N_CTX, 1 + 16 + (norm is not None), dtype=torch.float64))
    assert torch.equal(zero_logits, torch.zeros_like(zero_logits))


def test_scale_feature_folds_eps_with_the_constant():
    # "ln in" appends sqrt(var + eps * f_0**2): homogeneous of degree 1, so F(0) = 0.
    model = make_model()
    eps = model.cfg.eps
    adapter = every_cut(model)
    acts = adapter.activations(tokens(), adapter.node_layers, **F64)
    layers = adapter.node_layers
    checked = 0
    for layer, nxt in zip(layers[:-1], layers[1:]):
        if adapter.fixed_features(nxt) == (0,):
            continue
        for c in (1.0, 0.3):
            out = adapter.segment(layer, **F64)(c * acts[layer])
            resid = out[..., 1:17]
            var = (resid - resid.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True)
            expected = torch.sqrt(var + eps * c**2)
            torch.testing.assert_close(out[..., 17:], expected, rtol=1e-13, atol=0)
            torch.testing.assert_close(out, c * acts[nxt], rtol=1e-13, atol=1e-15)
        checked += 1
    assert checked == 5  # ln1 and ln2 of both blocks, ln_final


def test_jacobians_under_torch_func():
    model = make_model(act_fn="gelu")
    adapter = HookedTransformerAdapter(model, last_position_from="blocks.1.hook_resid_mid")
    acts = adapter.activations(tokens(3, 4), adapter.node_layers, **F64)
    for layer in adapter.node_layers[:-1]:
        seg = adapter.segment(layer, **F64)

        def one(z, seg=seg):
            return seg(z[None])[0]

        f = acts[layer]
        J = vmap(jacrev(one))(f)
        assert torch.isfinite(J).all()
        torch.testing.assert_close(J, vmap(jacfwd(one))(f), rtol=1e-10, atol=1e-12)
        # central differences on sample 0, a few input coordinates
        x0, eps = f[0], 1e-6
        for pos, j in [(0, 0), (f.shape[1] - 1, 3), (f.shape[1] - 1, f.shape[2] - 1)]:
            e = torch.zeros_like(x0)
            e[pos, j] = eps
            fd = (one(x0 + e) - one(x0 - e)) / (2 * eps)
            torch.testing.assert_close(J[0][..., pos, j], fd, rtol=1e-5, atol=1e-7)


def test_causal_mask():
    model = make_model()
    adapter = HookedTransformerAdapter(model)
    X = tokens()
    X2 = X.clone()
    X2[:, -1] = (X2[:, -1] + 1) % D_VOCAB
    a, b = (adapter.activations(x, adapter.node_layers, **F64) for x in (X, X2))
    for layer in adapter.node_layers:
        torch.testing.assert_close(a[layer][:, :-1], b[layer][:, :-1], rtol=0, atol=0)
        assert not torch.allclose(a[layer][:, -1], b[layer][:, -1])
    # and inside a segment: a later position never moves an earlier one
    seg = adapter.segment("blocks.0.attn_in", **F64)
    f = a["blocks.0.attn_in"]
    g = f.clone()
    g[:, 2:, 1:] += 1.0
    torch.testing.assert_close(seg(f)[:, :2], seg(g)[:, :2], rtol=0, atol=0)
    assert not torch.allclose(seg(f)[:, 2:], seg(g)[:, 2:])


def test_bidirectional_attention():
    model = make_model(attention_dir="bidirectional")
    adapter = HookedTransformerAdapter(model)
    X = tokens()
    acts = adapter.activations(X, adapter.node_layers, **F64)
    with torch.no_grad():
        torch.testing.assert_close(acts["logits"][..., 1:], model(X), rtol=1e-10, atol=1e-12)


def test_protocol_clone_and_repr():
    from sklearn.base import clone

    adapter = HookedTransformerAdapter(make_model(), last_position_from="blocks.1.hook_resid_mid")
    assert isinstance(adapter, ModelAdapter)
    assert clone(adapter) is adapter
    text = repr(adapter)
    assert "HookedTransformerAdapter(" in text and "blocks.1.hook_resid_mid" in text
    assert "normalization_type='LN'" in text
    assert adapter.default_metric == "accuracy"
    assert HookedTransformerAdapter(make_model(), metric="loss").default_metric == "loss"


def test_check_input_accepts_numpy_and_torch():
    adapter = HookedTransformerAdapter(make_model())
    X = np.array([[1, 2, 3]], dtype=np.int32)
    checked = adapter.check_input(X)
    assert isinstance(checked, np.ndarray) and checked.dtype == np.int32  # unchanged, not copied
    np.testing.assert_array_equal(checked, X)
    assert isinstance(adapter.check_input(torch.as_tensor(X)), torch.Tensor)
    acts = adapter.activations(X, ["logits"], **F64)
    assert acts["logits"].shape == (1, 3, 1 + D_VOCAB)


def test_weights_reader_returns_plain_tensors():
    model = make_model()
    w = read_hooked_transformer(model)
    sizes = (w.d_model, w.d_vocab, w.d_vocab_out, w.n_ctx, w.n_layers)
    assert sizes == (16, D_VOCAB, D_VOCAB, N_CTX, 2)
    assert w.blocks[0].attn.W_Q.data_ptr() == model.blocks[0].attn.W_Q.data_ptr()  # no copy
    w32 = w.to(torch.float32, "cpu")
    assert w32.blocks[1].ln2.w.dtype == torch.float32 and w32.blocks[0].attn.causal


def test_module_imports_without_transformer_lens():
    """One subprocess: the adapters import without transformers or transformer_lens, and the
    modular-addition path (load_hooked_transformer, modadd_adapter) never imports them."""
    code = (
        "import sys, torch, sklearn_lib.adapters, sklearn_lib.adapters._transformer_lens; "
        "bad = [m for m in ('transformers', 'transformer_lens') if m in sys.modules]; "
        "assert not bad, bad; "
        "from sklearn_lib.tasks._modular_addition import shipped_modadd_checkpoint; "
        "from sklearn_lib.tasks._modadd_experiment import modadd_adapter; "
        "from sklearn_lib.adapters import load_hooked_transformer; "
        "state, config = shipped_modadd_checkpoint(0); "
        "a = modadd_adapter(load_hooked_transformer(state, config)); "
        "a.activations([[1, 2, 113]], a.node_layers, dtype=torch.float64, device='cpu'); "
        "assert 'transformer_lens' not in sys.modules, 'transformer_lens imported'"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# -- loading ---------------------------------------------------------------------------------
def test_loader_accepts_nested_flat_and_json(tmp_path):
    cfg = dict(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=3, d_vocab=5,
               act_fn="relu", normalization_type="LN")
    source = make_model(**cfg)
    path = tmp_path / "model_state_dict.pt"
    torch.save(source.state_dict(), path)
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg, "train": {"epochs": 1}}))
    X = torch.tensor([[0, 1, 2], [4, 3, 2]])
    with torch.no_grad():
        expected = source(X)
    for config in ({"model": cfg}, cfg, tmp_path / "config.json", str(tmp_path / "config.json")):
        model = load_hooked_transformer(path, config)
        assert isinstance(model, LoadedTransformer) and not model.training
        assert model.cfg.d_model == 8 and model.eval() is model
        torch.testing.assert_close(model(X), expected, rtol=1e-12, atol=1e-12)
        adapter = HookedTransformerAdapter(model)
        torch.testing.assert_close(chain(adapter, first(adapter, X), **F64)[..., 1:], expected)
    with pytest.raises(ValueError, match=r"not a HookedTransformerConfig: unknown fields \['n_b"):
        load_hooked_transformer(path, {**cfg, "n_blocks": 3})
    with pytest.raises(ValueError, match=r"required fields \['n_ctx'\] are missing"):
        load_hooked_transformer(path, {k: v for k, v in cfg.items() if k != "n_ctx"})
    with pytest.raises(ValueError, match=r"size mismatch for 'blocks.0.mlp.b_in': \(16,\)"):
        load_hooked_transformer(path, {**cfg, "d_mlp": 32})
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.0.ln1.b'"):
        load_hooked_transformer(path, {**cfg, "normalization_type": "RMS"})
    torch.save({k: v for k, v in source.state_dict().items() if k != "blocks.0.ln1.w"},
               tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="missing key 'blocks.0.ln1.w'"):
        load_hooked_transformer(tmp_path / "odd.pt", cfg)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference checkpoint not present")
def test_reference_modular_addition_model_gets_4_wrong():
    model = load_hooked_transformer(REFERENCE / "model_state_dict.pt", REFERENCE / "config.json")
    x, y = np.divmod(np.arange(113 * 113), 113)
    X = np.stack([x, y, np.full_like(x, 113)], axis=1)
    labels = torch.as_tensor((x + y) % 113)
    with torch.no_grad():
        assert int((model(torch.as_tensor(X))[:, -1].argmax(-1) != labels).sum()) == 4
    adapter = HookedTransformerAdapter(model, last_position_from="blocks.0.hook_resid_mid")
    assert adapter.node_layers == (
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "logits"
    )
    kw = dict(dtype=torch.float32, device="cpu")
    f = adapter.activations(X, ["blocks.0.hook_resid_pre"], **kw)["blocks.0.hook_resid_pre"]
    assert f.shape == (12769, 3, 129)
    logits = adapter.forward_from("blocks.0.hook_resid_pre", **kw)(f)
    assert logits.shape == (12769, 114)
    assert int((logits.argmax(-1) != labels).sum()) == 4
    assert all(adapter.fixed_features(layer) == (0,) for layer in adapter.node_layers)


# -- errors ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter() -> HookedTransformerAdapter:
    return HookedTransformerAdapter(make_model())


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((2, 3)), r"integer token ids; got dtype float64"),
        (torch.zeros(2, 3, dtype=torch.bool), r"integer token ids; got dtype torch.bool"),
        (np.zeros(3, dtype=int), r"shape \(n_samples, n_positions\); got shape \(3,\)"),
        (np.zeros((2, 3, 1), dtype=int), r"got shape \(2, 3, 1\)"),
        (np.zeros((0, 3), dtype=int), r"Found 0 samples"),
        (np.zeros((2, 6), dtype=int), r"6 positions; the model takes between 1 and n_ctx=5"),
        (np.zeros((2, 0), dtype=int), r"0 positions"),
        (np.array([[1, 11]]), r"token 11, outside the vocabulary \[0, 11\)"),
        (torch.tensor([[-1, 2]]), r"token -1, outside the vocabulary"),
    ],
)
def test_check_input_errors(adapter, X, match):
    with pytest.raises(ValueError, match=match):
        adapter.check_input(X)


def test_activations_validate_inputs(adapter):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        adapter.activations(np.array([[1, 99]]), ["logits"], **F64)


def test_label_position_out_of_range():
    adapter = HookedTransformerAdapter(make_model(), label_position=4)
    with pytest.raises(ValueError, match="label_position=4 is out of range for inputs with 3"):
        adapter.check_input(np.zeros((1, 3), dtype=int))


def test_unknown_layer_names(adapter):
    for call in (
        lambda: adapter.segment("blocks.0.attn", **F64),
        lambda: adapter.forward_from("blocks.9.hook_resid_pre", **F64),
        lambda: adapter.activations(np.zeros((1, 2), dtype=int), ["embed"], **F64),
        lambda: adapter.fixed_features("output"),
    ):
        with pytest.raises(ValueError, match=r"Unknown node layer .* node layers: \['blocks.0"):
            call()
    with pytest.raises(ValueError, match="'logits' is the last node layer"):
        adapter.segment("logits", **F64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(node_layers=["blocks.0.hook_resid_pre", "blocks.0.mlp"]),
         r"Unknown node layer 'blocks.0.mlp'. Available: 'blocks.0.hook_resid_pre', "
         r"'blocks.0.ln1', 'blocks.0.ln1_out', 'blocks.0.attn_in', 'blocks.0.hook_resid_mid'"),
        (dict(node_layers=["logits", "blocks.0.hook_resid_pre"]), "forward order"),
        (dict(node_layers=["logits"]), "at least two"),
        (dict(node_layers=["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]), "same cut"),
        (dict(last_position_from="blocks.0.resid"), "Unknown last_position_from 'blocks.0.resid'"),
        (dict(last_position_from="blocks.1.hook_resid_pre"),
         r"attention of block 1 still reads.*e.g. 'blocks.1.hook_resid_mid'"),
        (dict(last_position_from="blocks.1.attn_in"), "attention of block 1 still reads"),
        (dict(last_position_from="blocks.1.hook_resid_post", label_position=0),
         "label_position must be -1"),
        (dict(label_position=1.5), "label_position must be an int or None. Got 1.5"),
        (dict(metric="f1"), "metric must be 'accuracy' or 'loss'. Got 'f1'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HookedTransformerAdapter(make_model(), **kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(positional_embedding_type="shortformer"), "positional_embedding_type='shortformer'"),
        (dict(act_fn="solu_ln"), r"act_fn='solu_ln'"),
        (dict(output_logits_soft_cap=30.0), r"output_logits_soft_cap=30.0 \(soft-capped logits"),
        (dict(use_qk_norm=True), r"use_qk_norm=True \(query/key normalisation\)"),
    ],
)
def test_unsupported_configs(overrides, match):
    model = make_model(**overrides)
    with pytest.raises(ValueError, match=match):
        HookedTransformerAdapter(model)


def test_not_a_hooked_transformer():
    with pytest.raises(TypeError, match="needs a transformer_lens HookedTransformer; got Seq"):
        HookedTransformerAdapter(torch.nn.Sequential(torch.nn.Linear(2, 2)))

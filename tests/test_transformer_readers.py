"""The readers and the architectures of the sequential transformer (adapters/_read_*.py,
adapters/_transformer_sequential.py): tiny random models built here, float64.

Every reader's weights, chained segment by segment from the first cut, must reproduce the model's
own forward to 1e-10; segment Jacobians equal ``torch.func.jacrev``; integrated gradients are
complete on every segment that does not divide by a norm's scale.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.func import jacrev, vmap

from sklearn_lib import IGEdgeScorer, LocalInteractionBasis, PCAWhitener
from sklearn_lib._edges import quadrature
from sklearn_lib._segments import make_composite
from sklearn_lib.adapters import (
    HookedTransformerAdapter,
    TransformerAdapter,
    read_hf_model,
    read_transformer_bridge,
    verify_forward,
)

F64 = dict(dtype=torch.float64, device="cpu")
V, T = 23, 9

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer is deprecated:DeprecationWarning"
)


def tokens(n: int = 4, n_pos: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n, n_pos), generator=torch.Generator().manual_seed(seed))


def chain(adapter, X) -> torch.Tensor:
    """Logits by chaining every segment from the first node layer."""
    f = adapter.activations(X, adapter.node_layers[:1], **F64)[adapter.node_layers[0]]
    for layer in adapter.node_layers[:-1]:
        f = adapter.segment(layer, **F64)(f)
    return f[..., 1:]


def perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move norm weights and biases off their defaults (1 and 0), so folding is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith(("b_Q", "b_K", "b_V", "_b_K", "_b_V", "b_in")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def hf(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=12, n_layer=2, n_head=3,
                                      bos_token_id=0, eos_token_id=0, **kw)
        model = transformers.GPT2LMHeadModel(cfg)
    elif name == "gpt_neox":  # Pythia: parallel blocks, partial rotary
        cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=32,
                                         max_position_embeddings=32, rotary_pct=0.5,
                                         bos_token_id=0, eos_token_id=0, **kw)
        model = transformers.GPTNeoXForCausalLM(cfg)
    elif name == "gpt_neo":
        cfg = transformers.GPTNeoConfig(vocab_size=V, max_position_embeddings=16, hidden_size=12,
                                        num_layers=2, num_heads=3, window_size=3,
                                        attention_types=[[["global", "local"], 1]],
                                        bos_token_id=0, eos_token_id=0)
        model = transformers.GPTNeoForCausalLM(cfg)
    else:
        cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[name]
        base = dict(vocab_size=V, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    bos_token_id=0, eos_token_id=0)
        cfg = getattr(transformers, f"{cls}Config")(**{**base, **kw})
        model = getattr(transformers, f"{cls}ForCausalLM")(cfg)
    return perturb(model.double())


@pytest.fixture
def float64_rms_norm(monkeypatch):
    """HF's Llama-family RMSNorm rounds through float32 even in a float64 model; compare against
    the same formula kept in the input's dtype."""

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                              + self.variance_epsilon))

    for family in ("llama", "mistral", "qwen2"):
        module = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["x"])
        cls = getattr(module, f"{family.capitalize() if family != 'qwen2' else 'Qwen2'}RMSNorm")
        monkeypatch.setattr(cls, "forward", forward)


def own_logits(model, X) -> torch.Tensor:
    with torch.no_grad():
        return model(X).logits


# -- HuggingFace -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", [
    ("gpt2", {}),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True, activation_function="gelu")),
    ("gpt2", dict(tie_word_embeddings=False)),
    ("gpt_neo", {}),
    ("gpt_neox", dict(use_parallel_residual=True)),
    ("gpt_neox", dict(use_parallel_residual=False)),
])
def test_hf_gpt2_family_reproduces_the_model(name, kw):
    model = hf(name, **kw)
    adapter = TransformerAdapter.from_hf(model)
    X = tokens()
    expected = own_logits(model, X)
    torch.testing.assert_close(chain(adapter, X), expected, rtol=1e-10, atol=1e-10)
    # the adapter's own reference is the model's forward, at the labelled position
    torch.testing.assert_close(adapter.reference_forward(X, **F64), expected[:, -1])
    assert adapter.reference_rtol(torch.float64) == pytest.approx(1.49e-8, rel=1e-2)
    assert verify_forward(adapter, X) < 1e-10


@pytest.mark.parametrize("name, kw", [
    ("llama", dict(rope_theta=1e5, tie_word_embeddings=True)),  # SmolLM2's theta and tying
    ("llama", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True)),  # MQA, biases
    ("llama", dict(num_key_value_heads=4, hidden_act="gelu_pytorch_tanh")),
    ("mistral", dict(sliding_window=4)),
    ("qwen2", {}),
])
def test_hf_llama_family_reproduces_the_model(name, kw, float64_rms_norm):
    model = hf(name, **kw)
    adapter = TransformerAdapter.from_hf(model)
    X = tokens()
    torch.testing.assert_close(chain(adapter, X), own_logits(model, X), rtol=1e-10, atol=1e-10)


def test_hf_llama_agrees_with_its_float32_rms_norm_to_float32_precision():
    model = hf("llama", rope_theta=1e5)
    X = tokens()
    err = float((chain(TransformerAdapter.from_hf(model), X) - own_logits(model, X)).abs().max())
    assert 1e-12 < err < 1e-5  # the model's own float32 rounding, nothing larger


def test_hf_rotary_tables_are_the_models_own():
    model = hf("llama", rope_theta=1e5, head_dim=8, num_attention_heads=2,
               num_key_value_heads=1)
    rot = read_hf_model(model).blocks[0].attn.rotary
    inv_freq = 1.0 / 1e5 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = torch.arange(32, dtype=torch.float64)[:, None] * inv_freq
    torch.testing.assert_close(rot.cos, torch.cat([angles, angles], 1).cos(), rtol=0, atol=1e-5)
    assert rot.cos.shape == (32, 8) and not rot.adjacent_pairs
    # a different theta changes the model's forward, so the tables must follow it
    other = hf("llama", rope_theta=1e4, head_dim=8, num_attention_heads=2, num_key_value_heads=1)
    assert not torch.allclose(read_hf_model(other).blocks[0].attn.rotary.cos, rot.cos)


def test_sliding_window_and_grouped_queries_matter(float64_rms_norm):
    """Dropping the window or the grouping from the weights changes the logits: both are read."""
    import dataclasses

    model = hf("mistral", sliding_window=3, num_key_value_heads=1)
    w = read_hf_model(model)
    assert [b.attn.window for b in w.blocks] == [3, 3] and w.blocks[0].attn.n_kv_heads == 1
    X = tokens()
    no_window = dataclasses.replace(w, blocks=tuple(
        dataclasses.replace(b, attn=dataclasses.replace(b.attn, window=None)) for b in w.blocks))
    assert not torch.allclose(TransformerAdapter(no_window).logits(X), own_logits(model, X))
    torch.testing.assert_close(TransformerAdapter(w).logits(X), own_logits(model, X),
                               rtol=1e-10, atol=1e-10)


def test_weights_are_cast_once_per_dtype_and_device():
    adapter = TransformerAdapter.from_hf(hf("gpt2"))
    w64 = adapter._weights(torch.float64, "cpu")
    assert adapter._weights(torch.float64, "cpu") is w64
    assert w64.W_E.data_ptr() == adapter.weights.W_E.data_ptr()  # no copy in the model's dtype
    w32 = adapter._weights(torch.float32, "cpu")
    assert w32 is adapter._weights(torch.float32, torch.device("cpu"))
    assert w32.blocks[0].attn.W_Q.dtype == torch.float32
    seg = adapter.segment(adapter.node_layers[1], dtype=torch.float32, device="cpu")
    f = adapter.activations(tokens(), adapter.node_layers[1:2], dtype=torch.float32,
                            device="cpu")[adapter.node_layers[1]]
    assert seg(f).dtype == torch.float32


def test_reader_errors():
    with pytest.raises(TypeError, match="needs a transformers model; got Linear"):
        read_hf_model(torch.nn.Linear(2, 2))
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=V, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8))
    with pytest.raises(ValueError, match="Model family 'bert' is not read yet"):
        read_hf_model(bert)
    with pytest.raises(ValueError, match="no language-model head; pass the causal LM"):
        read_hf_model(hf("gpt2").transformer)
    with pytest.raises(TypeError, match="needs TransformerWeights; got GPT2LMHeadModel"):
        TransformerAdapter(hf("gpt2"))
    with pytest.raises(TypeError, match="needs a transformer_lens 4.x TransformerBridge"):
        read_transformer_bridge(hf("gpt2"))


def test_parallel_blocks_cut_at_one_scale():
    import dataclasses

    model = hf("gpt_neox", use_parallel_residual=True)
    adapter = TransformerAdapter.from_hf(model)
    assert adapter.node_layers == (
        "blocks.0.ln_out", "blocks.0.parallel_in", "blocks.1.ln_out", "blocks.1.parallel_in",
        "ln_final_out", "unembed_in", "logits",
    )
    assert [adapter.is_norm_division(n) for n in adapter.node_layers[:4]] == [True, False] * 2
    acts = adapter.activations(tokens(), ["blocks.0.ln_out", "blocks.0.parallel_in"], **F64)
    assert acts["blocks.0.ln_out"].shape[-1] == 18 and acts["blocks.0.parallel_in"].shape[-1] == 49
    assert adapter.fixed_features("blocks.0.ln_out") == (0, 17)
    w = read_hf_model(model)
    block = w.blocks[0]
    odd = dataclasses.replace(w, blocks=(dataclasses.replace(
        block, ln2=dataclasses.replace(block.ln2, eps=1e-3)),))
    with pytest.raises(ValueError, match="Block 0 runs attention and MLP in parallel with norms"):
        TransformerAdapter(odd)
    with pytest.raises(ValueError, match="drops positions that the attention of block 1"):
        TransformerAdapter(w, last_position_from="blocks.1.parallel_in")


def test_first_batch_check_catches_a_wrong_reader():
    import dataclasses

    model = hf("gpt2")
    w = read_hf_model(model)
    wrong = dataclasses.replace(w, blocks=tuple(
        dataclasses.replace(b, attn=dataclasses.replace(b.attn, b_O=0 * b.attn.b_O))
        for b in w.blocks))  # a reader that forgot the attention's output bias
    adapter = TransformerAdapter._from_model(wrong, model, "hf", {})
    X = tokens()
    for _ in range(2):  # a failed check is not marked as done: it fails again
        with pytest.raises(ValueError, match=r"TransformerAdapter \(GPT2LMHeadModel\): The "
                                             r"adapter's chained segments differ from the "
                                             r"model's own forward by \d"):
            adapter.activations(X, adapter.node_layers[:1], **F64)
    good = TransformerAdapter.from_hf(model)
    good.activations(X, good.node_layers[:1], **F64)
    assert good._verified and not adapter._verified


def test_first_batch_check_catches_a_model_the_weights_do_not_describe():
    X = tokens()
    model = hf("gpt2", resid_pdrop=0.5).train()  # dropout active: a different function
    with pytest.raises(ValueError, match="evaluation mode"):
        TransformerAdapter.from_hf(model).activations(X, ["logits"], **F64)
    model.eval()
    hook = model.transformer.h[0].mlp.register_forward_hook(lambda m, i, o: 2 * o)
    with pytest.raises(ValueError, match="differ from the model's own forward"):
        TransformerAdapter.from_hf(model).activations(X, ["logits"], **F64)
    hook.remove()
    TransformerAdapter.from_hf(model).activations(X, ["logits"], **F64)


def test_llama_first_batch_check_uses_the_float32_tolerance_of_its_norms():
    """HF's RMSNorm rounds through float32: the model's own float64 forward is float32-accurate
    (about 1e-7 relative), so the check compares at 1e-5; a reader error (the wrong rotary
    base, 6e-5) is still above it."""
    import dataclasses

    model = hf("llama", rope_theta=1e5)
    adapter = TransformerAdapter.from_hf(model)
    assert adapter.reference_rtol(torch.float64) == 1e-5
    assert adapter.reference_rtol(torch.float32) == pytest.approx(3.45e-4, rel=1e-2)
    X = tokens()
    diff = verify_forward(adapter, X, rtol=adapter.reference_rtol(torch.float64))
    assert 1e-12 < diff < 1e-6
    adapter.activations(X, adapter.node_layers[:1], **F64)  # the first-batch check passes
    other = read_hf_model(hf("llama", rope_theta=1e4))
    w = read_hf_model(model)
    wrong = dataclasses.replace(w, blocks=tuple(
        dataclasses.replace(b, attn=dataclasses.replace(b.attn, rotary=o.attn.rotary))
        for b, o in zip(w.blocks, other.blocks)))  # a reader that ignored rope_theta
    with pytest.raises(ValueError, match="differ from the model's own forward"):
        TransformerAdapter._from_model(wrong, model, "hf", {}).activations(
            X, ["logits"], **F64)


def test_hooked_transformer_first_batch_check_uses_its_cfg_dtype():
    """A float32 HookedTransformer casts its attention pattern to cfg.dtype even when run in
    float64 (about 1e-7 relative): checked at 1e-5; a float64 one at sqrt(eps)."""
    X = tokens()
    model32 = tl_model(dtype=torch.float32)
    adapter = HookedTransformerAdapter(model32)
    assert adapter.reference_rtol(torch.float64) == 1e-5
    with pytest.raises(ValueError, match="differ from the model's own forward"):
        verify_forward(adapter, X)  # float64's own tolerance is below the model's rounding
    adapter.activations(X, adapter.node_layers[:1], **F64)  # the first-batch check passes
    assert HookedTransformerAdapter(tl_model()).reference_rtol(torch.float64) == \
        pytest.approx(1.49e-8, rel=1e-2)


@pytest.mark.parametrize("kw", [dict(), dict(label_position=None), dict(label_position=2),
                                dict(last_position_from="ln_final_out"),
                                dict(last_position_from="ln_final_out", label_position=None)])
def test_reference_forward_returns_what_forward_from_returns(kw):
    model = hf("gpt2")
    adapter = TransformerAdapter.from_hf(model, **kw)
    X = tokens()
    f = adapter.activations(X, adapter.node_layers[:1], **F64)[adapter.node_layers[0]]
    for layer in adapter.node_layers[:-1]:
        f = adapter.segment(layer, **F64)(f)
    out = adapter.forward_from(adapter.node_layers[-1], **F64)(f)
    ref = adapter.reference_forward(X, **F64)
    assert ref.shape == out.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # float32: computed with the parameters cast, the user's model left in float64
    ref32 = adapter.reference_forward(X, dtype=torch.float32, device="cpu")
    assert ref32.dtype == torch.float32 and next(model.parameters()).dtype == torch.float64
    torch.testing.assert_close(ref32.double(), out, rtol=1e-4, atol=1e-5)


def test_adapters_from_plain_weights_have_no_reference_forward():
    from sklearn_lib.adapters import SupportsReferenceForward

    model = hf("gpt2")
    plain = TransformerAdapter(read_hf_model(model))
    assert plain.model is None and not hasattr(plain, "reference_forward")
    assert not isinstance(plain, SupportsReferenceForward)
    plain.activations(tokens(), ["logits"], **F64)  # nothing to check against: no error
    adapter = TransformerAdapter.from_hf(model)
    assert isinstance(adapter, SupportsReferenceForward)
    copy = pickle.loads(pickle.dumps(adapter))  # the bound reference is rebuilt on the copy
    assert copy.reference_forward.__self__ is copy
    torch.testing.assert_close(copy.reference_forward(tokens(), **F64),
                               adapter.reference_forward(tokens(), **F64))


# -- transformer_lens ------------------------------------------------------------------------
def tl_model(**overrides):
    tl = pytest.importorskip("transformer_lens")
    cfg = dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=24, n_ctx=T, d_vocab=V,
               act_fn="gelu_new", normalization_type="LN", seed=0, dtype=torch.float64,
               device="cpu", initializer_range=0.4)
    cfg.update(overrides)
    return perturb(tl.HookedTransformer(tl.HookedTransformerConfig(**cfg)))


@pytest.mark.parametrize("overrides", [
    dict(positional_embedding_type="rotary", rotary_dim=4, rotary_base=1e5),
    dict(positional_embedding_type="rotary", rotary_dim=2, rotary_adjacent_pairs=True),
    dict(gated_mlp=True, act_fn="silu", normalization_type="RMS", n_key_value_heads=2,
         positional_embedding_type="rotary", rotary_dim=4),  # Llama-shaped
    dict(n_key_value_heads=1),
    dict(use_local_attn=True, window_size=3, attn_types=["global", "local"]),
    dict(normalization_type="RMSPre", act_fn="silu"),
    dict(parallel_attn_mlp=True),
    dict(parallel_attn_mlp=True, normalization_type=None),
])
def test_transformer_lens_architectures_reproduce_the_model(overrides):
    model = tl_model(**overrides)
    adapter = HookedTransformerAdapter(model)
    X = tokens()
    with torch.no_grad():
        expected = model(X)
    torch.testing.assert_close(chain(adapter, X), expected, rtol=1e-10, atol=1e-10)
    plain = TransformerAdapter.from_hooked_transformer(model)
    assert plain.node_layers == adapter.node_layers and plain.model is model
    torch.testing.assert_close(plain.logits(X), expected, rtol=1e-10, atol=1e-10)


def test_transformer_lens_state_dict_reader_matches_the_model_reader():
    from sklearn_lib.adapters import read_hooked_transformer, read_tl_state_dict

    model = tl_model(positional_embedding_type="rotary", rotary_dim=4, gated_mlp=True,
                     n_key_value_heads=2)
    a = read_hooked_transformer(model)
    b = read_tl_state_dict({k: v.clone() for k, v in model.state_dict().items()},
                           {f: getattr(model.cfg, f) for f in (
                               "n_layers", "d_model", "d_head", "n_heads", "d_mlp", "n_ctx",
                               "d_vocab", "act_fn", "normalization_type",
                               "positional_embedding_type", "rotary_dim", "gated_mlp",
                               "n_key_value_heads")})
    X = tokens()
    torch.testing.assert_close(TransformerAdapter(a).logits(X), TransformerAdapter(b).logits(X),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_transformer_bridge(name, tmp_path, float64_rms_norm):
    """transformer_lens's TransformerBridge (3.9 ships it; 4.x has only it), booted offline
    around a tiny HF model with a tokenizer saved here."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge",
                                     reason="transformer_lens without TransformerBridge")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"t{i}": i for i in range(V)}
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0")),
        unk_token="t0", bos_token="t0", eos_token="t0", pad_token="t0",
    ).save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = hf(name)
    X = tokens()
    expected = own_logits(model, X)  # before booting: the bridge wraps the model's modules
    bridge = bridge_mod.TransformerBridge.boot_transformers(f"tiny-{name}", hf_model=model,
                                                            tokenizer=tok)
    adapter = TransformerAdapter.from_bridge(bridge)
    assert adapter.model is bridge
    torch.testing.assert_close(adapter.reference_forward(X, **F64), expected[:, -1],
                               rtol=1e-6, atol=1e-6)
    adapter.activations(X, adapter.node_layers[:1], **F64)  # the first-batch check passes
    with torch.no_grad():
        bridge_logits = bridge(X, return_type="logits")
    torch.testing.assert_close(chain(adapter, X), expected, rtol=1e-10, atol=1e-10)
    # the bridge's own components round some steps differently (float32 norms for Llama)
    torch.testing.assert_close(bridge_logits, expected, rtol=1e-6, atol=1e-6)


# -- Jacobians and completeness ----------------------------------------------------------------
@pytest.mark.parametrize("source", ["gpt2", "llama", "tl_plain"])
def test_segment_jacobians_equal_jacrev(source):
    if source == "tl_plain":
        adapter = HookedTransformerAdapter(tl_model(normalization_type=None, n_layers=1))
    else:
        adapter = TransformerAdapter.from_hf(hf(source))
    X = tokens(2, 5)
    layers = adapter.node_layers
    acts = adapter.activations(X, layers, **F64)
    gen = torch.Generator().manual_seed(0)
    for a, b in zip(layers[:-1], layers[1:]):
        d_in, d_out = acts[a].shape[-1], acts[b].shape[-1]
        n_in, n_out = min(d_in, 7), min(d_out, 6)
        in_map = torch.randn(d_in, n_in, generator=gen, dtype=torch.float64)
        in_map[0] = 0.0
        in_map[0, 0] = 1.0  # basis feature 0 is the constant
        out_map = torch.randn(n_out, d_out, generator=gen, dtype=torch.float64)
        G = make_composite(adapter, [a, b], in_map, out_map, **F64)
        z = torch.randn(2, acts[a].shape[1], n_in, generator=gen, dtype=torch.float64)
        z[..., 0] = 1.0
        seg = adapter.segment(a, **F64)

        def one(zb, seg=seg, in_map=in_map, out_map=out_map):
            return seg((zb @ in_map.T)[None])[0] @ out_map.T

        torch.testing.assert_close(G.jacobian(z), vmap(jacrev(one))(z), rtol=1e-9, atol=1e-11)


def _completeness(adapter, layer, X, n_steps):
    """Relative RMS of sum_j A_(i,s),j - F_(i,s) on the segment after ``layer`` (identity maps)."""
    i = adapter.node_layers.index(layer)
    nxt = adapter.node_layers[i + 1]
    acts = adapter.activations(X, [layer, nxt], **F64)
    d_in, d_out = acts[layer].shape[-1], acts[nxt].shape[-1]
    G = make_composite(adapter, [layer, nxt], torch.eye(d_in, dtype=torch.float64),
                       torch.eye(d_out, dtype=torch.float64), **F64)
    alphas, weights = quadrature("gauss-legendre", n_steps)
    A = IGEdgeScorer()._attributions(G, acts[layer], alphas, weights, None, torch.float64, "cpu")
    target = acts[nxt][..., 1:]
    return float((A.sum(-1)[..., 1:] - target).pow(2).mean().sqrt()
                 / target.pow(2).mean().sqrt())


@pytest.mark.parametrize("source", ["gpt2", "llama", "gpt_neox"])
def test_completeness_holds_except_on_norm_divisions(source, float64_rms_norm):
    adapter = TransformerAdapter.from_hf(hf(source))
    X = tokens(3, 6)
    for layer in adapter.node_layers[:-1]:
        error = _completeness(adapter, layer, X, n_steps=12)
        if adapter.is_norm_division(layer):
            assert error > 0.05, layer  # homogeneous of degree 0: F(z) - F(0+) != F(z)
        else:  # ln in + attention, ln in + MLP, ln in + unembedding: quadrature error only
            assert error < 1e-6, (layer, error)


def test_completeness_errors_and_warning_on_the_estimator():
    adapter = TransformerAdapter.from_hf(hf("gpt2"))
    X = tokens(24, 6, seed=3)
    graph = PCAWhitener(adapter).fit_transform(X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = IGEdgeScorer(integration="gauss-legendre", n_steps=8).fit(graph)
    errors = scorer.completeness_errors_
    divides = np.array([adapter.is_norm_division(n) for n in adapter.node_layers[:-1]])
    assert errors.shape == (len(adapter.node_layers) - 1,)
    assert np.all(errors[~divides] < 1e-4) and np.all(errors[divides] > 0.05)
    assert not [w for w in caught if "incomplete" in str(w.message)]  # divisions are exempt
    mixed = IGEdgeScorer(integration="gauss-legendre", n_steps=8, n_stochastic_sources=2,
                         random_state=0).fit(graph)  # compared source by source
    assert np.all(mixed.completeness_errors_[~divides] < 1e-4)
    coarse = TransformerAdapter.from_hf(hf("gpt2"), node_layers=[
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"])
    coarse.is_norm_division = lambda layer: False  # an adapter that does not say
    graph = PCAWhitener(coarse).fit_transform(X)
    with pytest.warns(UserWarning, match=r"incomplete on 'blocks.0.hook_resid_(pre|mid)' -> "
                                         r"'blocks.\d.hook_resid_(mid|pre)': the attributions "
                                         r"miss f_hat\^\(l\+1\) by \d+\.\d%"):
        scorer = IGEdgeScorer(integration="gauss-legendre", n_steps=4).fit(graph)
    assert scorer.completeness_errors_.max() > 0.05  # a division inside a segment


def test_endpoint_rule_warns_on_attention():
    adapter = HookedTransformerAdapter(tl_model(normalization_type=None, n_layers=1,
                                                act_fn="relu"))
    graph = LocalInteractionBasis(adapter, random_state=0).fit_transform(tokens(40, 5, seed=2))
    with pytest.warns(UserWarning, match="The 'endpoint' rule is exact only for positively"):
        scorer = IGEdgeScorer(integration="endpoint").fit(graph)
    attn, mlp = scorer.completeness_errors_[:2]
    assert attn > 0.05 and mlp < 1e-8  # ReLU MLP with folded biases: homogeneous, exact


@pytest.mark.parametrize("name", [
    "sklearn_lib.adapters._transformer_adapter",
    "sklearn_lib.adapters._read_tl_state_dict",
])
def test_docstring_examples_of_the_new_modules(name):
    """tests/test_doctests.py covers _transformer_lens; these modules' examples run here."""
    import doctest
    import importlib

    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# -- errors ------------------------------------------------------------------------------------
BASE_CFG = dict(n_layers=1, d_model=8, d_head=4, n_ctx=4, d_vocab=5, normalization_type="LN")


@pytest.mark.parametrize("overrides, match", [
    (dict(normalization_type="BatchNorm"), r"normalization_type='BatchNorm' \(unknown norm\)"),
    (dict(attention_dir="sideways"), r"attention_dir='sideways' \(attention direction\)"),
    (dict(positional_embedding_type="alibi"), r"positional_embedding_type='alibi'"),
    (dict(positional_embedding_type="rotary"), "A rotary config needs rotary_dim"),
    (dict(use_local_attn=True), "use_local_attn needs an integer window_size"),
    (dict(num_experts=4), r"num_experts=4 \(mixture-of-experts MLPs\)"),
    (dict(use_yarn_rope=True), r"use_yarn_rope=True \(YaRN rotary scaling\)"),
    (dict(act_fn="solu_ln"), r"act_fn='solu_ln' \(activations: \['gelu'"),
])
def test_config_errors(overrides, match):
    from sklearn_lib.adapters._read_tl_state_dict import read_config

    with pytest.raises(ValueError, match=match):
        read_config({**BASE_CFG, **overrides})


def test_unknown_activation_in_plain_weights():
    import dataclasses

    w = read_hf_model(hf("gpt2"))
    odd = dataclasses.replace(w, blocks=tuple(
        dataclasses.replace(b, mlp=dataclasses.replace(b.mlp, act_fn="softplus"))
        for b in w.blocks))
    with pytest.raises(ValueError, match=r"Unknown activation 'softplus'; supported: \['gelu'"):
        TransformerAdapter(odd)


def test_hf_architectures_that_are_not_decoder_only_or_pre_norm():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                  add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    with pytest.raises(ValueError, match="GPT-2 with cross-attention is not a decoder-only"):
        read_hf_model(transformers.GPT2LMHeadModel(cfg))
    tl = pytest.importorskip("transformer_lens")
    model = tl.HookedTransformer(tl.HookedTransformerConfig(
        **BASE_CFG, act_fn="relu", original_architecture="Olmo2ForCausalLM"))
    with pytest.raises(ValueError, match="original_architecture='Olmo2ForCausalLM' \\(post-norm"):
        HookedTransformerAdapter(model)

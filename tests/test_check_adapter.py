"""check_adapter and verify_forward: every shipped adapter passes, every broken contract fails
with the check, the layer and the largest difference named."""

from __future__ import annotations

import doctest
import json
import types

import numpy as np
import pytest
import torch
from conftest import random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sklearn_lib.adapters._check as check_module
from sklearn_lib._segments import CompositeSegment
from sklearn_lib.adapters import (
    CHECKS,
    AdapterContractError,
    CompositeSegmentLike,
    MLPAdapter,
    ModelAdapter,
    SupportsCompositeSegment,
    SupportsReferenceForward,
    check_adapter,
    verify_forward,
)

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _X(n: int = 8, d: int = 4, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).normal(size=(n, d))


def _statuses(results) -> dict[str, str]:
    assert [r.name for r in results] == list(CHECKS)
    return {r.name: r.status for r in results}


def _assert_all_passed(results, except_: tuple[str, ...] = ()) -> None:
    statuses = _statuses(results)
    for name, status in statuses.items():
        if name not in except_:
            assert status == "passed", (name, [r for r in results if r.name == name])


class Wrapped:
    """An MLPAdapter seen through a plain class; keyword overrides replace single members."""

    def __init__(self, inner: MLPAdapter, **overrides) -> None:
        self.inner = inner
        self.node_layers = inner.node_layers
        self.default_metric = inner.default_metric
        self.__dict__.update(overrides)

    def check_input(self, X):
        return self.inner.check_input(X)

    def activations(self, X, layers, *, dtype, device):
        return self.inner.activations(X, layers, dtype=dtype, device=device)

    def segment(self, layer, *, dtype, device):
        return self.inner.segment(layer, dtype=dtype, device=device)

    def forward_from(self, layer, *, dtype, device):
        return self.inner.forward_from(layer, dtype=dtype, device=device)

    def fixed_features(self, layer):
        return self.inner.fixed_features(layer)

    def reference_forward(self, X, *, dtype, device):
        return self.inner.reference_forward(X, dtype=dtype, device=device)

    def __sklearn_clone__(self):
        return self


@pytest.fixture
def inner() -> MLPAdapter:
    return MLPAdapter(random_mlp([4, 6, 5, 3], nn.Tanh, seed=3))


# -- every shipped MLP passes --------------------------------------------------------------------
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_adapter_passes(act, bias):
    adapter = MLPAdapter(random_mlp([4, 7, 5, 3], ACTIVATIONS[act], seed=2, bias=bias))
    results = check_adapter(adapter, _X(10))
    # composite_segment: passed once MLPAdapter has closed forms, skipped (generic) until then.
    _assert_all_passed(results, except_=("composite_segment",))
    assert all(r.status in ("passed", "skipped") for r in results)
    assert isinstance(adapter, SupportsReferenceForward)


def test_mlp_adapter_passes_in_float32_on_a_float32_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))  # float32 weights
    _assert_all_passed(check_adapter(MLPAdapter(model), _X(), dtype="float32"),
                       except_=("composite_segment",))


@settings(max_examples=10, deadline=None)
@given(hidden=st.lists(st.integers(2, 7), min_size=1, max_size=3),
       act=st.sampled_from(sorted(ACTIVATIONS)), seed=st.integers(0, 10_000),
       bias=st.booleans(), log_scale=st.sampled_from([-8, -3, 0, 3, 8]))
def test_mlp_adapter_passes_property(hidden, act, seed, bias, log_scale):
    """Random MLPs pass at inputs of any scale: the tolerances are relative, not in units."""
    adapter = MLPAdapter(random_mlp([3, *hidden, 2], ACTIVATIONS[act], seed=seed, bias=bias))
    results = check_adapter(adapter, _X(6, 3, seed=seed, scale=10.0**log_scale),
                            random_state=seed)
    _assert_all_passed(results, except_=("composite_segment",))


# -- transformers --------------------------------------------------------------------------------
TRANSFORMER_WARNING = "ignore:HookedTransformer is deprecated:DeprecationWarning"


def _tiny_transformer(**overrides):
    pytest.importorskip("transformer_lens")
    from test_transformer_adapter import make_model

    return make_model(**overrides)


def _model_forward(model, position: int | None = -1):
    """The transformer's own forward, as check_adapter's reference_forward."""

    def forward(X, *, dtype, device):
        with torch.no_grad():
            logits = model(torch.as_tensor(X, device=device))
        return (logits if position is None else logits[:, position, :]).to(dtype)

    return forward


@pytest.mark.filterwarnings(TRANSFORMER_WARNING)
@pytest.mark.parametrize(
    "overrides, adapter_kw",
    [
        (dict(), dict()),  # LN, gelu_new, two layers
        (dict(normalization_type=None, act_fn="relu"), dict()),  # closed-form segments
        (dict(normalization_type="RMS", act_fn="silu"), dict(label_position=None)),
        (dict(normalization_type="LNPre", n_layers=1), dict(
            last_position_from="blocks.0.hook_resid_mid")),
        (dict(normalization_type=None, attn_only=True, n_layers=1, d_mlp=None), dict()),
    ],
)
def test_transformer_adapter_passes(overrides, adapter_kw):
    from sklearn_lib.adapters import HookedTransformerAdapter

    model = _tiny_transformer(**overrides)
    adapter = HookedTransformerAdapter(model, **adapter_kw)
    X = torch.randint(0, 11, (6, 5))
    position = adapter_kw.get("label_position", -1)
    results = check_adapter(adapter, X, reference_forward=_model_forward(model, position))
    _assert_all_passed(results, except_=("composite_segment",))
    assert isinstance(adapter, SupportsCompositeSegment)
    if overrides.get("normalization_type", "LN") is None:
        assert _statuses(results)["composite_segment"] == "passed"  # closed forms compared
    # Built from the model object, the adapter's own reference is the model's forward.
    assert isinstance(adapter, SupportsReferenceForward)
    own = check_adapter(adapter, X, skip={"jacobian": "covered above"})
    assert _statuses(own)["reference_forward"] == "passed"
    # Built from the same weights without the model, there is nothing independent to compare
    # with: the check says so instead of passing silently.
    plain = HookedTransformerAdapter(adapter.weights, **adapter_kw)
    assert not isinstance(plain, SupportsReferenceForward)
    plain_results = check_adapter(plain, X, skip={"jacobian": "covered above"})
    reason = next(r.detail for r in plain_results if r.name == "reference_forward")
    assert "no reference_forward" in reason


def _hooked_transformer_from(state_path, cfg: dict, dtype: torch.dtype):
    """A real transformer_lens HookedTransformer holding the checkpoint, in ``dtype``."""
    tl = pytest.importorskip("transformer_lens")
    model = tl.HookedTransformer(tl.HookedTransformerConfig(
        **cfg["model"], dtype=dtype, device="cpu", seed=0))
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True),
                          strict=True)
    return model.eval()


@pytest.mark.filterwarnings(TRANSFORMER_WARNING)
def test_shipped_modadd_checkpoint_passes():
    """The independent reference of the shipped checkpoint (read by our own reader) is
    transformer_lens's HookedTransformer holding the same state_dict."""
    from sklearn_lib.adapters import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter
    from sklearn_lib.tasks._modular_addition import shipped_modadd_checkpoint

    state, config = shipped_modadd_checkpoint(0)
    cfg = json.loads(config.read_text())
    adapter = modadd_adapter(load_hooked_transformer(state, cfg))
    assert not isinstance(adapter, SupportsReferenceForward)  # our reader: not independent
    X = np.random.default_rng(0).integers(0, 113, size=(8, 3))
    X[:, 2] = 113  # the "=" token
    # The checkpoint is float32; transformer_lens's own forward in float64 is the reference
    # for a float64 check.
    reference = _hooked_transformer_from(state, cfg, torch.float64)
    results = check_adapter(adapter, X, reference_forward=_model_forward(reference))
    _assert_all_passed(results)  # closed forms on attention, MLP and unembedding
    # The adapter built from the HookedTransformer itself compares with it on its own.
    own = modadd_adapter(reference)
    assert isinstance(own, SupportsReferenceForward)
    _assert_all_passed(check_adapter(own, X, skip={"jacobian": "covered above"}),
                       except_=("jacobian",))
    # Compared with the float32 forward, the float64 chain differs by float32 round-off.
    reference32 = _hooked_transformer_from(state, cfg, torch.float32)
    with pytest.raises(AdapterContractError, match="'reference_forward' failed") as info:
        check_adapter(adapter, X, reference_forward=_model_forward(reference32))
    assert 1e-7 < info.value.max_diff < 1e-3


def _hf_model(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=11, n_positions=8, n_embd=12, n_layer=2, n_head=3, bos_token_id=0,
            eos_token_id=0))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=11, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8,
            rope_theta=1e5, bos_token_id=0, eos_token_id=0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norm weights and biases off their defaults: folding is tested
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.double().eval()


@pytest.fixture
def exact_llama_rms_norm(monkeypatch):
    """HF's LlamaRMSNorm rounds through float32 even in a float64 model (about 1e-7 relative,
    above check_adapter's float64 tolerance); for the contract, the same formula in float64."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                              + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("adapter_kw", [dict(), dict(label_position=None)])
def test_hf_transformer_adapter_passes(name, adapter_kw, exact_llama_rms_norm):
    from sklearn_lib.adapters import TransformerAdapter

    adapter = TransformerAdapter.from_hf(_hf_model(name), **adapter_kw)
    assert isinstance(adapter, SupportsReferenceForward)
    X = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(0))
    results = check_adapter(adapter, X)  # its own reference: the HF model's forward
    # composite_segment: every segment of the default cuts has a closed form (the position-
    # wise ones in adapters/_norm_closed_forms.py, attention in _attention_closed_forms.py),
    # which the check compares with the generic segment.
    _assert_all_passed(results)
    detail = next(r for r in results if r.name == "composite_segment")
    assert detail.status == "passed"


def test_hf_llama_reference_check_within_its_float32_rounding():
    """Without the patch, the model's own float64 forward is float32-accurate in its norms:
    check_adapter at float64's tolerance names that difference; at 1e-5 (the first-batch
    check's tolerance for such models) every check passes."""
    from sklearn_lib.adapters import TransformerAdapter

    adapter = TransformerAdapter.from_hf(_hf_model("llama"))
    X = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(AdapterContractError, match="'reference_forward' failed") as info:
        check_adapter(adapter, X)
    assert 1e-12 < info.value.max_diff < 1e-6
    rtol = adapter.reference_rtol(torch.float64)
    assert rtol == 1e-5
    _assert_all_passed(check_adapter(adapter, X, rtol=rtol), except_=("composite_segment",))


# -- each check catches its defect -----------------------------------------------------------------
def _fails(adapter, check: str, layer: str | None = None, **kw) -> AdapterContractError:
    with pytest.raises(AdapterContractError, match=f"Adapter check '{check}' failed") as info:
        check_adapter(adapter, _X(), **kw)
    assert info.value.check == check
    if layer is not None:
        assert info.value.layer == layer and f"at layer '{layer}'" in str(info.value)
    return info.value


def test_protocol_check(inner):
    missing = types.SimpleNamespace(node_layers=inner.node_layers, default_metric="accuracy")
    _fails(missing, "protocol")
    with pytest.raises(AdapterContractError, match="has no 'check_input'"):
        check_adapter(missing, _X())
    with pytest.raises(AdapterContractError, match="'segment' must be a method"):
        check_adapter(Wrapped(inner, segment=None), _X())
    with pytest.raises(AdapterContractError, match="node_layers must be a tuple"):
        check_adapter(Wrapped(inner, node_layers=list(inner.node_layers)), _X())
    with pytest.raises(AdapterContractError, match="node_layers must be a tuple"):
        check_adapter(Wrapped(inner, node_layers=("input",)), _X())
    with pytest.raises(AdapterContractError, match="default_metric must be"):
        check_adapter(Wrapped(inner, default_metric="f1"), _X())


def test_clone_check(inner):
    copy = Wrapped(inner)
    _fails(Wrapped(inner, __sklearn_clone__=lambda: copy), "clone")


def test_check_input_check(inner):
    err = _fails(Wrapped(inner, check_input=lambda X: iter(X)), "check_input")
    assert "supports len() and slicing" in str(err)

    class Short(np.ndarray):  # slicing drops a sample
        def __getitem__(self, item):
            return np.asarray(self)[1:][item]

    with pytest.raises(AdapterContractError, match=r"slicing the checked input \(\[:8\]\) gave 7"):
        check_adapter(Wrapped(inner, check_input=lambda X: np.asarray(X).view(Short)), _X(8))

    def list_only(X, layers, *, dtype, device):
        if not isinstance(X, list):
            raise TypeError("wants a list")
        return inner.activations(np.asarray(X), layers, dtype=dtype, device=device)

    with pytest.raises(AdapterContractError, match="fails on a slice.*wants a list"):
        check_adapter(Wrapped(inner, activations=list_only), _X(), skip={"protocol": "x"})


def _acts_with(inner, change):
    def activations(X, layers, *, dtype, device):
        out = inner.activations(X, layers, dtype=dtype, device=device)
        return change(dict(out))

    return activations


def test_activations_check(inner):
    f32 = _acts_with(inner, lambda d: {k: v.float() for k, v in d.items()})
    err = _fails(Wrapped(inner, activations=f32), "activations", layer="input")
    assert "requested dtype torch.float64" in str(err)
    flat = _acts_with(inner, lambda d: {k: v[:, 0] for k, v in d.items()})
    with pytest.raises(AdapterContractError, match=r"shape \(batch=8, pos, 1 \+ d\)"):
        check_adapter(Wrapped(inner, activations=flat), _X())
    extra = _acts_with(inner, lambda d: {**d, "other": d["input"]})
    with pytest.raises(AdapterContractError, match="exactly the requested layers"):
        check_adapter(Wrapped(inner, activations=extra), _X())

    def nan(d):
        if "1" in d:
            d["1"] = d["1"].clone()
            d["1"][3, 0, 2] = float("nan")
        return d

    with pytest.raises(AdapterContractError, match="contain NaN or inf"):
        check_adapter(Wrapped(inner, activations=_acts_with(inner, nan)), _X())

    def depends_on_request(X, layers, *, dtype, device):  # values change with the request
        out = inner.activations(X, layers, dtype=dtype, device=device)
        if len(layers) == 1:
            out = {k: v * 1.01 for k, v in out.items()}
        return out

    err = _fails(Wrapped(inner, activations=depends_on_request), "activations", layer="input")
    assert "requested alone" in str(err) and err.max_diff > 0


def test_constant_check(inner):
    def scaled(d):
        return {k: v * 2 for k, v in d.items()}

    err = _fails(Wrapped(inner, activations=_acts_with(inner, scaled)), "constant",
                 layer="input", skip={"activations": "scaled on purpose"})
    assert "exactly 1" in str(err) and err.max_diff == pytest.approx(1.0)


def test_fixed_features_check(inner):
    _fails(Wrapped(inner, fixed_features=lambda layer: (1,)), "fixed_features", layer="input")
    _fails(Wrapped(inner, fixed_features=lambda layer: [0]), "fixed_features", layer="input")
    with pytest.raises(AdapterContractError, match=r"distinct coordinates in \[0, 5\)"):
        check_adapter(Wrapped(inner, fixed_features=lambda layer: (0, 5)), _X())
    with pytest.raises(AdapterContractError, match="distinct coordinates"):
        check_adapter(Wrapped(inner, fixed_features=lambda layer: (0, 1, 1)), _X())


def _segment_with(inner, layer, change):
    def segment(name, *, dtype, device):
        seg = inner.segment(name, dtype=dtype, device=device)
        return (lambda f: change(seg, f)) if name == layer else seg

    return segment


def test_segments_check(inner):
    off = _segment_with(inner, "1", lambda seg, f: seg(f) + 0.1 * f[..., :1])
    err = _fails(Wrapped(inner, segment=off), "segments", layer="1")
    assert err.max_diff == pytest.approx(0.1)
    assert "largest absolute difference, at index (0, 0, 0)" in str(err)


def test_bias_folding_check(inner):
    bias = torch.tensor([0.0, 0.3, -0.2, 0.1, 0.0, 0.5, 0.0], dtype=torch.float64)

    def unfolded(seg, f):  # a bias not multiplied by the constant: right on data, not at 0
        return seg(f) + bias * (1 - f[..., :1])

    err = _fails(Wrapped(inner, segment=_segment_with(inner, "input", unfolded)),
                 "bias_folding", layer="input")
    assert err.max_diff == pytest.approx(0.5) and "F(0) = 0" in str(err)


def test_batched_check(inner):
    def batch_dependent(seg, f):
        return seg(f) * (f.shape[0] / 8)

    err = _fails(Wrapped(inner, segment=_segment_with(inner, "1", batch_dependent)), "batched",
                 layer="1")
    assert "sample by sample" in str(err)

    def data_dependent(seg, f):
        return seg(f) if float(f.sum()) < 1e300 else -seg(f)  # .item() breaks vmap

    with pytest.raises(AdapterContractError, match="fails under torch.func.vmap"):
        check_adapter(Wrapped(inner, segment=_segment_with(inner, "1", data_dependent)), _X())


def test_forward_from_check(inner):
    def forward_from(layer, *, dtype, device):
        rest = inner.forward_from(layer, dtype=dtype, device=device)
        return (lambda f: rest(f) + 1.0) if layer == "3" else rest

    err = _fails(Wrapped(inner, forward_from=forward_from), "forward_from", layer="3")
    assert err.max_diff == pytest.approx(1.0)

    def wrong_rank(layer, *, dtype, device):
        return lambda f: f[:, 0, 0]

    with pytest.raises(AdapterContractError, match=r"logits of shape \(batch, n_classes\)"):
        check_adapter(Wrapped(inner, forward_from=wrong_rank), _X(), skip={"segments": "x"})


def test_reference_forward_check(inner):
    def off(X, *, dtype, device):
        return inner.reference_forward(X, dtype=dtype, device=device) * 1.5

    err = _fails(inner, "reference_forward", layer="4", reference_forward=off)
    assert err.max_diff > 0.1 and "different function from the model" in str(err)


def test_jacobian_check(inner):
    def detached(seg, f):  # right values, but half the graph is cut
        return seg(f) * 0.5 + seg(f.detach()) * 0.5

    err = _fails(Wrapped(inner, segment=_segment_with(inner, "1", detached)), "jacobian",
                 layer="1")
    assert "finite differences" in str(err) and "detach()" in str(err)


class _ScaledJacobian(CompositeSegment):
    def jacobian(self, z, sources=None):
        return 1.001 * super().jacobian(z, sources)


class _WrongAblation(CompositeSegment):
    def ablated(self, z, masks, mask_chunk=16):
        return self(z)  # ignores the masks


class _WrongCall(CompositeSegment):
    def __call__(self, z):
        return self.segment(z @ self.in_map.T) @ self.out_map.T + 1e-3


def _with_composite(inner, cls, layer="1"):
    def composite_segment(name, in_map, out_map, *, dtype, device):
        if name != layer:
            return None
        return cls(inner.segment(name, dtype=dtype, device=device), in_map, out_map)

    return Wrapped(inner, composite_segment=composite_segment)


def test_composite_segment_check(inner):
    results = check_adapter(_with_composite(inner, CompositeSegment), _X())
    _assert_all_passed(results)
    assert isinstance(_with_composite(inner, CompositeSegment), SupportsCompositeSegment)
    assert isinstance(CompositeSegment(lambda f: f, torch.eye(2), torch.eye(2)),
                      CompositeSegmentLike)
    err = _fails(_with_composite(inner, _ScaledJacobian), "composite_segment", layer="1")
    assert "composite.jacobian(z) vs. jacrev" in str(err)
    with pytest.raises(AdapterContractError, match=r"ablated\(z, masks\)"):
        check_adapter(_with_composite(inner, _WrongAblation), _X())
    with pytest.raises(AdapterContractError, match=r"composite\(z\) vs. segment"):
        check_adapter(_with_composite(inner, _WrongCall), _X())
    bare = Wrapped(inner, composite_segment=lambda *a, **k: types.SimpleNamespace())
    with pytest.raises(AdapterContractError, match="which has no __call__"):
        check_adapter(bare, _X())
    nothing = Wrapped(inner, composite_segment=lambda *a, **k: None)
    reason = next(r.detail for r in check_adapter(nothing, _X()) if r.name == "composite_segment")
    assert "returned None for every layer" in reason


# -- options and errors ----------------------------------------------------------------------------
def test_skip_runs_the_rest_and_reports_the_reason(inner):
    off = _segment_with(inner, "1", lambda seg, f: seg(f) + 0.1 * f[..., :1])
    results = check_adapter(Wrapped(inner, segment=off), _X(),
                            skip={"segments": "known offset", "forward_from": "same offset",
                                  "reference_forward": "same offset"})
    statuses = _statuses(results)
    assert statuses["segments"] == "skipped"
    assert next(r.detail for r in results if r.name == "segments") == "known offset"
    assert statuses["jacobian"] == "passed"  # the offset is constant: Jacobians still agree


def test_results_report_the_largest_relative_difference(inner):
    results = {r.name: r for r in check_adapter(inner, _X())}
    assert results["protocol"].detail == "exact"
    assert results["jacobian"].detail.startswith("largest difference ")
    assert results["jacobian"].detail.endswith("times the tolerance")
    assert isinstance(inner, ModelAdapter)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(skip={"speed": "x"}), r"Unknown checks \['speed'\] in skip"),
        (dict(skip={"jacobian": ""}), r"skip\['jacobian'\] must be a non-empty reason"),
        (dict(n_samples=0), "n_samples must be an int >= 1"),
        (dict(n_samples=True), "n_samples must be an int >= 1"),
        (dict(rtol=-1.0), "rtol must be a positive float"),
        (dict(atol=-1.0), "atol must be a float >= 0"),
        (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    ],
)
def test_check_adapter_rejects_bad_options(inner, kw, match):
    with pytest.raises(ValueError, match=match):
        check_adapter(inner, _X(), **kw)


def test_check_input_errors_propagate(inner):
    with pytest.raises(ValueError, match="must have shape"):
        check_adapter(inner, _X(d=5))


def test_error_is_a_value_error_with_fields(inner):
    err = AdapterContractError("segments", "differs.", layer="1", max_diff=0.5)
    assert isinstance(err, ValueError)
    assert (err.check, err.layer, err.max_diff) == ("segments", "1", 0.5)
    assert str(err) == "Adapter check 'segments' failed at layer '1': differs."


# -- verify_forward -------------------------------------------------------------------------------
def test_verify_forward_passes_and_fails(inner):
    X = torch.as_tensor(_X())
    assert verify_forward(inner, X, **F64) < 1e-12
    assert verify_forward(inner, X, dtype="float32") < 1e-5

    def off(X, *, dtype, device):
        out = inner.reference_forward(X, dtype=dtype, device=device).clone()
        out[5, 1] += 0.25
        return out

    with pytest.raises(ValueError, match=r"differ from the model's own forward by 0.25 at "
                                         r"output index \(5, 1\)"):
        verify_forward(inner, X, reference_forward=off, **F64)
    with pytest.raises(ValueError, match=r"outputs of shape \(8, 3\) but the model's own "
                                         r"forward gives \(8, 2\)"):
        verify_forward(inner, X, reference_forward=lambda X, **kw: off(X, **kw)[:, :2], **F64)
    bare = types.SimpleNamespace(**{k: getattr(inner, k) for k in (
        "node_layers", "activations", "segment", "forward_from")})
    with pytest.raises(TypeError, match="has no reference_forward"):
        verify_forward(bare, X, **F64)


def test_check_module_doctests():
    result = doctest.testmod(check_module, optionflags=doctest.ELLIPSIS
                             | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_skipping_check_input_still_uses_the_checked_samples(inner):
    results = check_adapter(inner, _X(12), n_samples=3, dtype=torch.float64,
                            skip={"check_input": "tested elsewhere"})
    assert _statuses(results)["check_input"] == "skipped"
    _assert_all_passed(results, except_=("check_input", "composite_segment"))


def test_an_unfaithful_model_fails_through_the_first_batch_check():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=1)
    adapter = MLPAdapter(model)
    model[0] = nn.Linear(4, 6).double()  # replaced behind the adapter's back
    with pytest.raises(AdapterContractError, match="differ from the model's own forward"):
        check_adapter(adapter, _X())

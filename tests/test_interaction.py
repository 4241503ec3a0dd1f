"""LocalInteractionBasis / GlobalInteractionBasis against an explicit slow computation.

The reference below follows DESIGN.md section 5 literally, with nothing from the library: the
plain torch model, a Python loop over samples with ``torch.autograd.functional.jacobian`` and
whitening from ``numpy.linalg.eigh``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import gaussian_data, model_labels, random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    LocalInteractionBasis,
    PCAWhitener,
)
from sklearn_lib.adapters import MLPAdapter

RTOL = 1e-10  # plain relative cut of the reference; no eigenvalue here lies between it and the
# estimators' default (about 2.2e-12 * d of the largest), so both keep the same directions


# -- the reference ---------------------------------------------------------------------------
def _plain_activations(model: nn.Sequential, positions: list[int], X: np.ndarray):
    """Activations (no constant) after ``positions[k]`` modules, as float64 numpy arrays."""
    h = torch.as_tensor(X, dtype=torch.float64)
    out, mods = {}, list(model)
    with torch.no_grad():
        for i in range(max(positions) + 1):
            if i in positions:
                out[i] = h.numpy().copy()
            if i < len(mods):
                h = mods[i](h)
    return [out[p] for p in positions]


def _sorted_eigh(matrix: np.ndarray, rtol: float):
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    values, vectors = values[::-1], vectors[:, ::-1].T  # descending; eigenvectors as rows
    keep = values > rtol * values[0]
    return values[keep], vectors[keep]


def reference_bases(model: nn.Sequential, positions: list[int], X: np.ndarray, *,
                    target: str = "local", rtol: float = RTOL):
    """Per node layer ``(R, mu, eigenvalues)`` with ``f_hat[1:] = R (h - mu)`` (DESIGN.md 5)."""
    acts = _plain_activations(model, positions, X)
    L = len(positions) - 1
    mods = list(model)

    def seg(a: int, b: int):  # modules between node layers a and b, on one sample
        def run(h):
            for m in mods[positions[a]:positions[b]]:
                h = m(h)
            return h
        return run

    whiten = []
    for h in acts:
        mu = h.mean(0)
        G = (h - mu).T @ (h - mu) / h.shape[0]
        D, U = _sorted_eigh(G, rtol)
        whiten.append((mu, D, U))
    mu, D, U = whiten[L]
    result = [None] * (L + 1)
    result[L] = (U, mu, D)  # final layer: centred and rotated, not whitened
    for l in range(L - 1, -1, -1):
        mu, D, U = whiten[l]
        W_plus = U.T * np.sqrt(D)  # h - mu = W_plus @ f_tilde
        t = L if target == "global" else l + 1
        R_t = torch.as_tensor(result[t][0])
        fn = seg(l, t)
        M = np.zeros((len(D), len(D)))
        for x in range(acts[l].shape[0]):
            J_seg = torch.autograd.functional.jacobian(fn, torch.as_tensor(acts[l][x]))
            J = (R_t @ J_seg).numpy() @ W_plus  # d f_hat^t / d f_tilde^l
            M += J.T @ J
        M /= acts[l].shape[0]
        Lam, V = _sorted_eigh(M, rtol)
        R = (np.sqrt(Lam)[:, None] * V) @ (U / np.sqrt(D)[:, None])
        result[l] = (R, mu, Lam)
    return result


def assert_basis_matches(basis, reference, *, rtol=1e-7):
    R, mu, values = reference
    np.testing.assert_allclose(basis.eigenvalues, values, rtol=rtol, atol=1e-12 * values[0])
    C = basis.C
    assert C.shape == (1 + R.shape[0], 1 + R.shape[1])
    np.testing.assert_array_equal(C[0], np.eye(C.shape[1])[0])  # constant row
    signs = np.sign(np.sum(C[1:, 1:] * R, axis=1))
    assert np.all(signs != 0)
    scale = np.abs(R).max()
    np.testing.assert_allclose(C[1:, 1:], signs[:, None] * R, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(C[1:, 0], -signs * (R @ mu), rtol=rtol, atol=rtol * scale)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    model = random_mlp([3, 5, 4, 3], nn.ReLU, seed=7)
    X = gaussian_data(80, 3, seed=7)
    return model, X, [0, 2, 4, 5]  # node layers input, "1", "3", "4"


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_lib_matches_explicit_computation(activation):
    model = random_mlp([3, 5, 4, 3], activation, seed=7)
    X = gaussian_data(80, 3, seed=7)
    lib = LocalInteractionBasis(MLPAdapter(model), batch_size=32).fit(X)
    ref = reference_bases(model, [0, 2, 4, 5], X)
    assert lib.layers_ == ("input", "1", "3", "4")
    for basis, r in zip(lib.bases_, ref):
        assert_basis_matches(basis, r)
    assert lib.n_components_ == {
        name: r[0].shape[0] for name, r in zip(lib.layers_, ref)
    }
    # Layer "1" (5 units) feeds 4 pre-activations: at least one direction has no effect.
    assert lib.n_components_["1"] <= 4


def test_gib_matches_explicit_computation(tiny):
    model, X, positions = tiny
    gib = GlobalInteractionBasis(MLPAdapter(model)).fit(X)
    ref = reference_bases(model, positions, X, target="global")
    for basis, r in zip(gib.bases_, ref):
        assert_basis_matches(basis, r)
    # The last two layers coincide with LIB's (the next layer of "3" is the final one) ...
    lib = LocalInteractionBasis(MLPAdapter(model)).fit(X)
    for k in (2, 3):
        np.testing.assert_allclose(gib.bases_[k].C, lib.bases_[k].C, rtol=1e-9, atol=1e-12)
    # ... the first does not: Jacobians there go to the final layer, not the next one.
    ref_local = reference_bases(model, positions, X)
    assert not np.allclose(np.abs(ref[0][0]), np.abs(ref_local[0][0]), rtol=1e-3)


def test_basis_inverse_and_feature_statistics(tiny):
    model, X, _ = tiny
    lib = LocalInteractionBasis(MLPAdapter(model)).fit(X)
    graph = lib.transform(X)
    for k, (layer, basis) in enumerate(zip(graph.layers, graph.bases)):
        # C @ C_pinv = I; C_pinv @ C is a projection.
        np.testing.assert_allclose(basis.C @ basis.C_pinv, np.eye(basis.n_features), atol=1e-10)
        P = basis.C_pinv @ basis.C
        np.testing.assert_allclose(P @ P, P, atol=1e-9)
        assert basis.n_fixed == 1 and basis.n_components == basis.n_features - 1
        feats = graph.features(layer)
        assert feats.shape == (X.shape[0], 1, basis.n_features)
        np.testing.assert_array_equal(feats[..., 0], 1.0)  # f_hat_0 = 1
        f = feats[:, 0, 1:]
        np.testing.assert_allclose(f.mean(0), 0.0, atol=1e-9 * np.sqrt(basis.eigenvalues[0]))
        # LIB features are uncorrelated with variances Lambda (whitened, then Lambda^{1/2} V);
        # the final layer is rotated only, with variances D.
        cov = f.T @ f / f.shape[0]
        np.testing.assert_allclose(cov, np.diag(basis.eigenvalues), rtol=1e-8,
                                   atol=1e-9 * basis.eigenvalues[0])
        assert np.all(np.diff(basis.eigenvalues) <= 0)  # ordered by importance
        # Projecting activations onto the kept directions and back changes nothing the next
        # layer sees: features of the projected activations equal the features.
        acts = MLPAdapter(model).activations(X, [layer], dtype=torch.float64,
                                             device=torch.device("cpu"))[layer][:, 0].numpy()
        np.testing.assert_allclose((acts @ basis.C.T) @ (basis.C_pinv.T @ basis.C.T),
                                   acts @ basis.C.T, atol=1e-9)


def test_whitened_step_matches_pca_whitener(tiny):
    # The whitening inside LIB is PCAWhitener on the layer's activations: C = Lambda^{1/2} V W.
    model, X, _ = tiny
    adapter = MLPAdapter(model)
    lib = LocalInteractionBasis(adapter).fit(X)
    acts = adapter.activations(X, ["1"], dtype=torch.float64, device=torch.device("cpu"))["1"]
    white = PCAWhitener().fit(acts[:, 0, 1:].numpy())
    f_tilde = white.transform(acts[:, 0, 1:].numpy())
    f_hat = lib.transform(X).features("1")[:, 0, 1:]
    # f_hat = Lambda^{1/2} V f_tilde with V orthonormal rows: recover V by least squares.
    V = np.linalg.lstsq(f_tilde, f_hat, rcond=None)[0].T / np.sqrt(lib.bases_[1].eigenvalues)[:, None]
    np.testing.assert_allclose(V @ V.T, np.eye(V.shape[0]), atol=1e-8)


def test_rotate_final_false_keeps_last_layer(tiny):
    model, X, _ = tiny
    lib = LocalInteractionBasis(MLPAdapter(model), rotate_final=False).fit(X)
    last = lib.bases_[-1]
    np.testing.assert_array_equal(last.C, np.eye(4))
    out = model(torch.as_tensor(X)).detach().numpy()
    np.testing.assert_allclose(last.eigenvalues, out.var(0), rtol=1e-10)
    # The layer before is LIB with respect to the raw logits.
    ref = reference_bases(model, [0, 2, 4, 5], X)
    R_final = np.eye(3)
    mods = list(model)
    acts = _plain_activations(model, [4], X)[0]
    mu, D, U = acts.mean(0), *_sorted_eigh(np.cov(acts.T, bias=True), RTOL)
    W_plus = U.T * np.sqrt(D)
    M = sum(
        (R_final @ torch.autograd.functional.jacobian(mods[4], torch.as_tensor(h)).numpy()
         @ W_plus).T
        @ (R_final @ torch.autograd.functional.jacobian(mods[4], torch.as_tensor(h)).numpy()
           @ W_plus)
        for h in acts
    ) / len(acts)
    Lam, V = _sorted_eigh(M, RTOL)
    R = (np.sqrt(Lam)[:, None] * V) @ (U / np.sqrt(D)[:, None])
    assert_basis_matches(lib.bases_[2], (R, mu, Lam))
    # M = J^T J does not see an orthogonal rotation of the output: every earlier basis is the
    # same as with the rotated final layer (up to sign).
    for basis, r in zip(lib.bases_[:-1], ref[:-1]):
        assert_basis_matches(basis, r)


def test_lib_depends_only_on_downstream_layers(tiny):
    model, X, _ = tiny
    adapter = MLPAdapter(model)
    full = LocalInteractionBasis(adapter).fit(X)
    tail = LocalInteractionBasis(adapter, layers=["1", "3", "4"]).fit(X)
    assert tail.layers_ == ("1", "3", "4")
    for a, b in zip(full.bases_[1:], tail.bases_):
        np.testing.assert_allclose(a.C, b.C, rtol=1e-10, atol=1e-12)
    head = LocalInteractionBasis(adapter, layers=["input", "1"]).fit(X)
    assert head.layers_ == ("input", "1")


def test_batch_size_and_chunk_size_do_not_change_the_basis(tiny):
    model, X, _ = tiny
    adapter = MLPAdapter(model)
    a = LocalInteractionBasis(adapter).fit(X)
    b = LocalInteractionBasis(adapter, batch_size=7, chunk_size=2).fit(X)
    for ba, bb in zip(a.bases_, b.bases_):
        np.testing.assert_allclose(ba.C, bb.C, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ba.eigenvalues, bb.eigenvalues, rtol=1e-10)


def test_float32_close_to_float64(tiny):
    model, X, _ = tiny
    a = LocalInteractionBasis(MLPAdapter(model)).fit(X)
    b = LocalInteractionBasis(MLPAdapter(model), dtype="float32").fit(X)
    for ba, bb in zip(a.bases_, b.bases_):
        np.testing.assert_allclose(ba.eigenvalues, bb.eigenvalues, rtol=1e-3)
        np.testing.assert_allclose(np.abs(ba.C), np.abs(bb.C), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("n_sources", [1, 3])
def test_stochastic_sources_are_exact_for_mlps(tiny, n_sources):
    # One output position: each source is +-1 times the only position, so M is exact.
    model, X, _ = tiny
    exact = LocalInteractionBasis(MLPAdapter(model)).fit(X)
    for cls in (LocalInteractionBasis, GlobalInteractionBasis):
        est = cls(MLPAdapter(model), n_stochastic_sources=n_sources, random_state=0).fit(X)
        ref = exact if cls is LocalInteractionBasis else GlobalInteractionBasis(
            MLPAdapter(model)).fit(X)
        for a, b in zip(est.bases_, ref.bases_):
            np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10)
            np.testing.assert_allclose(a.C, b.C, rtol=1e-8, atol=1e-10)


# -- directions without downstream effect ----------------------------------------------------
def test_input_direction_in_null_space_is_dropped_by_lib_not_pca():
    model = random_mlp([4, 6, 3], nn.ReLU, seed=2)
    with torch.no_grad():
        model[0].weight[:, 3] = 0.0  # input 3 varies but nothing downstream reads it
    X = gaussian_data(150, 4, seed=2)
    adapter = MLPAdapter(model)
    pca = PCAWhitener(adapter).fit(X)
    lib = LocalInteractionBasis(adapter).fit(X)
    assert pca.n_components_["input"] == 4
    assert lib.n_components_["input"] == 3
    # The LIB features of the input do not read input coordinate 3 at all.
    C = lib.bases_[0].C
    np.testing.assert_allclose(C[:, 1 + 3], 0.0, atol=1e-8 * np.abs(C).max())
    # A rotated null direction is found as well (not only a coordinate axis).
    Q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
    rotated = random_mlp([4, 6, 3], nn.ReLU, seed=2)
    with torch.no_grad():
        rotated[0].weight.copy_(model[0].weight @ torch.as_tensor(Q.T))
    assert LocalInteractionBasis(MLPAdapter(rotated)).fit(X @ Q).n_components_["input"] == 3


def test_hidden_unit_without_outgoing_weights_is_dropped_by_lib_not_pca():
    model = random_mlp([4, 5, 8, 3], nn.ReLU, seed=3)
    with torch.no_grad():
        model[2].weight[:, 4] = 0.0  # hidden unit 4 of layer "1" feeds nothing
    X = gaussian_data(200, 4, seed=3)
    adapter = MLPAdapter(model)
    pca = PCAWhitener(adapter).fit(X)
    lib = LocalInteractionBasis(adapter).fit(X)
    assert pca.n_components_["1"] == 5
    assert lib.n_components_["1"] == 4
    C = lib.bases_[1].C
    np.testing.assert_allclose(C[:, 1 + 4], 0.0, atol=1e-8 * np.abs(C).max())
    # With the weights restored the direction matters again.
    model[2].weight.data[:, 4] = 0.3
    assert LocalInteractionBasis(MLPAdapter(model)).fit(X).n_components_["1"] == 5


# -- invariance under reparametrisation --------------------------------------------------------
def _reparametrise(model: nn.Sequential, A: np.ndarray) -> nn.Sequential:
    """Hidden layer h -> A h (module 0 and its bias), next weights absorb A^{-1} (module 2)."""
    new = random_mlp([4, 6, 5, 3], type(model[1]), seed=0)
    new.load_state_dict(model.state_dict())
    A_t = torch.as_tensor(A)
    with torch.no_grad():
        new[0].weight.copy_(A_t @ model[0].weight)
        new[0].bias.copy_(A_t @ model[0].bias)
        new[2].weight.copy_(model[2].weight @ torch.linalg.inv(A_t))
    return new


def _pipeline_summary(model, X, y):
    adapter = MLPAdapter(model)
    graph = LocalInteractionBasis(adapter).fit_transform(X)
    graph = IGEdgeScorer().fit_transform(graph)
    search = EdgeAblationSearch().fit(graph, y)
    return graph, search


@pytest.fixture(scope="module", params=[nn.ReLU, nn.Identity], ids=["relu", "identity"])
def reparam_setup(request):
    model = random_mlp([4, 6, 5, 3], request.param, seed=6)
    X = gaussian_data(150, 4, seed=6)
    y = model_labels(model, X)
    graph, search = _pipeline_summary(model, X, y)
    return model, X, y, graph, search


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_edges_invariant_under_reparametrisation(reparam_setup, seed):
    model, X, y, graph, search = reparam_setup
    rng = np.random.default_rng(seed)
    if isinstance(model[1], nn.ReLU):
        # Commutes with ReLU: a positive diagonal scaling times a permutation.
        A = np.eye(6)[rng.permutation(6)] @ np.diag(np.exp(rng.uniform(-1.0, 1.0, size=6)))
    else:
        # Linear activation: any (well-conditioned) invertible map.
        Q1, Q2 = (np.linalg.qr(rng.normal(size=(6, 6)))[0] for _ in range(2))
        A = Q1 @ np.diag(np.exp(rng.uniform(-1.0, 1.0, size=6))) @ Q2
    new = _reparametrise(model, A)
    Xt = torch.as_tensor(X)
    with torch.no_grad():
        np.testing.assert_allclose(new(Xt).numpy(), model(Xt).numpy(), rtol=1e-9, atol=1e-10)
        hidden_old, hidden_new = model[1](model[0](Xt)), new[1](new[0](Xt))
    np.testing.assert_allclose(hidden_new.numpy(), hidden_old.numpy() @ A.T, rtol=1e-9,
                               atol=1e-10)
    graph2, search2 = _pipeline_summary(new, X, y)
    assert [b.n_features for b in graph2.bases] == [b.n_features for b in graph.bases]
    for b1, b2 in zip(graph.bases, graph2.bases):
        np.testing.assert_allclose(b2.eigenvalues, b1.eigenvalues, rtol=1e-6)
    # LIB features of the reparametrised layer are the same up to sign (distinct eigenvalues).
    f1, f2 = graph.features("1")[:, 0], graph2.features("1")[:, 0]
    signs = np.sign(np.sum(f1 * f2, axis=0))
    np.testing.assert_allclose(f2, f1 * signs, rtol=1e-6, atol=1e-7 * np.abs(f1).max())
    # Edges are sign invariant, hence unchanged entry by entry.
    for E1, E2 in zip(graph.edges, graph2.edges):
        np.testing.assert_allclose(E2, E1, rtol=1e-6, atol=1e-9 * E1.max())
    assert search2.n_edges_needed_ == search.n_edges_needed_
    # The PCA baseline is NOT invariant: its basis of layer "1" follows A.
    pca1 = PCAWhitener(MLPAdapter(model)).fit(X).bases_[1].eigenvalues
    pca2 = PCAWhitener(MLPAdapter(new)).fit(X).bases_[1].eigenvalues
    assert not np.allclose(pca1, pca2, rtol=1e-3)


# -- input classes -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LocalInteractionBasis, GlobalInteractionBasis, PCAWhitener])
def test_model_inputs_sparse_complex_strides_read_only(tiny, cls):
    model, X, _ = tiny
    adapter = MLPAdapter(model)
    name = cls.__name__
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match=f"{name} does not accept sparse matrices .*toarray"):
        cls(adapter).fit(sp.csr_matrix(X))
    with pytest.raises(ValueError, match=f"Complex data not supported by {name}"):
        cls(adapter).fit(X.astype(np.complex128))
    with pytest.raises(ValueError, match=f"Complex data not supported by {name}"):
        cls(adapter).fit(torch.as_tensor(X, dtype=torch.complex128))
    # Negative strides (torch cannot wrap them) and read-only arrays are copied, not refused.
    flipped = X[::-1]
    frozen = X.copy()
    frozen.flags.writeable = False
    ref = cls(adapter).fit(np.ascontiguousarray(flipped))
    est = cls(adapter).fit(flipped)
    for b, r in zip(est.bases_, ref.bases_):
        np.testing.assert_array_equal(b.C, r.C)
    graph = est.transform(flipped)
    assert graph.X.flags.c_contiguous and graph.X.strides[0] > 0
    np.testing.assert_array_equal(graph.X, np.ascontiguousarray(flipped))
    est.fit(frozen)
    assert not frozen.flags.writeable
    with pytest.raises(ValueError, match=f"Complex data not supported by {name}"):
        est.transform(X + 0j)


@pytest.mark.parametrize("device", ["gpu0", 3.5, "cuda:0"])
def test_device_is_validated_at_fit_for_every_estimator(tiny, device):
    model, X, _ = tiny
    adapter = MLPAdapter(model)
    y = model_labels(model, X)
    graph = IGEdgeScorer().fit_transform(LocalInteractionBasis(adapter).fit_transform(X))
    if device == "cuda:0" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")

    def match(owner):
        if device == "cuda:0":
            return r"device='cuda:0' was requested but CUDA is not available; use device='cpu'."
        return (rf"The 'device' parameter{owner} must be a torch.device or a device string such "
                rf"as 'cpu', 'cuda' or 'cuda:0'. Got {device!r} instead.")

    for cls in (LocalInteractionBasis, GlobalInteractionBasis, PCAWhitener):
        with pytest.raises(ValueError, match=match(f" of {cls.__name__}")):
            cls(adapter, device=device).fit(X)
    # The graph steps share the check (their own files name no owner yet).
    with pytest.raises(ValueError, match=match("( of IGEdgeScorer)?")):
        IGEdgeScorer(device=device).fit(graph)
    with pytest.raises(ValueError, match=match("( of EdgeAblationSearch)?")):
        EdgeAblationSearch(device=device).fit(graph, y)


# -- LayerFeatures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def positions_graph():
    """A PCA graph of a one-layer transformer: node layers with 4 positions."""
    pytest.importorskip("transformer_lens")
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sklearn_lib.adapters import HookedTransformerAdapter

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=4,
                                  d_vocab=7, act_fn="relu", normalization_type=None, seed=0,
                                  dtype=torch.float64, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg).eval()
    adapter = HookedTransformerAdapter(model)
    X = np.random.default_rng(0).integers(0, 7, size=(40, 4))
    return PCAWhitener(adapter).fit_transform(X)


def test_layer_features_width_matches_transform(positions_graph, tiny):
    from sklearn_lib import LayerFeatures

    graph = positions_graph
    layer = graph.layers[1]
    n_feat = graph.basis_of(layer).n_features
    for kwargs, width in [({}, 4 * (n_feat - 1)), ({"include_constant": True}, 4 * n_feat),
                          ({"position": -1}, n_feat - 1), ({"position": 0,
                                                            "include_constant": True}, n_feat)]:
        lf = LayerFeatures(layer, **kwargs).fit(graph)
        out = lf.transform(graph)
        assert lf.n_positions_ == 4
        assert lf.n_features_out_ == width == out.shape[1], kwargs
    # Flattening is position-major: the last block is position -1.
    flat = LayerFeatures(layer).fit_transform(graph)
    np.testing.assert_array_equal(flat[:, -(n_feat - 1):],
                                  LayerFeatures(layer, position=-1).fit_transform(graph))
    # A graph with other bases has another width: transform refuses it.
    model, X, _ = tiny
    other = PCAWhitener(MLPAdapter(model)).fit_transform(X)
    lf = LayerFeatures("input").fit(other)
    assert lf.n_positions_ == 1 and lf.n_features_out_ == other.bases[0].n_features - 1
    lf_wide = LayerFeatures("input", include_constant=True).fit(other)
    narrower = other.replace(bases=(other.bases[0].__class__(
        "input", other.bases[0].C[:2], other.bases[0].C_pinv[:, :2],
        other.bases[0].eigenvalues[:1], 1),) + other.bases[1:])
    with pytest.raises(ValueError, match="LayerFeatures was fitted on a graph with 4; refit"):
        lf_wide.transform(narrower)


@pytest.mark.parametrize("kwargs, match", [
    ({"position": 4}, r"position=4 is out of range for layer 'blocks.0.hook_resid_mid', which "
                      r"has 4 position\(s\); use an int in \[-4, 3\] or position=None"),
    ({"position": -5}, r"position=-5 is out of range"),
    ({"position": True}, r"The 'position' parameter of LayerFeatures must be an int or None. "
                         r"Got True instead."),
    ({"position": 1.0}, r"The 'position' parameter of LayerFeatures must be an int"),
    ({"include_constant": "yes"}, r"The 'include_constant' parameter of LayerFeatures must be"),
    ({"batch_size": 0}, r"The 'batch_size' parameter of LayerFeatures must be an int in the "
                        r"range \[1, inf\)"),
])
def test_layer_features_validates_its_parameters(positions_graph, kwargs, match):
    from sklearn_lib import LayerFeatures

    with pytest.raises(ValueError, match=match):
        LayerFeatures("blocks.0.hook_resid_mid", **kwargs).fit(positions_graph)


def test_layer_features_needs_a_fitted_state_and_a_str_layer(positions_graph):
    from sklearn.exceptions import NotFittedError

    from sklearn_lib import LayerFeatures

    with pytest.raises(ValueError, match="The 'layer' parameter of LayerFeatures must be an "
                                         "instance of 'str'"):
        LayerFeatures(3).fit(positions_graph)
    with pytest.raises(NotFittedError, match="This LayerFeatures instance is not fitted yet"):
        LayerFeatures("blocks.0.hook_resid_mid").transform(positions_graph)
    with pytest.raises(ValueError, match="LayerFeatures needs X in the InteractionGraph"):
        LayerFeatures("blocks.0.hook_resid_mid").fit(positions_graph.replace(X=None))

"""Promises of the method on small random transformers: stochastic sources are unbiased, and
the whole pipeline is unchanged when the residual stream is rotated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformer_lens")
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from sklearn_lib import (  # noqa: E402
    EdgeAblationSearch,
    IGEdgeScorer,
    LocalInteractionBasis,
)
from sklearn_lib._common import torch_generator  # noqa: E402
from sklearn_lib._segments import make_composite  # noqa: E402
from sklearn_lib._whitening import fit_pca_bases  # noqa: E402
from sklearn_lib.adapters import HookedTransformerAdapter  # noqa: E402

D_MODEL, N_CTX, D_VOCAB = 12, 4, 7


def make_model(seed: int = 0, norm: str | None = None) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D_MODEL, d_head=4, n_heads=3, d_mlp=24, n_ctx=N_CTX,
        d_vocab=D_VOCAB, act_fn="relu", normalization_type=norm, seed=seed, device="cpu",
        dtype=torch.float64,
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero biases so that bias folding matters
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def all_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, D_VOCAB, size=(n, N_CTX))


def test_stochastic_sources_are_unbiased():
    """The mean over seeds of M with R = 1 random +-1 source converges to the exact M."""
    model = make_model(1)
    adapter = HookedTransformerAdapter(model)  # every position kept: T_out = 4 for attention
    layers = adapter.node_layers[:2]  # resid_pre -> resid_mid (attention mixes positions)
    X = all_tokens(24)
    dt, dev = torch.float64, torch.device("cpu")
    pca = fit_pca_bases(adapter, X, tuple(adapter.node_layers), whiten=True, rotate_final=True,
                        rtol=1e-13, atol=1e-15, batch_size=64, dtype=dt, device=dev,
                        verbose=False)

    def G(in_map):
        return make_composite(adapter, list(layers), in_map, torch.as_tensor(pca[1].C),
                              dtype=dt, device=dev)

    exact_est = LocalInteractionBasis(adapter, batch_size=64)
    exact = exact_est._jacobian_gram(adapter, X, layers[0], pca[0], G, dt, dev, None)
    stochastic = LocalInteractionBasis(adapter, n_stochastic_sources=1, batch_size=64)
    estimates = torch.stack([
        stochastic._jacobian_gram(adapter, X, layers[0], pca[0], G, dt, dev, torch_generator(s))
        for s in range(1600)
    ])
    scale = exact.abs().max()
    # the typical error of one draw (median over the draws; one draw can be lucky)
    single = ((estimates - exact).abs().amax(dim=(1, 2)) / scale).median()
    mean_error = (estimates.mean(0) - exact).abs().max() / scale
    assert single > 1e-2  # one draw is noisy: the sources really are random
    # Sources are drawn per sample from (seed, sample index); single draws err by 0.005-0.21
    # (median about 0.1) and the mean of 1600 by about single / 40.
    assert mean_error < 0.05 * single and mean_error < 5e-3


def rotate_residual(model: HookedTransformer, Q: torch.Tensor) -> HookedTransformer:
    """Apply an orthogonal Q to every weight that writes (x Q) or reads (Q^T x) the residual."""
    rotated = make_model(0, model.cfg.normalization_type)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in list(state.items()):
        leaf = key.split(".")[-1]
        if leaf in ("W_E", "W_pos"):
            state[key] = value @ Q
        elif leaf in ("W_Q", "W_K", "W_V"):
            state[key] = torch.einsum("dm,hdk->hmk", Q, value)  # Q^T W per head
        elif leaf in ("W_O",):
            state[key] = value @ Q
        elif leaf in ("b_O", "b_out"):
            state[key] = value @ Q
        elif leaf in ("W_in", "W_U"):
            state[key] = Q.T @ value
        elif leaf == "W_out":
            state[key] = value @ Q
    rotated.load_state_dict(state)
    return rotated.eval()


@pytest.mark.parametrize("seed, norm", [(0, None), (3, None), (0, "RMSPre")])
def test_rotating_the_residual_stream_changes_nothing(seed, norm):
    """Also with RMS norms (no affine weights: rotation-invariant) split at ln*_out / *_in."""
    model = make_model(seed, norm)
    Q, _ = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=torch.Generator()
                                       .manual_seed(100 + seed), dtype=torch.float64))
    rotated = rotate_residual(model, Q)
    X, X_eval = all_tokens(200, seed), all_tokens(300, seed + 50)
    with torch.no_grad():
        logits = model(torch.from_numpy(X_eval))
        assert torch.allclose(logits, rotated(torch.from_numpy(X_eval)), atol=1e-10)
    y_eval = logits[:, -1].argmax(-1).numpy()
    y_eval[::7] = (y_eval[::7] + 1) % D_VOCAB  # an imperfect model, so accuracy can drop

    def pipeline(m):
        adapter = HookedTransformerAdapter(m, last_position_from="blocks.0.hook_resid_mid")
        graph = LocalInteractionBasis(adapter, rotate_final=False).fit_transform(X)
        graph = IGEdgeScorer().fit_transform(graph)
        search = EdgeAblationSearch(tolerance=0.01).fit(graph, X_eval=X_eval, y_eval=y_eval)
        return graph, search

    (g1, s1), (g2, s2) = pipeline(model), pipeline(rotated)
    assert [b.n_components for b in g1.bases] == [b.n_components for b in g2.bases]
    for E1, E2 in zip(g1.edges, g2.edges):
        # Edges up to the sign of each feature: the same values, feature for feature.
        np.testing.assert_allclose(E1, E2, rtol=1e-6, atol=1e-9 * E1.max())
    assert [r.n_edges_needed for r in s1.results_] == [r.n_edges_needed for r in s2.results_]
    assert [r.base_score for r in s1.results_] == [r.base_score for r in s2.results_]

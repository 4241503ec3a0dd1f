"""Language-model data the sklearn way, the LM preset and ``sklearn-lib lm`` (issue 6 items 5, 8).

Tiny random GPT-2 and Llama models built from configs (no hub names); the shipped tiny LM only
in the CLI run and the slow experiment.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_lib import (
    BaseScoreWarning,
    EdgeAblationSearch,
    IGEdgeScorer,
    InSampleEvaluationWarning,
    PCAWhitener,
)
from sklearn_lib._cli import main
from sklearn_lib.adapters import TransformerAdapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 23


def _gpt2(n_layer=1, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=8, n_layer=n_layer, n_head=2,
                                  n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=8, intermediate_size=12,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg).double().eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}


def _tokens(n=12, T=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, T))


def _lm_adapter(model, skip=1, **kw):
    return TransformerAdapter.from_hf(model, metric="loss", label_position="next-token",
                                      skip_positions=skip, **kw)


# --- labels and the loss metric ------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("skip", [0, 1, 2])
def test_labels_are_the_shifted_tokens(family, skip):
    adapter = _lm_adapter(MODELS[family](), skip=skip)
    X = _tokens()
    y = adapter.lm_labels(X)
    np.testing.assert_array_equal(y, X[:, skip + 1:])
    layer = adapter.node_layers[0]
    f = adapter.activations(X, [layer], dtype=torch.float64, device="cpu")[layer]
    logits = adapter.forward_from(layer, dtype=torch.float64, device="cpu")(f)
    assert logits.shape == (X.shape[0], X.shape[1] - 1 - skip, VOCAB)  # aligned with y


@pytest.mark.parametrize("family", sorted(MODELS))
def test_loss_metric_is_cross_entropy_of_the_models_own_logits(family):
    model = MODELS[family]()
    adapter = _lm_adapter(model, skip=1)
    X, X_eval = _tokens(seed=0), _tokens(n=6, seed=1)
    graph = IGEdgeScorer().fit_transform(PCAWhitener(adapter, rtol=0.0, atol=0.0)
                                         .fit_transform(X))
    search = EdgeAblationSearch(search="bisect").fit(graph, X_eval=X_eval)  # y_eval derived
    with torch.no_grad():
        logits = model(torch.as_tensor(X_eval)).logits[:, 1:-1]
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), torch.as_tensor(X_eval[:, 2:]).reshape(-1)).item()
    assert search.model_score_ == pytest.approx(expected, rel=1e-10)
    assert search.results_[0].metric == "loss" and search.results_[0].tolerance == 0.1
    # Untruncated bases reproduce the model: every pair's base score is the model's own.
    for r in search.results_:
        assert r.base_score == pytest.approx(expected, rel=1e-8)


def test_derived_labels_equal_explicit_labels_and_in_sample_default():
    adapter = _lm_adapter(_gpt2(), skip=1)
    X, X_eval = _tokens(seed=0), _tokens(n=6, seed=1)
    graph = IGEdgeScorer().fit_transform(PCAWhitener(adapter).fit_transform(X))
    derived = EdgeAblationSearch().fit(graph, X_eval=X_eval)
    explicit = EdgeAblationSearch().fit(graph, X_eval=X_eval, y_eval=X_eval[:, 2:])
    assert derived.n_edges_needed_ == explicit.n_edges_needed_
    with pytest.warns(InSampleEvaluationWarning):
        EdgeAblationSearch().fit(graph)  # y derived from the graph's own tokens
    # B's label validation still applies to labels the user passes.
    with pytest.raises(ValueError, match="y_eval has shape"):
        EdgeAblationSearch().fit(graph, X_eval=X_eval, y_eval=X_eval[:, 1:])


def test_no_labels_without_next_token_adapter():
    adapter = TransformerAdapter.from_hf(_gpt2(), metric="loss")
    graph = IGEdgeScorer().fit_transform(PCAWhitener(adapter).fit_transform(_tokens()))
    with pytest.raises(ValueError, match="derives them from the tokens"):
        EdgeAblationSearch().fit(graph)
    with pytest.raises(ValueError, match="lm_labels needs label_position='next-token'"):
        adapter.lm_labels(_tokens())


# --- skip_positions ------------------------------------------------------------------------------

def test_skip_positions_removes_the_first_position_from_moments():
    model = _gpt2()
    X = _tokens(n=20)
    layer = "blocks.0.attn_in"
    for skip in (0, 1):
        adapter = _lm_adapter(model, skip=skip, node_layers=[layer, "blocks.0.ln2_out"])
        basis = PCAWhitener(adapter, rtol=0.0, atol=0.0).fit(X).bases_[0]
        f = adapter.activations(X, [layer], dtype=torch.float64, device="cpu")[layer]
        rows = f[:, skip:, 1:].reshape(-1, f.shape[-1] - 1).numpy()
        expected = np.sort(np.linalg.eigvalsh(np.cov(rows.T, bias=True)))[::-1]
        np.testing.assert_allclose(basis.eigenvalues, expected[: basis.eigenvalues.size],
                                   rtol=1e-8, atol=1e-12)
    # ...and it matters: position 0 is not a typical position.
    full = PCAWhitener(_lm_adapter(model, skip=0)).fit(X).bases_[0].eigenvalues
    skipped = PCAWhitener(_lm_adapter(model, skip=1)).fit(X).bases_[0].eigenvalues
    assert not np.allclose(full[: skipped.size], skipped[: full.size])


def _sink_gpt2(seed=0):
    """A tiny GPT-2 whose position 0 (always token 0) holds a direction no other position has.

    The embeddings of tokens ``1..`` and the positional embeddings of positions ``1..`` are
    orthogonal to ``v = (e_0 - e_1) / sqrt(2)``, and token 0 gets ``3 v``: with position 0
    skipped, the first bases cannot represent it (a crude attention sink).
    """
    model = _gpt2(seed=seed)
    with torch.no_grad():
        v = torch.zeros(8, dtype=torch.float64)
        v[0], v[1] = 2**-0.5, -(2**-0.5)
        W, P = model.transformer.wte.weight, model.transformer.wpe.weight
        W -= torch.outer(W @ v, v)
        P[1:] -= torch.outer(P[1:] @ v, v)
        W[0] += 3 * v
    return model


def _sink_tokens(n, seed, T=7):
    X = np.random.default_rng(seed).integers(1, VOCAB, size=(n, T))
    X[:, 0] = 0
    return X


@pytest.mark.parametrize("skip", [0, 1])
def test_skip_positions_removes_the_first_position_from_edges(skip):
    """Edges against attributions from an explicit ``jacrev`` over positions ``>= skip``, the
    skipped positions at their own activations (not the truncated basis)."""
    model = _sink_gpt2()
    layers = ["blocks.0.attn_in", "blocks.0.ln2_out"]
    adapter = _lm_adapter(model, skip=skip, node_layers=layers)
    X = _sink_tokens(12, seed=0, T=6)
    graph = PCAWhitener(adapter).fit_transform(X)
    if skip:  # the sink's direction is outside the basis of the other positions
        assert graph.bases[0].n_components < PCAWhitener(_lm_adapter(
            model, skip=0, node_layers=layers)).fit(X).bases_[0].n_components
    E = IGEdgeScorer(integration="endpoint").fit(graph).edges_[0]
    C_in, C_in_pinv, C_out = (torch.tensor(graph.bases[0].C), torch.tensor(graph.bases[0].C_pinv),
                              torch.tensor(graph.bases[1].C))
    seg = adapter.segment(layers[0], dtype=torch.float64, device="cpu")
    f = adapter.activations(X, [layers[0]], dtype=torch.float64, device="cpu")[layers[0]]
    total = torch.zeros(C_out.shape[0], C_in.shape[0], dtype=torch.float64)
    for x in f:
        z = x @ C_in.T                                              # (T, n_in)

        def G(kept, x=x):  # positions < skip held at the model's own activations
            return seg(torch.cat([x[:skip], kept @ C_in_pinv.T])[None])[0] @ C_out.T

        J = torch.func.jacrev(G)(z[skip:])                          # (s, i, t >= skip, j)
        A = torch.einsum("sitj,tj->sij", J[skip:], z[skip:])         # (s >= skip, i, j)
        total += (A**2).sum(0)
    expected = (total / (X.shape[0] * (X.shape[1] - skip))).sqrt().numpy()
    np.testing.assert_allclose(E, expected, rtol=1e-8, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 5), skip=st.integers(0, 3), n=st.integers(1, 6),
       d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_pin_positions_holds_skipped_positions_at_their_activations(B, T, skip, n, d, seed):
    """``z' @ in_map'.T`` is the activation on skipped positions and ``z @ in_map.T`` on the
    others, at every scale ``alpha`` of the integrated-gradient path."""
    from sklearn_lib._segments import pin_positions

    skip = min(skip, T)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, n, generator=g, dtype=torch.float64)
    acts = torch.randn(B, T, 1 + d, generator=g, dtype=torch.float64)
    in_map = torch.randn(1 + d, n, generator=g, dtype=torch.float64)
    zp, mp = pin_positions(z, acts, in_map, skip)
    assert zp.shape == (B, T, n + B * skip) and mp.shape == (1 + d, n + B * skip)
    torch.testing.assert_close(mp[:, :n], in_map, rtol=0, atol=0)
    for alpha in (0.0, 0.3, 1.0):
        x = (alpha * zp) @ mp.T
        torch.testing.assert_close(x[:, :skip], alpha * acts[:, :skip], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x[:, skip:], alpha * z[:, skip:] @ in_map.T, rtol=1e-12,
                                   atol=1e-12)
    assert not zp[:, :skip, :n].any() and not zp[:, skip:, n:].any()


def test_lib_jacobians_are_taken_at_the_skipped_positions_own_activations():
    """LIB's ``M`` against an explicit ``jacrev`` with position 0 held at its activation."""
    from sklearn_lib import LocalInteractionBasis
    from sklearn_lib._whitening import fit_pca_bases

    layers = ("blocks.0.attn_in", "blocks.0.ln2_out")
    adapter = _lm_adapter(_sink_gpt2(), skip=1, node_layers=list(layers))
    X = _sink_tokens(10, seed=0, T=5)
    lib = LocalInteractionBasis(adapter).fit(X)
    pca = fit_pca_bases(adapter, X, layers, whiten=True, rotate_final=True, rtol=None, atol=0.0,
                        batch_size=256, dtype=torch.float64, device="cpu", verbose=False)
    P_pinv, C_out = torch.tensor(pca[0].C_pinv), torch.tensor(pca[1].C)
    fixed = pca[0].n_fixed
    seg = adapter.segment(layers[0], dtype=torch.float64, device="cpu")
    f = adapter.activations(X, [layers[0]], dtype=torch.float64, device="cpu")[layers[0]]
    M = 0
    for x in f:
        z = x @ torch.tensor(pca[0].C).T

        def G(kept, x=x):
            return seg(torch.cat([x[:1], kept @ P_pinv.T])[None])[0] @ C_out.T

        J = torch.func.jacrev(G)(z[1:])[1:, :, :, fixed:]  # (s >= 1, i, t >= 1, j)
        rows = J.reshape(-1, J.shape[-2], J.shape[-1])  # (s i, t, j)
        M = M + torch.einsum("rtj,rtk->jk", rows, rows)
    M = M / (X.shape[0] * (X.shape[1] - 1))
    expected = np.sort(np.linalg.eigvalsh(M.numpy()))[::-1]
    got = lib.bases_[0].eigenvalues
    np.testing.assert_allclose(got, expected[: got.size], rtol=1e-8)


@pytest.mark.filterwarnings("ignore:Integrated gradients are incomplete")
@pytest.mark.parametrize("basis", ["pca", "lib", "gib"])
def test_skipped_positions_run_at_their_exact_activations(basis):
    """With every direction of the other positions kept, the bases reproduce the model exactly
    although they cannot represent position 0: the skipped position bypasses them in the
    Jacobians, the attributions and the ablation passes. (Pushed through the bases, the sink
    lost its direction and the loss moved by 2e-3 with every edge kept.)"""
    from sklearn_lib import GlobalInteractionBasis, LocalInteractionBasis

    adapter = _lm_adapter(_sink_gpt2(), skip=1)
    X, X_eval = _sink_tokens(40, seed=0), _sink_tokens(16, seed=1)
    cls = {"pca": PCAWhitener, "lib": LocalInteractionBasis,
           "gib": GlobalInteractionBasis}[basis]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseScoreWarning)
        graph = IGEdgeScorer().fit_transform(cls(adapter).fit_transform(X))
        search = EdgeAblationSearch(tolerance=1e-3).fit(graph, X_eval=X_eval)
    assert graph.bases[0].n_components < 8  # the sink's direction is not in the first basis
    for r in search.results_:
        assert abs(r.base_score - search.model_score_) < 1e-10, (r.layer_in, r.base_score)
    # Completeness holds on the attention segment (the skipped position included).
    pair = graph.layers.index("blocks.0.attn_in")
    assert graph.completeness_errors[pair] < 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_skipped_positions_closed_forms_equal_the_generic_path(monkeypatch, family):
    """The closed forms (LayerNorm; RMSNorm, rotary, grouped queries) take the held
    coordinates like any other basis coordinate."""
    from sklearn_lib import LocalInteractionBasis

    adapter = _lm_adapter(_sink_gpt2() if family == "gpt2" else _llama(), skip=1)
    X, X_eval = _sink_tokens(24, seed=0), _sink_tokens(8, seed=1)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = IGEdgeScorer().fit_transform(
                LocalInteractionBasis(adapter, batch_size=5).fit_transform(X))
            search = EdgeAblationSearch(tolerance=1e-3, batch_size=3).fit(graph, X_eval=X_eval)
        return graph, search

    graph, search = run()
    monkeypatch.setattr(type(adapter), "composite_segment", lambda self, *a, **k: None)
    graph_ref, search_ref = run()
    for a, b in zip(graph.bases, graph_ref.bases):
        assert a.n_components == b.n_components
        np.testing.assert_allclose(np.abs(a.C), np.abs(b.C), rtol=1e-7, atol=1e-9)
    for a, b in zip(graph.edges, graph_ref.edges):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * b.max())
    assert search.n_edges_needed_ == search_ref.n_edges_needed_
    for r, q in zip(search.results_, search_ref.results_):
        np.testing.assert_allclose([p[1] for p in r.probes], [p[1] for p in q.probes],
                                   rtol=1e-9)


def test_skip_positions_changes_the_lib_basis_and_runs_with_sources():
    from sklearn_lib import LocalInteractionBasis

    model, X = _gpt2(), _tokens(n=8)
    bases = {}
    for skip in (0, 1):
        lib = LocalInteractionBasis(_lm_adapter(model, skip=skip), n_stochastic_sources=3,
                                    random_state=0).fit(X)
        bases[skip] = lib.bases_[0].eigenvalues
        assert np.all(np.isfinite(bases[skip]))
    assert not np.allclose(bases[0][:5], bases[1][:5])


def test_adapter_option_errors():
    model = _gpt2()
    with pytest.raises(ValueError, match=r"skip_positions must be an int in the range \[0, inf\)"):
        _lm_adapter(model, skip=-1)
    with pytest.raises(ValueError, match="skip_positions must be an int"):
        _lm_adapter(model, skip=True)
    with pytest.raises(ValueError, match="cannot be combined with last_position_from"):
        TransformerAdapter.from_hf(model, skip_positions=1, last_position_from="ln_final_out")
    with pytest.raises(ValueError, match="label_position must be an int or None. Got 'next'"):
        TransformerAdapter.from_hf(model, label_position="next")
    with pytest.raises(ValueError, match="needs at least 3"):
        _lm_adapter(model, skip=1).check_input(_tokens(T=2))
    assert "skip_positions=1" in repr(_lm_adapter(model, skip=1))


# --- the warning when the bases alone change the score ------------------------------------------

@pytest.mark.filterwarnings("ignore:Integrated gradients are incomplete")
def test_base_score_warning_fires_when_truncation_moves_the_loss():
    adapter = _lm_adapter(_gpt2(seed=3), skip=1)
    X, X_eval = _tokens(n=16, seed=0), _tokens(n=8, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseScoreWarning)
        graph = IGEdgeScorer().fit_transform(PCAWhitener(adapter).fit_transform(X))
        EdgeAblationSearch().fit(graph, X_eval=X_eval)  # full bases: no warning
    # Keep only the directions above half the largest variance: the model changes.
    graph = IGEdgeScorer().fit_transform(PCAWhitener(adapter, rtol=0.5).fit_transform(X))
    with pytest.warns(BaseScoreWarning, match="change the model's score before any edge"):
        search = EdgeAblationSearch(tolerance=1e-3).fit(graph, X_eval=X_eval)
    assert max(abs(r.base_score - search.model_score_) for r in search.results_) > 1e-3


# --- the preset and the experiment ---------------------------------------------------------------

def test_lm_block_cuts_and_errors():
    from sklearn_lib.tasks import lm_block_cuts

    assert lm_block_cuts(3, [0]) == ["blocks.0.ln1_out", "blocks.0.attn_in",
                                     "blocks.0.ln2_out", "blocks.0.mlp_in", "blocks.1.ln1_out"]
    assert lm_block_cuts(3)[-1] == "ln_final_out" and len(lm_block_cuts(3)) == 13
    with pytest.raises(ValueError, match="blocks must be consecutive"):
        lm_block_cuts(8, [1, 3])
    with pytest.raises(ValueError, match="out of range: the model has 8 blocks"):
        lm_block_cuts(8, [7, 8])
    with pytest.raises(ValueError, match="non-empty sequence of block indices"):
        lm_block_cuts(8, [])


def test_lm_preset_errors():
    from sklearn_lib.tasks import lm_preset

    model, X = _gpt2(), _tokens()
    with pytest.raises(ValueError, match="dtype must be 'float32', 'float64' or None"):
        lm_preset(model, X_train=X, X_test=X, dtype="float16")
    # default precision: float64 for a model object (float32 is for the tiny LM only)
    assert lm_preset(model, X_train=X, X_test=X).basis_params["dtype"] == "float64"
    assert lm_preset(model, X_train=X, X_test=X, dtype="float32").scorer_params["dtype"] == (
        "float32")
    with pytest.raises(ValueError, match="Pass both X_train and X_test"):
        lm_preset(model, X_train=X)
    with pytest.raises(ValueError, match="model must be 'tiny', 'smollm2'"):
        lm_preset("gpt5")
    with pytest.raises(ValueError, match="needs its tokenizer"):
        lm_preset(model)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_preset_and_experiment_end_to_end(family, tmp_path):
    from sklearn_lib._lm_cli import format_lm_table, plot_lm_edges, run_lm_experiment
    from sklearn_lib.tasks import lm_preset

    model = MODELS[family]()
    preset = lm_preset(model, X_train=_tokens(n=10), X_test=_tokens(n=6, seed=1), batch_size=4)
    assert preset.adapter.skip_positions == 1 and preset.ablation_params["tolerance"] == 0.1
    result = run_lm_experiment(preset, verbose=False)
    assert set(result["bases"]) == {"lib", "pca"}
    for basis in ("lib", "pca"):
        pairs = result["bases"][basis]["pairs"]
        assert [q["label"] for q in pairs] == ["0 ln1 div", "0 attn", "0 ln2 div", "0 mlp"]
        for q in pairs:
            assert 0 <= q["n_edges_needed"] <= q["n_edges_total"]
            assert q["loss_at_needed"] <= q["base_loss"] + 0.1 + 1e-9
    json.dumps(result)  # JSON-ready
    assert "LIB" in format_lm_table(result)
    plot_lm_edges(result, tmp_path / "lm.png")
    assert (tmp_path / "lm.png").stat().st_size > 1000


# --- the command line ----------------------------------------------------------------------------

def _usage_error(capsys, argv, *needles):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("argv, needles", [
    (["lm", "--blocks", "9"], ["--blocks", "tiny has 8 blocks"]),
    (["lm", "--blocks", "3,5"], ["--blocks", "consecutive"]),
    (["lm", "--blocks", "x"], ["--blocks", "expected block indices"]),
    (["lm", "--n-positions", "2"], ["--n-positions", "use at least 3"]),
    (["lm", "--n-positions", "200"], ["--n-positions", "at most 128"]),
    (["lm", "--model", "gpt5"], ["--model", "invalid choice"]),
    (["lm", "--n-sequences", "0"], ["--n-sequences", "positive integer"]),
    (["lm", "--n-steps", "0"], ["--n-steps", "positive integer"]),
    (["lm", "--figure", "x.nope"], ["--figure", "extension"]),
    (["lm", "--json", "out.png", "--figure", "out.png"], ["--figure", "same file"]),
])
def test_cli_argument_errors(capsys, tmp_path, argv, needles):
    argv = [a if not a.startswith(("out.", "x.")) else str(tmp_path / a) for a in argv]
    _usage_error(capsys, argv, *needles)


def test_cli_json_folder_error(capsys, tmp_path):
    _usage_error(capsys, ["lm", "--json", str(tmp_path) + "/"], "--json", "is a folder")


def _fortunes_available() -> bool:
    try:
        from sklearn_lib.tasks import load_fortunes

        load_fortunes()
    except (FileNotFoundError, ImportError):
        return False
    return True


@pytest.mark.skipif(not _fortunes_available(), reason="needs Debian's fortunes")
def test_incomplete_integrated_gradients_are_reported_not_silent():
    """An attention or MLP pair whose IG misses f_hat by more than 5% is named, with the fix;
    a norm division (incomplete by construction) is not; the table flags the basis."""
    from types import SimpleNamespace

    from sklearn_lib._lm_cli import completeness_warnings, format_lm_table

    adapter = _lm_adapter(_gpt2())
    layers = adapter.node_layers
    pairs = list(zip(layers[:-1], layers[1:]))[:3]  # ln1 div, attn, ln2 div
    scorer = SimpleNamespace(pairs_=pairs, completeness_errors_=np.array([0.5, 0.2, 0.01]))
    f32 = completeness_warnings(adapter, scorer, "float32")
    assert len(f32) == 1 and "20.0%" in f32[0] and repr(pairs[1][0]) in f32[0]
    assert "--dtype float64" in f32[0]
    f64 = completeness_warnings(adapter, scorer, "float64")
    assert len(f64) == 1 and "--n-steps" in f64[0] and "--dtype" not in f64[0]
    scorer.completeness_errors_ = np.array([0.5, 0.04, 0.01])
    assert completeness_warnings(adapter, scorer, "float32") == []
    result = dict(model="m", blocks=[0], n_train=1, n_test=1, n_positions=4, skip_positions=1,
                  dtype="float32", model_test_loss=1.0, tolerance=0.1, peak_rss_mb=1.0,
                  bases={"lib": dict(seconds=dict(fit=0, edges=0, ablation=0),
                                     total_percent_needed=1.0, base_score_warnings=[],
                                     completeness_warnings=f32, pairs=[
                                         dict(label="0 attn", dims_in=2, dims_out=2,
                                              n_edges_needed=1, n_edges_total=4,
                                              percent_needed=25.0, completeness_error=0.2,
                                              norm_division=False)])})
    table = format_lm_table(result)
    assert "at most 20.0%" in table
    assert "1 pair(s) with incomplete integrated gradients" in table


def test_cli_runs_on_the_tiny_lm(capsys, tmp_path):
    out = tmp_path / "lm.json"
    rc = main(["lm", "--quiet", "--blocks", "7", "--n-sequences", "4", "--n-positions", "6",
               "--json", str(out), "--figure", str(tmp_path / "lm.png")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "7 attn" in printed and "PCA" in printed
    result = json.loads(out.read_text())
    assert result["blocks"] == [7] and result["n_positions"] == 6
    assert len(result["bases"]["lib"]["pairs"]) == 4
    assert (tmp_path / "lm.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _fortunes_available(), reason="needs Debian's fortunes")
def test_tiny_lm_experiment_every_block():
    """The real experiment (a few minutes): every pair keeps the loss with few edges."""
    from sklearn_lib._lm_cli import run_lm_experiment
    from sklearn_lib.tasks import lm_preset

    torch.set_num_threads(1)
    result = run_lm_experiment(lm_preset("tiny"), verbose=False)
    assert 3.0 < result["model_test_loss"] < 7.0
    for basis in ("lib", "pca"):
        pairs = result["bases"][basis]["pairs"]
        assert len(pairs) == 32
        assert all(q["n_edges_needed"] < q["n_edges_total"] for q in pairs)
        assert all(abs(q["base_loss"] - result["model_test_loss"]) < 0.1 for q in pairs)
        assert result["bases"][basis]["total_percent_needed"] < 50

"""Every error path, with the message a user sees (STYLE.md section 6)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import gaussian_data, model_labels, random_mlp
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    InteractionGraph,
    LayerFeatures,
    LeidenModularity,
    LocalInteractionBasis,
    PCAWhitener,
    plot_interaction_graph,
    quadrature,
)
from sklearn_lib._ablation import InSampleEvaluationWarning
from sklearn_lib._common import resolve_device, resolve_dtype
from sklearn_lib._linalg import MomentAccumulator
from sklearn_lib.adapters import MLPAdapter

BASES = [LocalInteractionBasis, GlobalInteractionBasis, PCAWhitener]
F64 = dict(dtype=torch.float64, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def problem():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X = gaussian_data(80, 4, seed=6)
    return model, MLPAdapter(model), X, model_labels(model, X)


@pytest.fixture(scope="module")
def graphs(problem):
    model, adapter, X, y = problem
    g0 = LocalInteractionBasis(adapter).fit_transform(X)
    g1 = IGEdgeScorer().fit_transform(g0)
    g2 = EdgeAblationSearch().fit_transform(g1, y)
    g3 = LeidenModularity().fit_transform(g2)
    return g0, g1, g2, g3


# -- model inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cls", BASES)
def test_non_finite_model_inputs(problem, cls, bad):
    model, adapter, X, y = problem
    Xb = X.copy()
    Xb[3, 1] = bad
    with pytest.raises(ValueError, match="Model inputs contain NaN or inf"):
        cls(adapter).fit(Xb)
    with pytest.raises(ValueError, match="Model inputs contain NaN or inf"):
        adapter.check_input(torch.as_tensor(Xb))


def test_non_finite_inputs_at_transform_and_eval(problem, graphs):
    model, adapter, X, y = problem
    Xb = X.copy()
    Xb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        LocalInteractionBasis(adapter).fit(X).transform(Xb)
    with pytest.raises(ValueError, match="NaN or inf"):
        EdgeAblationSearch().fit(graphs[1], X_eval=Xb, y_eval=y)
    with pytest.raises(ValueError, match="NaN or inf"):
        graphs[0].with_data(Xb)


@pytest.mark.parametrize("module_index", [0, 2, 4])
@pytest.mark.parametrize("cls", BASES)
def test_nan_weights_give_nan_activations(cls, module_index):
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=1)
    with torch.no_grad():
        model[module_index].weight[0, 0] = float("nan")
    layer = {0: "'1'", 2: "'3'", 4: "'4'"}[module_index]
    with pytest.raises(ValueError, match=f"Activations of layer {layer} contain NaN or inf "
                                         r"\(batch starting at sample 0\)"):
        cls(MLPAdapter(model)).fit(gaussian_data(30, 4))


def test_nan_weights_detected_by_graph_steps(problem, graphs):
    # Bases fitted on a healthy model, then the weights go bad: the scorer, the search and the
    # feature export notice instead of returning NaN edges or meaningless scores.
    model, adapter, X, y = problem
    broken = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    with torch.no_grad():
        broken[0].weight[1, 2] = float("inf")
    g0 = graphs[0].replace(adapter=MLPAdapter(broken))
    with pytest.raises(ValueError, match=r"Attributions 'input' -> '1' contain NaN or inf \(batch "
                                         r"starting at sample 0\)"):
        IGEdgeScorer().fit(g0)
    with pytest.raises(ValueError, match="Activations of layer '1' contain NaN or inf"):
        g0.features("1")
    with pytest.raises(ValueError, match=r"Model outputs \(ablating 'input' -> '1'\) contain NaN "
                                         "or inf"):
        EdgeAblationSearch().fit(graphs[1].replace(adapter=MLPAdapter(broken)), y)
    # Only the last layer broken: every activation the search reads is finite, the logits are
    # not (this used to report n_edges_needed = 0 with a meaningless base score).
    last = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    with torch.no_grad():
        last[4].weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"Model outputs \(ablating 'input' -> '1'\) contain NaN "
                                         r"or inf \(batch starting at sample 0\)"):
        EdgeAblationSearch().fit(graphs[1].replace(adapter=MLPAdapter(last)), y)
    # Finite held-out inputs that overflow inside the model, in a later batch.
    bad_eval = X.copy()
    bad_eval[40] = 1e308
    with pytest.raises(ValueError, match=r"Model outputs \(ablating 'input' -> '1'\) contain NaN "
                                         r"or inf \(batch starting at sample 32\)"):
        EdgeAblationSearch(batch_size=32).fit(graphs[1], X_eval=bad_eval, y_eval=y)


@pytest.mark.parametrize("shape", [(10, 3), (10, 5), (10,), (10, 4, 1), (2, 2, 4)])
@pytest.mark.parametrize("cls", BASES)
def test_wrong_input_shapes(problem, cls, shape):
    model, adapter, X, y = problem
    with pytest.raises(ValueError, match=r"Model inputs must have shape \(n_samples, 4\); got "
                                         + repr(shape).replace("(", r"\(").replace(")", r"\)")):
        cls(adapter).fit(np.ones(shape))


def test_wrong_input_shapes_elsewhere(problem, graphs):
    model, adapter, X, y = problem
    fitted = LocalInteractionBasis(adapter).fit(X)
    with pytest.raises(ValueError, match=r"must have shape \(n_samples, 4\); got \(5, 2\)"):
        fitted.transform(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"must have shape \(n_samples, 4\)"):
        EdgeAblationSearch().fit(graphs[1], X_eval=np.ones((5, 3)), y_eval=np.zeros(5))
    with pytest.raises(ValueError, match=r"must have shape \(n_samples, 4\)"):
        graphs[0].features("1", np.ones((5, 3)))
    with pytest.raises(ValueError, match="Model inputs must be numeric; got dtype <U1"):
        adapter.check_input(np.array([["a", "b", "c", "d"]]))
    white = PCAWhitener().fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but PCAWhitener is expecting 4"):
        white.transform(np.ones((5, 3)))
    with pytest.raises(ValueError, match="X has 3 features, but PCAWhitener is expecting 4"):
        PCAWhitener().partial_fit(X).partial_fit(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"inverse_transform expects 4 features \(n_components_"
                                         r"\); got shape \(5, 3\)"):
        white.inverse_transform(np.ones((5, 3)))
    with pytest.raises(ValueError, match="Rows have 3 features but earlier batches had 4"):
        acc = MomentAccumulator()
        acc.update(torch.ones(2, 4))
        acc.update(torch.ones(2, 3))


# -- empty and degenerate data -----------------------------------------------------------------
@pytest.mark.parametrize("cls", BASES)
def test_empty_model_inputs(problem, cls):
    model, adapter, X, y = problem
    with pytest.raises(ValueError, match="Found 0 samples in the model inputs; at least 1 is "
                                         "required"):
        cls(adapter).fit(np.empty((0, 4)))


def test_empty_and_tiny_arrays(problem, graphs):
    model, adapter, X, y = problem
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\)"):
        PCAWhitener().fit(np.empty((0, 3)))
    with pytest.raises(ValueError, match="needs at least 2 samples to estimate a covariance; got "
                                         r"n_samples = 1 \(1 sample\)"):
        PCAWhitener().fit(np.ones((1, 3)))
    with pytest.raises(ValueError, match="Found 0 samples"):
        EdgeAblationSearch().fit(graphs[1], X_eval=np.empty((0, 4)), y_eval=np.empty(0))


def test_constant_data():
    with pytest.raises(ValueError, match="Every direction has negligible variance"):
        PCAWhitener().fit(np.ones((10, 3)))
    model = random_mlp([4, 6, 3], nn.ReLU, seed=0)
    with torch.no_grad():
        model[0].weight.zero_()  # hidden layer constant (= relu(bias)) on every input
    with pytest.raises(ValueError, match="Every direction of layer '1' has negligible variance"):
        LocalInteractionBasis(MLPAdapter(model)).fit(gaussian_data(20, 4))
    with pytest.raises(ValueError, match="Every direction of layer 'input' has negligible"):
        PCAWhitener(MLPAdapter(model)).fit(np.ones((20, 4)))


def test_layer_without_downstream_effect():
    # tanh(100 x) on data far from 0: the output varies (about +-1) but its gradient vanishes.
    model = nn.Sequential(nn.Linear(1, 1), nn.Tanh()).double()
    with torch.no_grad():
        model[0].weight.fill_(100.0)
        model[0].bias.zero_()
    rng = np.random.default_rng(0)
    X = np.concatenate([1 + 0.1 * rng.normal(size=(20, 1)), -1 + 0.1 * rng.normal(size=(20, 1))])
    assert PCAWhitener(MLPAdapter(model)).fit(X).n_components_ == {"input": 1, "1": 1}
    with pytest.raises(ValueError, match="No direction of layer 'input' affects the next node "
                                         "layer"):
        LocalInteractionBasis(MLPAdapter(model)).fit(X)


# -- layer names -------------------------------------------------------------------------------
def test_unknown_and_misordered_node_layers_in_adapter():
    model = random_mlp([4, 6, 5, 3], nn.ReLU)
    with pytest.raises(ValueError, match=r"Unknown node layer 'hidden'. Available: \['input', "
                                         r"'0', '1', '2', '3', '4'\]"):
        MLPAdapter(model, node_layers=["input", "hidden"])
    with pytest.raises(ValueError, match="node_layers must name at least two distinct layers in "
                                         "forward order"):
        MLPAdapter(model, node_layers=["input"])
    with pytest.raises(ValueError, match="in forward order; got \\['3', '1'\\]"):
        MLPAdapter(model, node_layers=["3", "1"])
    with pytest.raises(ValueError, match="forward order"):
        MLPAdapter(model, node_layers=["1", "1"])
    adapter = MLPAdapter(model)
    with pytest.raises(ValueError, match=r"Unknown node layer '2'. This adapter's node layers: "
                                         r"\['input', '1', '3', '4'\]"):
        adapter.activations(np.ones((2, 4)), ["2"], **F64)
    with pytest.raises(ValueError, match="Unknown node layer 'x'"):
        adapter.segment("x", **F64)
    with pytest.raises(ValueError, match="Unknown node layer 'x'"):
        adapter.forward_from("x", **F64)
    with pytest.raises(ValueError, match="Unknown node layer 'x'"):
        adapter.fixed_features("x")
    with pytest.raises(ValueError, match="'4' is the last node layer; it has no segment after it"):
        adapter.segment("4", **F64)


@pytest.mark.parametrize("cls", BASES)
def test_unknown_and_misordered_estimator_layers(problem, cls):
    model, adapter, X, y = problem
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"Unknown layer names \['5'\] for {name}; the adapter's "
                                         r"node layers are \['input', '1', '3', '4'\]"):
        cls(adapter, layers=["input", "5"]).fit(X)
    with pytest.raises(ValueError, match=f"The layers of {name} must be at least two distinct "
                                         "node layers in forward order"):
        cls(adapter, layers=["3", "1"]).fit(X)
    with pytest.raises(ValueError, match="at least two distinct node layers"):
        cls(adapter, layers=["3"]).fit(X)
    with pytest.raises(ValueError, match=f"The layers of {name} must be consecutive node layers"):
        cls(adapter, layers=["input", "3"]).fit(X)


def test_unknown_layer_in_graph_and_probe(graphs):
    g0 = graphs[0]
    with pytest.raises(ValueError, match=r"Unknown layer '2'; this graph has \['input', '1', '3', "
                                         r"'4'\]"):
        g0.basis_of("2")
    with pytest.raises(ValueError, match="Unknown layer '2'"):
        LayerFeatures("2").fit(g0)
    with pytest.raises(ValueError, match="Unknown layer '2'"):
        g0.features("2")


# -- unsupported models ------------------------------------------------------------------------
@pytest.mark.parametrize("module,name", [(nn.Sigmoid(), "Sigmoid"), (nn.Conv1d(1, 1, 1), "Conv1d"),
                                         (nn.LayerNorm(4), "LayerNorm"),
                                         (nn.Softmax(dim=-1), "Softmax")])
def test_unsupported_modules(module, name):
    model = nn.Sequential(nn.Linear(3, 4), module, nn.Linear(4, 2))
    with pytest.raises(TypeError, match=f"MLPAdapter does not support module '1' of type {name}. "
                                        "Supported: Linear and the elementwise activations"):
        MLPAdapter(model)


def test_non_sequential_and_degenerate_models():
    with pytest.raises(TypeError, match="MLPAdapter needs a torch.nn.Sequential; got Linear"):
        MLPAdapter(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="got ModuleList"):
        MLPAdapter(nn.ModuleList([nn.Linear(3, 2)]))
    with pytest.raises(ValueError, match="MLPAdapter got an empty nn.Sequential"):
        MLPAdapter(nn.Sequential())
    with pytest.raises(ValueError, match="MLPAdapter needs at least one nn.Linear"):
        MLPAdapter(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(ValueError, match="metric must be 'accuracy' or 'loss'. Got 'f1' instead"):
        MLPAdapter(nn.Sequential(nn.Linear(3, 2)), metric="f1")


@pytest.mark.parametrize("cls", BASES)
def test_missing_or_wrong_adapter(problem, cls):
    model, adapter, X, y = problem
    name = cls.__name__
    if cls is not PCAWhitener:  # PCAWhitener() without adapter works on plain arrays
        with pytest.raises(ValueError, match=f"{name} needs a model adapter: pass "
                                             r"adapter=MLPAdapter\(model\)"):
            cls().fit(X)
    with pytest.raises(TypeError, match=f"The adapter of {name} must implement "
                                        "sklearn_lib.adapters.ModelAdapter .*got Sequential"):
        cls(model).fit(X)


# -- unfitted estimators -----------------------------------------------------------------------
def test_unfitted_estimators(problem, graphs):
    model, adapter, X, y = problem
    for est, arg in [(LocalInteractionBasis(adapter), X), (GlobalInteractionBasis(adapter), X),
                     (PCAWhitener(adapter), X), (PCAWhitener(), X), (IGEdgeScorer(), graphs[0]),
                     (EdgeAblationSearch(), graphs[1]), (LeidenModularity(), graphs[2])]:
        with pytest.raises(NotFittedError, match=f"This {type(est).__name__} instance is not "
                                                 "fitted yet"):
            est.transform(arg)


# -- wrong types -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [IGEdgeScorer, EdgeAblationSearch, LeidenModularity,
                                 LayerFeatures])
def test_arrays_instead_of_graphs(problem, graphs, cls):
    model, adapter, X, y = problem
    est = cls("1") if cls is LayerFeatures else cls()
    name = cls.__name__
    with pytest.raises(TypeError, match=f"{name} takes an InteractionGraph .*; got ndarray"):
        est.fit(X, y)
    with pytest.raises(TypeError, match=f"{name} takes an InteractionGraph .*; got list"):
        est.fit(X.tolist(), y)
    if cls is not LayerFeatures:
        fitted = {IGEdgeScorer: lambda: IGEdgeScorer().fit(graphs[0]),
                  EdgeAblationSearch: lambda: EdgeAblationSearch().fit(graphs[1], y),
                  LeidenModularity: lambda: LeidenModularity().fit(graphs[2])}[cls]()
        with pytest.raises(TypeError, match=f"{name} takes an InteractionGraph .*; got ndarray"):
            fitted.transform(X)
    else:
        with pytest.raises(TypeError, match="LayerFeatures takes an InteractionGraph"):
            LayerFeatures("1").transform(X)


# -- parameter validation (sklearn's template) -------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: IGEdgeScorer(n_steps=0),
     "The 'n_steps' parameter of IGEdgeScorer must be an int in the range [1, inf). Got 0 "
     "instead."),
    (lambda: IGEdgeScorer(integration="simpson"),
     "The 'integration' parameter of IGEdgeScorer must be a str among"),
    (lambda: IGEdgeScorer(batch_size=0),
     "The 'batch_size' parameter of IGEdgeScorer must be an int in the range [1, inf)"),
    (lambda: IGEdgeScorer(dtype="float16"),
     "The 'dtype' parameter of IGEdgeScorer must be a str among"),
    (lambda: EdgeAblationSearch(metric="f1"),
     "The 'metric' parameter of EdgeAblationSearch must be a str among"),
    (lambda: EdgeAblationSearch(tolerance=-1.0),
     "The 'tolerance' parameter of EdgeAblationSearch must be a float in the range [0.0, inf) "
     "or None. Got -1.0 instead."),
    (lambda: EdgeAblationSearch(mask_chunk=0),
     "The 'mask_chunk' parameter of EdgeAblationSearch must be an int in the range [1, inf)"),
    (lambda: LeidenModularity(resolution=0.0),
     "The 'resolution' parameter of LeidenModularity must be a float in the range (0.0, inf). "
     "Got 0.0 instead."),
    (lambda: LeidenModularity(n_iterations=-2),
     "The 'n_iterations' parameter of LeidenModularity must be an int in the range [-1, inf)"),
])
def test_graph_step_parameter_validation(graphs, make, message):
    est = make()
    graph = graphs[{IGEdgeScorer: 0, EdgeAblationSearch: 1, LeidenModularity: 2}[type(est)]]
    with pytest.raises(InvalidParameterError) as info:
        est.fit(graph, np.zeros(80, dtype=int))
    assert message in str(info.value)


@pytest.mark.parametrize("cls", [LocalInteractionBasis, GlobalInteractionBasis])
@pytest.mark.parametrize("params,message", [
    ({"n_stochastic_sources": 0}, "The 'n_stochastic_sources' parameter of {} must be an int in "
                                  "the range [1, inf) or None. Got 0 instead."),
    ({"batch_size": 0}, "The 'batch_size' parameter of {} must be an int in the range [1, inf)."),
    ({"chunk_size": -1}, "The 'chunk_size' parameter of {} must be an int in the range"),
    ({"rtol": 1.0}, "The 'rtol' parameter of {} must be a float in the range [0.0, 1.0) or None. Got 1.0"),
    ({"atol": -1.0}, "The 'atol' parameter of {} must be a float in the range [0.0, inf)"),
    ({"dtype": "float16"}, "The 'dtype' parameter of {} must be a str among"),
    ({"rotate_final": "yes"}, "The 'rotate_final' parameter of {} must be an instance of 'bool'"),
    ({"random_state": "seed"}, "The 'random_state' parameter of {} must be an int in the range"),
])
def test_basis_parameter_validation(problem, cls, params, message):
    model, adapter, X, y = problem
    with pytest.raises(InvalidParameterError) as info:
        cls(adapter, **params).fit(X)
    assert message.format(cls.__name__) in str(info.value)


@pytest.mark.parametrize("params,message", [
    ({"whiten": "yes"}, "The 'whiten' parameter of PCAWhitener must be an instance of 'bool'"),
    ({"rtol": -0.1}, "The 'rtol' parameter of PCAWhitener must be a float in the range [0.0, 1.0)"),
    ({"batch_size": 0}, "The 'batch_size' parameter of PCAWhitener must be an int in the range "
                        "[1, inf). Got 0 instead."),
])
def test_pca_parameter_validation(params, message):
    for fit in ("fit", "partial_fit"):
        with pytest.raises(InvalidParameterError) as info:
            getattr(PCAWhitener(**params), fit)(np.random.default_rng(0).normal(size=(5, 2)))
        assert message in str(info.value)


def test_dtype_and_device_resolution():
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'. Got 'float16' "
                                         "instead."):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'. Got torch.int64"):
        resolve_dtype(torch.int64)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the error path needs a CPU-only machine.")
    with pytest.raises(ValueError, match="device='cuda' was requested but CUDA is not available; "
                                         "use device='cpu'"):
        resolve_device("cuda")


def test_cuda_device_unavailable(problem, graphs):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here.")
    model, adapter, X, y = problem
    with pytest.raises(ValueError, match="CUDA is not available"):
        LocalInteractionBasis(adapter, device="cuda").fit(X)
    with pytest.raises(ValueError, match="CUDA is not available"):
        IGEdgeScorer(device="cuda").fit(graphs[0])


# -- missing pieces in the graph ---------------------------------------------------------------
def test_missing_edges_and_ablation(problem, graphs):
    model, adapter, X, y = problem
    g0, g1, g2, _ = graphs
    with pytest.raises(ValueError, match="EdgeAblationSearch needs edges in the InteractionGraph; "
                                         "run IGEdgeScorer first."):
        EdgeAblationSearch().fit(g0, y)
    with pytest.raises(ValueError, match="LeidenModularity needs edges in the InteractionGraph; "
                                         "run IGEdgeScorer first."):
        LeidenModularity().fit(g0)
    with pytest.raises(ValueError, match="LeidenModularity needs ablation in the InteractionGraph;"
                                         r" run EdgeAblationSearch first \(it sets epsilon"):
        LeidenModularity().fit(g1)
    with pytest.raises(ValueError, match="plot_interaction_graph needs edges in the "
                                         "InteractionGraph"):
        plot_interaction_graph(g0, ax=object())


def test_graph_without_adapter_or_data(tmp_path, graphs):
    g0, g1, g2, _ = graphs
    loaded0 = InteractionGraph.load(g0.save(tmp_path / "g0.npz"))
    loaded1 = InteractionGraph.load(g1.save(tmp_path / "g1.npz"))
    with pytest.raises(ValueError, match="IGEdgeScorer needs the graph's adapter and model inputs"):
        IGEdgeScorer().fit(loaded0)
    with pytest.raises(ValueError, match="IGEdgeScorer needs the graph's adapter and model inputs"):
        IGEdgeScorer().fit(g0.replace(X=None))
    with pytest.raises(ValueError, match="EdgeAblationSearch needs the graph's adapter to run the "
                                         "model"):
        EdgeAblationSearch().fit(loaded1, np.zeros(80, dtype=int))
    with pytest.raises(ValueError, match=r"This graph has no adapter \(loaded from disk\?\); set "
                                         r"one with replace\(\)"):
        loaded0.with_data(np.ones((3, 4)))
    with pytest.raises(ValueError, match="features\\(\\) needs the graph's adapter; this graph "
                                         "has none"):
        loaded0.features("1")
    with pytest.raises(ValueError, match="This graph holds no model inputs; pass X"):
        g0.replace(X=None).features("1")
    with pytest.raises(ValueError, match="EdgeAblationSearch needs labels: fit\\(graph, y\\)"):
        EdgeAblationSearch().fit(g1.replace(X=None), np.zeros(80, dtype=int))


def test_graph_construction_and_file_errors(tmp_path, graphs):
    g0 = graphs[0]
    with pytest.raises(ValueError, match="4 layers but 3 bases"):
        InteractionGraph(layers=g0.layers, bases=g0.bases[:3], basis="lib")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="is not an InteractionGraph file \\(no metadata\\)"):
        InteractionGraph.load(tmp_path / "other.npz")
    np.savez(tmp_path / "future.npz",
             meta=np.array(json.dumps({"format": "sklearn-lib-interaction-graph", "version": 99})))
    with pytest.raises(ValueError, match="not an InteractionGraph file of a version this "
                                         "sklearn-lib reads .*version 99"):
        InteractionGraph.load(tmp_path / "future.npz")
    np.savez(tmp_path / "alien.npz", meta=np.array(json.dumps({"format": "x", "version": 1})))
    with pytest.raises(ValueError, match="format 'x'"):
        InteractionGraph.load(tmp_path / "alien.npz")


# -- labels and evaluation data ----------------------------------------------------------------
def test_eval_data_errors(problem, graphs):
    model, adapter, X, y = problem
    g1 = graphs[1]
    with pytest.raises(ValueError, match="Pass both X_eval and y_eval, or neither."):
        EdgeAblationSearch().fit(g1, X_eval=X)
    with pytest.raises(ValueError, match="Pass both X_eval and y_eval, or neither."):
        EdgeAblationSearch().fit(g1, y, y_eval=y)
    with pytest.raises(ValueError, match=r"EdgeAblationSearch needs labels: fit\(graph, y\) for "
                                         r"the graph's inputs, or held-out data"):
        EdgeAblationSearch().fit(g1)
    with pytest.raises(ValueError, match="X_eval has 80 samples but y_eval has 79"):
        EdgeAblationSearch().fit(g1, X_eval=X, y_eval=y[:-1])
    with pytest.warns(InSampleEvaluationWarning), \
            pytest.raises(ValueError, match="The graph's inputs have 80 samples but y has 79"):
        EdgeAblationSearch().fit(g1, y[:-1])
    with pytest.raises(ValueError, match=r"y_eval has shape \(80, 2\) but the model's outputs "
                                         r"have shape \(n_samples, 3\); pass one label per sample "
                                         r".*shape \(n_samples,\)"):
        EdgeAblationSearch().fit(g1, X_eval=X, y_eval=np.stack([y, y], axis=1))
    with pytest.raises(ValueError, match=r"y_eval must have shape \(n_samples,\) or "
                                         r"\(n_samples, n_positions\); got \(80, 1, 1\)"):
        EdgeAblationSearch().fit(g1, X_eval=X, y_eval=y[:, None, None])


def test_in_sample_evaluation_warns(problem, graphs):
    model, adapter, X, y = problem
    with pytest.warns(InSampleEvaluationWarning, match="Pass held-out data with fit\(graph, "
                                                       "X_eval=..., y_eval=...\)"):
        EdgeAblationSearch(metric="loss").fit(graphs[1], y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EdgeAblationSearch(metric="loss").fit(graphs[1], X_eval=X, y_eval=y)


@pytest.mark.parametrize("labels,message", [
    (lambda y: y + 0.5, r"y_eval holds non-integral values such as 0.5; pass integer class "
                        r"labels in \[0, n_classes\)"),
    (lambda y: np.where(np.arange(y.size) == 3, np.nan, y),
     "y_eval contains NaN or inf; every sample needs a class label"),
    (lambda y: np.full(y.shape, np.inf), "y_eval contains NaN or inf"),
    (lambda y: y > 0, r"y_eval holds booleans; pass integer class labels in \[0, n_classes\)"),
    (lambda y: y.astype(str), "y_eval must hold integer class labels; got dtype <U21. Encode "
                              "string labels with sklearn.preprocessing.LabelEncoder"),
    (lambda y: y.astype(object), "y_eval must hold integer class labels; got dtype object"),
    (lambda y: y + 0j, "y_eval must hold integer class labels; got dtype complex128"),
    (lambda y: [[1], [1, 2]] * 40, "y_eval must be an array of integer class labels"),
    (lambda y: np.where(np.arange(y.size) == 0, -100, y),
     r"y_eval holds labels from -100 to 2 but the model has 3 classes \(the last dimension of "
     r"its outputs\); labels must lie in \[0, 3\). Ignore-index labels such as -100 are not "
     "supported"),
    (lambda y: y + 3, r"y_eval holds labels from 3 to 5 but the model has 3 classes"),
    (lambda y: np.where(np.arange(y.size) == 7, 3, y), r"labels from 0 to 3 .* \[0, 3\)"),
])
def test_invalid_labels(problem, graphs, labels, message):
    # Before, out-of-range labels scored 0 and reported 0 edges needed on every pair; floats,
    # NaN and bools were cast silently; -100 was dropped by the loss.
    model, adapter, X, y = problem
    for metric in ("accuracy", "loss"):
        with pytest.raises(ValueError, match=message):
            EdgeAblationSearch(metric=metric).fit(graphs[1], X_eval=X, y_eval=labels(y))


def test_scan_k_errors(problem, graphs):
    model, adapter, X, y = problem
    for bad in ([-1, 3], [1.5], ["a"]):
        with pytest.raises(ValueError, match="scan_k must hold non-negative integers"):
            EdgeAblationSearch(search="scan", scan_k=bad).fit(graphs[1], X_eval=X, y_eval=y)
    with pytest.raises(ValueError, match="scan_k is used by search='scan' only; set "
                                         "search='scan'"):
        EdgeAblationSearch(scan_k=[3]).fit(graphs[1], X_eval=X, y_eval=y)


def test_accuracy_tolerance_must_be_below_one(problem, graphs):
    model, adapter, X, y = problem
    for tol in (1.0, 1.5):
        with pytest.raises(ValueError, match=f"tolerance={tol} with metric='accuracy' allows any "
                                             r"score \(accuracy lies in \[0, 1\]\), so every "
                                             "pair would need 0 edges. Pass a tolerance below 1"):
            EdgeAblationSearch(tolerance=tol).fit(graphs[1], X_eval=X, y_eval=y)
    # A loss tolerance has no such bound.
    EdgeAblationSearch(metric="loss", tolerance=1.5).fit(graphs[1], X_eval=X, y_eval=y)


def test_trapezoidal_needs_two_points(graphs):
    with pytest.raises(ValueError, match="The trapezoidal rule needs n_steps >= 2 points; got "
                                         "n_steps=1."):
        IGEdgeScorer(integration="trapezoidal", n_steps=1).fit(graphs[0])
    with pytest.raises(ValueError, match="The trapezoidal rule needs n_steps >= 2"):
        quadrature("trapezoidal", 1)
    with pytest.raises(ValueError, match="integration must be 'endpoint', 'gauss-legendre' or "
                                         "'trapezoidal'; got 'simpson'"):
        quadrature("simpson", 3)


def test_partial_fit_with_adapter(problem):
    model, adapter, X, y = problem
    with pytest.raises(ValueError, match="partial_fit works on plain arrays of activations; with "
                                         "an adapter, call fit"):
        PCAWhitener(adapter).partial_fit(X)


# -- graphs that do not match the fitted step --------------------------------------------------
def test_refitted_graph_mismatch_in_transform(problem, graphs):
    model, adapter, X, y = problem
    g0, g1, g2, _ = graphs
    other = PCAWhitener(adapter).fit_transform(X)  # other bases
    with pytest.raises(ValueError, match="This graph's bases differ from the ones IGEdgeScorer "
                                         "was fitted on; refit the scorer"):
        IGEdgeScorer().fit(g0).transform(other)
    other_edges = IGEdgeScorer().fit_transform(other)
    search = EdgeAblationSearch().fit(g1, y)
    with pytest.raises(ValueError, match="This graph's edges differ from the ones "
                                         "EdgeAblationSearch was fitted on; refit."):
        search.transform(other_edges)
    with pytest.raises(ValueError, match="edges differ from the ones EdgeAblationSearch"):
        search.transform(g0)  # no edges at all
    leiden = LeidenModularity().fit(g2)
    scaled = g2.replace(edges=tuple(2 * E for E in g2.edges))
    with pytest.raises(ValueError, match="This graph's edges differ from the ones "
                                         "LeidenModularity was fitted on; refit."):
        leiden.transform(scaled)
    with pytest.raises(ValueError, match="edges differ from the ones LeidenModularity"):
        leiden.transform(g0)


def test_invalid_edges_for_modularity(graphs):
    g2 = graphs[2]
    # New edges drop the ablation results derived from the old ones ...
    with pytest.raises(ValueError, match="LeidenModularity needs ablation in the InteractionGraph"):
        LeidenModularity().fit(g2.replace(edges=(-g2.edges[0],) + g2.edges[1:]))
    # ... and results passed along with edges they were not computed on are refused.
    negative = g2.replace(edges=(-g2.edges[0],) + g2.edges[1:], ablation=g2.ablation)
    with pytest.raises(ValueError, match=r"Edges of pair \('input', '1'\) must be finite and "
                                         "non-negative; recompute them with IGEdgeScorer"):
        LeidenModularity().fit(negative)
    nan = g2.edges[1].copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"Edges of pair \('1', '3'\) must be finite"):
        LeidenModularity().fit(g2.replace(edges=(g2.edges[0], nan, g2.edges[2]),
                                          ablation=g2.ablation))
    # epsilon 0: the search kept edges equal to 0 (all candidate edges of pair 2 zeroed here).
    E2 = g2.edges[2].copy()
    E2[1:, 1:] = 0.0
    zero_eps = dataclasses.replace(g2.ablation[2], epsilon=0.0, n_edges_nonzero=0,
                                   n_edges_needed=max(1, g2.ablation[2].n_edges_needed))
    with pytest.raises(ValueError, match=r"epsilon of pair \('3', '4'\) is 0 \(the search kept "
                                         r"edges equal to 0\), so log\(E / epsilon\) is infinite"):
        LeidenModularity().fit(g2.replace(edges=g2.edges[:2] + (E2,),
                                          ablation=g2.ablation[:2] + (zero_eps,)))

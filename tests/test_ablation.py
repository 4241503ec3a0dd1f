"""EdgeAblationSearch and ablated_forward against an explicit per-output re-implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import gaussian_data, model_labels, random_mlp
from sklearn.pipeline import make_pipeline
from torch import nn

from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis
from sklearn_lib._ablation import InSampleEvaluationWarning, scan_grid
from sklearn_lib._segments import ablate_by_masks as ablated_forward
from sklearn_lib.adapters import MLPAdapter

POSITIONS = [0, 2, 4, 5]  # node layers input, "1", "3", "4" of a Linear-act-Linear-act-Linear


# -- ablated_forward -----------------------------------------------------------------------------
def _mixing_map(n_in: int, n_out: int, T: int, seed: int):
    """A nonlinear map (batch, T, n_in) -> (batch, T, n_out) that mixes positions."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n_in, n_out, generator=gen, dtype=torch.float64)
    P = torch.randn(T, T, generator=gen, dtype=torch.float64)

    def F(z):
        return torch.tanh(torch.einsum("st,btj->bsj", P, z @ W)) + (z**2).sum(-1, keepdim=True)

    return F


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("mask_chunk", [1, 2, 16])
def test_ablated_forward_equals_per_output_loop(T, mask_chunk):
    F = _mixing_map(5, 4, T, seed=T)
    z = torch.randn(7, T, 5, dtype=torch.float64)
    ones = torch.ones(4, 5, dtype=torch.float64)
    np.testing.assert_allclose(ablated_forward(F, z, ones, mask_chunk).numpy(), F(z).numpy(),
                               rtol=1e-14, atol=1e-14)
    rng = np.random.default_rng(mask_chunk + T)
    for _ in range(3):
        masks = torch.as_tensor(rng.integers(0, 2, size=(4, 5)), dtype=torch.float64)
        masks[1] = masks[3]  # repeated masks share one forward pass
        got = ablated_forward(F, z, masks, mask_chunk)
        expected = torch.stack([F(z * masks[i])[..., i] for i in range(4)], dim=-1)
        assert got.shape == (7, T, 4)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-14, atol=1e-14)
    # Zeroing every input gives F(0) in every output.
    zeros = torch.zeros(4, 5, dtype=torch.float64)
    np.testing.assert_allclose(ablated_forward(F, z, zeros, mask_chunk).numpy(),
                               F(torch.zeros_like(z)).numpy())


# -- an independent search -----------------------------------------------------------------------
def _folded(modules, f):
    """Run plain modules on ``f = [c, h]`` with biases multiplied by ``c``."""
    c, h = f[:, :1], f[:, 1:]
    for m in modules:
        if isinstance(m, nn.Linear):
            h = h @ m.weight.T + (0 if m.bias is None else c * m.bias)
        else:
            h = m(h)
    return torch.cat([c, h], dim=1)


def candidate_order(E):
    """Candidate edges (non-constant to non-constant), largest first, as (row, col) of E."""
    cand = E[1:, 1:]
    order = np.argsort(-cand.ravel(), kind="stable")
    rows, cols = np.divmod(order, cand.shape[1])
    return rows + 1, cols + 1, cand.ravel()[order]


def explicit_score(model, graph, p, k, X, y, metric):
    """Score with the k largest candidate edges of pair p kept: one output at a time."""
    mods = list(model)
    E = graph.edges[p]
    rows, cols, _ = candidate_order(E)
    mask = np.zeros_like(E)
    mask[:, 0] = 1.0
    mask[rows[:k], cols[:k]] = 1.0
    b_in, b_out = graph.bases[p], graph.bases[p + 1]
    with torch.no_grad():
        h = torch.as_tensor(X, dtype=torch.float64)
        for m in mods[: POSITIONS[p]]:
            h = m(h)
        z = torch.cat([torch.ones_like(h[:, :1]), h], 1) @ torch.tensor(b_in.C).T
        seg = mods[POSITIONS[p]:POSITIONS[p + 1]]

        def F(v):
            return _folded(seg, v @ torch.tensor(b_in.C_pinv).T) @ torch.tensor(b_out.C).T

        out = torch.stack([F(z * torch.as_tensor(mask[i]))[:, i] for i in range(E.shape[0])], 1)
        g = out @ torch.tensor(b_out.C_pinv).T
        np.testing.assert_allclose(g[:, 0].numpy(), 1.0, rtol=1e-12)
        logits = _folded(mods[POSITIONS[p + 1]:], g)[:, 1:]
    y = torch.as_tensor(y)
    if metric == "accuracy":
        return float((logits.argmax(1) == y).double().mean())
    return float(nn.functional.cross_entropy(logits, y))


def bisect(ok, n_total):
    lo, hi = 0, n_total
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi


@pytest.fixture(scope="module")
def setup():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X = gaussian_data(240, 4, seed=6)
    X_eval = gaussian_data(160, 4, seed=60)
    y, y_eval = model_labels(model, X), model_labels(model, X_eval)
    graph = IGEdgeScorer().fit_transform(LocalInteractionBasis(MLPAdapter(model)).fit_transform(X))
    return model, X, y, X_eval, y_eval, graph


def gallop(ok, n_total):
    lo, k = 0, 0
    while k < n_total and not ok(k):
        lo, k = k + 1, min(n_total, max(1, 2 * k))
    while lo < k:
        mid = (lo + k) // 2
        lo, k = (lo, mid) if ok(mid) else (mid + 1, k)
    return k


@pytest.mark.parametrize("metric,tolerance", [("accuracy", 0.02), ("loss", 0.01)])
def test_gallop_search_probes_only_up_to_twice_its_answer(setup, metric, tolerance):
    """search="gallop": 0, 1, 2, 4, ... then bisection below the first k that keeps the score;
    the answer of that rule on the explicit scores, the bisection's answer where the curve is
    monotone, and no probe wider than twice the answer (beyond every edge, for the base)."""
    model, X, y, X_eval, y_eval, graph = setup
    fast = EdgeAblationSearch(metric=metric, tolerance=tolerance, search="gallop").fit(
        graph, X_eval=X_eval, y_eval=y_eval)
    plain = EdgeAblationSearch(metric=metric, tolerance=tolerance).fit(
        graph, X_eval=X_eval, y_eval=y_eval)
    for p, (r, q) in enumerate(zip(fast.results_, plain.results_)):
        n_total = r.n_edges_total
        scores = [explicit_score(model, graph, p, k, X_eval, y_eval, metric)
                  for k in range(n_total + 1)]
        base = scores[-1]

        def ok(k):
            return (scores[k] >= base - tolerance) if metric == "accuracy" else (
                scores[k] <= base + tolerance)

        assert r.n_edges_needed == gallop(ok, n_total)
        assert r.n_edges_needed_stable == r.n_edges_needed
        probed = sorted(k for k, _ in r.probes)
        assert probed[-1] == n_total and all(
            k <= max(1, 2 * r.n_edges_needed) for k in probed[:-1])
        admissible = [k for k in range(n_total + 1) if ok(k)]
        if all(ok(k) for k in range(admissible[0], n_total + 1)):  # monotone: one answer
            assert r.n_edges_needed == q.n_edges_needed == admissible[0]


@pytest.mark.parametrize("metric,tolerance", [("accuracy", None), ("accuracy", 0.02),
                                              ("loss", None), ("loss", 0.01)])
def test_search_matches_brute_force_scan(setup, metric, tolerance):
    model, X, y, X_eval, y_eval, graph = setup
    search = EdgeAblationSearch(metric=metric, tolerance=tolerance).fit(
        graph, X_eval=X_eval, y_eval=y_eval)
    tol = {"accuracy": 1e-3, "loss": 0.1}[metric] if tolerance is None else tolerance
    assert search.n_samples_eval_ == X_eval.shape[0]
    for p, r in enumerate(search.results_):
        E = graph.edges[p]
        n_total = (E.shape[0] - 1) * (E.shape[1] - 1)
        scores = [explicit_score(model, graph, p, k, X_eval, y_eval, metric)
                  for k in range(n_total + 1)]
        base = scores[-1]
        with torch.no_grad():
            logits = model(torch.as_tensor(X_eval))
        direct = (float((logits.argmax(1).numpy() == y_eval).mean()) if metric == "accuracy"
                  else float(nn.functional.cross_entropy(logits, torch.as_tensor(y_eval))))
        # Keeping every edge reproduces the unablated model.
        assert r.base_score == pytest.approx(direct, rel=1e-12, abs=1e-12)
        assert r.base_score == pytest.approx(base, rel=1e-12, abs=1e-12)

        def ok(k):
            return (scores[k] >= base - tol) if metric == "accuracy" else (scores[k] <= base + tol)

        assert (r.layer_in, r.layer_out) == graph.pairs[p]
        assert r.metric == metric and r.tolerance == tol
        assert r.n_edges_total == n_total
        assert r.n_edges_nonzero == int((E[1:, 1:] > 0).sum())
        assert r.n_edges_needed == bisect(ok, n_total)
        # The bisection's invariants, checked on the independent scores.
        assert ok(r.n_edges_needed)
        assert r.n_edges_needed == 0 or not ok(r.n_edges_needed - 1)
        admissible = [k for k in range(n_total + 1) if ok(k)]
        if all(ok(k) for k in range(admissible[0], n_total + 1)):  # monotone: the minimum
            assert r.n_edges_needed == admissible[0]
        # Every probe was scored as the explicit loop scores it.
        assert r.n_probes == len(r.probes) == len({k for k, _ in r.probes})
        assert [k for k, _ in r.probes] == sorted(k for k, _ in r.probes)
        assert r.probes[-1][0] == n_total
        # A bisection never probes a failing k above its answer: the stable count agrees.
        assert r.search == "bisect" and r.n_edges_needed_stable == r.n_edges_needed
        for k, value in r.probes:
            assert value == pytest.approx(scores[k], rel=1e-10, abs=1e-12)
        assert r.score_at_needed == pytest.approx(scores[r.n_edges_needed], rel=1e-10, abs=1e-12)
        if r.n_edges_needed > 0:
            assert r.score_at_one_fewer == pytest.approx(scores[r.n_edges_needed - 1], rel=1e-10,
                                                         abs=1e-12)
            # epsilon is the smallest kept edge: the needed-th largest candidate.
            assert r.epsilon == np.sort(E[1:, 1:].ravel())[::-1][r.n_edges_needed - 1]
        else:
            assert np.isnan(r.score_at_one_fewer)
        assert search.n_edges_needed_[graph.pairs[p]] == r.n_edges_needed
        assert search.epsilons_[graph.pairs[p]] == r.epsilon


def test_brute_force_minimum_on_a_monotone_example(setup):
    # On this pair the admissible k form an interval up to n_total (ablation may even lower the
    # loss, so scores need not be monotone), so the bisection must find the true minimum.
    model, X, y, X_eval, y_eval, graph = setup
    search = EdgeAblationSearch(metric="loss", tolerance=0.05).fit(graph, X_eval=X_eval,
                                                                   y_eval=y_eval)
    p = 2
    n_total = search.results_[p].n_edges_total
    scores = np.array([explicit_score(model, graph, p, k, X_eval, y_eval, "loss")
                       for k in range(n_total + 1)])
    ok = scores <= scores[-1] + 0.05
    smallest = int(np.argmax(ok))
    assert np.all(ok[smallest:])
    assert 0 < smallest < n_total
    assert search.results_[p].n_edges_needed == smallest


def test_defaults_use_graph_inputs_and_adapter_metric(setup):
    model, X, y, X_eval, y_eval, graph = setup
    with pytest.warns(InSampleEvaluationWarning, match="scoring on the graph's own inputs"):
        search = EdgeAblationSearch().fit(graph, y)
    assert search.n_samples_eval_ == X.shape[0]
    r = search.results_[0]
    assert r.metric == "accuracy" and r.tolerance == 1e-3
    assert r.base_score == 1.0  # y are the model's own predictions
    assert r.score_at_needed == pytest.approx(
        explicit_score(model, graph, 0, r.n_edges_needed, X, y, "accuracy"))
    loss_graph = graph.replace(adapter=MLPAdapter(model, metric="loss"))
    with pytest.warns(InSampleEvaluationWarning):
        assert EdgeAblationSearch().fit(loss_graph, y).results_[0].metric == "loss"


def test_tolerance_monotone_and_zero_edges_possible(setup):
    model, X, y, X_eval, y_eval, graph = setup
    needed = [
        [r.n_edges_needed for r in EdgeAblationSearch(metric="loss", tolerance=t)
         .fit(graph, X_eval=X_eval, y_eval=y_eval).results_]
        for t in (0.0, 0.05, 0.5, 100.0)
    ]
    for tighter, looser in zip(needed[:-1], needed[1:]):
        assert all(a >= b for a, b in zip(tighter, looser))
    assert needed[-1] == [0, 0, 0]  # any loss is tolerated: nothing is needed
    r = EdgeAblationSearch(metric="loss", tolerance=100.0).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_[0]
    assert r.epsilon == np.inf  # no candidate edge is kept, so there is no smallest kept edge
    assert r.n_edges_needed == 0 and np.isnan(r.score_at_one_fewer)


def test_batch_size_and_mask_chunk_do_not_change_results(setup):
    model, X, y, X_eval, y_eval, graph = setup
    a = EdgeAblationSearch(metric="loss").fit(graph, X_eval=X_eval, y_eval=y_eval).results_
    b = EdgeAblationSearch(metric="loss", batch_size=33, mask_chunk=3).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_
    for ra, rb in zip(a, b):
        assert ra.n_edges_needed == rb.n_edges_needed
        assert ra.base_score == pytest.approx(rb.base_score, rel=1e-12)
        assert ra.score_at_needed == pytest.approx(rb.score_at_needed, rel=1e-12)


def test_x_eval_routes_through_pipeline(setup):
    model, X, y, X_eval, y_eval, graph = setup
    adapter = MLPAdapter(model)
    pipe = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(), EdgeAblationSearch())
    pipe.fit(X, y, edgeablationsearch__X_eval=X_eval, edgeablationsearch__y_eval=y_eval)
    search = pipe.named_steps["edgeablationsearch"]
    assert search.n_samples_eval_ == X_eval.shape[0]
    direct = EdgeAblationSearch().fit(graph, X_eval=X_eval, y_eval=y_eval)
    assert search.n_edges_needed_ == direct.n_edges_needed_
    assert [r.base_score for r in search.results_] == [r.base_score for r in direct.results_]
    # Without the routed parameters the graph's own inputs are used, with a warning.
    with pytest.warns(InSampleEvaluationWarning):
        pipe.fit(X, y)
    assert pipe.named_steps["edgeablationsearch"].n_samples_eval_ == X.shape[0]
    # fit_transform through the pipeline attaches the results to the graph.
    out = make_pipeline(LocalInteractionBasis(adapter), IGEdgeScorer(),
                        EdgeAblationSearch(metric="loss")).fit_transform(
        X, y, edgeablationsearch__X_eval=X_eval, edgeablationsearch__y_eval=y_eval)
    assert len(out.ablation) == 3 and out.ablation[0].metric == "loss"


@pytest.mark.filterwarnings("ignore::sklearn_lib._ablation.InSampleEvaluationWarning")
def test_transform_attaches_results_without_mutating(setup):
    model, X, y, X_eval, y_eval, graph = setup
    search = EdgeAblationSearch().fit(graph, y)
    out = search.transform(graph)
    assert graph.ablation is None
    assert out.ablation == tuple(search.results_)
    assert out.edges is graph.edges
    again = EdgeAblationSearch().fit_transform(graph, y)
    assert again.ablation == out.ablation


# -- scan, stable count, progress ----------------------------------------------------------------
def _explicit_curve(setup, p, metric):
    model, X, y, X_eval, y_eval, graph = setup
    E = graph.edges[p]
    n_total = (E.shape[0] - 1) * (E.shape[1] - 1)
    return np.array([explicit_score(model, graph, p, k, X_eval, y_eval, metric)
                     for k in range(n_total + 1)])


def test_scan_of_every_k_finds_first_and_stable_counts(setup):
    # On pair 0 with loss tolerance 0.01 the score is not monotone: k = 6 keeps the loss within
    # tolerance, some k between 6 and 10 does not. A bisection reports 6 and cannot see it.
    model, X, y, X_eval, y_eval, graph = setup
    scores = _explicit_curve(setup, 0, "loss")
    ok = scores <= scores[-1] + 0.01
    first = int(np.argmax(ok))
    stable = max([k + 1 for k in range(len(ok)) if not ok[k]], default=0)
    assert (first, stable) == (6, 10)  # the fixture really is non-monotone
    r = EdgeAblationSearch(metric="loss", tolerance=0.01, search="scan", n_scan_points=100).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_[0]
    assert r.search == "scan"
    assert [k for k, _ in r.probes] == list(range(len(scores)))  # every k, sorted
    np.testing.assert_allclose([v for _, v in r.probes], scores, rtol=1e-10, atol=1e-12)
    assert r.n_edges_needed == first and r.n_edges_needed_stable == stable
    assert r.score_at_one_fewer == pytest.approx(scores[first - 1], rel=1e-10)
    bis = EdgeAblationSearch(metric="loss", tolerance=0.01).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_[0]
    assert bis.n_edges_needed == bis.n_edges_needed_stable == 6


@pytest.mark.parametrize("n_scan_points", [2, 4, 7])
def test_coarse_scan_is_refined_to_one_edge(setup, n_scan_points):
    model, X, y, X_eval, y_eval, graph = setup
    scores = _explicit_curve(setup, 0, "loss")
    ok = scores <= scores[-1] + 0.01
    r = EdgeAblationSearch(metric="loss", tolerance=0.01, search="scan",
                           n_scan_points=n_scan_points).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_[0]
    probed = [k for k, _ in r.probes]
    grid = scan_grid(20, n_scan_points)
    assert set(grid.tolist()) <= set(probed)
    for k, v in r.probes:
        assert v == pytest.approx(scores[k], rel=1e-10, abs=1e-12)
    # The answer keeps the score, one fewer does not, and no grid point below it keeps it.
    assert ok[r.n_edges_needed] and not ok[r.n_edges_needed - 1]
    assert not any(ok[k] for k in grid if k < r.n_edges_needed)
    # The stable count: every probed k from it keeps the score, the one below it fails.
    s = r.n_edges_needed_stable
    assert all(ok[k] for k in probed if k >= s) and not ok[s - 1] and (s - 1) in probed
    assert r.n_edges_needed <= s


def test_scan_k_adds_probes(setup):
    model, X, y, X_eval, y_eval, graph = setup
    scores = _explicit_curve(setup, 0, "loss")
    r = EdgeAblationSearch(metric="loss", tolerance=0.01, search="scan", n_scan_points=2,
                           scan_k=[7, 8, 9, 500]).fit(
        graph, X_eval=X_eval, y_eval=y_eval).results_[0]
    probed = {k for k, _ in r.probes}
    assert {0, 7, 8, 9, 20} <= probed and 500 not in probed
    # The grid {0, 7, 8, 9, 20} sees the dip above k = 6 that a bare bisection misses.
    ok = scores <= scores[-1] + 0.01
    assert not all(ok[[7, 8, 9]]) and r.n_edges_needed_stable == 10
    for k, v in r.probes:
        assert v == pytest.approx(scores[k], rel=1e-10, abs=1e-12)


def test_scan_grid():
    np.testing.assert_array_equal(scan_grid(5, 10), np.arange(6))
    grid = scan_grid(16254, 48)
    assert grid[0] == 0 and grid[-1] == 16254 and np.all(np.diff(grid) > 0)
    assert 40 <= len(grid) <= 48
    # Spaced evenly in log(k + 1): the ratios of successive (k + 1) are about equal at the top.
    ratios = (grid[1:] + 1) / (grid[:-1] + 1)
    assert ratios[-10:].max() / ratios[-10:].min() < 1.01


def test_progress_bar_moves_per_probe(setup, monkeypatch):
    import sklearn_lib._ablation as ablation

    bars = []

    class Recorder:
        def __init__(self, *, total, desc, unit, disable):
            self.total, self.desc, self.disable = total, desc, disable
            self.n, self.closed = 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(ablation, "tqdm", Recorder)
    model, X, y, X_eval, y_eval, graph = setup
    for search in ("bisect", "scan"):
        bars.clear()
        search_ = EdgeAblationSearch(metric="loss", search=search, n_scan_points=5,
                                     verbose=True).fit(graph, X_eval=X_eval, y_eval=y_eval)
        assert len(bars) == len(graph.pairs)  # one bar per pair ...
        for bar, r, pair in zip(bars, search_.results_, graph.pairs):
            assert bar.n == r.n_probes > 2  # ... that moves once per probe
            assert not bar.disable and bar.closed and f"{pair[0]} -> {pair[1]}" in bar.desc
    bars.clear()
    EdgeAblationSearch(metric="loss").fit(graph, X_eval=X_eval, y_eval=y_eval)
    assert all(bar.disable for bar in bars)


def test_integral_float_labels_equal_integer_labels(setup):
    model, X, y, X_eval, y_eval, graph = setup
    a = EdgeAblationSearch(metric="loss").fit(graph, X_eval=X_eval, y_eval=y_eval).results_
    b = EdgeAblationSearch(metric="loss").fit(graph, X_eval=X_eval,
                                              y_eval=y_eval.astype(float)).results_
    assert a == b

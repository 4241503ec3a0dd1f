"""The interaction-graph figure: legends, colours, kept vs ablated edges, axis text, labels."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from conftest import gaussian_data, model_labels, random_mlp  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from sklearn_lib import (  # noqa: E402
    EdgeAblationSearch,
    IGEdgeScorer,
    LeidenModularity,
    PCAWhitener,
    plot_interaction_graph,
)
from sklearn_lib._plotting import _OTHER_COLOUR, _kept_mask  # noqa: E402
from sklearn_lib.adapters import MLPAdapter  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    model = random_mlp([6, 12, 10, 4], seed=3)
    X = gaussian_data(200, 6, seed=3, scale=np.linspace(1.5, 0.5, 6))
    y = model_labels(model, X)
    g = PCAWhitener(MLPAdapter(model)).fit_transform(X)
    g = IGEdgeScorer().fit_transform(g)
    g = EdgeAblationSearch(metric="accuracy", tolerance=0.05).fit_transform(g, y)
    return LeidenModularity(random_state=0).fit_transform(g)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _all_legend_texts(ax) -> list[str]:
    legends = [a for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]
    texts = []
    for leg in legends:
        texts.append(leg.get_title().get_text())
        texts += [t.get_text() for t in leg.get_texts()]
    return texts


# --- kept edges -----------------------------------------------------------------------------------

def test_kept_mask_keeps_the_needed_largest_candidates_and_the_constant(graph):
    for p, r in enumerate(graph.ablation):
        E = np.asarray(graph.edges[p])
        kept = _kept_mask(graph, p)
        assert kept.shape == E.shape and kept.dtype == bool
        assert kept[:, 0].all()
        assert not kept[0, 1:].any()  # edges into the constant are not candidates
        cand, cand_kept = E[1:, 1:], kept[1:, 1:]
        assert cand_kept.sum() == r.n_edges_needed
        if 0 < r.n_edges_needed < cand.size:
            assert cand[cand_kept].min() >= cand[~cand_kept].max()


def _needing(result, E, k):
    """``result`` rewritten to keep the ``k`` largest candidates of ``E`` (consistent epsilon)."""
    cand = np.sort(np.asarray(E)[1:, 1:].ravel())[::-1]
    return dataclasses.replace(result, n_edges_needed=k, epsilon=float(cand[k - 1]),
                               n_edges_nonzero=int((cand > 0).sum()))


def test_kept_mask_breaks_ties_in_stable_order(graph):
    E = np.asarray(graph.edges[0]).copy()
    E[1:, 1:] = 1.0
    k = 5
    ablation = list(graph.ablation)
    ablation[0] = _needing(ablation[0], E, k)
    g = graph.replace(edges=(E, *graph.edges[1:]), ablation=tuple(ablation))
    kept = _kept_mask(g, 0)[1:, 1:]
    assert kept.ravel()[:k].all() and not kept.ravel()[k:].any()


def test_kept_mask_is_none_before_the_ablation_search(graph):
    assert _kept_mask(graph.replace(ablation=None, communities=None), 0) is None


# --- legends, colours, styles ---------------------------------------------------------------------

def test_legends_explain_colour_width_and_style(graph):
    ax = plot_interaction_graph(graph, max_features=6)
    texts = " | ".join(_all_legend_texts(ax))
    assert "Leiden community" in texts
    assert "kept by the ablation search" in texts and "ablated" in texts
    assert "E\u00b2 = 100% of the pair's largest" in texts
    assert "not drawn" in texts


def test_no_legend_when_asked(graph):
    ax = plot_interaction_graph(graph, max_features=6, legend=False)
    assert _all_legend_texts(ax) == []


def _node_colours(ax, graph, shown_per_layer):
    """Face colours of the nodes, layer by layer (one scatter per layer)."""
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == len(graph.layers)
    return [np.asarray(s.get_facecolors()) for s in scatters]


def test_colours_do_not_repeat_and_small_communities_are_other(graph):
    # 25 communities over the 28 nodes shown (node k in community k % 25), so the sizes are
    # 2, 2, 2, 1, 1, ...: 20 get colours, 5 are "other".
    n_show = 12
    comms, k = [], 0
    for b in graph.bases:
        c = np.full(b.n_features, -1)
        for i in range(1, b.n_features):
            if i <= n_show:
                c[i], k = k % 25, k + 1
            else:
                c[i] = 99  # not shown: must not count
        comms.append(c)
    g = graph.replace(communities=tuple(comms))
    ax = plot_interaction_graph(g, max_features=n_show, max_communities=20)
    colours = _node_colours(ax, g, n_show)
    shown = [np.asarray(c)[1:1 + n_show] for c in comms]
    colour_of: dict[int, tuple] = {}
    sizes: dict[int, int] = {}
    for cs, fc in zip(shown, colours):
        for c, rgba in zip(cs, fc):
            colour_of.setdefault(int(c), tuple(rgba))
            assert colour_of[int(c)] == tuple(rgba)  # one colour per community
            sizes[int(c)] = sizes.get(int(c), 0) + 1
    grey = to_rgba(_OTHER_COLOUR)
    coloured = {c: col for c, col in colour_of.items() if not np.allclose(col, grey)}
    assert len(coloured) == min(20, len(sizes))
    assert len(set(coloured.values())) == len(coloured)  # no colour reused
    # No community colour is a grey that could be read as "other".
    assert all(np.ptp(np.asarray(col[:3])) > 0.1 for col in coloured.values())
    # The coloured ones are the largest (ties by id).
    ranked = sorted(sizes, key=lambda c: (-sizes[c], c))
    assert set(coloured) == set(ranked[:20])
    texts = " | ".join(_all_legend_texts(ax))
    assert len(sizes) == 25 and 99 not in sizes
    assert "other: 5 smaller" in texts


def test_kept_edges_solid_ablated_dashed(graph):
    ablation = tuple(_needing(r, E, 2) for r, E in zip(graph.ablation, graph.edges))
    g = graph.replace(ablation=ablation)
    ax = plot_interaction_graph(g, max_features=12, min_relative_edge=0.0)
    dashed = [ln for ln in ax.lines if ln.get_linestyle() not in ("-", "solid")]
    solid_dark = [ln for ln in ax.lines if ln.get_linestyle() in ("-", "solid")
                  and np.allclose(to_rgba(ln.get_color())[:3], to_rgba("0.12")[:3])]
    assert len(solid_dark) == 2 * len(g.ablation)  # two kept candidates per pair
    assert len(dashed) > 0
    texts = _all_legend_texts(ax)
    assert f"ablated ({len(dashed)} drawn)" in texts
    assert f"kept by the ablation search ({len(solid_dark)} drawn)" in texts


def test_edges_without_ablation_are_one_style(graph):
    ax = plot_interaction_graph(graph.replace(ablation=None, communities=None), max_features=6)
    assert all(ln.get_linestyle() in ("-", "solid") for ln in ax.lines)
    assert not any("ablated" in t for t in _all_legend_texts(ax))


# --- axis text ------------------------------------------------------------------------------------

def test_each_layer_says_how_many_features_are_shown(graph):
    ax = plot_interaction_graph(graph, max_features=5)
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    for text, b in zip(ticks, graph.bases):
        assert f"showing {min(5, b.n_features - 1)} of {b.n_features - 1} features" in text
    ax = plot_interaction_graph(graph, max_features=5, include_constant=True)
    assert f"of {graph.bases[0].n_features} features" in ax.get_yticklabels()[0].get_text()


def test_sequential_indices_are_named_as_such(graph):
    ax = plot_interaction_graph(graph, max_features=4)
    ticks = [t.get_text().splitlines()[0] for t in ax.get_yticklabels()]
    assert ticks == ["input", "[1] ReLU", "[3] ReLU", "[4] Linear"]
    assert "nn.Sequential index" in ax.get_ylabel()


def test_layer_names_from_the_user(graph):
    names = {"input": "pixels", "1": "hidden 1", "3": "hidden 2", "4": "logits"}
    ax = plot_interaction_graph(graph, max_features=4, layer_names=names)
    ticks = [t.get_text().splitlines()[0] for t in ax.get_yticklabels()]
    assert ticks == list(names.values())
    assert "nn.Sequential" not in ax.get_ylabel()


# --- labels ---------------------------------------------------------------------------------------

def _segment_hits_box(p0, p1, box) -> bool:
    """Liang-Barsky: does the segment p0-p1 enter the (open) box?"""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - box.x0), (dx, box.x1 - x0), (-dy, y0 - box.y0), (dy, box.y1 - y0)):
        if p == 0:
            if q <= 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 >= t1:
            return False
    return True


def _labels(graph, n, terms):
    words = ["98% cos(15x+15y)", "41% cos(x+y)", "30% cos(36x-36y)"]
    return {(layer, i): " + ".join(words[:terms]) for layer in graph.layers
            for i in range(1, n + 1)}


@pytest.mark.parametrize("terms", [1, 3])
def test_labels_never_overlap_edges_title_or_each_other(graph, terms):
    n = 8
    ax = plot_interaction_graph(graph, max_features=n, feature_labels=_labels(graph, n, terms),
                                min_relative_edge=0.0, title="A long title " * 4)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if "cos(" in t.get_text()]
    assert len(labels) == sum(min(n, b.n_features - 1) for b in graph.bases)
    boxes = [t.get_window_extent(renderer) for t in labels]
    title = ax.title.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert not box.overlaps(title)
        for other in boxes[i + 1:]:
            assert not box.overlaps(other)
    for line in ax.lines:
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        for box in boxes:
            assert not _segment_hits_box(xy[0], xy[1], box), line.get_label()
    # Readable type.
    assert min(t.get_fontsize() for t in labels) >= 7


def test_figure_grows_with_the_label_lines(graph):
    heights = []
    for terms in (1, 3):
        ax = plot_interaction_graph(graph, max_features=6, feature_labels=_labels(graph, 6, terms))
        heights.append(ax.figure.get_figheight())
    assert heights[1] > heights[0]


def test_long_labels_are_shortened_in_small_axes(graph):
    fig, ax = plt.subplots(figsize=(4, 4))
    labels = {(graph.layers[1], i): "a very long label " * 5 for i in range(1, 9)}
    plot_interaction_graph(graph, ax=ax, max_features=8, feature_labels=labels)
    drawn = [t.get_text() for t in ax.texts]
    assert drawn and all(text.endswith("\u2026") for text in drawn)


# --- errors ---------------------------------------------------------------------------------------

def test_bad_arguments(graph):
    with pytest.raises(ValueError, match="max_features must be a positive int"):
        plot_interaction_graph(graph, max_features=0)
    with pytest.raises(ValueError, match="max_communities must be an int >= 0"):
        plot_interaction_graph(graph, max_communities=-1)
    with pytest.raises(TypeError, match="feature_labels must be a dict"):
        plot_interaction_graph(graph, feature_labels=["a"])

"""plot_ablation_curve: the probed scores, the band the search accepts, the counts it reports."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import gaussian_data, model_labels, random_mlp  # noqa: E402
from torch import nn  # noqa: E402

from sklearn_lib import (  # noqa: E402
    EdgeAblationSearch,
    IGEdgeScorer,
    LocalInteractionBasis,
    PCAWhitener,
    plot_ablation_curve,
)
from sklearn_lib.adapters import MLPAdapter  # noqa: E402


@pytest.fixture(scope="module")
def graphs():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X, X_eval = gaussian_data(240, 4, seed=6), gaussian_data(160, 4, seed=60)
    y_eval = model_labels(model, X_eval)
    out = []
    for cls in (LocalInteractionBasis, PCAWhitener):
        g = IGEdgeScorer().fit_transform(cls(MLPAdapter(model)).fit_transform(X))
        out.append(EdgeAblationSearch(metric="loss", tolerance=0.01, search="scan",
                                      n_scan_points=100).fit_transform(
            g, X_eval=X_eval, y_eval=y_eval))
    return out


def test_curve_shows_probes_band_and_counts(tmp_path, graphs):
    lib, pca = graphs
    axes = plot_ablation_curve(graphs, zoom=20, title="LIB vs PCA")
    assert len(axes) == len(lib.pairs)
    for p, ax in enumerate(axes):
        assert ax.get_title() == f"{lib.pairs[p][0]} → {lib.pairs[p][1]}"
        assert ax.get_xscale() == "symlog"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for g, name in ((lib, "LIB"), (pca, "PCA")):
            r = g.ablation[p]
            # The probed curve, exactly.
            curves = [line for line in ax.get_lines()
                      if line.get_label().startswith(f"{name}: {r.n_edges_needed} of")]
            assert len(curves) == 1
            np.testing.assert_array_equal(curves[0].get_xdata(), [k for k, _ in r.probes])
            np.testing.assert_array_equal(curves[0].get_ydata(), [v for _, v in r.probes])
            assert f"{name}: {r.n_edges_needed} of {r.n_edges_total} needed (scan, " \
                   f"{r.n_probes} probes)" in legend
            # n_edges_needed marked by a vertical line; the stable count when it differs.
            xs = [line.get_xdata()[0] for line in ax.get_lines()
                  if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2]
            assert r.n_edges_needed in xs
            if r.n_edges_needed_stable != r.n_edges_needed:
                assert f"{name}: stable from {r.n_edges_needed_stable}" in legend
            # The base score (dashed) and the tolerance band [base, base + tol] for the loss.
            ys = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
            assert r.base_score in ys
            bands = [(patch.get_y(), patch.get_y() + patch.get_height()) for patch in ax.patches]
            assert any(np.isclose(y0, r.base_score) and np.isclose(y1, r.base_score + 0.01)
                       for y0, y1 in bands)
        # zoom: 20 tolerances around the base score.
        lo, hi = ax.get_ylim()
        assert lo == pytest.approx(lib.ablation[p].base_score - 0.2)
    # The fixture's pair 0 is not monotone under LIB: the stable count is drawn.
    assert lib.ablation[0].n_edges_needed_stable > lib.ablation[0].n_edges_needed
    fig = axes[0].figure
    assert fig._suptitle.get_text() == "LIB vs PCA"
    path = tmp_path / "curve.png"
    fig.savefig(path, dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    plt.close("all")


def test_curve_on_given_axes_and_labels(graphs):
    fig, axes = plt.subplots(3, 1)
    out = plot_ablation_curve(graphs[0], labels=["mine"], axes=axes)
    assert list(out) == list(axes)
    assert any(t.get_text().startswith("mine: ") for t in axes[2].get_legend().get_texts())
    plt.close("all")


def test_curve_xlim_is_linear(graphs):
    axes = plot_ablation_curve(graphs, xlim=(2, 12))
    assert all(ax.get_xscale() == "linear" and ax.get_xlim() == (2, 12) for ax in axes)
    plt.close("all")


def test_curve_errors(graphs):
    lib, pca = graphs
    with pytest.raises(ValueError, match="plot_ablation_curve needs ablation in the "
                                         "InteractionGraph; run EdgeAblationSearch first"):
        plot_ablation_curve([lib, pca.replace(ablation=None)])
    with pytest.raises(TypeError, match=r"plot_ablation_curve takes InteractionGraphs; "
                                        r"graphs\[1\] is ndarray"):
        plot_ablation_curve([lib, np.zeros(3)])
    with pytest.raises(ValueError, match="plot_ablation_curve needs at least one"):
        plot_ablation_curve([])
    short = lib.replace(layers=lib.layers[:3], bases=lib.bases[:3],
                        edges=lib.edges[:2], ablation=lib.ablation[:2])
    with pytest.raises(ValueError, match=r"The graphs must share their layer pairs to share "
                                         r"panels; graphs\[0\] has .* but graphs\[1\] has"):
        plot_ablation_curve([lib, short])
    with pytest.raises(ValueError, match="Got 1 labels for 2 graphs; pass one per graph"):
        plot_ablation_curve(graphs, labels=["a"])
    fig, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="Got 2 axes for 3 layer pairs; pass one Axes per pair"):
        plot_ablation_curve(graphs, axes=axes)
    for xlim in ((5, 1), (1, np.inf), (1,)):
        with pytest.raises(ValueError, match=r"xlim must be \(low, high\) with low < high, or "
                                             "None; got"):
            plot_ablation_curve(graphs, xlim=xlim)
    for zoom in (0, -1.0, np.nan):
        with pytest.raises(ValueError, match="zoom must be a positive number of tolerances or "
                                             "None; got"):
            plot_ablation_curve(graphs, zoom=zoom)
    plt.close("all")

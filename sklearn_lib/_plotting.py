"""A figure of the layered interaction graph, like Figure 3 of the LIB paper."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_interaction_graph"]


def plot_interaction_graph(
    graph,
    ax=None,
    *,
    max_features: int = 20,
    max_edge_width: float = 6.0,
    min_relative_edge: float = 1e-3,
    include_constant: bool = False,
    feature_labels: dict | None = None,
    title: str | None = None,
):
    """Draw the interaction graph: layers bottom to top, features left to right by importance.

    Edge widths are proportional to ``E^2`` (normalised per layer pair, as the paper's PCA
    figures are); nodes are coloured by community when communities are computed.

    Parameters
    ----------
    graph : InteractionGraph
        With edges.
    ax : matplotlib Axes, default=None
        Axes to draw into; a new figure is made when None.
    max_features : int, default=20
        Features drawn per layer (the first ones, which LIB orders by importance).
    max_edge_width : float, default=6.0
    min_relative_edge : float, default=1e-3
        Edges with ``E^2`` below this fraction of the pair's largest are not drawn.
    include_constant : bool, default=False
        Draw the constant feature.
    feature_labels : dict of (str, int) to str, default=None
        Text next to nodes, e.g. Fourier labels.
    title : str, default=None

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib

    if ax is None:
        import matplotlib.pyplot as plt

        width = min(16, 2 + 0.6 * max_features)
        _, ax = plt.subplots(figsize=(width, 1.8 * len(graph.layers) + 1))
    graph.require("edges", "plot_interaction_graph", "run IGEdgeScorer first.")
    first = 0 if include_constant else 1
    shown = [list(range(first, min(b.n_features, first + max_features))) for b in graph.bases]
    pos = {}
    for li, (layer, feats) in enumerate(zip(graph.layers, shown)):
        for k, i in enumerate(feats):
            pos[(li, i)] = (k - (len(feats) - 1) / 2.0, float(li))
    for p in range(len(graph.layers) - 1):
        E2 = np.asarray(graph.edges[p]) ** 2
        sub = E2[np.ix_(shown[p + 1], shown[p])]
        top = sub.max() if sub.size and sub.max() > 0 else 1.0
        for a, i in enumerate(shown[p + 1]):
            for b, j in enumerate(shown[p]):
                w = sub[a, b] / top
                if w < min_relative_edge:
                    continue
                (x0, y0), (x1, y1) = pos[(p, j)], pos[(p + 1, i)]
                ax.plot([x0, x1], [y0, y1], color="0.35", alpha=0.35 + 0.5 * w,
                        linewidth=max_edge_width * w, zorder=1, solid_capstyle="round")
    cmap = matplotlib.colormaps["tab10"]
    for li, feats in enumerate(shown):
        xs = [pos[(li, i)][0] for i in feats]
        if graph.communities is not None:
            comm = np.asarray(graph.communities[li])[feats]
            colors = ["0.8" if c < 0 else cmap(int(c) % 10) for c in comm]
        else:
            colors = ["tab:blue"] * len(feats)
        ax.scatter(xs, [li] * len(feats), s=90, c=colors, edgecolors="black", linewidths=0.6,
                   zorder=2)
        if feature_labels:
            for i, x in zip(feats, xs):
                text = feature_labels.get((graph.layers[li], i))
                if text:
                    ax.annotate(text, (x, li), xytext=(0, 9), textcoords="offset points",
                                ha="center", fontsize=6, rotation=45)
    ax.set_yticks(range(len(graph.layers)))
    ax.set_yticklabels(graph.layers)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{graph.basis.upper()} interaction graph", pad=60 if feature_labels else 6)
    return ax

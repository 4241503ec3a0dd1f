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


def plot_ablation_curve(
    graphs,
    labels=None,
    *,
    axes=None,
    show_stable: bool = True,
    zoom: float | None = None,
    xlim: tuple | None = None,
    title: str | None = None,
):
    """Score against edges kept, one panel per layer pair, several graphs on one axis.

    Draws every ``(k, score)`` the edge-ablation search probed (:attr:`AblationResult.probes`;
    a ``search="scan"`` gives the whole curve, a bisection its few points), the score with
    every edge kept (dashed), the tolerance band the search accepts (shaded), and
    ``n_edges_needed`` (solid vertical line, with its count in the legend). When the scan
    shows the score leaving the band again above ``n_edges_needed``, ``n_edges_needed_stable``
    is marked too (dotted). The x axis is symmetric-log, so ``k = 0`` and all edges both show.

    Parameters
    ----------
    graphs : InteractionGraph or sequence of InteractionGraph
        With ablation results, on the same layer pairs (e.g. LIB and PCA bases of one model).
    labels : sequence of str, default=None
        One per graph; defaults to the basis names (``"LIB"``, ``"PCA"``, ...).
    axes : array-like of matplotlib Axes, default=None
        One per layer pair; a new figure with one row of panels is made when None.
    show_stable : bool, default=True
        Mark ``n_edges_needed_stable`` where it differs from ``n_edges_needed``.
    zoom : float, default=None
        Show only scores within ``zoom`` tolerances of the base score (where the search
        decides); None shows the whole range.
    xlim : (float, float), default=None
        Show only these numbers of edges kept, on a linear axis (e.g. around
        ``n_edges_needed``, after a scan with ``scan_k``); None shows every ``k`` on a
        symmetric-log axis.
    title : str, default=None
        Figure title.

    Returns
    -------
    axes : ndarray of matplotlib Axes
        One per layer pair.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import (EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis,
    ...                          PCAWhitener, plot_ablation_curve)
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> _ = torch.manual_seed(0)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> X, X_test = np.random.default_rng(0).normal(size=(2, 200, 4))
    >>> y_test = mlp(torch.tensor(X_test, dtype=torch.float32)).argmax(1).numpy()
    >>> graphs = [
    ...     EdgeAblationSearch(metric="loss", search="scan").fit_transform(
    ...         IGEdgeScorer().fit_transform(cls(MLPAdapter(mlp)).fit_transform(X)),
    ...         X_eval=X_test, y_eval=y_test)
    ...     for cls in (LocalInteractionBasis, PCAWhitener)]
    >>> axes = plot_ablation_curve(graphs)
    >>> [ax.get_title() for ax in axes]
    ['input → 1', '1 → 2']
    """
    import matplotlib.pyplot as plt

    from sklearn_lib._graph import InteractionGraph

    if isinstance(graphs, InteractionGraph):
        graphs = [graphs]
    graphs = list(graphs)
    if not graphs:
        raise ValueError("plot_ablation_curve needs at least one InteractionGraph.")
    for n, g in enumerate(graphs):
        if not isinstance(g, InteractionGraph):
            raise TypeError(
                f"plot_ablation_curve takes InteractionGraphs; graphs[{n}] is {type(g).__name__}."
            )
        g.require("ablation", "plot_ablation_curve", "run EdgeAblationSearch first.")
    pairs = graphs[0].pairs
    for n, g in enumerate(graphs[1:], start=1):
        if g.pairs != pairs:
            raise ValueError(
                f"The graphs must share their layer pairs to share panels; graphs[0] has "
                f"{pairs} but graphs[{n}] has {g.pairs}."
            )
    if labels is None:
        labels = [g.basis.upper() for g in graphs]
    labels = [str(label) for label in labels]
    if len(labels) != len(graphs):
        raise ValueError(f"Got {len(labels)} labels for {len(graphs)} graphs; pass one per graph.")
    if xlim is not None and not (len(xlim) == 2 and np.all(np.isfinite(xlim))
                                 and xlim[0] < xlim[1]):
        raise ValueError(f"xlim must be (low, high) with low < high, or None; got {xlim!r}.")
    if zoom is not None and not (np.isfinite(zoom) and zoom > 0):
        raise ValueError(f"zoom must be a positive number of tolerances or None; got {zoom!r}.")
    if axes is None:
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.8 * len(pairs), 4.0), squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(np.asarray(axes, dtype=object)).ravel()
        if axes.size != len(pairs):
            raise ValueError(
                f"Got {axes.size} axes for {len(pairs)} layer pairs; pass one Axes per pair."
            )
        fig = axes[0].figure
    colors = [f"C{n % 10}" for n in range(len(graphs))]
    for p, ((a, b), ax) in enumerate(zip(pairs, axes)):
        metric = graphs[0].ablation[p].metric
        n_max = 1
        for g, label, color in zip(graphs, labels, colors):
            r = g.ablation[p]
            n_max = max(n_max, r.n_edges_total)
            k, score = np.array([q[0] for q in r.probes]), np.array([q[1] for q in r.probes])
            lo, hi = ((r.base_score - r.tolerance, r.base_score) if r.metric == "accuracy"
                      else (r.base_score, r.base_score + r.tolerance))
            ax.axhspan(lo, hi, color=color, alpha=0.15, linewidth=0)
            for edge in (lo, hi):
                ax.axhline(edge, color=color, linewidth=0.5, alpha=0.6)
            ax.axhline(r.base_score, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
            ax.plot(k, score, marker="o", markersize=3, linewidth=1.2, color=color,
                    label=f"{label}: {r.n_edges_needed} of {r.n_edges_total} needed "
                          f"({r.search}, {len(k)} probes)")
            ax.axvline(r.n_edges_needed, color=color, linewidth=1.3)
            ax.plot([r.n_edges_needed], [r.score_at_needed], marker="*", markersize=11,
                    color=color, markeredgecolor="black", markeredgewidth=0.5, zorder=3)
            if show_stable and r.n_edges_needed_stable != r.n_edges_needed:
                ax.axvline(r.n_edges_needed_stable, color=color, linestyle=":", linewidth=1.5,
                           label=f"{label}: stable from {r.n_edges_needed_stable}")
        if zoom is not None:
            base = graphs[0].ablation[p].base_score
            span = zoom * max(g.ablation[p].tolerance for g in graphs) or 1.0
            top = min(base + span / 4, 1 + span / 40) if metric == "accuracy" else base + span
            ax.set_ylim(base - span, top)
        if xlim is None:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(-0.2, n_max * 1.15)
        else:
            ax.set_xlim(*xlim)
        ax.set_xlabel("edges kept (largest first)")
        ax.set_ylabel("accuracy" if metric == "accuracy" else "cross-entropy loss (nats)")
        ax.set_title(f"{a} → {b}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best",
                  title="dashed: all edges; band: tolerance", title_fontsize=7)
    if title is not None:
        fig.suptitle(title)
    return np.asarray(axes, dtype=object)

"""A figure of the layered interaction graph, like Figure 3 of the LIB paper."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_interaction_graph"]


#: Communities coloured individually; smaller ones share the "other" grey. tab20's strong
#: shades, then its light ones, without its two greys (they would read as "other"), then two
#: dark tab20b shades: 20 colours, none repeated, none grey.
MAX_COMMUNITY_COLOURS = 20
_OTHER_COLOUR = "0.78"
_NO_COMMUNITY_COLOUR = "white"
_KEPT_COLOUR = "0.12"
_ABLATED_COLOUR = "0.55"
_LABEL_FONT_MAX = 8.5
_LABEL_FONT_MIN = 5.0
_NODE_RADIUS_IN = 0.075  # marker s=90 pt^2 has a radius of ~5.4 pt
_EDGE_BAND_IN = 1.25  # height of the band between two layers' label blocks, for new figures


def _community_palette() -> list:
    import matplotlib

    tab20, tab20b = matplotlib.colormaps["tab20"], matplotlib.colormaps["tab20b"]
    strong = [tab20(i) for i in range(0, 20, 2) if i != 14]
    light = [tab20(i) for i in range(1, 20, 2) if i != 15]
    return strong + light + [tab20b(0), tab20b(4)]


def _kept_mask(graph, p: int) -> np.ndarray | None:
    """Edges of pair ``p`` kept by the ablation search, as a boolean array shaped like the edges.

    Kept: the ``n_edges_needed`` largest candidate edges (non-constant source into non-constant
    target, in stable descending order of ``E``, the order the search ablates in) and every
    edge from the constant feature. None when the ablation search has not run.
    """
    return None if graph.ablation is None else graph.kept_mask(p)


def _wrap_label(text: str) -> str:
    """One term per line: ``"70% cos(7x+7y) + 30% cos(x)"`` becomes two lines."""
    return "\n".join(part.strip() for part in str(text).split(" + "))


def _text_width_pt(lines: list[str], size: float) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    tp, prop = TextToPath(), FontProperties(size=size)
    return max((tp.get_text_width_height_descent(line, prop, ismath=False)[0] for line in lines),
               default=0.0)


def _fit_lines(lines: list[str], size: float, width_pt: float) -> list[str]:
    """Shorten lines that are wider than ``width_pt`` with an ellipsis."""
    out = []
    for line in lines:
        while len(line) > 2 and _text_width_pt([line], size) > width_pt:
            line = line[:-2] + "\u2026"
        out.append(line)
    return out


def _layer_display_names(graph, layer_names) -> tuple[list[str], bool]:
    """Tick text per layer and whether the names are ``nn.Sequential`` indices."""
    names = []
    model = getattr(graph.adapter, "model", None)
    indices = all(str(n).isdigit() or n == "input" for n in graph.layers) and any(
        str(n).isdigit() for n in graph.layers)
    for layer in graph.layers:
        if layer_names is not None and layer in layer_names:
            names.append(str(layer_names[layer]))
        elif indices and str(layer).isdigit() and model is not None:
            try:
                module = model.get_submodule(str(layer))
                names.append(f"[{layer}] {type(module).__name__}")
            except (AttributeError, TypeError):
                names.append(f"[{layer}]")
        elif indices and str(layer).isdigit():
            names.append(f"[{layer}]")
        else:
            names.append(str(layer))
    return names, indices and (layer_names is None or not set(graph.layers) <= set(layer_names))


def plot_interaction_graph(
    graph,
    ax=None,
    *,
    max_features: int = 20,
    max_edge_width: float = 6.0,
    min_relative_edge: float = 1e-3,
    include_constant: bool = False,
    feature_labels: dict | None = None,
    layer_names: dict | None = None,
    max_communities: int = MAX_COMMUNITY_COLOURS,
    legend: bool = True,
    title: str | None = None,
):
    """Draw the interaction graph: layers bottom to top, features left to right by importance.

    Edge widths are proportional to ``E^2``, normalised per layer pair to the largest edge
    shown (as the paper's PCA figures are). After the ablation search, the edges it keeps are
    solid and dark and the ablated ones faint and dashed. Nodes are coloured by community when
    communities are computed: the ``max_communities`` largest among the nodes shown get their
    own colour, the rest share grey ("other"). Each layer's axis label says how many of its
    features are shown. Feature labels (e.g. Fourier labels) sit beside their nodes, one term
    per line, in a band that edges do not cross, so they never overlap edges or the title.

    Parameters
    ----------
    graph : InteractionGraph
        With edges.
    ax : matplotlib Axes, default=None
        Axes to draw into; a new figure sized to the features, labels and layers is made when
        None.
    max_features : int, default=20
        Features drawn per layer (the first ones, which LIB orders by importance).
    max_edge_width : float, default=6.0
        Line width in points of the largest edge of each pair.
    min_relative_edge : float, default=1e-3
        Edges with ``E^2`` below this fraction of the pair's largest shown are not drawn.
    include_constant : bool, default=False
        Draw the constant feature (feature 0) and its edges.
    feature_labels : dict of (str, int) to str, default=None
        Text beside nodes, keyed by ``(layer, feature)``, e.g. from
        :func:`sklearn_lib.tasks.fourier_labels`. Terms joined by ``" + "`` go on separate
        lines.
    layer_names : dict of str to str, default=None
        Display names of the layers; by default the adapter's names (``nn.Sequential``
        indices are shown as ``[3] ReLU`` and the axis says so).
    max_communities : int, default=20
        Communities coloured individually (the largest among the nodes shown).
    legend : bool, default=True
        Draw legends for node colour and edge width and style, below the axes.
    title : str, default=None

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import torch
    >>> from sklearn_lib import IGEdgeScorer, PCAWhitener, plot_interaction_graph
    >>> from sklearn_lib.adapters import MLPAdapter
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> X = torch.randn(100, 4).numpy()
    >>> graph = IGEdgeScorer().fit_transform(PCAWhitener(MLPAdapter(model)).fit_transform(X))
    >>> ax = plot_interaction_graph(graph, max_features=4)
    >>> [t.get_text().splitlines()[1] for t in ax.get_yticklabels()]
    ['showing 4 of 4 features', 'showing 4 of 6 features', 'showing 3 of 3 features']
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    graph.require("edges", "plot_interaction_graph", "run IGEdgeScorer first.")
    if not isinstance(max_features, (int, np.integer)) or max_features < 1:
        raise ValueError(f"max_features must be a positive int; got {max_features!r}.")
    if not isinstance(max_communities, (int, np.integer)) or max_communities < 0:
        raise ValueError(f"max_communities must be an int >= 0; got {max_communities!r}.")
    if feature_labels is not None and not isinstance(feature_labels, dict):
        raise TypeError("feature_labels must be a dict mapping (layer, feature) to text; got "
                        f"{type(feature_labels).__name__}.")
    n_layers = len(graph.layers)
    first = 0 if include_constant else 1
    shown = [list(range(first, min(b.n_features, first + max_features))) for b in graph.bases]
    width_nodes = max(1, max(len(f) for f in shown))

    # Labels: one term per line, one font size for all, as large as the spacing allows.
    raw = {}
    for li, (layer, feats) in enumerate(zip(graph.layers, shown)):
        for i in feats:
            text = (feature_labels or {}).get((layer, i))
            if text:
                raw[(li, i)] = _wrap_label(text).split("\n")
    max_lines = max((len(v) for v in raw.values()), default=0)
    width8 = _text_width_pt([line for v in raw.values() for line in v], 8.0) / 72.0
    gap_in = 2.6 * _NODE_RADIUS_IN
    spacing_target = max(0.6, width8 * _LABEL_FONT_MAX / 8.0 + gap_in) if raw else 0.6

    if ax is None:  # a figure sized in inches to the nodes, labels, title and legends
        import matplotlib.pyplot as plt

        block_target = (max_lines * 1.3 * _LABEL_FONT_MAX / 72.0 + 0.1) if raw else 0.0
        ax_w = spacing_target * (width_nodes + (0.5 if raw else 0.0))
        ax_h = n_layers * block_target + (n_layers - 1) * _EDGE_BAND_IN + 0.5
        left, right = 2.4, 0.2
        bottom = 1.7 if legend else 0.3
        top = 0.5 + (0.85 if feature_labels else 0.0)  # the title's padding
        fig_w, fig_h = left + ax_w + right, bottom + ax_h + top
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes((left / fig_w, bottom / fig_h, ax_w / fig_w, ax_h / fig_h))
    fig = ax.figure
    bbox = ax.get_position()
    ax_w = bbox.width * fig.get_figwidth()
    ax_h = bbox.height * fig.get_figheight()

    # x in node spacings; y in inches of the axes (so label heights are exact).
    x_lo, x_hi = -(width_nodes - 1) / 2.0 - 0.5, (width_nodes - 1) / 2.0 + (1.0 if raw else 0.5)
    spacing_in = ax_w / (x_hi - x_lo)
    font = _LABEL_FONT_MAX
    if raw:
        font = min(_LABEL_FONT_MAX, max(_LABEL_FONT_MIN, 8.0 * (spacing_in - gap_in) / width8))
    line_in = 1.3 * font / 72.0
    block = (max_lines * line_in + 0.1) if raw else 0.0
    margin = 0.25
    band = (ax_h - 2 * margin - n_layers * block) / max(1, n_layers - 1)
    if raw and band < 0.3:  # labels taller than the axes allow: the smallest type
        font = _LABEL_FONT_MIN
        line_in = 1.3 * font / 72.0
        block = max_lines * line_in + 0.1
        band = max(0.2, (ax_h - 2 * margin - n_layers * block) / max(1, n_layers - 1))
    ys = [margin + block / 2.0 + li * (block + band) for li in range(n_layers)]
    pos = {}
    for li, feats in enumerate(shown):
        for k, i in enumerate(feats):
            pos[(li, i)] = (k - (len(feats) - 1) / 2.0, ys[li])

    # Edges: between the top of one layer's label block and the bottom of the next one's.
    n_drawn = {True: 0, False: 0, None: 0}
    for p in range(n_layers - 1):
        E2 = np.asarray(graph.edges[p], dtype=np.float64) ** 2
        kept = _kept_mask(graph, p)
        sub = E2[np.ix_(shown[p + 1], shown[p])]
        top = sub.max() if sub.size and sub.max() > 0 else 1.0
        segments = []
        for a, i in enumerate(shown[p + 1]):
            for b, j in enumerate(shown[p]):
                w = sub[a, b] / top
                if w < min_relative_edge:
                    continue
                is_kept = None if kept is None else bool(kept[i, j])
                segments.append((w, is_kept, pos[(p, j)][0], pos[(p + 1, i)][0]))
        # Ablated first, then kept on top; thin before thick.
        segments.sort(key=lambda s: (s[1] is True, s[0]))
        y0, y1 = ys[p] + block / 2.0, ys[p + 1] - block / 2.0
        for w, is_kept, x0, x1 in segments:
            n_drawn[is_kept] += 1
            if is_kept is False:
                ax.plot([x0, x1], [y0, y1], color=_ABLATED_COLOUR, alpha=0.55,
                        linewidth=max(0.6, max_edge_width * w), linestyle=(0, (3, 2)), zorder=1)
            else:
                ax.plot([x0, x1], [y0, y1], color=_KEPT_COLOUR if is_kept else "0.35",
                        alpha=0.85 if is_kept else 0.35 + 0.5 * w,
                        linewidth=max(0.4, max_edge_width * w), zorder=1.5,
                        solid_capstyle="round")

    # Node colours: the largest communities among the nodes shown, then "other".
    palette = _community_palette()
    colour_of: dict[int, object] = {}
    n_other = 0
    sizes: dict[int, int] = {}
    if graph.communities is not None:
        for li, feats in enumerate(shown):
            for c in np.asarray(graph.communities[li])[feats]:
                if c >= 0:
                    sizes[int(c)] = sizes.get(int(c), 0) + 1
        ranked = sorted(sizes, key=lambda c: (-sizes[c], c))
        n_coloured = min(max_communities, len(palette))
        colour_of = {c: palette[r] for r, c in enumerate(ranked[:n_coloured])}
        n_other = len(ranked) - len(colour_of)
    for li, feats in enumerate(shown):
        xs = [pos[(li, i)][0] for i in feats]
        if graph.communities is not None:
            comm = np.asarray(graph.communities[li])[feats]
            colors = [_NO_COMMUNITY_COLOUR if c < 0 else colour_of.get(int(c), _OTHER_COLOUR)
                      for c in comm]
        else:
            colors = ["tab:blue"] * len(feats)
        ax.scatter(xs, [ys[li]] * len(feats), s=90, c=colors, edgecolors="black",
                   linewidths=0.6, zorder=3)

    # Labels beside their nodes, in the block edges do not enter.
    if raw:
        avail_pt = 72.0 * (spacing_in - gap_in)
        dx = 1.3 * _NODE_RADIUS_IN / spacing_in
        for (li, i), lines in raw.items():
            x, y = pos[(li, i)]
            # The stem joins the node to where its edges start and end.
            low = y - block / 2.0 if li > 0 else y
            high = y + block / 2.0 if li < n_layers - 1 else y
            ax.plot([x, x], [low, high], color="0.3", linewidth=0.8, zorder=2)
            ax.text(x + dx, y, "\n".join(_fit_lines(lines, font, avail_pt)), ha="left",
                    va="center", fontsize=font, linespacing=1.15, zorder=4, clip_on=False)

    names, indices = _layer_display_names(graph, layer_names)
    ticks = []
    for li, (name, feats, b) in enumerate(zip(names, shown, graph.bases)):
        total = b.n_features - (0 if include_constant else 1)
        ticks.append(f"{name}\nshowing {len(feats)} of {total} features")
    ax.set_yticks(ys)
    ax.set_yticklabels(ticks, fontsize=9)
    ax.set_ylabel("node layer" + (" ([i] = nn.Sequential index)" if indices else ""))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(0.0, ax_h)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)

    if legend:
        edge_handles = []
        if graph.ablation is not None:
            edge_handles += [
                Line2D([], [], color=_KEPT_COLOUR, linewidth=2.5,
                       label=f"kept by the ablation search ({n_drawn[True]} drawn)"),
                Line2D([], [], color=_ABLATED_COLOUR, linewidth=2.5, linestyle=(0, (3, 2)),
                       label=f"ablated ({n_drawn[False]} drawn)"),
            ]
        for w in (1.0, 0.3, 0.05):
            edge_handles.append(Line2D([], [], color="0.35", linewidth=max(0.4, max_edge_width * w),
                                       label=f"E\u00b2 = {w:.0%} of the pair's largest"))
        leg = ax.legend(handles=edge_handles, loc="upper right", bbox_to_anchor=(1.0, -0.01),
                        fontsize=8, title_fontsize=8,
                        title=(f"edge width \u221d E\u00b2 (edges below {min_relative_edge:.1%}\n"
                               f"of the pair's largest E\u00b2 are not drawn)"),
                        frameon=False)
        if graph.communities is not None:
            ax.add_artist(leg)
            leg.set_clip_on(False)  # add_artist clips to the axes, which hides it from "tight"
            handles = [Patch(facecolor=colour_of[c], edgecolor="black", linewidth=0.5,
                             label=f"{c} ({sizes[c]})") for c in colour_of]
            if n_other:
                handles.append(Patch(facecolor=_OTHER_COLOUR, edgecolor="black", linewidth=0.5,
                                     label=f"other: {n_other} smaller"))
            n_total = len({int(c) for cs in graph.communities for c in np.asarray(cs) if c >= 0})
            # Columns of ~1.1 inch beside the edge legend (~3.3 inches wide).
            ncol = max(1, min(5, int((ax_w - 3.5) // 1.1)))
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.01),
                      fontsize=8, ncol=ncol, frameon=False, title_fontsize=8,
                      title=(f"node colour = Leiden community (size among nodes shown)\n"
                             f"{len(sizes)} of {n_total} communities appear here"))
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{graph.basis.upper()} interaction graph", pad=6)
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

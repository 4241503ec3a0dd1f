"""The ``sklearn-lib demo``: LIB against the PCA baseline on a digits MLP, end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

__all__ = ["run_demo", "comparison_table"]


def comparison_table(graphs: dict) -> str:
    """Side-by-side edges needed per layer pair: ``needed / candidates`` for each basis."""
    names = list(graphs)
    first = graphs[names[0]]
    rows = [("layer pair", *[f"{n} edges needed" for n in names], *[f"{n} dims" for n in names])]
    for p, (a, b) in enumerate(first.pairs):
        needed = [
            f"{g.ablation[p].n_edges_needed} / {g.ablation[p].n_edges_total}" for g in graphs.values()
        ]
        dims = [
            f"{g.bases[p].n_components} -> {g.bases[p + 1].n_components}" for g in graphs.values()
        ]
        rows.append((f"{a} -> {b}", *needed, *dims))
    totals = [str(sum(r.n_edges_needed for r in g.ablation)) for g in graphs.values()]
    rows.append(("total", *totals, *[""] * len(names)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "sklearn-lib-demo", *, seed: int = 0, verbose: bool = True) -> dict:
    """Train a digits MLP, fit LIB and PCA, score, ablate, find modules, print and plot.

    The set-up is :func:`sklearn_lib.tasks.digits_mlp_preset`. Returns a dict with the
    preset, the graphs, the table, the test accuracy and the figure path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_lib._plotting import plot_interaction_graph
    from sklearn_lib.tasks import digits_mlp_preset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    preset = digits_mlp_preset(seed=seed)
    acc = preset.info["test_accuracy"]
    print(f"Trained a ReLU MLP 64-32-32-10 on digits in {time.perf_counter() - t0:.1f} s: "
          f"test accuracy {acc:.3f}")
    graphs, timings = {}, {}
    for name, basis in [("LIB", "lib"), ("PCA", "pca")]:
        if verbose:
            print(f"{name}: basis, edges, ablation search, communities", file=sys.stderr)
        t = time.perf_counter()
        graphs[name] = preset.run(basis, verbose=verbose)
        timings[name] = time.perf_counter() - t
    table = comparison_table(graphs)
    print()
    tol = graphs["LIB"].ablation[0].tolerance
    print(f"Edges needed to keep test accuracy within {tol:g} (fewer = sparser interactions):")
    print(table)
    print()
    for name, g in graphs.items():
        print(f"{name}: modularity Q = {g.modularity:.3f}, "
              f"{len({int(c) for cs in g.communities for c in cs if c >= 0})} communities, "
              f"pipeline {timings[name]:.1f} s")
    fig, axes = plt.subplots(1, 2, figsize=(22, 9))
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.2, wspace=0.3)  # room for the labels
    for ax, (name, g) in zip(axes, graphs.items()):
        plot_interaction_graph(g, ax=ax, max_features=16,
                               title=f"{name} interaction graph (digits MLP)")
    figure = out_dir / "interaction_graph.png"
    fig.savefig(figure, dpi=110, bbox_inches="tight")
    plt.close(fig)
    for name, g in graphs.items():
        g.save(out_dir / f"graph_{name.lower()}.npz")
    print(f"\nWrote {figure} and the graphs to {out_dir}/ "
          f"(total {time.perf_counter() - t0:.1f} s)")
    return {"preset": preset, "graphs": graphs, "table": table, "test_accuracy": acc,
            "figure": figure}

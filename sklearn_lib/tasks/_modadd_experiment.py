"""The paper's modular-addition experiment (section 3.1) on one checkpoint, end to end."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any


__all__ = ["MODADD_NODE_LAYERS", "modadd_adapter", "run_modadd_experiment"]

#: resid_pre (3 positions), then resid_mid, resid_post and the logits at the last position.
MODADD_NODE_LAYERS = (
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    "logits",
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def modadd_adapter(model: Any):
    """The sequential-transformer view of a one-layer modular-addition model."""
    from sklearn_lib.adapters import HookedTransformerAdapter

    return HookedTransformerAdapter(
        model, node_layers=MODADD_NODE_LAYERS, last_position_from="blocks.0.hook_resid_mid"
    )


def run_modadd_experiment(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    *,
    seed: int = 0,
    basis: str = "lib",
    frac_train: float | None = None,
    split_seed: int | None = None,
    tolerance: float = 1e-3,
    rtol: float | None = None,
    atol: float | None = None,
    ablation_dtype: str = "float64",
    batch_size: int = 256,
    resolution: float = 1.0,
    random_state: int = 0,
    verbose: bool = False,
    return_graph: bool = False,
    figure: str | Path | None = None,
    n_labelled: int = 10,
) -> dict:
    """Run :func:`~sklearn_lib.tasks.modadd_preset`'s experiment step by step, timing each phase.

    Fits a basis on the train split (float64), scores edges (alpha = 1), ablates on the test
    split (accuracy within ``tolerance``), runs Leiden; returns the figures as a JSON-ready
    dict. With no checkpoint, the shipped checkpoint ``seed`` is used. The split defaults to
    the one in the checkpoint's config. ``rtol`` and ``atol`` default to None: the basis
    estimators' own defaults (``rtol=0`` with the reference's absolute ``atol`` reproduces
    the reference implementation's cut; see ``tests/test_reference_modadd.py``).
    """
    import torch

    from sklearn_lib.tasks._presets import _BASES, modadd_preset

    if basis not in _BASES:
        raise ValueError(f"basis must be one of {list(_BASES)}; got {basis!r}.")
    def say(message: str) -> None:
        if verbose:
            print(f"[modadd] {message}", file=sys.stderr, flush=True)

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    say("loading the checkpoint and the split")
    preset = modadd_preset(
        seed, checkpoint=checkpoint, config=config, frac_train=frac_train, split_seed=split_seed,
        batch_size=batch_size, tolerance=tolerance, ablation_dtype=ablation_dtype,
        random_state=random_state,
    )
    adapter, info = preset.adapter, preset.info
    with torch.no_grad():
        first = MODADD_NODE_LAYERS[0]
        cpu = torch.device("cpu")
        acts = adapter.activations(preset.X_test, [first], dtype=torch.float64, device=cpu)
        logits = adapter.forward_from(first, dtype=torch.float64, device=cpu)(acts[first])
    model_test_accuracy = float((logits.argmax(-1).numpy() == preset.y_test).mean())
    times["load"] = time.perf_counter() - t0

    truncation = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    estimator = preset.make_basis(basis, verbose=verbose, **truncation)
    scorer, search, leiden = preset.make_steps(basis, verbose=verbose)[1:]
    leiden.set_params(resolution=resolution)
    say(f"{preset.name}: {len(preset.X_train)} train / {len(preset.X_test)} test rows, "
        f"model test accuracy {model_test_accuracy:.4f}")
    say(f"fitting the {basis.upper()} basis on the training rows")
    t = time.perf_counter()
    graph = estimator.fit_transform(preset.X_train)
    times["basis"] = time.perf_counter() - t
    say("scoring integrated-gradient edges")
    t = time.perf_counter()
    graph = scorer.fit_transform(graph)
    times["edges"] = time.perf_counter() - t
    say("searching the edges needed per layer pair on the test rows")
    t = time.perf_counter()
    graph = search.fit_transform(graph, X_eval=preset.X_test, y_eval=preset.y_test)
    times["ablation"] = time.perf_counter() - t
    say("Leiden communities")
    t = time.perf_counter()
    graph = leiden.fit_transform(graph)
    times["modularity"] = time.perf_counter() - t
    times["build"] = times["basis"] + times["edges"]
    times["total"] = time.perf_counter() - t0
    peak = _peak_rss_mb()

    # Fourier labels (appendix F) and monosemanticity (section 3.1.2) of the first features.
    from sklearn_lib.tasks._fourier import fourier_labels

    say("Fourier labels of the first features")
    modulus = info["modulus"]
    n_shown = 12  # features drawn per layer: 12 labelled nodes fit a 20-inch-wide figure
    labels, mono = fourier_labels(graph, modulus, max_features=max(n_labelled, n_shown))
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sklearn_lib._plotting import plot_interaction_graph

        # The function sizes the figure to the labels (readable type, no overlaps).
        ax = plot_interaction_graph(
            graph, max_features=n_shown, feature_labels=labels,
            title=f"{basis.upper()} interaction graph, {preset.name}",
        )
        ax.figure.savefig(figure, dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
    params = estimator.get_params()

    pairs = []
    for p, r in enumerate(graph.ablation):
        pairs.append({
            "layer_in": r.layer_in,
            "layer_out": r.layer_out,
            "dims_in": graph.bases[p].n_components,
            "dims_out": graph.bases[p + 1].n_components,
            "n_edges_total": r.n_edges_total,
            "n_edges_nonzero": r.n_edges_nonzero,
            "n_edges_needed": r.n_edges_needed,
            "epsilon": r.epsilon,
            "base_accuracy": r.base_score,
            "accuracy_at_needed": r.score_at_needed,
            "accuracy_at_one_fewer": r.score_at_one_fewer,
            "n_probes": r.n_probes,
        })
    result = {
        "checkpoint": info["checkpoint"],
        "basis": basis,
        "modulus": modulus,
        "frac_train": info["frac_train"],
        "split_seed": info["split_seed"],
        "n_train": int(len(preset.X_train)),
        "n_test": int(len(preset.X_test)),
        "model_test_accuracy": model_test_accuracy,
        "tolerance": tolerance,
        "rtol": params["rtol"],
        "atol": params["atol"],
        "pairs": pairs,
        "modularity": graph.modularity,
        "n_communities": leiden.n_communities_,
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "peak_rss_mb": round(peak, 1),
        "monosemanticity": {layer: [round(v, 4) for v in vals[:n_labelled]]
                            for layer, vals in mono.items()},
        "fourier_labels": {layer: [labels.get((layer, i), "") for i in range(1, n_labelled + 1)]
                           for layer in graph.layers},
    }
    if return_graph:
        result["graph"] = graph
    return result

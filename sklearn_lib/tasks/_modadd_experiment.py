"""The paper's modular-addition experiment (section 3.1) on one checkpoint, end to end."""

from __future__ import annotations

import json
import resource
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
    basis: str = "lib",
    frac_train: float | None = None,
    split_seed: int | None = None,
    tolerance: float = 1e-3,
    rtol: float = 1e-13,
    atol: float = 1e-15,
    ablation_dtype: str = "float64",
    batch_size: int = 256,
    resolution: float = 1.0,
    random_state: int = 0,
    verbose: bool = False,
    return_graph: bool = False,
    figure: str | Path | None = None,
    n_labelled: int = 10,
) -> dict:
    """Fit a basis on the train split (float64), score edges (alpha = 1), ablate on the test
    split (accuracy within ``tolerance``), run Leiden; return the figures as a JSON-ready dict.

    With no checkpoint, the shipped seed-0 model is used. The split defaults to the one in the
    checkpoint's config (``dataset.frac_train`` and ``dataset.seed``). ``rtol=0, atol=1e-15``
    reproduces the reference implementation's truncation (an absolute cut).
    """
    import torch

    from sklearn_lib import (
        EdgeAblationSearch,
        GlobalInteractionBasis,
        IGEdgeScorer,
        LeidenModularity,
        LocalInteractionBasis,
        PCAWhitener,
    )
    from sklearn_lib.adapters._transformer_lens import load_hooked_transformer
    from sklearn_lib.tasks._modular_addition import (
        load_modular_addition,
        shipped_modadd_checkpoint,
    )

    if basis not in ("lib", "gib", "pca"):
        raise ValueError(f"basis must be 'lib', 'gib' or 'pca'; got {basis!r}.")
    if checkpoint is None:
        checkpoint, default_config = shipped_modadd_checkpoint(0)
        config = config or default_config
    if config is None:
        guess = Path(checkpoint).with_name("config.json")
        if not guess.is_file():
            raise ValueError(
                f"No config given and none next to the checkpoint ({guess}); pass --config."
            )
        config = guess
    cfg = json.loads(Path(config).read_text())
    dataset = cfg.get("dataset", {})
    modulus = int(dataset.get("modulus", cfg.get("model", cfg).get("d_vocab", 114) - 1))
    frac = float(dataset.get("frac_train", 0.3)) if frac_train is None else frac_train
    seed = int(dataset.get("seed", 0)) if split_seed is None else split_seed

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_hooked_transformer(checkpoint, cfg)
    adapter = modadd_adapter(model)
    data = load_modular_addition(modulus, frac, seed)
    with torch.no_grad():
        logits = adapter.forward_from(MODADD_NODE_LAYERS[0], dtype=torch.float64,
                                      device=torch.device("cpu"))(
            adapter.activations(data.X_test, [MODADD_NODE_LAYERS[0]], dtype=torch.float64,
                                device=torch.device("cpu"))[MODADD_NODE_LAYERS[0]])
    model_test_accuracy = float((logits.argmax(-1).numpy() == data.y_test).mean())
    times["load"] = time.perf_counter() - t0

    common = dict(rotate_final=False, rtol=rtol, atol=atol, batch_size=batch_size,
                  dtype="float64", verbose=verbose)
    if basis == "pca":
        estimator = PCAWhitener(adapter, **common)
    else:
        cls = LocalInteractionBasis if basis == "lib" else GlobalInteractionBasis
        estimator = cls(adapter, random_state=random_state, **common)
    t = time.perf_counter()
    graph = estimator.fit_transform(data.X_train)
    times["basis"] = time.perf_counter() - t
    t = time.perf_counter()
    graph = IGEdgeScorer(batch_size=batch_size, verbose=verbose).fit_transform(graph)
    times["edges"] = time.perf_counter() - t
    t = time.perf_counter()
    search = EdgeAblationSearch(metric="accuracy", tolerance=tolerance, dtype=ablation_dtype,
                                verbose=verbose)
    graph = search.fit_transform(graph, X_eval=data.X_test, y_eval=data.y_test)
    times["ablation"] = time.perf_counter() - t
    t = time.perf_counter()
    leiden = LeidenModularity(resolution=resolution, random_state=random_state)
    graph = leiden.fit_transform(graph)
    times["modularity"] = time.perf_counter() - t
    times["build"] = times["basis"] + times["edges"]
    times["total"] = time.perf_counter() - t0
    peak = _peak_rss_mb()

    # Fourier labels (appendix F) and monosemanticity (section 3.1.2) of the first features.
    from sklearn_lib.tasks._fourier import feature_labels

    labels, mono = feature_labels(graph, modulus, max_features=max(n_labelled, 16))
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(16, 8))
        graph.plot(ax=ax, max_features=16, feature_labels=labels,
                   title=f"{basis.upper()} interaction graph, modular addition")
        fig.tight_layout()
        fig.savefig(figure, dpi=110)
        plt.close(fig)

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
        "checkpoint": str(checkpoint),
        "basis": basis,
        "modulus": modulus,
        "frac_train": frac,
        "split_seed": seed,
        "n_train": int(len(data.X_train)),
        "n_test": int(len(data.X_test)),
        "model_test_accuracy": model_test_accuracy,
        "tolerance": tolerance,
        "rtol": rtol,
        "atol": atol,
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

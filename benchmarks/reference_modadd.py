"""Compare our pipeline with the paper's reference implementation on its seed-0 checkpoint.

Reads ../shared/reference/modadd-seed0 (beside the repository). Runs LIB and PCA with the
reference's truncation (absolute 1e-15 cut: rtol=0, atol=1e-15) and with our default, and
reports the edges needed against the reference's, and the largest difference between our
edges and the reference arrays on the directions both keep (as a fraction of the largest
edge; constant output rows excluded, directions at rounding level excluded, as in
tests/test_reference_modadd.py). Writes benchmarks/results/reference_modadd.json and a section
of docs/results.md.

Usage: python benchmarks/reference_modadd.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _doc import write_section

HERE = Path(__file__).resolve().parent
REF = HERE.parent.parent / "shared" / "reference" / "modadd-seed0"
NAMES = ["ln1.0", "ln2.0", "unembed", "output"]


def determined(basis, rtol=1e-12) -> int:
    ev = basis.eigenvalues
    return basis.n_fixed + int((ev > rtol * ev.max()).sum()) if ev.size else basis.n_features


def main() -> None:
    from sklearn_lib.tasks._modadd_experiment import run_modadd_experiment

    reference = {(r["basis"], r["layer"]): r
                 for r in json.loads((REF / "edge_ablation.json").read_text())}
    out = []
    for basis in ("lib", "pca"):
        for label, rtol in (("reference truncation", 0.0), ("our default", 1e-13)):
            r = run_modadd_experiment(REF / "model_state_dict.pt", REF / "config.json",
                                      basis=basis, rtol=rtol, atol=1e-15, return_graph=True)
            graph = r.pop("graph")
            ref = np.load(REF / f"reference_graph_{basis}.npz")
            for p, pair in enumerate(r["pairs"]):
                E_ref = np.sqrt(ref[f"E_hat__{NAMES[p]}__{NAMES[p + 1]}"])
                E = graph.edges[p][1:]
                if p < 2:
                    E_ref = E_ref[1:]
                m = min(E.shape[0], E_ref.shape[0], determined(graph.bases[p + 1]) - 1)
                n = min(E.shape[1], E_ref.shape[1], determined(graph.bases[p]))
                rel = float(np.abs(E[:m, :n] - E_ref[:m, :n]).max() / E_ref.max())
                theirs = reference[(basis, NAMES[p])]
                out.append({
                    "basis": basis, "truncation": label, "pair": f"{NAMES[p]} -> {NAMES[p + 1]}",
                    "n_edges_needed": pair["n_edges_needed"],
                    "reference_n_edges_needed": theirs["n_edges_required"],
                    "accuracy_at_needed": pair["accuracy_at_needed"],
                    "reference_accuracy_at_needed": theirs["acc_at_required"],
                    "dims_in": pair["dims_in"], "dims_out": pair["dims_out"],
                    "reference_E_shape": theirs["E_shape"],
                    "max_edge_difference_over_largest": rel, "compared_block": [m, n],
                })
                print(json.dumps(out[-1]), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "reference_modadd.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["## Against the reference implementation (paper's seed 0)", "",
             "`python benchmarks/reference_modadd.py` (`benchmarks/results/reference_modadd.json`;",
             "the same checks run in `tests/test_reference_modadd.py -m slow`). Edge difference:",
             "largest |ours - reference| over the directions both keep, divided by the largest",
             "edge.", "",
             "| basis | truncation | layer pair | edges needed (reference) | accuracy at needed (reference) | kept dims in -> out | edge difference |",
             "|---|---|---|---|---|---|---|"]
    for o in out:
        lines.append(f"| {o['basis'].upper()} | {o['truncation']} | {o['pair']} | "
                     f"{o['n_edges_needed']} ({o['reference_n_edges_needed']}) | "
                     f"{o['accuracy_at_needed']:.6f} ({o['reference_accuracy_at_needed']:.6f}) | "
                     f"{o['dims_in']} -> {o['dims_out']} | {o['max_edge_difference_over_largest']:.1e} |")
    write_section("reference", "\n".join(lines))


if __name__ == "__main__":
    main()

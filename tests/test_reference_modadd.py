"""Our pipeline against the paper's reference implementation on its seed-0 checkpoint.

Reads ../shared/reference/modadd-seed0 (beside the repository) and skips when it is absent.
The reference truncates eigenvalues with an absolute 1e-15 cut, so this check uses
``rtol=0, atol=1e-15`` to reproduce its kept directions. Conventions of the reference arrays
(its README): row vectors with the constant last; ``E_hat`` holds mean squared attributions
with the constant node at index 0; the constant *output* feature is rescaled by its Lambda
there, while ours stays 1, so constant output rows are not compared; the logits layer has no
constant row there.
"""

from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "modadd-seed0"
NAMES = ["ln1.0", "ln2.0", "unembed", "output"]
PAPER_NEEDED = {"lib": [133, 82, 633], "pca": [167, 114, 682]}
# The reference's accuracy at its answer (edge_ablation.json), per basis and pair.
PAPER_ACC_AT_NEEDED = {"lib": [0.9987694372972368, 0.998657567960622, 0.9987694372972368],
                       "pca": [0.998657567960622, 0.9988813066338517, 0.9995525226535407]}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REF.is_dir(), reason="../shared/reference/modadd-seed0 is absent"),
]


@pytest.fixture(scope="module", params=["lib", "pca"])
def run(request):
    from sklearn_lib.tasks._modadd_experiment import run_modadd_experiment

    result = run_modadd_experiment(REF / "model_state_dict.pt", REF / "config.json",
                                   basis=request.param, rtol=0.0, atol=1e-15, return_graph=True)
    return request.param, result


def test_edges_needed_match_the_reference(run):
    basis, result = run
    needed = [p["n_edges_needed"] for p in result["pairs"]]
    assert result["n_train"] == 3830 and result["n_test"] == 8939
    assert abs(result["model_test_accuracy"] - 0.9995525226535407) < 1e-12
    for p, (ours, theirs) in enumerate(zip(needed, PAPER_NEEDED[basis])):
        if (basis, p) == ("lib", 1):
            # LIB across the MLP: 73 here against the reference's 82, with the same edges (to
            # 2e-8) in the same order. Our accuracy keeping 73 edges equals the reference's
            # keeping 82 (both 12 errors), so the difference lies in the reference's ablation
            # forward pass, not in the basis or the edges. Pin what we reproduce.
            assert ours <= theirs
            assert result["pairs"][p]["accuracy_at_needed"] == pytest.approx(
                PAPER_ACC_AT_NEEDED[basis][p], abs=1e-12)
            continue
        assert abs(ours - theirs) <= 3, (needed, PAPER_NEEDED[basis])


def _determined(basis, rtol=1e-12):
    """Features whose eigenvalue is not at rounding level (their direction is well defined)."""
    ev = basis.eigenvalues
    return basis.n_fixed + int((ev > rtol * ev.max()).sum()) if ev.size else basis.n_features


def test_edges_equal_the_reference_arrays(run):
    basis, result = run
    graph = result["graph"]
    ref = np.load(REF / f"reference_graph_{basis}.npz")
    for p in range(3):
        E_ref = np.sqrt(ref[f"E_hat__{NAMES[p]}__{NAMES[p + 1]}"])
        E = graph.edges[p][1:]  # drop our constant output row
        if p < 2:
            E_ref = E_ref[1:]  # and the reference's (rescaled by its Lambda)
        # Directions both keep, less those whose eigenvalue sits at rounding level (below
        # 1e-12 of the largest): those are fixed by round-off in any implementation.
        m = min(E.shape[0], E_ref.shape[0], _determined(graph.bases[p + 1]) - 1)
        n = min(E.shape[1], E_ref.shape[1], _determined(graph.bases[p]))
        assert m >= 16 and n >= 16  # at least the directions that carry the computation
        diff = np.abs(E[:m, :n] - E_ref[:m, :n]).max()
        # LIB across attention differs by up to 2.8e-5 of the largest edge on the directions
        # that matter (1e-4 of an entry, varying by input column). Its resid_pre basis is the
        # one basis here that differs from the reference's beyond round-off; the likely cause is
        # the reference's Jacobian Gram matrix including the constant coordinate, which
        # DESIGN.md excludes (j, j' >= 1). Every other pair agrees to 2e-7.
        tol = 5e-5 if (basis, p) == ("lib", 0) else 1e-5
        assert diff <= tol * E_ref.max(), (basis, p, diff / E_ref.max())

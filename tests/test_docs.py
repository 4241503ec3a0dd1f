"""The documentation matches the code: its examples run, and what docs/math.md states holds.

Fenced ``python`` blocks of README.md and docs/guide.md run in order, one namespace per file.
A block preceded by ``<!-- slow -->`` runs only in the slow suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(<!-- slow -->\s*\n)?```python\n(.*?)```", re.S)


def python_blocks(path: Path, *, slow: bool = False) -> list[str]:
    """The fenced python blocks of a markdown file (the slow ones only with ``slow``)."""
    return [code for marker, code in _BLOCK.findall(path.read_text()) if slow or not marker]


def _run(blocks: list[str], where: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(where)
    try:
        for code in blocks:
            exec(compile(code, "<doc block>", "exec"), namespace)
    finally:
        os.chdir(cwd)
        import matplotlib.pyplot as plt

        plt.close("all")
    return namespace


def test_the_docs_have_python_examples():
    assert len(python_blocks(ROOT / "README.md")) == 2
    assert len(python_blocks(ROOT / "README.md", slow=True)) == 3
    assert len(python_blocks(ROOT / "docs" / "guide.md")) == 4


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """The README's quickstart and probe, run once with ConvergenceWarning as an error."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    where = tmp_path_factory.mktemp("readme")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ns = _run(python_blocks(ROOT / "README.md"), where)
    ns["__where__"] = where
    return ns


def test_readme_quickstart_saves_the_lib_graph(readme):
    graphs, lib = readme["graphs"], readme["lib"]
    assert set(graphs) == {"LIB", "PCA"}
    assert lib.basis == graphs["LIB"].basis == "lib"  # the comment says the LIB graph is saved
    assert [r.n_edges_needed for r in lib.ablation] == \
        [r.n_edges_needed for r in graphs["LIB"].ablation]
    assert (readme["__where__"] / "graph_lib.npz").is_file()
    assert readme["G"].number_of_nodes() > 0


def test_readme_probe_converges_and_predicts(readme):
    assert readme["probe"].score(readme["X_test"], readme["y_test"]) > 0.8


def test_readme_probe_needs_the_scaler(readme):
    """The README's reason for StandardScaler: the features' spreads differ by orders of
    magnitude, and without scaling the probe stops before it converges."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from sklearn_lib import LayerFeatures

    probe = readme["probe"]
    F = LayerFeatures("3").fit_transform(probe.steps[0][1].transform(readme["X_train"]))
    spread = F.std(axis=0)
    assert spread.max() / spread.min() > 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        LogisticRegression().fit(F, readme["y_train"])
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


@pytest.mark.slow
def test_readme_examples_under_python_W_error(tmp_path):
    """Literally ``python -W error::sklearn.exceptions.ConvergenceWarning`` on the README."""
    code = "\n".join(python_blocks(ROOT / "README.md"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-W", "error::sklearn.exceptions.ConvergenceWarning", "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "probe accuracy on layer 3" in out.stdout


def test_guide_examples_run(tmp_path):
    ns = _run(python_blocks(ROOT / "docs" / "guide.md"), tmp_path)
    assert ns["graph"].ablation is not None
    assert [r.n_edges_needed for r in ns["search"].results_] == \
        [r.n_edges_needed for r in ns["graph"].ablation]
    ticks = [t.get_text() for t in ns["ax"].get_yticklabels()]
    assert ticks[1].startswith("hidden")
    # the transformer example: completeness errors on the graph, large only on the divisions
    errors, divides = np.array(ns["lm_graph"].completeness_errors), np.array(ns["divides"])
    assert divides.any() and np.all(errors[divides] > 0.05) and np.all(errors[~divides] < 1e-3)


@pytest.mark.slow
def test_readme_modadd_example_runs(tmp_path):
    ns = _run(python_blocks(ROOT / "README.md", slow=True)[2:], tmp_path)
    assert len(ns["graph"].ablation) == 3
    assert any("cos(" in text for text in ns["labels"].values())


def test_readme_describes_only_slow_suites_that_exist():
    readme = (ROOT / "README.md").read_text()
    slow_files = [p for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.slow" in p.read_text()]
    assert slow_files
    if "MNIST" in readme:
        assert any("mnist" in p.read_text().lower() for p in slow_files)


# --- docs/math.md -----------------------------------------------------------------------------

def _edges(integration, n_steps, model, X):
    from sklearn_lib import IGEdgeScorer, PCAWhitener
    from sklearn_lib.adapters import MLPAdapter

    graph = PCAWhitener(MLPAdapter(model)).fit_transform(X)
    scorer = IGEdgeScorer(integration=integration, n_steps=n_steps)
    return scorer.fit_transform(graph).edges


@pytest.mark.parametrize("n_steps", [2, 3, 10])
def test_trapezoidal_edges_on_a_relu_mlp_are_the_stated_fraction_of_exact(n_steps):
    """math.md: trapezoidal edges on a ReLU MLP come out at 1 - 1/(2(n-1)) of exact."""
    from conftest import gaussian_data, random_mlp

    model = random_mlp([4, 6, 5, 3], seed=1)
    X = gaussian_data(100, 4, seed=1)
    exact = _edges("endpoint", 1, model, X)
    trap = _edges("trapezoidal", n_steps, model, X)
    factor = 1.0 - 1.0 / (2.0 * (n_steps - 1))
    # Segments ending in a ReLU ("input" -> "1", "1" -> "3"): the stated factor on the edges
    # from non-constant features; edges from the constant are not scaled (the output basis
    # centres with -mu f_0, linear in the constant).
    for p in (0, 1):
        np.testing.assert_allclose(trap[p][:, 1:], factor * exact[p][:, 1:], rtol=1e-10,
                                   atol=1e-12)
        assert not np.allclose(trap[p][1:, 0], factor * exact[p][1:, 0])
    # The last segment is linear: exact.
    np.testing.assert_allclose(trap[2], exact[2], rtol=1e-10, atol=1e-12)


def test_math_md_states_the_rules_and_completeness():
    text = (ROOT / "docs" / "math.md").read_text()
    assert "1 - 1/(2(n - 1))" in text
    assert "degree at most `2n - 1`" in text
    assert "homogeneous of degree 0" in text
    assert "lim_{alpha -> 0+}" in text


def test_gauss_legendre_exactness_stated_in_math_md():
    """n Gauss-Legendre points integrate polynomials of degree 2n - 1 exactly, not 2n."""
    from sklearn_lib import quadrature

    for n in (1, 2, 4):
        nodes, weights = quadrature("gauss-legendre", n)
        nodes, weights = np.asarray(nodes), np.asarray(weights)
        exact = 1.0 / (2 * n)  # integral of alpha^(2n-1) over [0, 1]
        assert np.dot(weights, nodes ** (2 * n - 1)) == pytest.approx(exact, rel=1e-12)
        assert abs(np.dot(weights, nodes ** (2 * n)) - 1.0 / (2 * n + 1)) > 1e-8


def test_endpoint_rule_is_complete_on_a_bias_folded_relu_mlp():
    """Euler: with the endpoint rule, attributions of a degree-1 homogeneous segment sum to F."""
    from conftest import random_mlp

    from sklearn_lib.adapters import MLPAdapter

    model = random_mlp([4, 6, 5, 3], seed=2)
    adapter = MLPAdapter(model)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 4)))
    f = adapter.activations(x.numpy(), ["input"], dtype=torch.float64,
                            device=torch.device("cpu"))["input"]
    seg = adapter.segment("input", dtype=torch.float64, device=torch.device("cpu"))
    out = seg(f)

    def one(v):  # one sample, shape (pos, d)
        return seg(v[None])[0]

    J = torch.func.vmap(torch.func.jacrev(one))(f)  # (batch, pos, d_out, pos, d_in)
    attributions = (J * f[:, None, None, :, :]).sum(dim=(3, 4))
    torch.testing.assert_close(attributions, out, rtol=1e-12, atol=1e-12)

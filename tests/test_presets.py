"""Experiment presets: the paper's modular-addition set-up and the digits MLP, in one call."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sklearn_lib import (
    EdgeAblationSearch,
    GlobalInteractionBasis,
    IGEdgeScorer,
    LeidenModularity,
    LocalInteractionBasis,
    PCAWhitener,
)
from sklearn_lib.tasks import (
    SHIPPED_SEEDS,
    ExperimentPreset,
    digits_mlp_preset,
    fourier_labels,
    modadd_preset,
    shipped_modadd_checkpoint,
)
from sklearn_lib.tasks._modadd_experiment import MODADD_NODE_LAYERS


@pytest.fixture(scope="module")
def modadd():
    return modadd_preset(seed=0)


@pytest.fixture(scope="module")
def digits():
    return digits_mlp_preset(seed=0, hidden=(8,), epochs=40)


def test_modadd_preset_is_the_papers_setting(modadd):
    assert isinstance(modadd, ExperimentPreset)
    assert modadd.adapter.node_layers == MODADD_NODE_LAYERS
    assert modadd.X_train.shape == (3830, 3) and modadd.X_test.shape == (8939, 3)
    assert modadd.basis_params["rotate_final"] is False
    assert modadd.basis_params["dtype"] == "float64"
    # Truncation is left to the estimators' defaults.
    assert "rtol" not in modadd.basis_params and "atol" not in modadd.basis_params
    assert modadd.ablation_params == {"metric": "accuracy", "tolerance": 1e-3,
                                      "dtype": "float64"}
    assert modadd.info["modulus"] == 113 and modadd.info["frac_train"] == 0.3
    assert "shipped seed 0" in modadd.name


def test_modadd_adapter_keeps_only_the_last_position_after_attention(modadd):
    acts = modadd.adapter.activations(modadd.X_test[:5], list(MODADD_NODE_LAYERS),
                                      dtype=torch.float64, device=torch.device("cpu"))
    assert acts[MODADD_NODE_LAYERS[0]].shape[1] == 3
    assert all(acts[name].shape[1] == 1 for name in MODADD_NODE_LAYERS[1:])
    with torch.no_grad():
        expected = modadd.model(torch.from_numpy(modadd.X_test[:5]))[:, -1, :].double()
    # The logits node carries a leading constant coordinate (bias folding).
    assert torch.allclose(acts["logits"][:, 0, 1:], expected, atol=1e-4)


def test_make_basis_for_each_basis(modadd):
    lib = modadd.make_basis("lib")
    assert isinstance(lib, LocalInteractionBasis) and lib.adapter is modadd.adapter
    assert lib.rotate_final is False and lib.random_state == 0 and lib.verbose is False
    assert isinstance(modadd.make_basis("gib"), GlobalInteractionBasis)
    pca = modadd.make_basis("pca", verbose=True, rtol=0.0)
    assert isinstance(pca, PCAWhitener) and pca.rtol == 0.0 and pca.verbose is True
    assert "random_state" not in pca.get_params()
    # The preset's own dicts are not changed by overrides.
    assert "rtol" not in modadd.basis_params


def test_make_basis_rejects_an_unknown_basis(modadd):
    with pytest.raises(ValueError, match="basis must be one of"):
        modadd.make_basis("ica")


def test_pipeline_and_fit_params(modadd):
    pipe = modadd.make_pipeline("pca", verbose=True)
    names = [name for name, _ in pipe.steps]
    assert names == ["pcawhitener", "igedgescorer", "edgeablationsearch", "leidenmodularity"]
    assert isinstance(pipe.steps[1][1], IGEdgeScorer) and pipe.steps[1][1].batch_size == 256
    search = pipe.steps[2][1]
    assert isinstance(search, EdgeAblationSearch) and search.tolerance == 1e-3
    assert search.verbose is True
    assert isinstance(pipe.steps[3][1], LeidenModularity)
    fp = modadd.fit_params
    assert fp["edgeablationsearch__X_eval"] is modadd.X_test
    assert fp["edgeablationsearch__y_eval"] is modadd.y_test


@pytest.mark.parametrize("seed", [1, 6, -1, "0", True, None])
def test_unknown_seed_lists_the_shipped_ones(seed):
    with pytest.raises(ValueError, match=r"ships seeds \[0, 2, 3, 4, 5\]"):
        modadd_preset(seed=seed)


def test_missing_checkpoint_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        modadd_preset(checkpoint=tmp_path / "nope.pt")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pass config="):
        modadd_preset(checkpoint=ckpt)


def test_own_checkpoint_and_split_overrides(tmp_path):
    state, config = shipped_modadd_checkpoint(2)
    cfg = json.loads(config.read_text())
    preset = modadd_preset(checkpoint=state, config=config, frac_train=0.5, split_seed=9,
                           tolerance=0.01, ablation_dtype="float32", batch_size=64)
    assert preset.info["checkpoint"] == str(state)
    assert preset.info["split_seed"] == 9 and len(preset.X_train) == int(0.5 * 113 * 113)
    assert preset.ablation_params["tolerance"] == 0.01
    assert preset.ablation_params["dtype"] == "float32"
    assert preset.basis_params["batch_size"] == 64
    assert cfg["dataset"]["seed"] == 2  # the default split would have been the config's


def test_shipped_seeds_all_load():
    for seed in SHIPPED_SEEDS:
        assert modadd_preset(seed=seed).info["checkpoint"].endswith(
            f"seed{seed}/model_state_dict.pt")


def test_digits_preset(digits):
    assert digits.adapter.node_layers == ("input", "1", "2")
    assert digits.X_train.shape[1] == 64 and len(digits.X_test) == 540
    assert 0.5 < digits.info["test_accuracy"] <= 1.0
    graph = digits.run("pca")
    assert graph.ablation is not None and graph.communities is not None
    assert all(r.n_edges_needed <= r.n_edges_total for r in graph.ablation)


def test_digits_preset_is_deterministic(digits):
    again = digits_mlp_preset(seed=0, hidden=(8,), epochs=40)
    for a, b in zip(digits.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(digits.X_test, again.X_test)


def test_fourier_labels_validate_their_arguments(digits):
    graph = digits.make_basis("pca").fit_transform(digits.X_train)
    with pytest.raises(ValueError, match="pass modulus=p"):
        fourier_labels(graph)
    with pytest.raises(ValueError, match="max_features must be a positive int"):
        fourier_labels(graph, 8, max_features=0)


@pytest.mark.slow
def test_modadd_preset_reproduces_the_cli(tmp_path):
    """The numbers of ``sklearn-lib modadd`` come out of the preset's pipeline unchanged."""
    from sklearn_lib._cli import main

    out = tmp_path / "lib.json"
    assert main(["modadd", "--quiet", "--json", str(out)]) == 0
    cli = json.loads(out.read_text())
    preset = modadd_preset(seed=0)
    graph = preset.run("lib")
    assert [b.n_components for b in graph.bases] == \
        [cli["pairs"][0]["dims_in"]] + [p["dims_out"] for p in cli["pairs"]]
    assert [r.n_edges_needed for r in graph.ablation] == \
        [p["n_edges_needed"] for p in cli["pairs"]]
    assert [r.score_at_needed for r in graph.ablation] == \
        [p["accuracy_at_needed"] for p in cli["pairs"]]
    # Leiden on the same edges; only float summation order (threads) may differ.
    assert graph.modularity == pytest.approx(cli["modularity"], rel=1e-6)

"""The modular-addition task: data, split, shipped checkpoints, Fourier labels, the CLI."""

import json

import numpy as np
import pytest
import torch

from sklearn_lib.tasks import (
    SHIPPED_SEEDS,
    load_modular_addition,
    modular_addition_split,
    shipped_modadd_checkpoint,
)
from sklearn_lib.tasks._fourier import fourier_label, fourier_terms, monosemanticity
from sklearn_lib.tasks._modular_addition import modular_addition_grid

SEEDS = list(SHIPPED_SEEDS)


def test_grid_order_and_labels():
    tokens, labels = modular_addition_grid(113)
    assert tokens.shape == (113 * 113, 3)
    row = 5 * 113 + 7
    assert tokens[row].tolist() == [5, 7, 113]
    assert labels[row] == 12
    assert (labels == (tokens[:, 0] + tokens[:, 1]) % 113).all()


def test_split_is_the_papers():
    train, test = modular_addition_split(113, 0.3, 0)
    perm = torch.randperm(12769, generator=torch.Generator().manual_seed(0)).numpy()
    assert len(train) == 3830 and len(test) == 8939  # int(0.3 * 12769), as the paper's code
    assert (train == perm[:3830]).all() and (test == perm[3830:]).all()
    data = load_modular_addition()
    assert (data.X_train[:, 2] == 113).all()
    assert set(data.train_idx).isdisjoint(data.test_idx)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="frac_train must be in"):
        modular_addition_split(113, bad, 0)


def test_missing_shipped_seed_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="ships seeds"):
        shipped_modadd_checkpoint(17)


@pytest.mark.parametrize("seed", SEEDS)
def test_shipped_checkpoints_reach_full_test_accuracy(seed):
    from sklearn_lib.adapters import load_hooked_transformer

    state, config = shipped_modadd_checkpoint(seed)
    cfg = json.loads(config.read_text())
    model = load_hooked_transformer(state, cfg)
    data = load_modular_addition(113, cfg["dataset"]["frac_train"], cfg["dataset"]["seed"])
    with torch.no_grad():
        logits = model(torch.from_numpy(data.X_test))[:, -1, :]
    assert (logits.argmax(-1).numpy() == data.y_test).mean() == 1.0
    log = json.loads((state.parent / "training_log.json").read_text())
    assert log[-1]["epoch"] == cfg["train"]["epochs"] and log[-1]["test_accuracy"] == 1.0


def test_fourier_terms_recover_a_known_mixture():
    p = 31
    x, y = np.divmod(np.arange(p * p), p)
    f = 2.0 * np.cos(2 * np.pi * 4 * (x + y) / p + 0.7) + 1.0 * np.cos(2 * np.pi * (3 * x - 5 * y) / p)
    terms = dict(fourier_terms(f))
    assert terms[(4, 4)] == pytest.approx(0.8)
    assert terms[(3, -5)] == pytest.approx(0.2)
    assert sum(terms.values()) == pytest.approx(1.0)
    assert monosemanticity(f) == pytest.approx(0.8)
    assert fourier_label(f) == "80% cos(4x+4y) + 20% cos(3x-5y)"


def test_fourier_rejects_non_square_input():
    with pytest.raises(ValueError, match="p x p grid"):
        fourier_terms(np.ones(10))


def test_fourier_label_of_a_constant_feature():
    assert fourier_label(np.full(13 * 13, 2.5)) == "constant"
    assert fourier_terms(np.full(13 * 13, 2.5) + 1e-16) == []

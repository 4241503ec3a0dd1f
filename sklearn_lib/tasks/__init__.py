"""Tasks shipped with sklearn-lib: datasets, splits and training recipes."""

from sklearn_lib.tasks._mlp import (
    load_digits_split,
    load_mnist_split,
    make_mlp,
    train_mlp_classifier,
)
from sklearn_lib.tasks._modular_addition import (
    SHIPPED_SEEDS,
    ModularAdditionData,
    load_modular_addition,
    modular_addition_split,
    shipped_modadd_checkpoint,
)

__all__ = [
    "SHIPPED_SEEDS",
    "load_digits_split",
    "load_mnist_split",
    "make_mlp",
    "train_mlp_classifier",
    "ModularAdditionData",
    "load_modular_addition",
    "modular_addition_split",
    "shipped_modadd_checkpoint",
]

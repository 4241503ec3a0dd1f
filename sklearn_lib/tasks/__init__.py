"""Tasks shipped with sklearn-lib: datasets, splits and training recipes."""

from sklearn_lib.tasks._modular_addition import (
    ModularAdditionData,
    load_modular_addition,
    modular_addition_split,
    shipped_modadd_checkpoint,
)

__all__ = [
    "ModularAdditionData",
    "load_modular_addition",
    "modular_addition_split",
    "shipped_modadd_checkpoint",
]

"""Tasks shipped with sklearn-lib: datasets, splits and training recipes."""

from sklearn_lib.tasks._mlp import (
    load_digits_split,
    load_mnist_split,
    make_mlp,
    train_mlp_classifier,
)
from sklearn_lib.tasks._lm_models import (
    load_smollm2,
    load_tiny_lm,
    smollm2_gguf_path,
    tiny_lm_results,
)
from sklearn_lib.tasks._modular_addition import (
    SHIPPED_SEEDS,
    ModularAdditionData,
    load_modular_addition,
    modular_addition_split,
    shipped_modadd_checkpoint,
)
from sklearn_lib.tasks._text import (
    TextWindows,
    load_fortunes,
    load_text_windows,
    make_token_windows,
    split_documents,
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
    "TextWindows",
    "load_fortunes",
    "load_smollm2",
    "load_text_windows",
    "load_tiny_lm",
    "make_token_windows",
    "smollm2_gguf_path",
    "split_documents",
    "tiny_lm_results",
]

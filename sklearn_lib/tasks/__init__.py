"""Tasks shipped with sklearn-lib: datasets, splits, training recipes and experiment presets.

Names are imported on first use (PEP 562); to export a new one, add a line to ``_EXPORTS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "SHIPPED_SEEDS": "sklearn_lib.tasks._modular_addition",
    "ModularAdditionData": "sklearn_lib.tasks._modular_addition",
    "load_modular_addition": "sklearn_lib.tasks._modular_addition",
    "modular_addition_split": "sklearn_lib.tasks._modular_addition",
    "shipped_modadd_checkpoint": "sklearn_lib.tasks._modular_addition",
    "load_digits_split": "sklearn_lib.tasks._mlp",
    "load_mnist_split": "sklearn_lib.tasks._mlp",
    "make_mlp": "sklearn_lib.tasks._mlp",
    "train_mlp_classifier": "sklearn_lib.tasks._mlp",
    "ExperimentPreset": "sklearn_lib.tasks._presets",
    "digits_mlp_preset": "sklearn_lib.tasks._presets",
    "modadd_preset": "sklearn_lib.tasks._presets",
    "lm_preset": "sklearn_lib.tasks._presets",
    "lm_block_cuts": "sklearn_lib.tasks._presets",
    "fourier_labels": "sklearn_lib.tasks._fourier",
    "fourier_label": "sklearn_lib.tasks._fourier",
    "fourier_terms": "sklearn_lib.tasks._fourier",
    "monosemanticity": "sklearn_lib.tasks._fourier",
    "TextWindows": "sklearn_lib.tasks._text",
    "load_fortunes": "sklearn_lib.tasks._text",
    "load_text_windows": "sklearn_lib.tasks._text",
    "make_token_windows": "sklearn_lib.tasks._text",
    "split_documents": "sklearn_lib.tasks._text",
    "load_smollm2": "sklearn_lib.tasks._lm_models",
    "load_tiny_lm": "sklearn_lib.tasks._lm_models",
    "smollm2_gguf_path": "sklearn_lib.tasks._lm_models",
    "tiny_lm_results": "sklearn_lib.tasks._lm_models",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sklearn_lib.tasks._fourier import (
        fourier_label,
        fourier_labels,
        fourier_terms,
        monosemanticity,
    )
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
    from sklearn_lib.tasks._lm_models import (
        load_smollm2,
        load_tiny_lm,
        smollm2_gguf_path,
        tiny_lm_results,
    )
    from sklearn_lib.tasks._presets import ExperimentPreset, digits_mlp_preset, modadd_preset
    from sklearn_lib.tasks._presets import lm_block_cuts, lm_preset
    from sklearn_lib.tasks._text import (
        TextWindows,
        load_fortunes,
        load_text_windows,
        make_token_windows,
        split_documents,
    )


def __getattr__(name: str) -> Any:
    """Import a public name on first access and cache it in the module namespace."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sklearn_lib.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

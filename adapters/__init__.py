"""Model adapters: present a network to the LIB estimators as node layers and segment maps.

Installed as ``sklearn_lib.adapters`` (never as a top-level ``adapters`` package).
``HookedTransformerAdapter`` and ``load_hooked_transformer`` import without transformer_lens;
only loading a checkpoint imports it.
"""

from sklearn_lib.adapters._protocol import ModelAdapter, SegmentFn
from sklearn_lib.adapters._module import ModuleAdapter
from sklearn_lib.adapters._torch import MLPAdapter
from sklearn_lib.adapters._transformer_lens import (
    HookedTransformerAdapter,
    load_hooked_transformer,
)

__all__ = [
    "HookedTransformerAdapter",
    "MLPAdapter",
    "ModelAdapter",
    "ModuleAdapter",
    "SegmentFn",
    "load_hooked_transformer",
]

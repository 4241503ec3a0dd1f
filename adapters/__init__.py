"""Model adapters: present a network to the LIB estimators as node layers and segment maps.

Installed as ``sklearn_lib.adapters`` (never as a top-level ``adapters`` package).
``HookedTransformerAdapter`` and ``load_hooked_transformer`` import without transformer_lens;
only loading a checkpoint imports it.
"""

from sklearn_lib.adapters._check import (
    CHECKS,
    AdapterContractError,
    CheckResult,
    check_adapter,
    verify_forward,
)
from sklearn_lib.adapters._protocol import (
    CompositeSegmentLike,
    ModelAdapter,
    SegmentFn,
    SupportsCompositeSegment,
    SupportsReferenceForward,
)
from sklearn_lib.adapters._module import ModuleAdapter
from sklearn_lib.adapters._torch import MLPAdapter
from sklearn_lib.adapters._transformer_lens import (
    HookedTransformerAdapter,
    load_hooked_transformer,
)

__all__ = [
    "CHECKS",
    "AdapterContractError",
    "CheckResult",
    "CompositeSegmentLike",
    "HookedTransformerAdapter",
    "MLPAdapter",
    "ModelAdapter",
    "ModuleAdapter",
    "SegmentFn",
    "SupportsCompositeSegment",
    "SupportsReferenceForward",
    "check_adapter",
    "load_hooked_transformer",
    "verify_forward",
]

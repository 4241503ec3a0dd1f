"""Model adapters: present a network to the LIB estimators as node layers and segment maps.

Installed as ``sklearn_lib.adapters`` (never as a top-level ``adapters`` package).
Everything here imports without ``transformers`` or transformer_lens; only the readers of
their model objects (``TransformerAdapter.from_hf``, ``read_hf_model``,
``read_hooked_transformer``, ``read_transformer_bridge``) import them, when called.
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
from sklearn_lib.adapters._read_bridge import read_transformer_bridge
from sklearn_lib.adapters._read_hf import read_hf_model
from sklearn_lib.adapters._read_hooked import read_hooked_transformer
from sklearn_lib.adapters._read_tl_state_dict import read_tl_state_dict
from sklearn_lib.adapters._torch import MLPAdapter
from sklearn_lib.adapters._transformer_lens import (
    HookedTransformerAdapter,
    LoadedTransformer,
    load_hooked_transformer,
)
from sklearn_lib.adapters._transformer_adapter import TransformerAdapter
from sklearn_lib.adapters._transformer_weights import (
    AttentionWeights,
    BlockWeights,
    MLPWeights,
    NormWeights,
    RotaryWeights,
    TransformerWeights,
)

__all__ = [
    "AdapterContractError",
    "AttentionWeights",
    "BlockWeights",
    "CHECKS",
    "CheckResult",
    "CompositeSegmentLike",
    "HookedTransformerAdapter",
    "LoadedTransformer",
    "MLPAdapter",
    "MLPWeights",
    "ModelAdapter",
    "ModuleAdapter",
    "NormWeights",
    "RotaryWeights",
    "SegmentFn",
    "SupportsCompositeSegment",
    "SupportsReferenceForward",
    "TransformerAdapter",
    "TransformerWeights",
    "check_adapter",
    "load_hooked_transformer",
    "read_hf_model",
    "read_hooked_transformer",
    "read_tl_state_dict",
    "read_transformer_bridge",
    "verify_forward",
]

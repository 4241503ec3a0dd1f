"""Model adapters: present a network to the LIB estimators as node layers and segment maps.

Installed as ``sklearn_lib.adapters`` (never as a top-level ``adapters`` package).
"""

from sklearn_lib.adapters._protocol import ModelAdapter, SegmentFn
from sklearn_lib.adapters._torch import MLPAdapter

__all__ = ["MLPAdapter", "ModelAdapter", "SegmentFn"]

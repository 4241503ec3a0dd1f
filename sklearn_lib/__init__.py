"""sklearn-lib: the Local Interaction Basis (LIB) as scikit-learn estimators.

The pipeline: a basis per node layer (:class:`LocalInteractionBasis`,
:class:`GlobalInteractionBasis`, or the PCA baseline :class:`PCAWhitener`), integrated-gradient
edges between adjacent layers (:class:`IGEdgeScorer`), an edge-ablation search for sparsity
(:class:`EdgeAblationSearch`) and Leiden communities (:class:`LeidenModularity`). What flows
between the steps is an :class:`InteractionGraph`.

The public names are imported on first use (PEP 562), so ``import sklearn_lib`` and the
command line's ``--help`` do not pay for torch and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it. To export a new name, add one line here.
_EXPORTS: dict[str, str] = {
    "AblationResult": "sklearn_lib._graph",
    "EdgeAblationSearch": "sklearn_lib._ablation",
    "GlobalInteractionBasis": "sklearn_lib._interaction",
    "IGEdgeScorer": "sklearn_lib._edges",
    "InteractionGraph": "sklearn_lib._graph",
    "LayerBasis": "sklearn_lib._linalg",
    "LayerFeatures": "sklearn_lib._graph",
    "LeidenModularity": "sklearn_lib._modularity",
    "LocalInteractionBasis": "sklearn_lib._interaction",
    "PCAWhitener": "sklearn_lib._whitening",
    "plot_ablation_curve": "sklearn_lib._plotting",
    "plot_interaction_graph": "sklearn_lib._plotting",
    "InSampleEvaluationWarning": "sklearn_lib._ablation",
    "BaseScoreWarning": "sklearn_lib._ablation",
    "quadrature": "sklearn_lib._edges",
    "RankFailedError": "sklearn_lib._distributed",
}

__all__ = sorted(_EXPORTS)

_SUBPACKAGES = ("adapters", "tasks")

if TYPE_CHECKING:  # static analysers and IDEs see ordinary imports
    from sklearn_lib._ablation import EdgeAblationSearch
    from sklearn_lib._edges import IGEdgeScorer, quadrature
    from sklearn_lib._graph import AblationResult, InteractionGraph, LayerFeatures
    from sklearn_lib._interaction import GlobalInteractionBasis, LocalInteractionBasis
    from sklearn_lib._linalg import LayerBasis
    from sklearn_lib._distributed import RankFailedError
    from sklearn_lib._modularity import LeidenModularity
    from sklearn_lib._ablation import BaseScoreWarning, InSampleEvaluationWarning
    from sklearn_lib._plotting import plot_ablation_curve, plot_interaction_graph
    from sklearn_lib._whitening import PCAWhitener


def __getattr__(name: str) -> Any:
    """Import a public name on first access and cache it in the module namespace."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"sklearn_lib.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sklearn_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

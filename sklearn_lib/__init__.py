"""sklearn-lib: the Local Interaction Basis (LIB) as scikit-learn estimators.

The pipeline: a basis per node layer (:class:`LocalInteractionBasis`,
:class:`GlobalInteractionBasis`, or the PCA baseline :class:`PCAWhitener`), integrated-gradient
edges between adjacent layers (:class:`IGEdgeScorer`), an edge-ablation search for sparsity
(:class:`EdgeAblationSearch`) and Leiden communities (:class:`LeidenModularity`). What flows
between the steps is an :class:`InteractionGraph`.
"""

from sklearn_lib._ablation import EdgeAblationSearch
from sklearn_lib._edges import IGEdgeScorer, quadrature
from sklearn_lib._graph import AblationResult, InteractionGraph, LayerFeatures
from sklearn_lib._interaction import GlobalInteractionBasis, LocalInteractionBasis
from sklearn_lib._linalg import LayerBasis
from sklearn_lib._modularity import LeidenModularity
from sklearn_lib._plotting import plot_interaction_graph
from sklearn_lib._plotting import plot_ablation_curve
from sklearn_lib._whitening import PCAWhitener

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "EdgeAblationSearch",
    "GlobalInteractionBasis",
    "IGEdgeScorer",
    "InteractionGraph",
    "LayerBasis",
    "LayerFeatures",
    "LeidenModularity",
    "LocalInteractionBasis",
    "PCAWhitener",
    "plot_ablation_curve",
    "plot_interaction_graph",
    "quadrature",
]

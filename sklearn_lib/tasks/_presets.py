"""One-call set-ups of the paper's experiments: model, adapter, data splits and estimator settings.

A preset holds everything an experiment needs and nothing it computes: the model and its
adapter, the training split (bases and edges are fitted on it), the held-out split (the
ablation search scores on it) and the keyword arguments of each estimator. ``make_pipeline``
turns it into a scikit-learn ``Pipeline``; ``fit_params`` routes the held-out split to the
ablation search.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExperimentPreset", "digits_mlp_preset", "modadd_preset"]

_BASES = ("lib", "gib", "pca")


@dataclass(frozen=True)
class ExperimentPreset:
    """An experiment's model, adapter, data splits and estimator settings.

    Built by :func:`modadd_preset` and :func:`digits_mlp_preset`. The parameter dicts are
    copied into every estimator made from the preset, so editing one estimator never changes
    the preset.

    Attributes
    ----------
    name : str
        Short description, e.g. ``"modular addition, shipped seed 0"``.
    model : torch.nn.Module
        The trained network (in eval mode).
    adapter : ModelAdapter
        The model as node layers and segments (``sklearn_lib.adapters``).
    X_train, y_train : ndarray
        The split the bases and edges are fitted on.
    X_test, y_test : ndarray
        The held-out split the ablation search scores on.
    basis_params : dict
        Keyword arguments of ``LocalInteractionBasis``, ``GlobalInteractionBasis`` and
        ``PCAWhitener`` (``random_state`` is not passed to ``PCAWhitener``).
    scorer_params : dict
        Keyword arguments of ``IGEdgeScorer``.
    ablation_params : dict
        Keyword arguments of ``EdgeAblationSearch``.
    modularity_params : dict
        Keyword arguments of ``LeidenModularity``.
    info : dict
        Provenance: checkpoint and config paths, modulus, split fraction and seed (modular
        addition), hidden sizes and test accuracy (digits).
    """

    name: str
    model: Any
    adapter: Any
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    basis_params: dict = field(default_factory=dict)
    scorer_params: dict = field(default_factory=dict)
    ablation_params: dict = field(default_factory=dict)
    modularity_params: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def make_basis(self, basis: str = "lib", *, verbose: bool = False, **overrides):
        """A basis estimator with the preset's settings.

        Parameters
        ----------
        basis : {"lib", "gib", "pca"}, default="lib"
            ``LocalInteractionBasis``, ``GlobalInteractionBasis`` or the ``PCAWhitener``
            baseline.
        verbose : bool, default=False
            Progress bars.
        **overrides
            Estimator parameters that replace the preset's (e.g. ``rtol=0.0``).

        Returns
        -------
        estimator : LocalInteractionBasis, GlobalInteractionBasis or PCAWhitener
            Unfitted, holding the preset's adapter.
        """
        from sklearn_lib import GlobalInteractionBasis, LocalInteractionBasis, PCAWhitener

        if basis not in _BASES:
            raise ValueError(f"basis must be one of {list(_BASES)}; got {basis!r}.")
        params = {**self.basis_params, "verbose": verbose, **overrides}
        if basis == "pca":
            params.pop("random_state", None)
            return PCAWhitener(self.adapter, **params)
        cls = LocalInteractionBasis if basis == "lib" else GlobalInteractionBasis
        return cls(self.adapter, **params)

    def make_steps(self, basis: str = "lib", *, verbose: bool = False) -> list:
        """The four estimators of the experiment: basis, edges, ablation, modularity."""
        from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LeidenModularity

        return [
            self.make_basis(basis, verbose=verbose),
            IGEdgeScorer(**{**self.scorer_params, "verbose": verbose}),
            EdgeAblationSearch(**{**self.ablation_params, "verbose": verbose}),
            LeidenModularity(**self.modularity_params),
        ]

    def make_pipeline(self, basis: str = "lib", *, verbose: bool = False):
        """The experiment as a scikit-learn ``Pipeline``; fit it with :attr:`fit_params`.

        Parameters
        ----------
        basis : {"lib", "gib", "pca"}, default="lib"
        verbose : bool, default=False

        Returns
        -------
        pipeline : sklearn.pipeline.Pipeline
            Steps ``<basis estimator>``, ``igedgescorer``, ``edgeablationsearch``,
            ``leidenmodularity`` (names from ``make_pipeline``).
        """
        from sklearn.pipeline import make_pipeline

        return make_pipeline(*self.make_steps(basis, verbose=verbose))

    @property
    def fit_params(self) -> dict:
        """Routes the held-out split to the ablation search of :meth:`make_pipeline`."""
        return {"edgeablationsearch__X_eval": self.X_test,
                "edgeablationsearch__y_eval": self.y_test}

    def run(self, basis: str = "lib", *, verbose: bool = False):
        """Fit the whole experiment and return the ``InteractionGraph``.

        Equivalent to
        ``make_pipeline(basis).fit_transform(X_train, y_train, **fit_params)``.
        """
        return self.make_pipeline(basis, verbose=verbose).fit_transform(
            self.X_train, self.y_train, **self.fit_params
        )


def _shipped_seeds_message(seed: Any) -> str:
    from sklearn_lib.tasks._modular_addition import SHIPPED_SEEDS

    return (f"seed={seed!r} is not a shipped modular-addition checkpoint; the package ships "
            f"seeds {list(SHIPPED_SEEDS)}. Pass one of them, or checkpoint= and config= for "
            f"your own model.")


def modadd_preset(
    seed: int | None = 0,
    *,
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    frac_train: float | None = None,
    split_seed: int | None = None,
    batch_size: int = 256,
    tolerance: float = 1e-3,
    ablation_dtype: str = "float64",
    random_state: int = 0,
) -> ExperimentPreset:
    """The paper's modular-addition experiment (section 3.1) on one checkpoint.

    The adapter has the paper's node layers (``blocks.0.hook_resid_pre`` with its three
    positions, then ``blocks.0.hook_resid_mid``, ``blocks.0.hook_resid_post`` and ``logits``
    at the last position only, since only the last position feeds the loss); the bases keep
    the logits unrotated (``rotate_final=False``) and work in float64; edges are IG at
    alpha = 1; the ablation search keeps the test accuracy within ``tolerance``; the split is
    the one in the checkpoint's config (the paper's: 30% of the pairs, 3,830 training rows).
    Truncation is left at the estimators' defaults.

    Parameters
    ----------
    seed : int or None, default=0
        A shipped checkpoint (``sklearn_lib.tasks.SHIPPED_SEEDS``); ignored when
        ``checkpoint`` is given.
    checkpoint : str or Path, default=None
        A ``HookedTransformer`` state_dict (``.pt``) of your own.
    config : str or Path, default=None
        Its ``config.json`` (``model`` and ``dataset`` sections); by default the file
        ``config.json`` next to ``checkpoint``.
    frac_train : float, default=None
        Training fraction of the split; by default the config's ``dataset.frac_train``.
    split_seed : int, default=None
        Seed of the split; by default the config's ``dataset.seed``.
    batch_size : int, default=256
        Rows per batch for the bases and edges (bounds memory).
    tolerance : float, default=1e-3
        Accuracy the ablation search may lose.
    ablation_dtype : {"float64", "float32"}, default="float64"
        Precision of the ablation forward passes.
    random_state : int, default=0
        Seed of the stochastic parts (LIB/GIB, Leiden).

    Returns
    -------
    preset : ExperimentPreset
        ``info`` holds ``checkpoint``, ``config``, ``modulus``, ``frac_train`` and
        ``split_seed``.

    See Also
    --------
    digits_mlp_preset : The image-MLP set-up.
    fourier_labels : Fourier labels of the features of a modular-addition graph.

    Examples
    --------
    >>> from sklearn_lib.tasks import modadd_preset
    >>> preset = modadd_preset(seed=0)
    >>> preset.X_train.shape, preset.X_test.shape
    ((3830, 3), (8939, 3))
    >>> preset.adapter.node_layers
    ('blocks.0.hook_resid_pre', 'blocks.0.hook_resid_mid', 'blocks.0.hook_resid_post', 'logits')
    >>> preset.basis_params["rotate_final"]
    False
    >>> pipe = preset.make_pipeline("lib")   # then pipe.fit_transform(X_train, **fit_params)
    >>> [name for name, _ in pipe.steps]
    ['localinteractionbasis', 'igedgescorer', 'edgeablationsearch', 'leidenmodularity']
    """
    from sklearn_lib.adapters import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter
    from sklearn_lib.tasks._modular_addition import (
        SHIPPED_SEEDS,
        load_modular_addition,
        shipped_modadd_checkpoint,
    )

    label = str(checkpoint)
    if checkpoint is None:
        label = f"shipped seed {seed}"
        if isinstance(seed, bool) or seed not in SHIPPED_SEEDS:
            raise ValueError(_shipped_seeds_message(seed))
        checkpoint, default_config = shipped_modadd_checkpoint(int(seed))
        config = config or default_config
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} is not a file; pass the path "
                                f"of a HookedTransformer state_dict (.pt).")
    if config is None:
        config = checkpoint.with_name("config.json")
        if not config.is_file():
            raise FileNotFoundError(
                f"No config given and none next to the checkpoint ({config}); pass config= "
                f"(the JSON with the model and dataset sections).")
    config = Path(config)
    cfg = json.loads(config.read_text())
    dataset = cfg.get("dataset", {})
    modulus = int(dataset.get("modulus", cfg.get("model", cfg).get("d_vocab", 114) - 1))
    frac = float(dataset.get("frac_train", 0.3)) if frac_train is None else float(frac_train)
    split = int(dataset.get("seed", 0)) if split_seed is None else int(split_seed)

    model = load_hooked_transformer(checkpoint, cfg)
    data = load_modular_addition(modulus, frac, split)
    return ExperimentPreset(
        name=f"modular addition, {label}",
        model=model,
        adapter=modadd_adapter(model),
        X_train=data.X_train,
        y_train=data.y_train,
        X_test=data.X_test,
        y_test=data.y_test,
        basis_params=dict(rotate_final=False, batch_size=batch_size, dtype="float64",
                          random_state=random_state),
        scorer_params=dict(batch_size=batch_size),
        ablation_params=dict(metric="accuracy", tolerance=tolerance, dtype=ablation_dtype),
        modularity_params=dict(resolution=1.0, random_state=random_state),
        info=dict(checkpoint=str(checkpoint), config=str(config), modulus=modulus,
                  frac_train=frac, split_seed=split),
    )


def digits_mlp_preset(
    seed: int = 0,
    *,
    hidden: Sequence[int] = (32, 32),
    epochs: int = 300,
    test_size: float = 0.3,
) -> ExperimentPreset:
    """The image-MLP set-up of the demo: a ReLU MLP trained on scikit-learn's digits.

    Trains ``64 -> hidden -> 10`` (``Linear``/``ReLU``) with Adam in a few seconds on a
    stratified split of the 8x8 digits scaled to [0, 1] (no download), and presents it with
    ``MLPAdapter`` (node layers: the input, each ``ReLU`` output and the logits, named by
    their ``nn.Sequential`` indices). Estimators keep their defaults (the ablation search
    keeps the test accuracy within 0.001) and take ``random_state=seed``.

    Parameters
    ----------
    seed : int, default=0
        Seed of the split, the initialisation and the stochastic estimators.
    hidden : sequence of int, default=(32, 32)
        Hidden widths.
    epochs : int, default=300
        Full-batch Adam steps.
    test_size : float, default=0.3
        Held-out fraction (the ablation search scores on it).

    Returns
    -------
    preset : ExperimentPreset
        ``info`` holds ``hidden``, ``epochs`` and the model's ``test_accuracy``.

    See Also
    --------
    modadd_preset : The modular-addition transformer set-up.

    Examples
    --------
    >>> from sklearn_lib.tasks import digits_mlp_preset
    >>> preset = digits_mlp_preset(seed=0, hidden=(16,), epochs=50)
    >>> preset.adapter.node_layers
    ('input', '1', '2')
    >>> preset.X_train.shape[1], len(preset.X_test)
    (64, 540)
    """
    import torch

    from sklearn_lib.adapters import MLPAdapter
    from sklearn_lib.tasks._mlp import load_digits_split, train_mlp_classifier

    X_train, X_test, y_train, y_test = load_digits_split(test_size=test_size, seed=seed)
    model = train_mlp_classifier(X_train, y_train, hidden=tuple(hidden), epochs=epochs, seed=seed)
    with torch.no_grad():
        pred = model(torch.as_tensor(X_test, dtype=torch.float32)).argmax(1).numpy()
    acc = float((pred == y_test).mean())
    return ExperimentPreset(
        name=f"digits MLP 64-{'-'.join(map(str, hidden))}-10, seed {seed}",
        model=model,
        adapter=MLPAdapter(model),
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        basis_params=dict(random_state=seed),
        scorer_params={},
        ablation_params={},
        modularity_params=dict(random_state=seed),
        info=dict(hidden=tuple(int(h) for h in hidden), epochs=epochs, test_accuracy=acc),
    )

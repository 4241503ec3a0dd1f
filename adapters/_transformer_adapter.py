"""``TransformerAdapter``: the sequential transformer presented to the LIB estimators.

The cuts, segments and architectures are in ``adapters/_transformer_sequential.py``; this module
holds the adapter over them (node layers, activations, segments, closed forms, the metric's
forward pass) and, for adapters built from a model object, the model's own forward that the
first batch is checked against (:func:`~sklearn_lib.adapters.verify_forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sklearn_lib.adapters._check import default_rtol, verify_forward
from sklearn_lib.adapters._transformer_sequential import ACTIVATIONS, _embed, _plan, _span
from sklearn_lib.adapters._transformer_weights import TransformerWeights

__all__ = ["TransformerAdapter"]


#: Relative tolerance of the first-batch check for a model that computes a step in float32
#: whatever its dtype: about 100 float32 round-offs (eps = 1.2e-7). Measured, relative to the
#: largest logit, between such a model's own float64 forward and the exact float64 chain:
#: 8e-8 (2-block random Llama), 1.6e-7 (6 blocks), 3.9e-7 (SmolLM2-135M, 30 blocks, 16
#: positions); a reader that ignores the rotary base (1e4 for 1e5) differs by 6e-5 on a
#: 2-block Llama at 9 positions.
FLOAT32_STEP_RTOL = 1e-5

#: Rows of the first batch that :meth:`TransformerAdapter.activations` compares with the model.
_VERIFY_ROWS = 16


def _rounds_through_float32(model: Any) -> bool:
    """Whether the model's forward computes a step in float32 whatever its dtype.

    ``transformers``' RMSNorm modules (Llama, Mistral, Qwen2, ...) cast their input to float32,
    so a float64 model is only float32-accurate there; a ``TransformerBridge`` wraps the same
    modules.
    """
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return False
    return any(type(m).__name__.endswith("RMSNorm")
               and type(m).__module__.startswith("transformers.") for m in modules())


# -- the adapter -----------------------------------------------------------------------------
class TransformerAdapter:
    """Present a decoder-only transformer, given as plain weights, to the LIB estimators.

    Node layers are cuts of the sequential transformer (paper appendix A.4); see the table in
    ``adapters/_transformer_sequential.py`` and ``docs/transformers.md``. Activations have
    shape ``(batch, pos, 1 + d)``: ``f[..., 0] = 1`` is the constant of bias folding, every
    segment multiplies each bias by it, so ``segment(0) = 0``. At an ``ln*_out`` cut the last
    coordinate is the norm's scale ``sqrt(var + eps f_0**2)``; :meth:`fixed_features` reports it,
    so it stays out of the rotations.

    Weights are cast once per ``(dtype, device)`` and cached; re-create the adapter after
    changing the model's weights.

    **First-batch check.** An adapter built from a model object (:meth:`from_hf`,
    :meth:`from_hooked_transformer`, :meth:`from_bridge`, or ``HookedTransformerAdapter`` of a
    ``HookedTransformer``) keeps the model and has :attr:`reference_forward`, the model's own
    forward. The first batch :meth:`activations` sees (its first 16 sequences) is pushed
    through the chained segments and compared with it by
    :func:`~sklearn_lib.adapters.verify_forward`; a difference beyond the tolerance raises
    ``ValueError`` naming the largest difference (a reader that misses a feature of the
    architecture, a model in training mode, a forward hook). The tolerance is ``sqrt(eps)`` of
    the computation dtype relative to the largest logit (1.5e-8 in float64), except for models
    that compute a step in float32 whatever their dtype (``transformers``' RMSNorm in
    Llama-family models, a ``TransformerBridge`` around one, and a float32 transformer_lens
    ``HookedTransformer``, which casts its attention pattern to ``cfg.dtype``; see
    :meth:`reference_rtol`): their own float64 forward is
    only float32-accurate (measured, relative to the largest logit: 8e-8 for a 2-block random
    Llama, 1.6e-7 for a 6-block one, 3.9e-7 for SmolLM2-135M), so they are compared at
    ``1e-5``, about 100 float32 round-offs, still below what a reader error changes (the
    wrong rotary base: 6e-5 on a 2-block random Llama; a dropped bias: about 1e-1).
    An adapter built from plain :class:`TransformerWeights` (or from a ``LoadedTransformer``,
    a checkpoint read by our own reader) has no independent model to compare with: it has no
    ``reference_forward`` and does not check; the readers' tests
    (``tests/test_transformer_readers.py``) are the check for those.

    Parameters
    ----------
    weights : TransformerWeights
        From a reader: :func:`read_hf_model` (``transformers``), :func:`read_hooked_transformer`
        (transformer_lens 3.x), :func:`read_transformer_bridge` (transformer_lens 4.x),
        :func:`read_tl_state_dict` (a TransformerLens-format state_dict and config).
    node_layers : sequence of str, default=None
        Cut names, input side first. Default: the ``ln*_out`` and ``*_in`` cuts of every
        sublayer with a norm, the residual cut of every sublayer without one, and ``logits``
        (so every layer-norm division is a segment of its own).
    last_position_from : str, default=None
        A cut name: that cut and every later one keep only the last position (shape
        ``(batch, 1, ...)``). It must lie after the last attention layer.
    metric : {"accuracy", "loss"}, default="accuracy"
        The score the edge-ablation search uses unless told otherwise.
    label_position : int, None or "next-token", default=-1
        The position whose logits :meth:`forward_from` returns, shape ``(batch, d_vocab_out)``;
        ``None`` returns every position, shape ``(batch, pos, d_vocab_out)``.
        ``"next-token"`` is language modelling: every position that has a next token and is
        not skipped, ``skip_positions, ..., pos - 2``, shape ``(batch, pos - 1 -
        skip_positions, d_vocab_out)``; their labels are :meth:`lm_labels` ``(X) = X[:,
        skip_positions + 1:]`` (the label of position ``t`` is token ``t + 1``; the last
        position has no label and is left out).
    skip_positions : int, default=0
        Leave the first ``skip_positions`` positions out of the bases and edges (e.g. ``1``
        for the attention sink at position 0 of a language model). The model still runs on
        every position (later positions attend to the skipped ones), but the estimators
        leave them out of the activation moments (``PCAWhitener``), of the Jacobian sums
        ``M`` (input and output positions; ``LocalInteractionBasis``,
        ``GlobalInteractionBasis``) and of the edge sums (``IGEdgeScorer``), and the
        skipped positions bypass the bases: wherever a segment runs in basis coordinates
        (the Jacobians, the integration path, the ablation passes) they enter it at the
        model's own activations and leave it at the segment's own output. The ablation
        search scores the positions of ``label_position="next-token"`` (skipped ones
        excluded). Not combinable with
        ``last_position_from``.

    Attributes
    ----------
    weights : TransformerWeights
    model : object or None
        The model the weights were read from (``None`` for plain weights).
    reference_forward : callable
        Only for an adapter built from a model object:
        ``reference_forward(X, *, dtype, device)``, the model's own forward returning what
        :meth:`forward_from` returns (see :meth:`_reference_forward`). Absent for plain
        weights and a ``LoadedTransformer``, which have no independent model, so
        ``isinstance(adapter, SupportsReferenceForward)`` is ``False`` and
        :func:`~sklearn_lib.adapters.check_adapter` reports that check as skipped.
    node_layers : tuple of str
    cuts : tuple of str
        Every cut's canonical name, in forward order.
    default_metric : str
    d_model, d_vocab, d_vocab_out, n_ctx : int

    See Also
    --------
    HookedTransformerAdapter : the same, built from a transformer_lens model or checkpoint.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from sklearn_lib.adapters import TransformerAdapter
    >>> _ = torch.manual_seed(0)
    >>> cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12,
    ...                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    ...                   max_position_embeddings=16)
    >>> model = LlamaForCausalLM(cfg).double().eval()
    >>> adapter = TransformerAdapter.from_hf(model)
    >>> adapter.node_layers
    ('blocks.0.ln1_out', 'blocks.0.attn_in', 'blocks.0.ln2_out', 'blocks.0.mlp_in',
     'ln_final_out', 'unembed_in', 'logits')
    >>> adapter.fixed_features("blocks.0.ln1_out"), adapter.is_norm_division("blocks.0.ln1_out")
    ((0, 9), True)
    >>> X = torch.tensor([[1, 5, 2, 7]])
    >>> f = adapter.activations(X, ["blocks.0.ln1_out"], dtype=torch.float64, device="cpu")
    >>> logits = adapter.forward_from("blocks.0.ln1_out", dtype=torch.float64, device="cpu")(
    ...     f["blocks.0.ln1_out"])
    >>> bool(torch.allclose(logits, model(X).logits[:, -1], atol=1e-12))
    True
    """

    def __init__(
        self,
        weights: TransformerWeights,
        node_layers: Sequence[str] | None = None,
        last_position_from: str | None = None,
        metric: str = "accuracy",
        label_position: int | str | None = -1,
        skip_positions: int = 0,
    ) -> None:
        if not isinstance(weights, TransformerWeights):
            raise TypeError(
                f"TransformerAdapter needs TransformerWeights; got {type(weights).__name__}. "
                "Use TransformerAdapter.from_hf(model) for a transformers model, or "
                "HookedTransformerAdapter(model) for a transformer_lens one."
            )
        self._init(weights, node_layers, last_position_from, metric, label_position,
                   skip_positions)

    def _init(self, weights, node_layers, last_position_from, metric, label_position,
              skip_positions=0, model: Any = None, source: str | None = None) -> None:
        # Validation here, as MLPAdapter does: an adapter is a view of a model, not an
        # estimator, and a wrong cut name should fail where it is written.
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss'. Got {metric!r} instead.")
        if label_position is not None and label_position != "next-token" and (
            isinstance(label_position, bool) or not isinstance(label_position, (int, np.integer))
        ):
            raise ValueError(
                f"label_position must be an int or None. Got {label_position!r} instead; for "
                "next-token labels at every position pass 'next-token'."
            )
        if isinstance(skip_positions, bool) or not isinstance(
            skip_positions, (int, np.integer)
        ) or skip_positions < 0:
            raise ValueError(
                f"skip_positions must be an int in the range [0, inf). Got {skip_positions!r} "
                "instead."
            )
        cuts, ops = _plan(weights)  # raises for unsupported blocks
        for block in weights.blocks:
            if block.mlp is not None and block.mlp.act_fn not in ACTIVATIONS:
                raise ValueError(
                    f"Unknown activation {block.mlp.act_fn!r}; supported: "
                    f"{sorted(ACTIVATIONS)}."
                )
        self.weights = weights
        self._set_model(model, source)
        self.default_metric = metric
        self.label_position = (
            label_position if label_position in (None, "next-token") else int(label_position)
        )
        self.skip_positions = int(skip_positions)
        self.d_model = weights.d_model
        self.d_vocab = weights.d_vocab
        self.d_vocab_out = weights.d_vocab_out
        self.n_ctx = weights.n_ctx
        self._plan_cuts, self._ops = cuts, ops
        self._cache: dict[tuple[torch.dtype, torch.device], TransformerWeights] = {}
        self._cuts: dict[str, int] = {}
        for k, cut in enumerate(cuts):
            for name in (cut.name, *cut.aliases):
                self._cuts[name] = k
        self.cuts = tuple(c.name for c in cuts)
        available = ", ".join(repr(n) for n in self._cuts)

        if node_layers is None:
            node_layers = self._default_node_layers()
        node_layers = [str(n) for n in node_layers]
        for name in node_layers:
            if name not in self._cuts:
                raise ValueError(f"Unknown node layer {name!r}. Available: {available}.")
        idx = [self._cuts[n] for n in node_layers]
        if len(node_layers) < 2 or any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(
                "node_layers must name at least two distinct cuts in forward order (note that "
                "blocks.{i}.hook_resid_post and blocks.{i+1}.hook_resid_pre are the same cut); "
                f"got {node_layers}."
            )
        self.node_layers = tuple(node_layers)

        self._last_from: int | None = None
        if last_position_from is not None:
            if self.skip_positions:
                raise ValueError(
                    f"skip_positions={self.skip_positions} cannot be combined with "
                    f"last_position_from={last_position_from!r}, which keeps only the last "
                    "position. Pass one of them."
                )
            if last_position_from not in self._cuts:
                raise ValueError(
                    f"Unknown last_position_from {last_position_from!r}. Available: {available}."
                )
            cut = self._cuts[last_position_from]
            last_attn = max(k for k, op in enumerate(ops) if op.kind in ("attn", "parallel"))
            if cut <= last_attn:
                raise ValueError(
                    f"last_position_from={last_position_from!r} drops positions that the "
                    f"attention of block {ops[last_attn].block} still reads. Choose a cut "
                    f"after the last attention layer, e.g. {cuts[last_attn + 1].name!r}."
                )
            if self.label_position not in (-1, None):
                raise ValueError(
                    f"label_position must be -1 (or None) when last_position_from is set, since "
                    f"only the last position is kept. Got {label_position!r} instead."
                )
            self._last_from = cut
        self.last_position_from = last_position_from

    def _default_node_layers(self) -> list[str]:
        names = []
        for k, cut in enumerate(self._plan_cuts):
            nxt = self._ops[k].kind if k < len(self._ops) else None
            if cut.layout in ("scaled", "normed", "normed2", "final", "logits"):
                names.append(cut.name)
            elif nxt in ("attn", "mlp", "parallel", "unembed"):  # no norm after this cut
                names.append(cut.name)
        return names

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def _from_model(cls, weights: TransformerWeights, model: Any, source: str,
                    kwargs: dict) -> "TransformerAdapter":
        adapter = cls.__new__(cls)
        TransformerAdapter.__init__(adapter, weights, **kwargs)
        adapter._set_model(model, source)
        return adapter

    @classmethod
    def from_hf(cls, model: Any, **kwargs: Any) -> "TransformerAdapter":
        """An adapter for a HuggingFace ``transformers`` causal LM.

        The adapter keeps ``model``: its own forward is :attr:`reference_forward`, which the
        first batch is checked against.

        Parameters
        ----------
        model : transformers.PreTrainedModel
            ``GPT2LMHeadModel``, ``GPTNeoForCausalLM``, ``GPTNeoXForCausalLM``,
            ``LlamaForCausalLM`` (SmolLM2), ``MistralForCausalLM`` or ``Qwen2ForCausalLM``.
        **kwargs
            Passed to :class:`TransformerAdapter`.
        """
        from sklearn_lib.adapters._read_hf import read_hf_model

        return cls._from_model(read_hf_model(model), model, "hf", kwargs)

    @classmethod
    def from_hooked_transformer(cls, model: Any, **kwargs: Any) -> "TransformerAdapter":
        """An adapter for a transformer_lens 3.x ``HookedTransformer`` (kept as the reference)."""
        from sklearn_lib.adapters._read_hooked import read_hooked_transformer

        return cls._from_model(read_hooked_transformer(model), model, "hooked", kwargs)

    @classmethod
    def from_bridge(cls, bridge: Any, **kwargs: Any) -> "TransformerAdapter":
        """An adapter for a transformer_lens 4.x ``TransformerBridge`` (reads its HF model).

        The bridge's own forward (``return_type="logits"``) is the reference.
        """
        from sklearn_lib.adapters._read_bridge import read_transformer_bridge

        return cls._from_model(read_transformer_bridge(bridge), bridge, "bridge", kwargs)

    def __sklearn_clone__(self) -> "TransformerAdapter":
        return self

    def __repr__(self) -> str:
        extra = ""
        if self.last_position_from is not None:
            extra += f", last_position_from={self.last_position_from!r}"
        if self.label_position != -1:
            extra += f", label_position={self.label_position!r}"
        if self.skip_positions:
            extra += f", skip_positions={self.skip_positions}"
        return (
            f"{type(self).__name__}(n_layers={self.weights.n_layers}, d_model={self.d_model}, "
            f"node_layers={list(self.node_layers)}{extra}, metric={self.default_metric!r})"
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        state.pop("reference_forward", None)  # a bound method: rebuilt by __setstate__
        return state

    # -- helpers -----------------------------------------------------------------------------
    def _weights(self, dtype: torch.dtype, device: torch.device | str) -> TransformerWeights:
        """The weights cast to ``(dtype, device)``, once (cached)."""
        key = (dtype, torch.device(device))
        w = self._cache.get(key)
        if w is None:
            w = self._cache[key] = self.weights.to(dtype, key[1])
        return w

    def _cut(self, layer: str) -> int:
        if layer not in self.node_layers:
            raise ValueError(
                f"Unknown node layer {layer!r}. This adapter's node layers: "
                f"{list(self.node_layers)}."
            )
        return self._cuts[layer]

    def _next_cut(self, layer: str) -> int | None:
        i = self.node_layers.index(layer)
        if i == len(self.node_layers) - 1:
            return None
        return self._cuts[self.node_layers[i + 1]]

    def _run(self, w: TransformerWeights, start: int, stop: int):
        return _span(w, self._plan_cuts, self._ops, start, stop, self._last_from)

    # -- the model's own forward and the first-batch check -------------------------------------
    def _set_model(self, model: Any, source: str | None) -> None:
        """Keep the model; with a ``source``, its forward becomes ``self.reference_forward``."""
        self.model = model
        self._source = source  # "hf", "hooked" or "bridge": how to call the model's forward
        self._verified = False
        self.__dict__.pop("reference_forward", None)
        if source is not None:
            self.reference_forward = self._reference_forward

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set_model(self.model, self._source)
        self._verified = state.get("_verified", False)

    def _reference_forward(self, X: Any, *, dtype: torch.dtype,
                           device: torch.device | str) -> Tensor:
        """The model's own forward on token ids ``X``: what :meth:`forward_from` returns.

        Runs the model's ``forward`` through ``torch.func.functional_call`` with its
        parameters and buffers cast to ``dtype`` on ``device`` (the user's model is not
        modified) and returns the logits at ``label_position`` (of the last position when
        ``last_position_from`` is set), shape ``(batch, d_vocab_out)``, or every kept
        position with ``label_position=None``. A ``transformers`` model's output object gives
        its ``.logits``.
        """
        X = self.check_input(X)
        device = torch.device(device)
        model = self.model
        tokens = torch.as_tensor(X).to(device=device, dtype=torch.long)
        tensors = {
            name: t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        kwargs: dict[str, Any] = {}
        if self._source == "hf":
            kwargs = {"use_cache": False}
        elif self._source == "bridge":
            kwargs = {"return_type": "logits"}
        with torch.no_grad():
            out = torch.func.functional_call(model, tensors, (tokens,), kwargs)
        logits = out if isinstance(out, Tensor) else out.logits
        if self.last_position_from is not None:
            logits = logits[:, -1:, :]
        if self.label_position == "next-token":
            return logits[:, self.skip_positions:-1, :]
        return logits if self.label_position is None else logits[:, self.label_position, :]

    def reference_rtol(self, dtype: torch.dtype) -> float:
        """The relative tolerance of the first-batch check in ``dtype``.

        ``sqrt(eps)`` of ``dtype`` (1.5e-8 in float64, 3.5e-4 in float32), unless the model's
        own forward rounds a step to a less precise dtype whatever dtype it runs in:
        ``transformers``' RMSNorm computes in float32, a transformer_lens
        ``HookedTransformer`` casts its attention pattern to ``cfg.dtype``. Such a forward is
        no more accurate than that step: at least ``1e-5`` (about 100 float32 round-offs) for
        float32 steps, ``sqrt(eps)`` of the step's dtype for half precision.
        """
        base = default_rtol(dtype)
        step = self._step_dtype()
        if step is None or torch.finfo(step).eps <= torch.finfo(dtype).eps:
            return base
        return max(base, FLOAT32_STEP_RTOL if step == torch.float32 else default_rtol(step))

    def _step_dtype(self) -> torch.dtype | None:
        """The least precise dtype the model's own forward rounds to, whatever it runs in."""
        if self.model is None or self._source is None:
            return None
        steps = []
        if self._source == "hooked":
            cfg_dtype = getattr(getattr(self.model, "cfg", None), "dtype", None)
            if isinstance(cfg_dtype, torch.dtype) and cfg_dtype.is_floating_point:
                steps.append(cfg_dtype)
        if _rounds_through_float32(self.model):
            steps.append(torch.float32)
        return max(steps, key=lambda d: torch.finfo(d).eps) if steps else None

    def _verify(self, X: Any, dtype: torch.dtype, device: torch.device | str) -> None:
        """The chained segments and ``forward_from`` must reproduce the model's own forward."""
        self._verified = True  # verify_forward reads activations(), which must not re-enter
        try:
            verify_forward(self, X[:_VERIFY_ROWS], dtype=dtype, device=device,
                           rtol=self.reference_rtol(dtype))
        except ValueError as err:
            self._verified = False
            raise ValueError(
                f"{type(self).__name__} ({type(self.model).__name__}): {err} If the model is in "
                "evaluation mode without hooks, the reader misses a feature of this "
                "architecture; please report it with the model's config."
            ) from None

    # -- the protocol ------------------------------------------------------------------------
    def check_input(self, X: Any) -> np.ndarray | Tensor:
        """Validate token sequences: an int array of shape (n_samples, n_positions).

        Parameters
        ----------
        X : array-like or Tensor of shape (n_samples, n_positions)
            Token ids in ``[0, d_vocab)``, ``n_positions <= n_ctx``.

        Returns
        -------
        X : ndarray or Tensor
            The input (numpy arrays as ``np.asarray``), unchanged otherwise.
        """
        if isinstance(X, Tensor):
            X_arr: np.ndarray | Tensor = X.detach()
            integer = not X_arr.is_floating_point() and not X_arr.is_complex() and (
                X_arr.dtype != torch.bool
            )
        else:
            X_arr = np.asarray(X)
            integer = np.issubdtype(X_arr.dtype, np.integer)
        if not integer:
            raise ValueError(
                f"Model inputs must be integer token ids; got dtype {X_arr.dtype}. Tokenize the "
                "text first, or cast the array with .astype(np.int64) / .long()."
            )
        if X_arr.ndim != 2:
            raise ValueError(
                f"Model inputs must have shape (n_samples, n_positions); got shape "
                f"{tuple(X_arr.shape)}. Use X[None, :] for a single sequence."
            )
        n, n_pos = X_arr.shape
        if n == 0:
            raise ValueError("Found 0 samples in the model inputs; at least 1 is required.")
        if n_pos == 0 or n_pos > self.n_ctx:
            raise ValueError(
                f"Model inputs have {n_pos} positions; the model takes between 1 and "
                f"n_ctx={self.n_ctx}. Truncate the sequences to at most {self.n_ctx} tokens."
            )
        low, high = int(X_arr.min()), int(X_arr.max())
        if low < 0 or high >= self.d_vocab:
            bad = low if low < 0 else high
            raise ValueError(
                f"Model inputs contain token {bad}, outside the vocabulary [0, {self.d_vocab}). "
                "Check the tokenizer matches the model."
            )
        if self.label_position == "next-token" or self.skip_positions:
            need = self.skip_positions + (2 if self.label_position == "next-token" else 1)
            if n_pos < need:
                raise ValueError(
                    f"Model inputs have {n_pos} positions; skip_positions="
                    f"{self.skip_positions} with label_position={self.label_position!r} "
                    f"needs at least {need}. Use longer sequences or skip fewer positions."
                )
        if isinstance(self.label_position, int) and not -n_pos <= self.label_position < n_pos:
            raise ValueError(
                f"label_position={self.label_position} is out of range for inputs with "
                f"{n_pos} positions."
            )
        return X_arr

    def activations(
        self, X: Any, layers: Sequence[str], *, dtype: torch.dtype, device: torch.device | str
    ) -> dict[str, Tensor]:
        """Activations of the named node layers, constant first.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_positions)
            Token ids.
        layers : sequence of str
            Node layers to return.
        dtype, device
            Of the returned tensors (the computation runs in them).

        Returns
        -------
        activations : dict of str to Tensor of shape (n_samples, pos, 1 + d)
            ``pos = 1`` from ``last_position_from`` on.

        Raises
        ------
        ValueError
            On the first call of an adapter built from a model object, if the chained
            segments do not reproduce the model's own forward on the first 16 sequences.
        """
        wanted = sorted({self._cut(name) for name in layers})
        X = self.check_input(X)
        if not self._verified and self._source is not None:
            self._verify(X, dtype, device)
        w = self._weights(dtype, device)
        tokens = torch.as_tensor(X, device=torch.device(device)).long()
        with torch.no_grad():
            f = _embed(w, tokens)
            by_cut = {0: f}
            cut = 0
            for nxt in wanted:
                if nxt != cut:
                    f = self._run(w, cut, nxt)(f)
                    cut = nxt
                by_cut[cut] = f
        return {name: by_cut[self._cuts[name]] for name in layers}

    def segment(
        self, layer: str, *, dtype: torch.dtype, device: torch.device | str
    ) -> Callable[[Tensor], Tensor]:
        """The map from node layer ``layer`` to the next node layer, as a pure torch function.

        Shape ``(batch, pos_in, 1 + d) -> (batch, pos_out, 1 + d')``; every bias is multiplied
        by ``f[..., :1]``, which is passed through, so ``F(0) = 0``.
        """
        start = self._cut(layer)
        stop = self._next_cut(layer)
        if stop is None:
            raise ValueError(f"{layer!r} is the last node layer; it has no segment after it.")
        return self._run(self._weights(dtype, device), start, stop)

    def is_norm_division(self, layer: str) -> bool:
        """Whether the segment after ``layer`` divides by a norm's scale ("ln out").

        Such a segment is homogeneous of degree 0, so integrated gradients from the origin
        are not complete on it (``IGEdgeScorer`` does not warn about it).
        """
        start = self._cut(layer)
        stop = self._next_cut(layer)
        if stop is None:
            return False
        return any(op.kind in ("ln_out", "ln_out2") for op in self._ops[start:stop])

    def composite_segment(
        self, layer: str, in_map: Tensor, out_map: Tensor, *, dtype: torch.dtype,
        device: torch.device | str,
    ) -> Any:
        """A closed-form :class:`~sklearn_lib._segments.CompositeSegment`, or ``None``.

        ``G(z) = segment(z @ in_map.T) @ out_map.T`` from ``layer`` to the next node layer,
        with its Jacobians, Jacobian Gram matrix, integrated-gradient attributions and ablated
        forward passes in closed form. Covered: one sublayer between residual cuts of a model
        without norms (``adapters/_transformer_closed_forms.py``); the norm-split cuts of
        language models: a norm's "ln in" and "ln out", an MLP (plain or gated, with the next
        "ln in"), the unembedding (``adapters/_norm_closed_forms.py``) and attention with
        rotary positions, grouped queries and windows (``adapters/_attention_closed_forms.py``).
        Anything else (parallel blocks, spans that keep only the last position after a norm)
        returns ``None`` and the caller uses the generic ``torch.func`` composite.
        """
        from sklearn_lib.adapters._transformer_closed_forms import closed_form_segment

        start = self._cut(layer)
        stop = self._next_cut(layer)
        if stop is None:
            return None
        w = self._weights(dtype, device)
        device = torch.device(device)
        last = self._last_from is not None and stop >= self._last_from
        return closed_form_segment(
            w, self._ops[start:stop], self._plan_cuts[start].layout,
            self._plan_cuts[stop].layout, last, self._run(w, start, stop),
            in_map.to(dtype=dtype, device=device), out_map.to(dtype=dtype, device=device),
        )

    def forward_from(
        self, layer: str, *, dtype: torch.dtype, device: torch.device | str
    ) -> Callable[[Tensor], Tensor]:
        """The rest of the network: node layer ``layer`` to the logits the metric reads.

        Returns a function of shape ``(batch, pos, 1 + d) -> (batch, d_vocab_out)`` (logits at
        ``label_position``), or ``(batch, pos, d_vocab_out)`` when ``label_position=None``, or
        ``(batch, pos - 1 - skip_positions, d_vocab_out)`` when
        ``label_position="next-token"`` (positions ``skip_positions, ..., pos - 2``).
        """
        run = self._run(self._weights(dtype, device), self._cut(layer),
                        len(self._plan_cuts) - 1)
        position = self.label_position

        skip = self.skip_positions

        def output(f: Tensor) -> Tensor:
            logits = run(f)[..., 1:]
            if position == "next-token":
                return logits[..., skip:-1, :]
            return logits if position is None else logits[..., position, :]

        return output

    def lm_labels(self, X: Any) -> np.ndarray:
        """Next-token labels of token sequences, for ``label_position="next-token"``.

        The label of position ``t`` is token ``t + 1``. The last position has no next token
        and the first ``skip_positions`` are skipped, so the labels are
        ``X[:, skip_positions + 1:]``, aligned with :meth:`forward_from`'s positions
        ``skip_positions, ..., n_positions - 2``. ``EdgeAblationSearch`` calls this when it is
        given no labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_positions)
            Token ids.

        Returns
        -------
        y : ndarray of shape (n_samples, n_positions - 1 - skip_positions), dtype int64

        Examples
        --------
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from sklearn_lib.adapters import TransformerAdapter
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2,
        ...                                    n_positions=8)).eval()
        >>> adapter = TransformerAdapter.from_hf(model, metric="loss",
        ...                                      label_position="next-token", skip_positions=1)
        >>> adapter.lm_labels([[3, 1, 4, 1, 5]])
        array([[4, 1, 5]])
        """
        if self.label_position != "next-token":
            raise ValueError(
                f"lm_labels needs label_position='next-token' (next-token labels at every "
                f"position); this adapter has label_position={self.label_position!r}. Build it "
                "with label_position='next-token', or pass the labels yourself."
            )
        X = self.check_input(X)
        X = X.cpu().numpy() if isinstance(X, Tensor) else np.asarray(X)
        return X[:, self.skip_positions + 1:].astype(np.int64)

    def fixed_features(self, layer: str) -> tuple[int, ...]:
        """``(0,)``, or ``(0, 1 + d_model)`` at an ``ln*_out`` cut (the norm's scale)."""
        cut = self._cut(layer)
        return (0, 1 + self.d_model) if self._plan_cuts[cut].layout == "scaled" else (0,)

    def logits(self, X: Any, *, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> Tensor:
        """The model's logits ``(n_samples, pos, d_vocab_out)`` by the sequential transformer.

        Runs all cuts (no ``last_position_from`` slicing), for checks against the model.
        """
        X = self.check_input(X)
        w = self._weights(dtype, device)
        tokens = torch.as_tensor(X, device=torch.device(device)).long()
        with torch.no_grad():
            f = _span(w, self._plan_cuts, self._ops, 0, len(self._plan_cuts) - 1, None)(
                _embed(w, tokens))
        return f[..., 1:]

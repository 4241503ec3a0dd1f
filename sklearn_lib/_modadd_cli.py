"""``sklearn-lib modadd``: the paper's modular-addition experiment on one checkpoint.

Only the standard library at the top: ``--help`` must not load torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _check_modadd(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model loads (raises ``UsageError``)."""
    from sklearn_lib._cli import (
        UsageError,
        check_input_file,
        check_json_file,
        check_output_file,
        figure_suffixes,
        shipped_seeds,
    )

    if args.checkpoint is None:
        seeds = shipped_seeds()
        seed = 0 if args.seed is None else args.seed
        if seed not in seeds:
            raise UsageError("--seed", f"no shipped checkpoint for seed {seed}; the package "
                                       f"ships seeds {', '.join(map(str, seeds))} (or pass "
                                       f"--checkpoint and --config for your own model)")
        if args.config is not None:
            raise UsageError("--config", "only applies with --checkpoint (a shipped seed "
                                         "brings its own config)")
    else:
        check_input_file("--checkpoint", args.checkpoint)
        if args.config is None:
            guess = Path(args.checkpoint).expanduser().with_name("config.json")
            if not guess.is_file():
                raise UsageError("--config", f"not given and no config.json next to the "
                                             f"checkpoint ({str(guess)!r}); pass --config")
            check_json_file("--checkpoint", guess)
        else:
            check_json_file("--config", args.config)
    if args.json is not None:
        check_output_file("--json", args.json)
    if args.figure is not None:
        check_output_file("--figure", args.figure, suffixes=figure_suffixes())
    if args.json is not None and args.figure is not None and (
            Path(args.json).expanduser().resolve() == Path(args.figure).expanduser().resolve()):
        raise UsageError("--figure", "names the same file as --json; give two paths")


def _print_result(result: dict) -> None:
    print(f"{result['basis'].upper()} on {result['checkpoint']} "
          f"(test accuracy {result['model_test_accuracy']:.6f}, "
          f"{result['n_train']} train / {result['n_test']} test; "
          f"truncation {_truncation(result['rtol'], result['atol'])})")
    header = (f"{'layer pair':52s} {'dims':>9s} {'needed':>7s} {'of':>6s} "
              f"{'acc@needed':>10s} {'acc@-1':>8s}")
    print(header)
    for p in result["pairs"]:
        print(f"{p['layer_in'] + ' -> ' + p['layer_out']:52s} "
              f"{str(p['dims_in']) + '->' + str(p['dims_out']):>9s} {p['n_edges_needed']:7d} "
              f"{p['n_edges_total']:6d} {p['accuracy_at_needed']:10.6f} "
              f"{p['accuracy_at_one_fewer']:8.6f}")
    s = result["seconds"]
    print(f"modularity Q = {result['modularity']:.3f} ({result['n_communities']} communities); "
          f"build {s['build']:.1f} s, ablation {s['ablation']:.1f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB")
    for layer, labels in result["fourier_labels"].items():
        print(f"  {layer}: " + "; ".join(labels[:5]))


def _truncation(rtol, atol) -> str:
    """The truncation rule used: ``rtol=None`` is the estimators' round-off rule (docs/math.md)."""
    rel = "round-off rule (rtol=None)" if rtol is None else f"rtol={rtol:g}"
    return rel if not atol else f"{rel}, atol={atol:g}"


def _modadd(args: argparse.Namespace) -> int:
    from sklearn_lib.tasks._modadd_experiment import run_modadd_experiment

    verbose = not args.quiet
    result = run_modadd_experiment(
        args.checkpoint, args.config, seed=0 if args.seed is None else args.seed,
        basis=args.basis, frac_train=args.frac_train, split_seed=args.split_seed,
        tolerance=args.tolerance, verbose=verbose, ablation_dtype=args.ablation_dtype,
        rtol=args.rtol, atol=args.atol, figure=args.figure, batch_size=args.batch_size,
    )
    _print_result(result)
    if args.figure:
        print(f"wrote {args.figure}", file=sys.stderr)
    if args.json:
        from sklearn_lib._cli import write_json

        write_json(result, args.json)
    return 0


def add_modadd_parser(sub, **kwargs) -> argparse.ArgumentParser:
    """Add the ``modadd`` subcommand; ``kwargs`` go to ``add_parser`` (parents, formatter)."""
    from sklearn_lib._cli import nonnegative_float, nonnegative_int, open_fraction, positive_int

    p = sub.add_parser(
        "modadd",
        help="LIB/GIB/PCA on a modular-addition transformer (default: the shipped seed 0).",
        description="The paper's modular-addition experiment (section 3.1): fit a basis on the "
                    "training pairs (float64; node layers resid_pre, resid_mid, resid_post, "
                    "logits; last position from resid_mid; logits unrotated), score IG edges, "
                    "find the edges needed per layer pair on the test pairs, run Leiden, and "
                    "label features by their Fourier terms. The same set-up in Python: "
                    "sklearn_lib.tasks.modadd_preset(seed).",
        **kwargs,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=nonnegative_int, default=None,
                       help="shipped checkpoint to analyse (0, 2, 3, 4 and 5 ship; default: 0 "
                            "unless --checkpoint is given)")
    which.add_argument("--checkpoint",
                       help="your own HookedTransformer state_dict (.pt) instead of a shipped "
                            "seed (default: none, the shipped --seed is used)")
    p.add_argument("--config",
                   help="config.json of --checkpoint (model and dataset sections; default: the "
                        "config.json next to the checkpoint)")
    p.add_argument("--basis", choices=["lib", "gib", "pca"], default="lib",
                   help="LocalInteractionBasis, GlobalInteractionBasis or the PCA baseline")
    p.add_argument("--frac-train", type=open_fraction, default=None,
                   help="training fraction of the split (default: the config's "
                        "dataset.frac_train)")
    p.add_argument("--split-seed", type=nonnegative_int, default=None,
                   help="seed of the train/test split (default: the config's dataset.seed)")
    p.add_argument("--tolerance", type=nonnegative_float, default=1e-3,
                   help="test accuracy the ablation search may lose")
    p.add_argument("--rtol", type=nonnegative_float, default=None,
                   help="truncation: drop eigenvalues below rtol times the largest (default: "
                        "the basis estimator's own default)")
    p.add_argument("--atol", type=nonnegative_float, default=None,
                   help="truncation: absolute eigenvalue floor (default: the basis estimator's "
                        "own default)")
    p.add_argument("--ablation-dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the ablation forward passes")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="rows per batch (bounds the memory of Jacobians and attributions)")
    p.add_argument("--json", help="write the results as JSON to this file (default: not written)")
    p.add_argument("--figure",
                   help="draw the interaction graph with Fourier labels into this file; the "
                        "format follows the extension, e.g. lib.png (default: no figure)")
    p.set_defaults(func=_modadd, check=_check_modadd)
    return p

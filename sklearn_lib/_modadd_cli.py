"""``sklearn-lib modadd``: the paper's modular-addition experiment on one checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _modadd(args: argparse.Namespace) -> int:
    from sklearn_lib.tasks._modadd_experiment import run_modadd_experiment

    result = run_modadd_experiment(
        args.checkpoint, args.config, basis=args.basis, frac_train=args.frac_train,
        split_seed=args.split_seed, verbose=not args.quiet, ablation_dtype=args.ablation_dtype,
        rtol=args.rtol, atol=args.atol, figure=args.figure, batch_size=args.batch_size,
    )
    print(f"{result['basis'].upper()} on {result['checkpoint']} "
          f"(test accuracy {result['model_test_accuracy']:.6f}, "
          f"{result['n_train']} train / {result['n_test']} test)")
    header = f"{'layer pair':52s} {'dims':>9s} {'needed':>7s} {'of':>6s} {'acc@needed':>10s} {'acc@-1':>8s}"
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def add_modadd_parser(sub) -> None:
    p = sub.add_parser(
        "modadd",
        help="LIB/GIB/PCA on a modular-addition transformer (default: the shipped seed 0).",
    )
    p.add_argument("--checkpoint", help="HookedTransformer state_dict (.pt)")
    p.add_argument("--config", help="config.json (model, dataset, train sections)")
    p.add_argument("--basis", choices=["lib", "gib", "pca"], default="lib")
    p.add_argument("--frac-train", type=float, default=None)
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--rtol", type=float, default=1e-13,
                   help="truncation relative to the largest eigenvalue (0: absolute cut only)")
    p.add_argument("--atol", type=float, default=1e-15, help="absolute truncation floor")
    p.add_argument("--ablation-dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--batch-size", type=int, default=256,
                   help="rows per batch (bounds the memory of Jacobians and attributions)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--figure", help="write the interaction graph with Fourier labels (PNG)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_modadd)

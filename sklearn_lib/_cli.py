"""Command line: ``sklearn-lib demo`` and ``sklearn-lib modadd``. A thin layer over the estimators."""

from __future__ import annotations

import argparse
import sys

from sklearn_lib._modadd_cli import add_modadd_parser


def _demo(args: argparse.Namespace) -> int:
    from sklearn_lib._demo import run_demo

    run_demo(args.out, seed=args.seed, verbose=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sklearn-lib", description="The Local Interaction Basis as scikit-learn estimators."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="LIB vs PCA on a digits MLP trained in seconds (no downloads)."
    )
    demo.add_argument("--out", default="sklearn-lib-demo", help="folder for the figure and graphs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    add_modadd_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

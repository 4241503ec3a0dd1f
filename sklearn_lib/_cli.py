"""Command line: ``sklearn-lib demo``, ``sklearn-lib modadd`` and ``sklearn-lib lm``. A thin layer over the estimators.

Only the standard library is imported at the top of the command-line modules, so ``--help``
and argument errors answer at once; torch, scikit-learn and matplotlib load when the work
starts. Arguments and output paths are checked before any work: a bad one ends the command in
a second with one line naming the flag and exit status 2. An error during the work prints one
line and exits with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from sklearn_lib._lm_cli import add_lm_parser
from sklearn_lib._modadd_cli import add_modadd_parser

__all__ = ["main", "build_parser"]

#: Exit status of a command-line usage error (as argparse's own).
USAGE_ERROR = 2


class UsageError(Exception):
    """A command-line argument that cannot work, found before any work starts."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")
        self.flag = flag


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: argument --flag: problem (see --help)``."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` unless the help already says what a None default means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def write_json(result: dict, path: str) -> None:
    """Write a command's results as JSON (its folder was checked before the work) and say so."""
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


# --- argument types: each raises ArgumentTypeError, which argparse names with the flag --------

def _int_at_least(low: int, name: str):
    """An argparse type: an int >= ``low``, named ``name`` in its messages."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {name}, got {value}")
        return value

    parse.__name__ = parse.__qualname__ = name.replace(" ", "_")
    return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A float strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


# --- path checks, run before any work ------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable_folder(flag: str, folder: Path) -> None:
    """``folder`` exists as a writable folder, or can be created under a writable one."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        if base == folder:
            raise UsageError(flag, f"{str(base)!r} is a file, not a folder; choose another path")
        raise UsageError(flag, f"{str(base)!r} is a file, so the folder {str(folder)!r} "
                               f"cannot be created; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        if base == folder:
            message = f"folder {str(base)!r} is not writable; choose another path"
        else:
            message = (f"folder {str(folder)!r} cannot be created: {str(base)!r} is not "
                       f"writable; choose another path")
        raise UsageError(flag, message)


def check_output_file(flag: str, path: str, *, suffixes: set[str] | None = None) -> Path:
    """An output file we can write: not a folder, its folder creatable, a known format.

    Raises
    ------
    UsageError
        Naming ``flag`` and the problem.
    """
    p = Path(path).expanduser()
    if path.endswith(("/", os.sep)) or p.is_dir():
        example = p / ("graph.png" if suffixes else "results.json")
        raise UsageError(flag, f"{path!r} is a folder; give a file name such as "
                               f"{str(example)!r}")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        found = f"extension {p.suffix!r}" if p.suffix else "no extension"
        raise UsageError(flag, f"{path!r} has {found}; the figure format follows the "
                               f"extension, one of {', '.join(sorted(suffixes))}")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(flag, f"{path!r} exists and is not writable; choose another path")
    _check_creatable_folder(flag, p.parent if str(p.parent) else Path("."))
    return p


def check_output_folder(flag: str, path: str) -> Path:
    """An output folder: an existing writable folder, or one that can be created."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(flag, f"{path!r} is a file, not a folder; choose a folder name")
    _check_creatable_folder(flag, p)
    return p


def check_input_file(flag: str, path: str) -> Path:
    """An existing, readable file."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise UsageError(flag, f"{path!r} {what}; give the path of a file")
    if not os.access(p, os.R_OK):
        raise UsageError(flag, f"{path!r} is not readable")
    return p


def check_json_file(flag: str, path: str | Path) -> dict:
    """An existing file holding a JSON object."""
    p = check_input_file(flag, str(path))
    try:
        value = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(flag, f"{str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(flag, f"{str(path)!r} holds a JSON {type(value).__name__}, "
                               f"not an object with model and dataset sections")
    return value


def figure_suffixes() -> set[str]:
    """File extensions matplotlib can write (imports matplotlib's backend base only)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return {"." + s for s in FigureCanvasBase.get_supported_filetypes()}


def shipped_seeds() -> list[int]:
    """Seeds of the modular-addition checkpoints in the package's data folder."""
    root = Path(__file__).resolve().parent / "data" / "modadd"
    seeds = []
    for d in root.glob("seed*"):
        if d.name[4:].isdigit() and (d / "model_state_dict.pt").is_file():
            seeds.append(int(d.name[4:]))
    return sorted(seeds)


# --- the demo -------------------------------------------------------------------------------------

def _check_demo(args: argparse.Namespace) -> None:
    check_output_folder("--out", args.out)


def _demo(args: argparse.Namespace) -> int:
    from sklearn_lib._demo import run_demo

    run_demo(args.out, seed=args.seed, verbose=not args.quiet)
    return 0


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true",
                        help="no progress bars or phase messages; the results are still printed")
    common.add_argument("--debug", action="store_true",
                        help="on an error during the work, show the full traceback")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``sklearn-lib`` parser with its subcommands."""
    parser = _Parser(
        prog="sklearn-lib",
        description="The Local Interaction Basis (arXiv:2405.10928) as scikit-learn "
                    "estimators: run the digits demo, the paper's modular-addition experiment "
                    "or its language-model experiment.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,modadd,lm}")
    common = _common_flags()
    demo = sub.add_parser(
        "demo", parents=[common], formatter_class=_HelpFormatter,
        help="LIB vs PCA on a digits MLP trained in seconds (no downloads).",
        description="Train a ReLU MLP 64-32-32-10 on scikit-learn's digits, fit LIB and the PCA "
                    "baseline on the training split, score IG edges, search the edges needed on "
                    "the test split, find Leiden communities; print a LIB-vs-PCA table and write "
                    "the figure interaction_graph.png and the graphs (.npz) into --out.",
    )
    demo.add_argument("--out", default="sklearn-lib-demo",
                      help="folder for the figure and the graphs (created if missing)")
    demo.add_argument("--seed", type=nonnegative_int, default=0,
                      help="seed of the split, the training and the estimators")
    demo.set_defaults(func=_demo, check=_check_demo)
    add_modadd_parser(sub, parents=[common], formatter_class=_HelpFormatter)
    add_lm_parser(sub, parents=[common], formatter_class=_HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad arguments, 1: failed work)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    try:
        args.check(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc} (see '{prog} --help')", file=sys.stderr)
        return USAGE_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; --debug for the traceback
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or "(no message)"
        print(f"{prog}: error: {type(exc).__name__}: {message} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # ``python -m sklearn_lib._cli``: run the imported module's main, so that the subcommand
    # modules and this one share one UsageError class.
    from sklearn_lib._cli import main as _main

    sys.exit(_main())

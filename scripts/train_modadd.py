"""Train the shipped modular-addition transformers (seeds 0-4) one after another.

Usage: python scripts/train_modadd.py [--seeds 0 1 2 3 4] [--epochs 1500] [--out DIR]

Each seed trains at least --epochs epochs, then until its test accuracy has been 100% at every
evaluation of the last --stable-epochs epochs (at most --max-epochs).

Each seed's folder gets model_state_dict.pt, config.json and training_log.json; the stdout of
this script is kept beside them as train.log by the command in docs/modadd.md.
"""

import argparse
from pathlib import Path

from sklearn_lib.tasks._modular_addition import train_modular_addition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=1500, help="minimum epochs")
    parser.add_argument("--max-epochs", type=int, default=8000)
    parser.add_argument("--stable-epochs", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "sklearn_lib" / "data" / "modadd"
    )
    args = parser.parse_args()
    for seed in args.seeds:
        print(f"# seed {seed}", flush=True)
        result = train_modular_addition(
            args.out / f"seed{seed}",
            seed=seed,
            epochs=args.epochs,
            max_epochs=args.max_epochs,
            stable_epochs=args.stable_epochs,
            learning_rate=args.learning_rate,
            n_threads=args.threads,
        )
        print(f"# seed {seed} done: {result}", flush=True)


if __name__ == "__main__":
    main()

"""Does leaving the first position out of the bases (``skip_positions``) change the model?

LIB on one SmolLM2-135M block (float64, 32 training windows of 64 tokens of the fortunes, one
stochastic source) with ``skip_positions`` 1 and 0; for each, the held-out loss with every edge
kept (``AblationResult.base_score``: the model run through the pair's bases) against the
model's own (``EdgeAblationSearch.model_score_``). A gap above 0.1 nats means the bases alone
change the model (``BaseScoreWarning``). Writes ``benchmarks/results/lm_skip_positions.json``.

Usage: python benchmarks/lm_skip_positions.py [--block 16]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "lm_skip_positions.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=16)
    args = p.parse_args()
    import torch

    from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis
    from sklearn_lib.adapters import TransformerAdapter
    from sklearn_lib.tasks import lm_block_cuts, lm_preset

    torch.set_num_threads(2)
    preset = lm_preset("smollm2", blocks=[args.block], n_sequences=32, n_test=2,
                       n_positions=64, dtype="float64", n_stochastic_sources=1)
    n_layers = preset.info["n_layers"]
    out = dict(block=args.block, n_train=32, n_test=2, n_positions=64, dtype="float64",
               runs=[])
    for skip in (1, 0):
        t = time.perf_counter()
        adapter = TransformerAdapter.from_hf(
            preset.model, node_layers=lm_block_cuts(n_layers, [args.block]), metric="loss",
            label_position="next-token", skip_positions=skip)
        graph = LocalInteractionBasis(adapter, dtype="float64", n_stochastic_sources=1,
                                      random_state=0, batch_size=8).fit_transform(preset.X_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = IGEdgeScorer(integration="endpoint", n_stochastic_sources=1,
                                 dtype="float64", batch_size=8, random_state=0
                                 ).fit_transform(graph)
            search = EdgeAblationSearch(metric="loss", tolerance=1e9, search="gallop",
                                        dtype="float64").fit(graph, X_eval=preset.X_test)
        run = dict(skip_positions=skip, kept=[int(b.n_components) for b in graph.bases],
                   model_loss=float(search.model_score_),
                   base_loss=[float(r.base_score) for r in search.results_],
                   seconds=time.perf_counter() - t)
        print(json.dumps(run), flush=True)
        out["runs"].append(run)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

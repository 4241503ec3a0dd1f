"""Cost of LIB on one language-model block against sequence length (issue: sequence scale).

For one block of SmolLM2-135M (or the shipped tiny LM) and each window length ``T`` in
``--positions`` (64, 128, 256 by default), a fresh process loads the model, cuts the same
number of training tokens into windows of ``T`` tokens (Debian's ``fortunes``), and times
and measures the peak memory of each phase on its own:

- ``fit``: :class:`LocalInteractionBasis` on the block's cuts (moments and the Jacobian Gram
  matrix ``M`` of every layer, ``--sources`` stochastic sources over output positions);
- ``edges``: :class:`IGEdgeScorer` (Gauss-Legendre, ``--steps`` points, the same sources) on
  ``--edge-tokens`` of those tokens;
- ``ablation``: :class:`EdgeAblationSearch` on ``--eval-tokens`` held-out tokens, 0.1 nats;
  reported per probe (one probe = one ablated forward pass of every pair's segment).

Costs are per token; the scaling exponent is the slope of log(cost per token) against log T
(0: linear total cost in T; 1: quadratic). ``--target`` also runs the issue's target
configuration: LIB on one block over 256 windows of 128 tokens in float32. Each
configuration runs in its own process (model loading and imports timed apart) with
``torch`` on ``--threads`` threads; peak memory is the process's resident high-water mark,
reset before each phase. Writes ``benchmarks/results/lm_block_scaling.json`` and the section
``lm-block-scaling`` of docs/results.md.

Usage:
    python benchmarks/lm_block_scaling.py [--model smollm2] [--block 15]
        [--positions 64 128 256] [--tokens 8192] [--edge-tokens 2048] [--eval-tokens 1024]
        [--sources 1] [--steps 2] [--threads 2] [--target]
    python benchmarks/lm_block_scaling.py --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _measure import log_slope, memory_mb, reset_peak

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "lm_block_scaling.json"


def child(args) -> dict:
    """One configuration in this process: load, then fit, edges and ablation, each timed."""
    t0 = time.perf_counter()
    import numpy as np
    import torch

    from sklearn_lib import EdgeAblationSearch, IGEdgeScorer, LocalInteractionBasis
    from sklearn_lib.tasks import lm_preset

    torch.set_num_threads(args.threads)
    t_import = time.perf_counter() - t0
    T = args.child
    n_train = max(1, args.tokens // T)
    n_test = max(1, args.eval_tokens // T)
    t0 = time.perf_counter()
    preset = lm_preset(args.model, blocks=[args.block], n_sequences=n_train, n_test=n_test,
                       n_positions=T, dtype="float32", n_stochastic_sources=args.sources,
                       n_steps=args.steps, batch_size=args.batch_size, random_state=0)
    t_load = time.perf_counter() - t0
    out = dict(n_positions=T, n_train=n_train, n_test=n_test, import_seconds=t_import,
               load_seconds=t_load, setup_peak_mb=memory_mb(),
               layers=list(preset.adapter.node_layers), d_model=preset.info["d_model"])

    def phase(name, fn):
        out["peak_is_per_phase"] = reset_peak() and out.get("peak_is_per_phase", True)
        t = time.perf_counter()
        result = fn()
        out[f"{name}_seconds"] = time.perf_counter() - t
        out[f"{name}_peak_mb"] = memory_mb()
        print(f"  T={T}: {name} {out[f'{name}_seconds']:.1f} s, peak {out[f'{name}_peak_mb']:.0f} MB",
              file=sys.stderr, flush=True)
        return result

    basis = LocalInteractionBasis(preset.adapter, **preset.basis_params)
    phase("fit", lambda: basis.fit(preset.X_train))
    out["kept"] = {b.name: int(b.n_components) for b in basis.bases_}
    out["fit_tokens"] = n_train * T
    if args.edge_tokens:
        n_edge = max(1, args.edge_tokens // T)
        graph = basis.transform(preset.X_train[:n_edge])
        scorer = IGEdgeScorer(**preset.scorer_params)
        graph = phase("edges", lambda: scorer.fit_transform(graph))
        out["edge_tokens"] = n_edge * T
        if args.eval_tokens:
            search = EdgeAblationSearch(**preset.ablation_params)
            phase("ablation", lambda: search.fit(graph, X_eval=preset.X_test,
                                                 y_eval=preset.y_test))
            probes = int(np.sum([r.n_probes for r in search.results_]))
            out["ablation_probes"] = probes
            out["ablation_tokens"] = n_test * T
            out["edges_needed"] = [int(r.n_edges_needed) for r in search.results_]
    return out


def run(args) -> dict:
    runs = []
    configs = [(T, args.tokens, args.edge_tokens, args.eval_tokens) for T in args.positions]
    for T, tokens, edge_tokens, eval_tokens in configs:
        runs.append(_spawn(args, T, tokens, edge_tokens, eval_tokens))
    results = dict(model=args.model, block=args.block, sources=args.sources, steps=args.steps,
                   threads=args.threads, dtype="float32", runs=runs,
                   command=" ".join(["python", "benchmarks/lm_block_scaling.py"] + sys.argv[1:]))
    Ts = [r["n_positions"] for r in runs]
    for name, tokens in (("fit", "fit_tokens"), ("edges", "edge_tokens"),
                         ("ablation", "ablation_tokens")):
        if len(runs) > 1 and all(f"{name}_seconds" in r for r in runs):
            per = [r[f"{name}_seconds"] / r[tokens] / (r.get("ablation_probes", 1)
                                                        if name == "ablation" else 1)
                   for r in runs]
            results[f"{name}_exponent"] = log_slope(Ts, per)
    if args.target:
        results["target"] = _spawn(args, 128, 256 * 128, 0, 0)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _spawn(args, T, tokens, edge_tokens, eval_tokens) -> dict:
    cmd = [sys.executable, __file__, "--child", str(T), "--model", args.model, "--block",
           str(args.block), "--tokens", str(tokens), "--edge-tokens", str(edge_tokens),
           "--eval-tokens", str(eval_tokens), "--sources", str(args.sources), "--steps",
           str(args.steps), "--threads", str(args.threads), "--batch-size",
           str(args.batch_size)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"the run with T={T} failed (exit {proc.returncode})")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["process_seconds"] = time.perf_counter() - t
    print(json.dumps(r), flush=True)
    return r


def table(results: dict) -> str:
    lines = [
        f"## Language-model block against sequence length ({results['model']}, block "
        f"{results['block']})",
        "",
        f"`{results['command']}`: float32, {results['threads']} threads, "
        f"{results['sources']} stochastic source(s), Gauss-Legendre with {results['steps']} "
        "points; each length in its own process. Costs per token (ablation: per token and "
        "probe); peak = resident high-water mark of the phase (model included).",
        "",
        "| T | fit tokens | fit s | fit ms/token | fit peak MB | edges ms/token | edges peak MB "
        "| ablation ms/token/probe | ablation peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        edges = (f"{1e3 * r['edges_seconds'] / r['edge_tokens']:.2f} | {r['edges_peak_mb']:.0f}"
                 if "edges_seconds" in r else "- | -")
        abl = (f"{1e3 * r['ablation_seconds'] / r['ablation_tokens'] / r['ablation_probes']:.3f}"
               f" | {r['ablation_peak_mb']:.0f}" if "ablation_seconds" in r else "- | -")
        lines.append(f"| {r['n_positions']} | {r['fit_tokens']} | {r['fit_seconds']:.1f} | "
                     f"{1e3 * r['fit_seconds'] / r['fit_tokens']:.2f} | {r['fit_peak_mb']:.0f} | "
                     f"{edges} | {abl} |")
    lines.append("")
    exps = [f"{k.split('_')[0]} {results[k]:+.2f}" for k in
            ("fit_exponent", "edges_exponent", "ablation_exponent") if k in results]
    if exps:
        lines.append("Exponent of cost per token in T (0 = total cost linear in T): "
                     + ", ".join(exps) + ".")
    if "target" in results:
        t = results["target"]
        lines.append("")
        lines.append(f"Target (LIB on one block, 256 windows of 128 tokens, float32): fit "
                     f"{t['fit_seconds']:.0f} s, peak {t['fit_peak_mb']:.0f} MB; whole process "
                     f"{t['process_seconds']:.0f} s (imports {t['import_seconds']:.1f} s, model "
                     f"and text {t['load_seconds']:.1f} s).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--block", type=int, default=15)
    p.add_argument("--positions", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--edge-tokens", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--target", action="store_true")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    if args.table_only:
        results = json.loads(RESULTS.read_text())
    else:
        results = run(args)
    text = table(results)
    print(text)
    sys.path.insert(0, str(HERE))
    from _doc import write_section

    write_section("lm-block-scaling", text)


if __name__ == "__main__":
    main()

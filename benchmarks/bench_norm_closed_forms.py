"""Time and peak memory of the position-wise norm-split closed forms on a SmolLM2-shaped block.

Model: one Llama block of SmolLM2-135M's shape with random weights (d_model 576, d_mlp 1536,
9 query / 3 key-value heads of 64, RMSNorm, SiLU-gated MLP, rotary theta 1e5, vocabulary
1000), float32, eval. Node layers ``lm_block_cuts(1)``. Segments: ``blocks.0.ln2_out ->
blocks.0.mlp_in`` ([ln_out], scaled -> normed: 578 -> 1153 coordinates) and ``blocks.0.mlp_in
-> ln_final_out`` ([mlp, ln_in], normed -> scaled: 1153 -> 578). Maps: random full-rank square
``in_map`` and ``out_map`` (the output's scale coordinate read by one basis direction, as in
fitted bases where it is a fixed feature; ``--dense-scale`` makes that column dense too).
Inputs: the activations of random tokens, ``--batch`` sequences of ``--positions`` tokens.

Per segment and implementation (closed form, generic ``torch.func`` ``CompositeSegment``):
``jacobian_gram`` with 1 stochastic source, ``attributions`` (2 Gauss-Legendre points, 1
source) and one ``ablated`` call with masks keeping about 1% of the columns (the constant
always kept). Each measurement runs in its own process: the median wall time of --repeats runs
and the peak resident memory above the process's state after setup (``ru_maxrss``).

Usage: python benchmarks/bench_norm_closed_forms.py [--threads 2] [--repeats 3]
       [--skip-generic] [--json benchmarks/results/norm_closed_forms.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

SEGMENTS = {"ln_out": "blocks.0.ln2_out", "mlp_ln_in": "blocks.0.mlp_in"}
METHODS = ("jacobian_gram", "attributions", "ablated")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def setup(args):
    import transformers

    from sklearn_lib._segments import CompositeSegment
    from sklearn_lib.adapters import TransformerAdapter
    from sklearn_lib.tasks import lm_block_cuts

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=1e5,
        max_position_embeddings=max(256, args.positions), rms_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    layers = lm_block_cuts(1)
    adapter = TransformerAdapter.from_hf(model, node_layers=layers)
    F32 = dict(dtype=torch.float32, device="cpu")
    layer = SEGMENTS[args.segment]
    nxt = layers[layers.index(layer) + 1]
    gen = torch.Generator().manual_seed(1)
    X = torch.randint(0, 1000, (args.batch, args.positions), generator=gen)
    acts = adapter.activations(X, [layer, nxt], **F32)
    d_in, d_out = acts[layer].shape[-1], acts[nxt].shape[-1]
    in_map = torch.randn(d_in, d_in, generator=gen) / d_in**0.5
    out_map = torch.randn(d_out, d_out, generator=gen) / d_out**0.5
    if nxt.endswith("_out") and not args.dense_scale:
        out_map[:, -1] = 0.0
        out_map[-1, -1] = 1.0
    z = acts[layer] @ torch.linalg.inv(in_map).T
    if args.impl == "closed":
        G = adapter.composite_segment(layer, in_map, out_map, **F32)
        assert G is not None
    else:
        G = CompositeSegment(adapter.segment(layer, **F32), in_map, out_map,
                             chunk_size=args.chunk_size)
    sources = (torch.randint(0, 2, (args.batch, 1, args.positions), generator=gen) * 2 - 1).float()
    masks = (torch.rand(out_map.shape[0], in_map.shape[1], generator=gen) < 0.01).float()
    masks[:, 0] = 1.0
    return G, z, sources, masks


def generic_attributions(G, z, alphas, weights, sources):
    jbar = None
    for a, w in zip(alphas.tolist(), weights.tolist()):
        J = G.jacobian(a * z, sources)
        jbar = w * J if jbar is None else jbar + w * J
    return torch.einsum("bsitj,btj->bsij", jbar, z)


def one(args) -> dict:
    torch.set_num_threads(args.threads)
    from sklearn_lib._segments import ablate_by_masks

    G, z, sources, masks = setup(args)
    alphas = torch.tensor([0.5 - 0.5 / 3**0.5, 0.5 + 0.5 / 3**0.5])
    weights = torch.tensor([0.5, 0.5])
    closed = args.impl == "closed"
    if args.method == "jacobian_gram":
        fn = lambda: G.jacobian_gram(z, sources)  # noqa: E731
    elif args.method == "attributions":
        fn = ((lambda: G.attributions(z, alphas, weights, sources)[0]) if closed
              else (lambda: generic_attributions(G, z, alphas, weights, sources)))
    else:
        fn = ((lambda: G.ablated(z, masks)) if closed
              else (lambda: ablate_by_masks(G, z, masks, 16)))
    base = peak_rss_mib()
    times = []
    with torch.no_grad() if args.method == "ablated" else torch.enable_grad():
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
    result = dict(segment=args.segment, method=args.method, impl=args.impl,
                  median_s=statistics.median(times), times_s=times,
                  peak_mib_above_setup=peak_rss_mib() - base, n_in=int(z.shape[-1]),
                  shape=list(out.shape))
    if args.save:
        torch.save(out, args.save)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="VJPs at once in the generic Jacobians (bounds their memory)")
    parser.add_argument("--dense-scale", action="store_true")
    parser.add_argument("--skip-generic", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--segment", choices=list(SEGMENTS))
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--impl", choices=("closed", "generic"))
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    if args.segment:  # one measurement, in this process
        print(json.dumps(one(args)))
        return
    results = []
    for segment in SEGMENTS:
        for method in METHODS:
            for impl in ("closed",) + (() if args.skip_generic else ("generic",)):
                cmd = [sys.executable, __file__, "--segment", segment, "--method", method,
                       "--impl", impl, "--threads", str(args.threads),
                       "--repeats", str(args.repeats), "--batch", str(args.batch),
                       "--positions", str(args.positions),
                       "--chunk-size", str(args.chunk_size)]
                if args.dense_scale:
                    cmd.append("--dense-scale")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    row = dict(segment=segment, method=method, impl=impl,
                               error=proc.stderr.strip().splitlines()[-1:])
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(
            threads=args.threads, batch=args.batch, positions=args.positions,
            dense_scale=args.dense_scale, results=results), indent=1) + "\n")


if __name__ == "__main__":
    main()

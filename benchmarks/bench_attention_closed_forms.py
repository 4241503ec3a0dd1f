"""Time the closed-form attention span of a SmolLM2-shaped block against the generic composite.

Model: one Llama block with SmolLM2-135M's shapes and random weights (d_model 576, d_mlp 1536,
9 query heads over 3 key/value heads of 64, RMSNorm, SiLU-gated MLP, rotary theta 1e5,
vocabulary 1000), float32, eval mode. Segment: ``blocks.0.attn_in -> blocks.0.ln2_out``
([attn, ln_in], the default LM cuts), random full-rank maps of the cut widths (in_map 1153 x
1153, out_map 578 x 578), ``--batch`` sequences of ``--positions`` tokens. Measured, each in a
fresh process (peak resident memory above the process's state after building the model, the
maps and the inputs): ``jacobian_gram`` with 1 stochastic source, ``attributions`` with 2
Gauss-Legendre points and 1 source, one ``ablated`` call with masks keeping ~1% of the
columns (wall and CPU seconds: the machine may be shared); closed form (``adapter.composite_segment``) and, with ``--generic``, the generic
``CompositeSegment`` (torch.func Jacobian, then the same einsums as the estimators; one
forward pass per distinct mask). Median of ``--repeats`` runs.

Usage: python benchmarks/bench_attention_closed_forms.py [--batch 4] [--positions 128]
       [--threads 2] [--repeats 3] [--generic | --only-generic] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(args):
    import transformers

    from sklearn_lib.adapters import TransformerAdapter
    from sklearn_lib.tasks import lm_block_cuts

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=1e5,
        max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    adapter = TransformerAdapter.from_hf(model, node_layers=lm_block_cuts(1))
    gen = torch.Generator().manual_seed(1)
    layer = "blocks.0.attn_in"
    d = cfg.hidden_size
    n_in, n_out = 1 + 2 * d, 2 + d
    in_map = torch.randn(n_in, n_in, generator=gen) / n_in**0.5
    out_map = torch.randn(n_out, n_out, generator=gen) / n_out**0.5
    X = torch.randint(0, 1000, (args.batch, args.positions), generator=gen)
    f = adapter.activations(X, [layer], dtype=torch.float32, device="cpu")[layer]
    z = torch.linalg.solve(in_map, f.reshape(-1, n_in).T).T.reshape(f.shape)  # f = z in_map^T
    sources = (torch.randint(0, 2, (args.batch, 1, args.positions), generator=gen) * 2 - 1
               ).float()
    masks = (torch.rand(n_out, n_in, generator=gen) < 0.01).float()
    masks[:, 0] = 1.0
    return adapter, layer, in_map, out_map, z, sources, masks


def measure(args) -> None:
    """One measurement in this process: prints seconds and peak MiB above the baseline."""
    torch.set_num_threads(args.threads)
    from sklearn_lib._edges import quadrature
    from sklearn_lib._segments import CompositeSegment

    adapter, layer, in_map, out_map, z, sources, masks = build(args)
    F32 = dict(dtype=torch.float32, device="cpu")
    if args.impl == "closed":
        G = adapter.composite_segment(layer, in_map, out_map, **F32)
        assert G is not None
    else:
        G = CompositeSegment(adapter.segment(layer, **F32), in_map, out_map)
    alphas, weights = quadrature("gauss-legendre", 2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.what == "gram":
            if args.impl == "closed":
                G.jacobian_gram(z, sources, 1)
            else:
                J = G.jacobian(z, sources)[..., 1:].to(torch.float64)
                torch.einsum("bsitj,bsitk->jk", J, J)
        elif args.what == "attributions":
            if args.impl == "closed":
                G.attributions(z, alphas, weights, sources)
            else:
                jbar = sum(w * G.jacobian(a * z, sources)
                           for a, w in zip(alphas.tolist(), weights.tolist()))
                torch.einsum("bsitj,btj->bsij", jbar, z)
        else:
            G.ablated(z, masks)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # less sensitive than seconds to a busy machine
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                      "peak_mib": max(0, peak - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generic", action="store_true", help="also the generic composite")
    parser.add_argument("--only-generic", action="store_true", help="only the generic one")
    parser.add_argument("--json", default=None)
    parser.add_argument("--what", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what is not None:
        return measure(args)
    results = []
    impls = ["closed"] + (["generic"] if args.generic else [])
    if args.only_generic:
        impls = ["generic"]
    for what in ("gram", "attributions", "ablated"):
        for impl in impls:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--what", what, "--impl", impl,
                       "--batch", str(args.batch), "--positions", str(args.positions),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    runs.append({"error": out.stderr.strip().splitlines()[-1:]})
                    break
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            ok = [r for r in runs if "error" not in r]
            row = {"what": what, "impl": impl, "runs": runs}
            if ok:
                row["seconds_median"] = statistics.median(r["seconds"] for r in ok)
                if all("cpu_seconds" in r for r in ok):
                    row["cpu_seconds_median"] = statistics.median(r["cpu_seconds"] for r in ok)
                row["peak_mib_median"] = statistics.median(r["peak_mib"] for r in ok)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"batch": args.batch, "positions": args.positions,
                       "threads": args.threads, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()

"""Time the closed-form transformer segments against the generic ``torch.func`` ones.

Model: the paper's modular-addition transformer (seed 0, /work/shared/reference/modadd-seed0 or
--checkpoint). Maps: the LIB bases of ``LocalInteractionBasis(adapter, rotate_final=False)``
fitted on the train split (in_map = bases_[l].C_pinv, out_map = bases_[l+1].C). For every layer
pair: ``jacobian`` on --n-jacobian train rows and ``ablated`` on --n-ablated test rows with a
realistic mask (the strongest half of the possible edges kept, constant column always kept),
generic :class:`CompositeSegment` vs ``adapter.composite_segment``; median of --repeats runs
(the machine may be shared and noisy). Also checks that both give the same numbers.

Usage: python benchmarks/bench_segments.py [--repeats 3] [--threads N]
       [--json benchmarks/results/segments.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from sklearn_lib import LocalInteractionBasis
from sklearn_lib._segments import CompositeSegment
from sklearn_lib.adapters import load_hooked_transformer
from sklearn_lib.tasks import load_modular_addition
from sklearn_lib.tasks._modadd_experiment import modadd_adapter

REFERENCE = Path("/work/shared/reference/modadd-seed0")
F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
DENSITIES = {"half": 0.5, "sparse": 0.02}


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REFERENCE / "model_state_dict.pt"))
    parser.add_argument("--config", default=str(REFERENCE / "config.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jacobian", type=int, default=512)
    parser.add_argument("--n-ablated", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", default="benchmarks/results/segments.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_hooked_transformer(args.checkpoint, args.config)
    adapter = modadd_adapter(model)
    data = load_modular_addition()
    t = time.perf_counter()
    lib = LocalInteractionBasis(adapter, rotate_final=False).fit(data.X_train)
    t_fit = time.perf_counter() - t
    bases, layers = lib.bases_, lib.layers_
    print(f"modadd seed 0: LIB fit on {len(data.X_train)} rows in {t_fit:.1f} s (closed forms); "
          f"kept dims {[b.n_components for b in bases]}; torch threads "
          f"{torch.get_num_threads()}")

    X_jac = data.X_train[: args.n_jacobian]
    X_abl = data.X_test[: args.n_ablated]
    rows = []
    for p in range(len(layers) - 1):
        in_map = torch.as_tensor(bases[p].C_pinv, **F64)
        out_map = torch.as_tensor(bases[p + 1].C, **F64)
        C_in = torch.as_tensor(bases[p].C, **F64)
        fast = adapter.composite_segment(layers[p], in_map, out_map, **F64)
        slow = CompositeSegment(adapter.segment(layers[p], **F64), in_map, out_map)
        z_jac = adapter.activations(X_jac, [layers[p]], **F64)[layers[p]] @ C_in.T
        z_abl = adapter.activations(X_abl, [layers[p]], **F64)[layers[p]] @ C_in.T
        n_out, n_in = out_map.shape[0], in_map.shape[1]
        # Realistic masks: keep the strongest edges by mean |attribution| (constant column
        # always kept), as the search does: half of them (its first probe) and 2% (its last
        # probes; the paper's modular-addition graphs need about 1% of the edges).
        with torch.no_grad():
            J = fast.jacobian(z_jac[:256])
            E = torch.einsum("bsitj,btj->bij", J, z_jac[:256]).abs().mean(0)
        E[:, 0] = -1.0
        ranked = E.flatten().argsort(descending=True)

        row = {"pair": f"{layers[p]} -> {layers[p + 1]}", "kind": type(fast).__name__,
               "n_in": n_in, "n_out": n_out, "T_in": int(z_jac.shape[1])}
        with torch.no_grad():
            t_slow, J_slow = median_time(lambda G=slow, z=z_jac: G.jacobian(z), args.repeats)
            t_fast, J_fast = median_time(lambda G=fast, z=z_jac: G.jacobian(z), args.repeats)
            row.update(jacobian_rows=len(X_jac), jacobian_generic_s=t_slow,
                       jacobian_closed_s=t_fast, jacobian_speedup=t_slow / t_fast,
                       jacobian_rel_err=rel_err(J_fast, J_slow))
            row["ablated_rows"] = len(X_abl)
            for label, frac in DENSITIES.items():
                masks = torch.zeros(n_out * n_in, **F64)
                masks[ranked[: int(frac * n_out * (n_in - 1))]] = 1.0
                masks = masks.reshape(n_out, n_in)
                masks[:, 0] = 1.0
                t_slow, A_slow = median_time(
                    lambda G=slow, z=z_abl, m=masks: G.ablated(z, m), args.repeats)
                t_fast, A_fast = median_time(
                    lambda G=fast, z=z_abl, m=masks: G.ablated(z, m), args.repeats)
                row[f"ablated_{label}"] = {
                    "kept_fraction": frac,
                    "n_distinct_masks": int(torch.unique(masks, dim=0).shape[0]),
                    "generic_s": t_slow, "closed_s": t_fast, "speedup": t_slow / t_fast,
                    "rel_err": rel_err(A_fast, A_slow),
                }
        rows.append(row)

    print(f"\njacobian on {len(X_jac)} train rows, ablated on {len(X_abl)} test rows with the "
          f"strongest 50% / 2% of the edges kept (median of {args.repeats}, seconds)")
    print(f"{'layer pair':52s} {'kind':18s} {'':9s} {'generic':>8s} {'closed':>8s} "
          f"{'speedup':>8s} {'rel err':>8s}")
    for r in rows:
        lines = [("jacobian", r["jacobian_generic_s"], r["jacobian_closed_s"],
                  r["jacobian_rel_err"])]
        for label in DENSITIES:
            a = r[f"ablated_{label}"]
            lines.append((f"abl {label}", a["generic_s"], a["closed_s"], a["rel_err"]))
        for n, (what, gen, cf, err) in enumerate(lines):
            pair, kind = (r["pair"], r["kind"]) if n == 0 else ("", "")
            print(f"{pair:52s} {kind:18s} {what:9s} {gen:8.3f} {cf:8.4f} {gen / cf:8.1f} "
                  f"{err:8.1e}")
    result = {
        "model": "modadd seed 0 (1 layer, d_model 128, 4 heads, d_mlp 512, n_ctx 3)",
        "dtype": "float64", "repeats": args.repeats, "lib_fit_s": t_fit,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

"""Scaling of the LIB build: data size, processes, memory, GIB against LIB, MNIST, whole process.

Sections (all by default; pick with --sections):

- ``n``: wall time of the LIB build (bases and IG edges, float64, batch 256) against N = 1x,
  4x, 16x the digits training split and a base slice of the modular-addition training split
  (the inputs tiled), median of --repeats runs, and the fitted exponent of time ~ N^a;
- ``procs``: the same build under ``torchrun --nproc-per-node P`` (gloo, CPU) for P = 1, 2,
  the time rank 0 measures between barriers (median of --repeats runs inside one launch);
- ``memory``: peak resident memory of the build against N at a fixed batch size, each N in a
  fresh process, as the increase over the process after set-up, with the activation cache
  off (the batch bounds memory) and on (bounded by ``ACTIVATION_CACHE_BYTES``);
- ``gib``: GIB and LIB on modular addition (3,830 rows): basis fit and build (fit + IG
  edges), medians, and their ratios;
- ``mnist``: the LIB fit on the MNIST MLP (784-60-60-10, 4,000 training digits), median;
- ``process``: the whole-process LIB build on the shipped seed-0 modular-addition
  checkpoint in a fresh interpreter (imports, model load, bases with their activations,
  IG edges; float64), with its parts.

Usage: python benchmarks/bench_scale.py [--repeats 3] [--sections n,procs,memory,gib,mnist,process]
       [--modadd-base 0.25] [--json benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _doc import write_section
from _measure import log_slope, memory_mb, reset_peak

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's sklearn_lib, not an installed one
SCALES = (1, 4, 16)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# -- tasks --------------------------------------------------------------------------------------
def _task(name: str, model_dir: Path, modadd_base: float):
    """``(adapter, X, basis options)`` of a task; the digits MLP is trained once and cached."""
    import numpy as np
    import torch

    if name == "digits":
        from sklearn_lib.adapters import MLPAdapter
        from sklearn_lib.tasks import load_digits_split, train_mlp_classifier

        X_train = load_digits_split()[0]
        path = model_dir / "digits.pt"
        if path.is_file():
            model = torch.load(path, weights_only=False)
        else:
            model = train_mlp_classifier(X_train, load_digits_split()[2], hidden=(32, 32),
                                         epochs=300, seed=0)
            torch.save(model, path)
        return MLPAdapter(model), np.asarray(X_train), {}
    from sklearn_lib.adapters._transformer_lens import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter
    from sklearn_lib.tasks._modular_addition import load_modular_addition, shipped_modadd_checkpoint

    checkpoint, config = shipped_modadd_checkpoint(0)
    cfg = json.loads(Path(config).read_text())
    adapter = modadd_adapter(load_hooked_transformer(checkpoint, cfg))
    X = load_modular_addition(113, 0.3, int(cfg.get("dataset", {}).get("seed", 0))).X_train
    return adapter, X[: int(round(modadd_base * len(X)))], {"rotate_final": False}


def _build(adapter, X, options, basis="lib"):
    from sklearn_lib import GlobalInteractionBasis, IGEdgeScorer, LocalInteractionBasis

    cls = LocalInteractionBasis if basis == "lib" else GlobalInteractionBasis
    graph = cls(adapter, batch_size=256, **options).fit_transform(X)
    return IGEdgeScorer(batch_size=256).fit_transform(graph)


def _tile(X, k: int):
    import numpy as np

    return np.tile(X, (k, 1))


# -- sections run in this process -----------------------------------------------------------------
def section_n(args, model_dir):
    out = {}
    for task in ("digits", "modadd"):
        adapter, X, options = _task(task, model_dir, args.modadd_base)
        _build(adapter, X[:64], options)  # warm-up (first-batch checks, lazy imports)
        rows = []
        for k in SCALES:
            Xk = _tile(X, k)
            times = [_timed(lambda: _build(adapter, Xk, options))[1] for _ in range(args.repeats)]
            rows.append({"scale": k, "n_samples": len(Xk), "median_seconds": statistics.median(times),
                         "all_seconds": times})
            print(f"  {task} N={len(Xk)}: {statistics.median(times):.2f} s", flush=True)
        out[task] = {"runs": rows, "exponent": log_slope([r["n_samples"] for r in rows],
                                                          [r["median_seconds"] for r in rows])}
        print(f"{task}: time ~ N^{out[task]['exponent']:.2f}", flush=True)
    return out


def _gib_chain_floor(adapter, X, options, repeats: int) -> dict:
    """The GEMMs GIB's first layer cannot avoid, timed on random tensors of their shapes.

    GIB's ``M`` at the first node layer is the Gram of the Jacobian from that layer to the
    output: per sample, the product of the later links' Jacobian ``K`` (``S n_out x d``) with
    the first link's ``A`` (``d x T n_in``, attention mixing positions), then the
    position-wise Gram ``sum_t J_t^T J_t``. LIB's segments have closed-form Grams over samples
    (no per-sample product); this chain has none, so these two batched GEMMs bound GIB's fit
    from below (the Jacobians themselves, the PCA and the other layers come on top).
    """
    import torch

    from sklearn_lib import GlobalInteractionBasis
    from sklearn_lib._segments import make_composite

    gib = GlobalInteractionBasis(adapter, batch_size=256, **options)
    gib.fit(X[:64])
    from sklearn_lib._whitening import fit_pca_bases

    layers = tuple(gib.layers_)
    pca = fit_pca_bases(adapter, X, layers, whiten=True, rotate_final=gib.rotate_final,
                        rtol=None, atol=0.0, batch_size=256, dtype=torch.float64,
                        device=torch.device("cpu"), verbose=False)
    G = make_composite(adapter, list(layers), torch.as_tensor(pca[0].C_pinv),
                       torch.as_tensor(pca[-1].C), dtype=torch.float64, device="cpu")
    links = getattr(G, "links", [G])
    f = adapter.activations(X[:1], [layers[0]], dtype=torch.float64, device="cpu")[layers[0]]
    z = f @ torch.as_tensor(pca[0].C).T
    _, S, n_out, T, n_in = G.jacobian(z).shape
    d = links[0].jacobian(z).shape[2] if len(links) > 1 else n_out
    N = len(X)
    gen = torch.Generator().manual_seed(0)
    K = torch.randn(N, S * n_out, d, generator=gen, dtype=torch.float64)
    A = torch.randn(N, d, T * n_in, generator=gen, dtype=torch.float64)
    flop = 2 * N * S * n_out * d * T * n_in + 2 * N * S * n_out * T * n_in * n_in
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gram = torch.zeros(n_in, n_in, dtype=torch.float64)
        for lo in range(0, N, 64):
            J = torch.bmm(K[lo : lo + 64], A[lo : lo + 64]).reshape(-1, T, n_in)
            rows = J.transpose(0, 1).reshape(-1, n_in)
            gram += rows.T @ rows
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"jacobian_shape": [S, n_out, T, n_in], "link_width": d, "n_samples": N,
            "gflop": flop / 1e9, "median_seconds": med, "seconds": times,
            "gflops": flop / 1e9 / med}


def section_gib(args, model_dir):
    """Basis fit and build (fit + IG edges) of GIB and LIB on modular addition."""
    from sklearn_lib import GlobalInteractionBasis, IGEdgeScorer, LocalInteractionBasis

    adapter, X, options = _task("modadd", model_dir, 1.0)
    out = {"n_samples": len(X)}
    for name, cls in (("lib", LocalInteractionBasis), ("gib", GlobalInteractionBasis)):
        cls(adapter, batch_size=256, **options).fit(X[:64])
        fits, builds = [], []
        for _ in range(args.repeats):
            graph, t_fit = _timed(lambda: cls(adapter, batch_size=256, **options).fit_transform(X))
            _, t_edges = _timed(lambda: IGEdgeScorer(batch_size=256).fit(graph))
            fits.append(t_fit)
            builds.append(t_fit + t_edges)
        out[name] = {"median_fit_seconds": statistics.median(fits),
                     "median_build_seconds": statistics.median(builds),
                     "fit_seconds": fits, "build_seconds": builds}
        print(f"  modadd {name.upper()}: fit {statistics.median(fits):.2f} s, build (fit + "
              f"edges) {statistics.median(builds):.2f} s", flush=True)
    for key in ("fit", "build"):
        out[f"gib_over_lib_{key}"] = (out["gib"][f"median_{key}_seconds"]
                                      / out["lib"][f"median_{key}_seconds"])
    out["floor"] = _gib_chain_floor(adapter, X, options, args.repeats)
    f = out["floor"]
    print(f"GIB's first-layer chain, GEMMs alone: {f['median_seconds']:.2f} s "
          f"({f['gflop']:.1f} GFLOP at {f['gflops']:.0f} GFLOP/s) = "
          f"{f['median_seconds'] / out['lib']['median_fit_seconds']:.1f}x LIB's whole fit",
          flush=True)
    print(f"GIB / LIB: fit {out['gib_over_lib_fit']:.2f}, build {out['gib_over_lib_build']:.2f}",
          flush=True)
    return out


def section_mnist(args, model_dir):
    from sklearn_lib import LocalInteractionBasis
    from sklearn_lib.adapters import MLPAdapter
    from sklearn_lib.tasks import load_mnist_split, train_mlp_classifier

    X_train, _, y_train, _ = load_mnist_split()
    model = train_mlp_classifier(X_train, y_train, hidden=(60, 60), epochs=200, seed=0)
    adapter = MLPAdapter(model)
    LocalInteractionBasis(adapter).fit(X_train[:64])
    times = [_timed(lambda: LocalInteractionBasis(adapter, random_state=0).fit(X_train))[1]
             for _ in range(args.repeats)]
    print(f"MNIST MLP LIB fit: {statistics.median(times):.2f} s (N={len(X_train)})", flush=True)
    return {"n_samples": len(X_train), "median_seconds": statistics.median(times),
            "all_seconds": times}


# -- sections in fresh processes ----------------------------------------------------------------
def _child(argv, *, launcher=None, timeout=900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = (launcher or [sys.executable]) + [str(Path(__file__).resolve())] + argv
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "process_wall_seconds": wall}


def section_procs(args, model_dir):
    out = {}
    for task, scale in (("digits", 16), ("modadd", 1)):
        out[task] = {}
        for procs in (1, 2):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(procs)]
            r = _child(["--worker", "procs", "--task", task, "--scale", str(scale),
                        "--repeats", str(args.repeats), "--model-dir", str(model_dir),
                        "--modadd-base", str(args.modadd_base)], launcher=launcher)
            out[task][procs] = r
            print(f"  {task} x{scale} on {procs} process(es): {r['median_seconds']:.2f} s",
                  flush=True)
    return out


def section_memory(args, model_dir):
    out = {}
    for task in ("digits", "modadd"):
        out[task] = {}
        for cache in ("off", "on"):
            rows = []
            for k in SCALES:
                r = _child(["--worker", "memory", "--task", task, "--scale", str(k),
                            "--cache", cache, "--model-dir", str(model_dir),
                            "--modadd-base", str(args.modadd_base)])
                rows.append(r)
                print(f"  {task} N={r['n_samples']} cache {cache}: +{r['peak_increase_mb']:.0f} MB "
                      f"over {r['baseline_mb']:.0f} MB", flush=True)
            out[task][cache] = rows
    return out


def section_process(args, model_dir):
    runs = [_child(["--worker", "process"]) for _ in range(args.repeats)]
    med = {key: statistics.median(r[key] for r in runs)
           for key in ("imports", "model_load", "data", "bases", "edges", "inside_total",
                       "process_wall_seconds")}
    print("whole process (median): " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()),
          flush=True)
    return {"median_seconds": med, "runs": runs}


# -- workers ------------------------------------------------------------------------------------
def worker_procs(args):
    import torch

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    adapter, X, options = _task(args.task, Path(args.model_dir), args.modadd_base)
    X = _tile(X, args.scale)
    _build(adapter, X[:64], options)
    times = []
    for _ in range(args.repeats):
        torch.distributed.barrier()
        t = time.perf_counter()
        _build(adapter, X, options)
        torch.distributed.barrier()
        times.append(time.perf_counter() - t)
    if torch.distributed.get_rank() == 0:
        print(json.dumps({"n_samples": len(X), "median_seconds": statistics.median(times),
                          "all_seconds": times,
                          "world_size": torch.distributed.get_world_size()}))
    torch.distributed.destroy_process_group()


def worker_memory(args):
    import torch

    import sklearn_lib._stream as stream

    torch.set_num_threads(1)
    if args.cache == "off":
        stream.ACTIVATION_CACHE_BYTES = 0
    adapter, X, options = _task(args.task, Path(args.model_dir), args.modadd_base)
    X = _tile(X, args.scale)
    _build(adapter, X[:256], options)  # set-up (one full batch) included in the baseline
    # ru_maxrss survives exec (it would report the parent's peak): read /proc instead.
    baseline = memory_mb("VmRSS", fallback=False)
    reset = reset_peak()
    _build(adapter, X, options)
    print(json.dumps({"n_samples": len(X), "baseline_mb": baseline,
                      "peak_increase_mb": memory_mb("VmHWM", fallback=False) - baseline,
                      "peak_reset": reset, "cache_bytes": stream.ACTIVATION_CACHE_BYTES}))


def worker_process(args):
    t0 = time.perf_counter()
    import torch

    from sklearn_lib import IGEdgeScorer, LocalInteractionBasis
    from sklearn_lib.adapters._transformer_lens import load_hooked_transformer
    from sklearn_lib.tasks._modadd_experiment import modadd_adapter
    from sklearn_lib.tasks._modular_addition import load_modular_addition, shipped_modadd_checkpoint

    torch.set_num_threads(1)
    t1 = time.perf_counter()
    checkpoint, config = shipped_modadd_checkpoint(0)
    cfg = json.loads(Path(config).read_text())
    adapter = modadd_adapter(load_hooked_transformer(checkpoint, cfg))
    t2 = time.perf_counter()
    X = load_modular_addition(113, 0.3, int(cfg.get("dataset", {}).get("seed", 0))).X_train
    t3 = time.perf_counter()
    graph = LocalInteractionBasis(adapter, rotate_final=False, batch_size=256,
                                  dtype="float64").fit_transform(X)
    t4 = time.perf_counter()
    IGEdgeScorer(batch_size=256).fit_transform(graph)
    t5 = time.perf_counter()
    print(json.dumps({"imports": t1 - t0, "model_load": t2 - t1, "data": t3 - t2,
                      "bases": t4 - t3, "edges": t5 - t4, "inside_total": t5 - t0,
                      "n_samples": len(X)}))


def table(results: dict) -> str:
    """The docs/results.md section, generated from the JSON (never typed)."""
    load = results["machine"].get("load_average", [float("nan")])[0]
    lines = ["## Scaling: data size, processes, memory (`benchmarks/bench_scale.py`)", "",
             f"Medians of {results['repeats']} runs on {results['machine']['cpus']} cores "
             f"(load average {load:.1f} at the start: a shared machine). Build = LIB fit + IG "
             "edges, float64, batch 256. No GPU was lent to the session that measured this.", ""]
    if "n" in results:
        lines += ["| task | N (1x / 4x / 16x) | seconds | fitted exponent |", "|---|---|---|---|"]
        for task, r in results["n"].items():
            if not isinstance(r, dict) or "runs" not in r:
                continue
            ns = " / ".join(str(x["n_samples"]) for x in r["runs"])
            ts = " / ".join(f"{x['median_seconds']:.3g}" for x in r["runs"])
            lines.append(f"| {task} | {ns} | {ts} | {r['exponent']:.2f} |")
        lines.append("")
    if "procs" in results:
        lines += ["| task | 1 process (s) | 2 processes (s) |", "|---|---|---|"]
        for task, r in results["procs"].items():
            if isinstance(r, dict) and "1" in r:
                lines.append(f"| {task} | {r['1']['median_seconds']:.3g} | "
                             f"{r['2']['median_seconds']:.3g} |")
        lines.append("")
    if "memory" in results:
        lines += ["| task | activation cache | peak memory above set-up (MB) at 1x / 4x / 16x |",
                  "|---|---|---|"]
        for task, r in results["memory"].items():
            if not isinstance(r, dict):
                continue
            for cache, runs in r.items():
                if isinstance(runs, list):
                    mb = " / ".join(f"{x['peak_increase_mb']:.0f}" for x in runs)
                    lines.append(f"| {task} | {cache} | {mb} |")
        lines.append("")
    if "gib" in results:
        g = results["gib"]
        load_gib = f" (load average {g['load_average'][0]:.1f})" if "load_average" in g else ""
        lines.append(f"GIB vs LIB on modular addition ({g['n_samples']} rows){load_gib}: fit "
                     f"{g['gib']['median_fit_seconds']:.2f} s vs {g['lib']['median_fit_seconds']:.2f} s "
                     f"({g['gib_over_lib_fit']:.1f}x), build {g['gib']['median_build_seconds']:.2f} s vs "
                     f"{g['lib']['median_build_seconds']:.2f} s ({g['gib_over_lib_build']:.1f}x).")
        if "floor" in g:
            f = g["floor"]
            S, n_out, T, n_in = f["jacobian_shape"]
            lines.append(
                f"GIB's first layer has no closed form over samples: per sample it multiplies "
                f"a {S * n_out} x {f['link_width']} Jacobian (the logits through the MLP) by a "
                f"{f['link_width']} x {T * n_in} one (attention over {T} positions) and sums "
                f"the Gram of the product. These GEMMs alone, on random tensors of those "
                f"shapes, take {f['median_seconds']:.2f} s ({f['gflop']:.1f} GFLOP at "
                f"{f['gflops']:.0f} GFLOP/s): "
                f"{f['median_seconds'] / g['lib']['median_fit_seconds']:.1f}x LIB's whole fit. "
                "GIB within 1.5x of LIB would need an exact way around this per-sample "
                "product (writing the attention Jacobian per head does not make it cheaper: "
                "the heads' value paths cost more than the product); we have none.")
    if "mnist" in results:
        lines.append(f"LIB fit on the MNIST MLP ({results['mnist']['n_samples']} rows): "
                     f"{results['mnist']['median_seconds']:.2f} s.")
    if "process" in results:
        m = results["process"]["median_seconds"]
        lines.append(f"Whole process, LIB build on the shipped seed-0 checkpoint (float64): "
                     f"{m['process_wall_seconds']:.1f} s wall (imports {m['imports']:.2f} s, model "
                     f"load {m['model_load']:.2f} s, bases {m['bases']:.2f} s, edges "
                     f"{m['edges']:.2f} s).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table-only", action="store_true",
                        help="regenerate the docs/results.md section from the JSON")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="n,procs,memory,gib,mnist,process")
    parser.add_argument("--modadd-base", type=float, default=0.25,
                        help="fraction of the 3,830 modular-addition training rows taken as 1x")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--worker", choices=["procs", "memory", "process"])
    parser.add_argument("--task", choices=["digits", "modadd"])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--cache", choices=["on", "off"], default="on")
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    if args.table_only:
        write_section("scale", table(json.loads(args.json.read_text())))
        return
    if args.worker:
        {"procs": worker_procs, "memory": worker_memory, "process": worker_process}[
            args.worker](args)
        return

    import torch

    torch.set_num_threads(1)
    sections = {"n": section_n, "procs": section_procs, "memory": section_memory,
                "gib": section_gib, "mnist": section_mnist, "process": section_process}
    results = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "cpus": os.cpu_count(), "load_average": os.getloadavg()},
               "repeats": args.repeats, "modadd_base": args.modadd_base}
    run = args.sections.split(",")
    if args.json.is_file():  # keep the sections not run this time
        previous = json.loads(args.json.read_text())
        results = {**previous, **results}
        if set(run) != set(sections) and "machine" in previous:
            # The header describes the run of the other sections; each section records the
            # load average at its own start.
            results["machine"] = previous["machine"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in run:
            print(f"[{name}]", flush=True)
            t, load = time.perf_counter(), os.getloadavg()
            results[name] = sections[name](args, Path(tmp))
            results[name]["section_seconds"] = time.perf_counter() - t
            results[name]["load_average"] = load
    if set(run) == set(sections):
        results["machine"]["load_average_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    write_section("scale", table(results))
    print(f"wrote {args.json} and docs/results.md")


if __name__ == "__main__":
    main()

"""Roofline of the sampling path on this machine: how close cached and uncached sampling of the
embedded models run to this machine's own matrix-multiply rate, in one run.

    python benchmarks/roofline.py                      # threads 1 and 2, eager and compiled, both models
    python benchmarks/roofline.py --threads 1 --no-compile --batch 64 --nfe 4   # a quick look

For each model (the committed digits DiT and U-ViT) and thread count it measures
- the sgemm rate at the model's own linear shapes: every ``nn.Linear`` of one forward at the
  sampling batch (CFG doubles it) is timed alone as ``F.linear`` on random inputs of its shape, and
  the rate is the FLOPs of all of them over their summed time (the reference a perfect
  implementation of the model's linear layers would reach);
- the model FLOP rate of uncached and cached sampling (the cached schedule: the workflow's
  L2C-like budget, a seeded random 45 % of the sub-layers reused in every cache step), eager and
  through the compiled path (``CacheEngine(compile=True)``, compile warm-up excluded and printed:
  the whole forward as one graph wherever a step computes every sub-layer, the branch graphs in the
  steps that reuse), through the branch graphs alone (``compiled-branches``: ``whole=False``), and
  through the branch graphs without their rewrites (``compiled-plain``: ``rewrites=False,
  whole=False``, ``l2c/compile_passes.py``), so each step's share shows in the same run; the paths'
  timed runs are interleaved.
Model FLOPs: 2 x the MACs actually computed, in two conventions printed side by side: ``linear``
(the thop convention of the paper's MACs column: Linear/Conv layers only) and ``all`` (plus the
attention matmuls, 2 x tokens^2 x width per attention layer). The ratio column is model rate /
sgemm rate in the ``linear`` convention: the share of the machine's matmul rate that sampling turns
into the layers the paper counts. Prints device, threads, dtype, torch version and git revision;
``--json`` writes every number.

``--profile`` prints, instead of the rates, where the time of the compiled whole forward goes at
the same batch (torch profiler with inductor's per-kernel records; self time of 20 calls after
warm-up): the GEMMs, attention, inductor's fused kernels (norms, modulation, GELU, gates and
residuals, layouts), the patch convolution, and the rest (the graph's Python wrapper, guards,
allocation), with the GEMMs' rate inside the forward (the FLOPs of its linear layers over the GEMM
share of its time) beside the sgemm rate alone. The ratio above is about the GEMM share times the
first over the second."""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2c.bench import cpu_threads_header, forward_inputs, fraction_schedule
from l2c.cache import CacheEngine
from l2c.generate import EMBEDDED_DIR
from l2c.io import write_json
from l2c.macs import count_model_macs, macs_report
from l2c.models import load_model, num_sublayers
from l2c.sampling import sample

MODELS = {"dit": ("dit-digits.pt", "ddim"), "uvit": ("uvit-digits.pt", "dpm2")}


def linear_shapes(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> list[tuple[int, int, int, bool]]:
    """(rows, in_features, out_features, bias) of every Linear call in one forward."""
    shapes: list[tuple[int, int, int, bool]] = []

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        shapes.append((args[0].numel() // m.in_features, m.in_features, m.out_features, m.bias is not None))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x, t, y)
    finally:
        for h in hs:
            h.remove()
    return shapes


def attention_macs(model: nn.Module, tokens: int) -> int:
    """MACs of the attention matmuls (QK^T and AV) of one forward for one image."""
    total = 0
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if isinstance(qkv, nn.Linear):
            total += 2 * tokens * tokens * (qkv.out_features // 3)
    return total


def time_it(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgemm_rate(shapes: list[tuple[int, int, int, bool]], repeats: int) -> float:
    """FLOP/s of F.linear over the given shapes (each distinct shape timed once, weighted by count)."""
    counts: dict[tuple, int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    flops = secs = 0.0
    for (rows, k, n, bias), c in counts.items():
        a, w = torch.randn(rows, k), torch.randn(n, k)
        b = torch.randn(n) if bias else None
        secs += c * time_it(lambda: F.linear(a, w, b), repeats)
        flops += c * 2.0 * rows * k * n
    return flops / secs


def sampling_rates(model: nn.Module, sampler: str, nfe: int, batch: int, schedule: Any, paths: list[str],
                   repeats: int) -> dict[str, tuple[float, float]]:
    """Per path: (median seconds of one sampling run, seconds of its first run incl. any compilation).
    The paths' timed runs are interleaved (one run of each per round), so drift hits them alike."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    labels = torch.randint(model.num_classes, (batch,), generator=g)
    runs, first = {}, {}
    for path in paths:
        engine = None if path == "eager" else CacheEngine(model, schedule, compile=True, rewrites=path != "compiled-plain",
                                                          whole=path == "compiled")
        runs[path] = functools.partial(sample, model, noise, labels, sampler=sampler, nfe=nfe, cfg_scale=1.5,
                                       schedule=schedule, engine=engine)
        t0 = time.perf_counter()
        runs[path]()
        first[path] = time.perf_counter() - t0
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(repeats):
        for path, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[path].append(time.perf_counter() - t0)
    return {p: (statistics.median(times[p]), first[p]) for p in paths}


GROUPS = (("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::copy_")),
          ("attention", ("aten::_scaled_dot_product",)), ("fused kernels", ("graph_",)),
          ("convolution", ("aten::mkldnn_convolution",)))


def profile_forward(model: nn.Module, batch: int, calls: int = 20) -> dict[str, float]:
    """Share of self time per group (``GROUPS``, rest ``other``) in ``calls`` compiled whole forwards."""
    from torch.profiler import ProfilerActivity, profile

    from l2c.cache import forward_function
    x, t, y = forward_inputs(model, 2 * batch)
    fn = forward_function(model)
    with torch.no_grad():
        for _ in range(3):
            fn(model, x, t, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn(model, x, t, y)
    shares = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    for e in events:
        group = next((name for name, prefixes in GROUPS if e.key.startswith(prefixes)), "other")
        shares[group] += e.self_cpu_time_total / total
    shares["ms_per_forward"] = total / 1e3 / calls
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=50, help="images per sampling batch (the workflow's: 50, both rows)")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path, interleaved across the paths")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--profile", action="store_true", help="print where the compiled forward's time goes, not the rates")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.profile:
        from torch._inductor import config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True  # before anything compiles: per-kernel records
        inductor_config.fx_graph_cache = False  # a cached graph compiled without the records would hide its kernels
    rows = []
    for threads in a.threads:
        env = cpu_threads_header(threads, f"batch {a.batch} (x2 CFG), NFE {a.nfe}")
        if a.profile:
            print(f"{'model':6s}" + "".join(f"{name:>15s}" for name, _ in GROUPS) + f"{'other':>15s}{'ms/forward':>12s}"
                  f"{'GEMM GFLOP/s':>14s}{'sgemm GFLOP/s':>15s}")
        else:
            print(f"{'model':6s}{'path':19s}{'schedule':10s}{'seconds':>9s}{'GFLOP/s lin':>13s}{'GFLOP/s all':>13s}"
                  f"{'sgemm GFLOP/s':>15s}{'ratio':>8s}{'1st run s':>11s}")
        for key in a.models:
            file, sampler = MODELS[key]
            model = load_model(EMBEDDED_DIR / file).eval()
            x = torch.zeros(2 * a.batch, model.in_channels, model.input_size, model.input_size)
            t, y = torch.zeros(2 * a.batch), torch.zeros(2 * a.batch, dtype=torch.long)
            shapes = linear_shapes(model, x, t, y)
            peak = sgemm_rate(shapes, a.repeats + 1)
            if a.profile:  # the GEMMs' rate inside the forward: their FLOPs over their share of its time
                shares = profile_forward(model, a.batch)
                gemm = sum(2.0 * rows * k * n for rows, k, n, _ in shapes) / (shares["gemm"] * shares["ms_per_forward"] / 1e3)
                shares |= {"gemm_gflops_in_model": gemm / 1e9, "sgemm_gflops": peak / 1e9}
                rows.append({"model": key, "threads": threads, "batch": a.batch, "profile": shares, "environment": env})
                print(f"{key:6s}" + "".join(f"{shares[name]:15.1%}" for name, _ in GROUPS)
                      + f"{shares['other']:15.1%}{shares['ms_per_forward']:12.1f}{gemm / 1e9:14.1f}{peak / 1e9:15.1f}", flush=True)
                continue
            mm = count_model_macs(model, x[:1], t[:1], y[:1])
            tokens = (model.input_size // model.patch_size) ** 2 + getattr(model, "extras", 0)
            attn = attention_macs(model, tokens)
            depth = num_sublayers(model) // 2
            for sched_name, sched in (("full", None), ("cached", fraction_schedule(a.nfe, depth, 0.45, sampler))):
                rep = macs_report(mm, sched, a.nfe)
                # attention matmuls skipped with their branch in cache steps
                attn_total = attn * a.nfe - (attn / depth) * (0 if sched is None else int((~sched.compute[:, :, 0]).sum()))
                paths = ["eager"] if a.no_compile else ["eager", "compiled-plain", "compiled-branches", "compiled"]
                for path, (secs, first) in sampling_rates(model, sampler, a.nfe, a.batch, sched, paths, a.repeats).items():
                    lin = 2.0 * rep["macs_total"] * 2 * a.batch / secs
                    allf = lin + 2.0 * attn_total * 2 * a.batch / secs
                    row = {"model": key, "threads": threads, "path": path, "schedule": sched_name, "seconds": secs,
                           "first_run_s": first, "gflops_linear": lin / 1e9, "gflops_all": allf / 1e9,
                           "sgemm_gflops": peak / 1e9, "ratio": lin / peak, "batch": a.batch, "nfe": a.nfe,
                           "sampler": sampler, "environment": env}
                    rows.append(row)
                    print(f"{key:6s}{path:19s}{sched_name:10s}{secs:9.3f}{lin / 1e9:13.1f}{allf / 1e9:13.1f}"
                          f"{peak / 1e9:15.1f}{lin / peak:8.2f}{first:11.2f}", flush=True)
    if a.json:
        write_json(a.json, {"rows": rows})


if __name__ == "__main__":
    main()

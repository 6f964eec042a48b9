"""What each graph rewrite of ``l2c/compile_passes.py`` buys, in one run: the whole forward of the
embedded models (the graph the compiled sampler runs on every step that computes all sub-layers,
``l2c.cache.forward_function``) compiled with no rewrite, each rewrite alone and all of them, timed
interleaved at the workflow's sampling batch (CFG doubles it), with the largest difference from
the eager forward.

    python benchmarks/compile_rewrites.py                                  # both models, 1 and 2 threads
    python benchmarks/compile_rewrites.py --models dit --threads 1 --json results/benchmarks/compile-rewrites-cpu.json

Prints device, threads, dtype, torch version and git revision; ``speedup`` is the time without any
rewrite over the variant's time, both medians of the same interleaved rounds."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from l2c.bench import cpu_threads_header, forward_inputs
from l2c.cache import forward_function
from l2c.compile_passes import REWRITES
from l2c.generate import EMBEDDED_DIR
from l2c.io import write_json
from l2c.models import load_model

MODELS = {"dit": "dit-digits.pt", "uvit": "uvit-digits.pt"}
VARIANTS = {"none": (), **{name: (name,) for name in REWRITES}, "all": REWRITES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=50, help="images per sampling batch, before CFG doubles it (the workflow's: 50)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; each times --calls forwards of every variant")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for threads in a.threads:
        env = cpu_threads_header(threads, f"batch {a.batch} (x2 CFG), whole forward")
        print(f"{'model':6s}{'rewrites':14s}{'ms/forward':>12s}{'speedup':>9s}{'max |diff|/max|eager|':>24s}{'1st call s':>12s}")
        for key in a.models:
            model = load_model(EMBEDDED_DIR / MODELS[key]).eval()
            x, t, y = forward_inputs(model, 2 * a.batch)
            fns, first, diff = {}, {}, {}
            with torch.no_grad():
                ref = model(x, t, y)
                for name, rewrites in VARIANTS.items():
                    fns[name] = forward_function(model, rewrites)
                    t0 = time.perf_counter()
                    out = fns[name](model, x, t, y)
                    first[name] = time.perf_counter() - t0
                    diff[name] = float((out - ref).abs().max() / ref.abs().max())
                times: dict[str, list[float]] = {name: [] for name in fns}
                for _ in range(a.rounds):
                    for name, fn in fns.items():
                        t0 = time.perf_counter()
                        for _ in range(a.calls):
                            fn(model, x, t, y)
                        times[name].append((time.perf_counter() - t0) / a.calls)
            base = statistics.median(times["none"])
            for name in fns:
                secs = statistics.median(times[name])
                rows.append({"model": key, "threads": threads, "rewrites": name, "seconds_per_forward": secs,
                             "speedup": base / secs, "max_rel_diff": diff[name], "first_call_s": first[name],
                             "batch": a.batch, "rounds": a.rounds, "calls": a.calls, "environment": env})
                print(f"{key:6s}{name:14s}{secs * 1e3:12.2f}{base / secs:9.3f}{diff[name]:24.2e}{first[name]:12.2f}", flush=True)
    if a.json:
        write_json(a.json, {"rows": rows})


if __name__ == "__main__":
    main()

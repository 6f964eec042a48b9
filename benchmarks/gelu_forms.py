"""GELU forms on this CPU, eager and compiled, side by side in one run.

    python benchmarks/gelu_forms.py                      # the digits DiT's fc1 output at the workflow batch
    python benchmarks/gelu_forms.py --rows 16000 --width 512 --threads 2

The tensor is the DiT row's MLP hidden activation at its sampling batch (50 images x 2 for CFG x 16
tokens = 1600 rows of width 512 by default). Timed, interleaved over ``--rounds`` rounds (median):
the tanh-form GELU eager (``F.gelu(approximate="tanh")``, DiT's) and compiled as written, the same
function compiled as ``x * sigmoid(2u)`` (``l2c.compile_passes``, what the compiled branches run),
and the exact GELU eager and compiled (U-ViT's). Printed: ms per call, ns per element, the ratio to
the eager tanh form and the largest error against the fp64 value; device, threads, torch version
and git revision head the output. ``--json`` writes every number."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from l2c.compile_passes import gelu_tanh_as_sigmoid
from l2c.io import environment_record, write_json


FORMS = {  # name -> function (compiled when the name says so)
    "tanh form, eager": lambda t: F.gelu(t, approximate="tanh"),
    "tanh form, compiled": lambda t: F.gelu(t, approximate="tanh"),
    "x*sigmoid(2u), compiled": gelu_tanh_as_sigmoid,
    "exact (erf), eager": F.gelu,
    "exact (erf), compiled": lambda t: F.gelu(t),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1600)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=100, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS), metavar="FORM",
                    help=f"the forms to time, the first being the baseline (default: all of {list(FORMS)})")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = torch.randn(a.rows, a.width, generator=torch.Generator().manual_seed(0)) * 2
    forms = {k: v for k, v in FORMS.items() if k in a.forms}
    forms = {k: (torch.compile(f, dynamic=False) if k.endswith("compiled") else f) for k, f in forms.items()}
    ref_tanh, ref_erf = F.gelu(x.double(), approximate="tanh"), F.gelu(x.double())
    env = environment_record(torch.device("cpu"), "fp32")
    print(f"GELU on a ({a.rows}, {a.width}) fp32 tensor | {env['device_name']} ({env['device']}) | threads {a.threads} | "
          f"torch {env['torch']} | rev {env['git_revision']}")
    with torch.no_grad():
        errs = {k: float((f(x).double() - (ref_erf if "erf" in k else ref_tanh)).abs().max()) for k, f in forms.items()}
        times: dict[str, list[float]] = {k: [] for k in forms}
        for _ in range(a.rounds):
            for k, f in forms.items():
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    f(x)
                times[k].append((time.perf_counter() - t0) / a.calls)
    base = statistics.median(times[a.forms[0]])
    rows = {}
    print(f"{'form':26s}{'ms / call':>11s}{'ns / elem':>11s}{'speedup':>9s}{'max |err| vs fp64':>19s}  (speedup: vs {a.forms[0]})")
    for k in forms:
        med = statistics.median(times[k])
        rows[k] = {"ms": 1e3 * med, "ns_per_element": 1e9 * med / x.numel(), "speedup_vs_baseline": base / med,
                   "max_abs_error_vs_fp64": errs[k], "ms_all": [1e3 * t for t in times[k]]}
        print(f"{k:26s}{1e3 * med:11.3f}{1e9 * med / x.numel():11.2f}{base / med:9.2f}{errs[k]:19.2e}")
    if a.json:
        write_json(a.json, {"rows": a.rows, "width": a.width, "threads": a.threads, "baseline": a.forms[0], "forms": rows,
                            "environment": env})


if __name__ == "__main__":
    main()

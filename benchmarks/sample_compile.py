"""One workflow sampling job, eager against the compiled branches, warm-up included, in one run.

    python benchmarks/sample_compile.py                           # the embedded DiT, NFE 20, 1000 samples, 1 thread
    python benchmarks/sample_compile.py --model uvit --nfe 20 --threads 2
    python benchmarks/sample_compile.py --batch-sizes 250 50      # also the batch size, both paths

Each variant is a fresh process running ``l2c sample`` exactly as the workflow's sample job does
(the committed checkpoint, its CFG scale, shards of 250), timed from process start to the written
file, for each batch size B of ``--batch-sizes``: ``eager-bB``; ``compiled-cold-bB`` (``--compile``
with an empty inductor cache: every kernel compiled); ``compiled-warm-bB`` (``--compile`` again, the
inductor cache of the cold run: what every later job on the machine pays). ``--schedule`` times a
cached cell instead of the uncached one. Printed: wall seconds per variant and its speedup over
eager at the first batch size, the largest difference of every variant's samples from those
(uint8 levels), device, threads, torch version and git revision; ``--json`` writes every number."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from l2c.generate import EMBEDDED_DIR
from l2c.io import environment_record, write_json

MODELS = {"dit": ("dit-digits.pt", "ddim", 1.5), "uvit": ("uvit-digits.pt", "dpm2", 0.5)}


def run(name: str, args: list[str], out: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "import sys; from l2c.cli import main; sys.exit(main())", "sample", *args,
                        "--out", str(out), "--no-progress"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{name}: l2c sample failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="dit")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--schedule", help="a cache schedule JSON (default: the uncached sampler)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[250],
                    help="sampling batch sizes (the first is the baseline; divisors of 250 keep one shape per shard)")
    ap.add_argument("--no-cold", action="store_true",
                    help="one compiled run per batch size, from an empty inductor cache (named compiled-bB)")
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)
    ckpt, sampler, cfg_scale = MODELS[a.model]
    args = ["--checkpoint", str(EMBEDDED_DIR / ckpt), "--sampler", sampler, "--nfe", str(a.nfe), "--cfg-scale", str(cfg_scale),
            "--num-samples", str(a.num_samples), "--shard-size", "250"]
    if a.schedule:
        args += ["--schedule", a.schedule]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    env.pop("L2C_JOB_SERVER", None)
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for b in a.batch_sizes:
            bargs = [*args, "--batch-size", str(b)]
            cache = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-b{b}")}
            walls[f"eager-b{b}"] = run(f"eager-b{b}", bargs, tmp / f"eager-b{b}.npz", env)
            if not a.no_cold:
                walls[f"compiled-cold-b{b}"] = run(f"compiled-cold-b{b}", [*bargs, "--compile"], tmp / f"compiled-cold-b{b}.npz", cache)
            name = f"compiled-b{b}" if a.no_cold else f"compiled-warm-b{b}"  # without a cold run, this one compiles
            walls[name] = run(name, [*bargs, "--compile"], tmp / f"{name}.npz", cache)
        base = next(iter(walls))
        ref = np.load(tmp / f"{base}.npz")["arr_0"].astype(int)
        diffs = {k: int(np.abs(np.load(tmp / f"{k}.npz")["arr_0"].astype(int) - ref).max()) for k in walls}
    env_rec = environment_record("cpu", "fp32")
    print(f"sample_compile: {a.model} {sampler} NFE {a.nfe}, {a.num_samples} samples, {a.threads} thread(s), "
          f"{'schedule ' + a.schedule if a.schedule else 'uncached'} | torch {env_rec['torch']} | rev {env_rec['git_revision']}")
    for k, w in walls.items():
        print(f"  {k:<20} {w:8.1f} s   speedup over {base} {walls[base] / w:5.2f}x   largest sample difference {diffs[k]} uint8 level(s)")
    if a.json:
        write_json(a.json, {"model": a.model, "nfe": a.nfe, "num_samples": a.num_samples, "threads": a.threads,
                            "schedule": a.schedule, "batch_sizes": a.batch_sizes, "baseline": base, "wall_s": walls,
                            "max_uint8_diff": diffs, "environment": env_rec})


if __name__ == "__main__":
    main()

"""One workflow sampling job, eager against the compiled branches, warm-up included, in one run.

    python benchmarks/sample_compile.py                           # the embedded DiT, NFE 20, 1000 samples, 1 thread
    python benchmarks/sample_compile.py --model uvit --nfe 20 --threads 2

Each variant is a fresh process running ``l2c sample`` exactly as the workflow's sample job does
(the committed checkpoint, CFG 1.5, batch 250, shards of 250), timed from process start to the
written file: ``eager``; ``compiled-cold`` (``--compile`` with an empty inductor cache: every kernel
compiled); ``compiled-warm`` (``--compile`` again, the inductor cache of the cold run: what every
later job on the machine pays). ``--schedule`` times a cached cell instead of the uncached one.
Printed: wall seconds per variant and its speedup over eager, the largest difference of the
compiled samples from the eager ones (uint8 levels), device, threads, torch version and git
revision; ``--json`` writes every number."""
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
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)
    ckpt, sampler, cfg_scale = MODELS[a.model]
    args = ["--checkpoint", str(EMBEDDED_DIR / ckpt), "--sampler", sampler, "--nfe", str(a.nfe), "--cfg-scale", str(cfg_scale),
            "--num-samples", str(a.num_samples), "--batch-size", "250", "--shard-size", "250"]
    if a.schedule:
        args += ["--schedule", a.schedule]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    env.pop("L2C_JOB_SERVER", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
        walls = {"eager": run("eager", args, tmp / "eager.npz", env),
                 "compiled-cold": run("compiled-cold", [*args, "--compile"], tmp / "cold.npz", cache),
                 "compiled-warm": run("compiled-warm", [*args, "--compile"], tmp / "warm.npz", cache)}
        ref = np.load(tmp / "eager.npz")["arr_0"].astype(int)
        diff = max(int(np.abs(np.load(tmp / f"{v}.npz")["arr_0"].astype(int) - ref).max()) for v in ("cold", "warm"))
    env_rec = environment_record("cpu", "fp32")
    print(f"sample_compile: {a.model} {sampler} NFE {a.nfe}, {a.num_samples} samples, {a.threads} thread(s), "
          f"{'schedule ' + a.schedule if a.schedule else 'uncached'} | torch {env_rec['torch']} | rev {env_rec['git_revision']}")
    for k, w in walls.items():
        print(f"  {k:<14} {w:8.1f} s   speedup over eager {walls['eager'] / w:5.2f}x")
    print(f"  largest difference of compiled from eager samples: {diff} uint8 level(s)")
    if a.json:
        write_json(a.json, {"model": a.model, "nfe": a.nfe, "num_samples": a.num_samples, "threads": a.threads,
                            "schedule": a.schedule, "wall_s": walls, "max_uint8_diff": diff, "environment": env_rec})


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Quick measurement of the caching methods (l2c.caching) on the embedded digits DiT: FID / sFID
(digits back-end), paired PSNR against uncached samples of the same seeds, and the MACs speedup of
what each method actually computed, at one NFE, with the authors' defaults (docs/methods.md) and a
few published settings beside them. A small-sample check, not the workflow's evidence.

    python benchmarks/methods_embedded.py --out results/methods-embedded --num-samples 500 --nfe 20

Calibration passes (TeaCache, SmoothCache) use seeds disjoint from the evaluated samples'.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2c.caching import build_engine  # noqa: E402
from l2c.caching.calibrate import calibrate  # noqa: E402
from l2c.data import digits_reference_npz, float_to_uint8  # noqa: E402
from l2c.generate import EMBEDDED_MODEL, noise_and_labels  # noqa: E402
from l2c.io import environment_record, write_json, write_npz  # noqa: E402
from l2c.metrics.evaluate import evaluate  # noqa: E402
from l2c.models import load_model  # noqa: E402
from l2c.sampling import sample  # noqa: E402

ROWS = [  # (label, method, params): the authors' defaults first, then published settings
    ("uncached", None, {}),
    ("taylorseer N4 O4 (default)", "taylorseer", {}),
    ("taylorseer N3 O3", "taylorseer", {"interval": 3, "order": 3}),
    ("reuse, TaylorSeer N3 steps (FORA-like)", "taylorseer", {"interval": 3, "order": 0}),
    ("taylorseer N5 O3", "taylorseer", {"interval": 5, "order": 3}),
    ("reuse, TaylorSeer N5 steps (FORA-like)", "taylorseer", {"interval": 5, "order": 0}),
    ("teacache 0.25", "teacache", {"threshold": 0.25}),
    ("teacache 0.4 (default)", "teacache", {}),
    ("teacache 0.8", "teacache", {"threshold": 0.8}),
    ("fbcache 0.08 (default)", "fbcache", {}),
    ("toca (default)", "toca", {}),
    ("smoothcache 0.18 (default)", "smoothcache", {}),
    ("delta-dit (default)", "delta-dit", {}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", default=str(EMBEDDED_MODEL))
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="comma-separated row labels to run (default: all)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    model = load_model(a.checkpoint)
    ref = a.out / "reference.npz"
    if not ref.exists():
        digits_reference_npz(ref)
    calib = {}
    for m in ("teacache", "smoothcache"):
        path = a.out / f"{m}-ddim{a.nfe}.json"
        if not path.exists():
            calibrate(model, m, path, nfe=a.nfe, cfg_scale=a.cfg_scale, seed=a.seed + 1000, checkpoint=a.checkpoint)
        calib[m] = str(path)
    shape = (model.in_channels, model.input_size, model.input_size)
    per_eval = build_engine(model, "taylorseer", nfe=a.nfe).macs_table().per_eval
    rows = []
    only = set(a.only.split(",")) if a.only else None
    for label, method, params in ROWS:
        if only and label not in only and label != "uncached":
            continue
        t0 = time.perf_counter()
        imgs, labs, macs = [], [], []
        engine = None
        if method:
            engine = build_engine(model, method, nfe=a.nfe, params=params, calibration=calib.get(method))
        for lo in range(0, a.num_samples, a.batch_size):
            idx = np.arange(lo, min(lo + a.batch_size, a.num_samples))
            noise, labels = noise_and_labels(a.seed, idx, shape, model.num_classes)
            x = sample(model, noise, labels, nfe=a.nfe, cfg_scale=a.cfg_scale, engine=engine)
            imgs.append(float_to_uint8(x))
            labs.append(labels.numpy())
            if engine is not None:
                macs.append((len(idx), sum(engine.macs_per_step())))
        wall = time.perf_counter() - t0
        npz = a.out / f"{label.split(' (')[0].replace(' ', '_').replace(',', '')}.npz"
        write_npz(npz, arr_0=np.concatenate(imgs), arr_1=np.concatenate(labs))
        full = a.out / "uncached.npz"
        res = evaluate(npz, ref, backend="digits", paired_with=None if method is None else full, kid=False)
        total = per_eval * a.nfe if engine is None else sum(n * m for n, m in macs) / a.num_samples
        row = {"label": label, "method": method, "params": engine.plan.params if engine else {},
               "fid": res["fid"], "sfid": res["sfid"], "psnr_db": res.get("paired", {}).get("psnr_db"),
               "macs_per_image": total, "macs_speedup": per_eval * a.nfe / total, "wall_s": wall}
        rows.append(row)
        print(f"{label:42s} FID {row['fid']:7.3f} sFID {row['sfid']:7.3f} PSNR {row['psnr_db'] or float('nan'):6.2f} dB "
              f"MACs x{row['macs_speedup']:.3f}  ({wall:.0f} s)", flush=True)
    write_json(a.out / "methods.json", {"nfe": a.nfe, "num_samples": a.num_samples, "cfg_scale": a.cfg_scale,
                                        "seed": a.seed, "checkpoint": a.checkpoint, "rows": rows,
                                        "command": "python " + " ".join(sys.argv),
                                        "environment": environment_record("cpu", "fp32")})
    return 0


if __name__ == "__main__":
    sys.exit(main())

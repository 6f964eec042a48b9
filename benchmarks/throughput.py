"""Generation throughput of the sampling path (issue 8, goal 3): images/s and model FLOP utilisation
for a model with random weights (speed does not depend on them), DDIM with CFG, at several batch sizes.

    python benchmarks/throughput.py --model DiT-XL/2 --image-size 256 --nfe 20 --batches 32 64 128 --dtype bf16 --device cuda

MFU = 2 * MACs (thop convention, the CFG duplicate counted) / time / peak; pass --peak-tflops (H100 SXM
dense bf16: 989; fp32 non-tensor-core: 67). Prints one row per batch and writes --json."""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from l2c.bench import DTYPES
from l2c.io import environment_record, write_json
from l2c.macs import count_model_macs, model_input_size
from l2c.models import create_model
from l2c.sampling import sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="DiT-XL/2")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--pixel", action="store_true")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = create_model(a.model, input_size=model_input_size(a.image_size, not a.pixel))
    for p in model.parameters():
        nn.init.normal_(p, std=0.02)
    model = model.to(dev).eval()
    C, S = model.in_channels, model.input_size
    macs = count_model_macs(model, torch.zeros(1, C, S, S, device=dev), torch.zeros(1, device=dev), torch.zeros(1, dtype=torch.long, device=dev)).per_eval
    passes = 2 if a.cfg_scale > 1 else 1
    rows = []
    autocast = torch.autocast(dev.type, dtype=DTYPES[a.dtype]) if a.dtype != "fp32" else nullcontext()
    for b in a.batches:
        z = torch.randn(b, C, S, S, device=dev)
        y = torch.randint(model.num_classes, (b,), device=dev)
        try:
            with autocast:
                sample(model, z, y, nfe=a.nfe, cfg_scale=a.cfg_scale)  # warm-up
            times = []
            for _ in range(a.repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with autocast:
                    sample(model, z, y, nfe=a.nfe, cfg_scale=a.cfg_scale)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            print(f"batch {b}: out of memory")
            break
        t = sorted(times)[len(times) // 2]
        tflops = 2 * macs * a.nfe * passes * b / t / 1e12
        row = {"batch": b, "seconds": t, "images_per_s": b / t, "model_tflops": tflops,
               "mfu": tflops / a.peak_tflops if a.peak_tflops else None}
        rows.append(row)
        print(f"batch {b:5d}  {t:8.3f} s  {b / t:9.2f} img/s  {tflops:8.2f} TFLOP/s" + (f"  MFU {row['mfu']:.3f}" if row["mfu"] else ""))
    res = {"model": a.model, "image_size": a.image_size, "nfe": a.nfe, "cfg_scale": a.cfg_scale, "macs_per_eval": macs,
           "rows": rows, "environment": environment_record(dev, a.dtype)}
    if a.json:
        write_json(a.json, res)


if __name__ == "__main__":
    main()

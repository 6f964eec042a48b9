"""The inception-adm feature network in both memory layouts, interleaved in one run: NCHW (as
torch-fidelity builds it) and channels-last (as ``l2c.metrics.features.AdmInceptionExtractor``
runs it), the time of a forward and the largest feature difference between them.

    python benchmarks/inception_layout.py                       # batch 8 of 64x64 images, 1 thread
    python benchmarks/inception_layout.py --batch 64 --size 256 --threads 2 --device cuda

Weights: the rehearsal's He-initialised stand-in (``l2c.rehearsal.standin_inception``), so the
features have their real scale; the timing does not depend on the values. Prints device, threads,
torch version and git revision; ``--json`` writes every number."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from l2c.io import environment_record, write_json
from l2c.metrics.features import AdmInceptionExtractor
from l2c.rehearsal import standin_inception

LAYERS = ["2048", "spatial", "logits_unbiased"]


def timed(model, x, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="image side before the network's resize to 299")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = standin_inception(Path(tmp) / "weights-inception-2015-12-05-6726825d.pth")
        nhwc = AdmInceptionExtractor("inception-v3-adm", LAYERS, feature_extractor_weights_path=path).eval().to(device)
    nchw = AdmInceptionExtractor("inception-v3-adm", LAYERS, random_weights=True).eval()
    nchw.load_state_dict(nhwc.state_dict())
    nchw = nchw.to(device, memory_format=torch.contiguous_format)
    x = torch.randint(0, 256, (a.batch, 3, a.size, a.size), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8).to(device)
    timed(nchw, x, device), timed(nhwc, x, device)  # warm-up
    t_nchw, t_nhwc = [], []
    for _ in range(a.repeats):
        t, out_nchw = timed(nchw, x, device)
        t_nchw.append(t)
        t, out_nhwc = timed(nhwc, x, device)
        t_nhwc.append(t)
    diff = {k: float(((o1 - o2).abs().max() / o1.abs().max()).item()) for k, o1, o2 in zip(LAYERS, out_nchw, out_nhwc)}
    env = environment_record(device, "float32")
    res = {"batch": a.batch, "size": a.size, "threads": a.threads, "repeats": a.repeats,
           "nchw_s": statistics.median(t_nchw), "channels_last_s": statistics.median(t_nhwc),
           "max_relative_difference": diff, "environment": env}
    res["speedup"] = res["nchw_s"] / res["channels_last_s"]
    print(f"inception-adm forward, batch {a.batch} of {a.size}x{a.size} (resized to 299), {env.get('device_name')}, "
          f"{a.threads} thread(s), torch {env.get('torch')}, git {env.get('git_revision')}")
    print(f"  NCHW {res['nchw_s']:.3f} s   channels-last {res['channels_last_s']:.3f} s   ratio {res['speedup']:.2f}x")
    print("  largest difference / largest feature: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
    if a.json:
        write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()

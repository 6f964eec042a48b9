"""``l2c embedded-report``: quality of an embedded digits model (the DiT with DDIM, the U-ViT with
DPM-Solver-2), measured by the suite's own metric code against the digits reference split (issue 3):
the FID floor (train split vs reference split), NFE 50 with CFG (IS, FID, sFID, precision, recall,
label agreement of the digits classifier), and for NFE 20 the caching sensitivity: the uncached
solver at NFE 20 and 10 and "every sub-layer reused in every cache step", each with FID and the
paired fidelity (PSNR, MSE) to the uncached NFE-20 samples of the same seeds, over several
sampling seeds (seed-to-seed spread). Also the sampling budget: the
wall time of 1,000 samples at NFE 20 with CFG."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .cache import CacheSchedule, default_cache_steps
from .data import digits_reference_npz, float_to_uint8, load_dataset
from .generate import EMBEDDED_MODEL, SampleConfig, generate
from .io import environment_record, write_json, write_npz
from .models import load_model, num_sublayers


def label_agreement(samples_npz: str | os.PathLike) -> float:
    """Share of samples the digits classifier assigns to their conditioning label (``arr_1``)."""
    from .metrics.features import load_digits_net, uint8_nhwc_to_float
    net, _ = load_digits_net()
    with np.load(samples_npz, allow_pickle=False) as f:
        x, y = torch.from_numpy(f["arr_0"]), torch.from_numpy(f["arr_1"])
    with torch.no_grad():
        pred = net(uint8_nhwc_to_float(x))["logits"].argmax(1)
    return float((pred == y).float().mean())


def _metrics(res: dict) -> dict:
    keys = ("inception_score", "fid", "sfid", "precision", "recall", "kid_mean")
    out = {k: res.get(k) for k in keys}
    if "paired" in res:
        out.update(psnr_db=res["paired"]["psnr_db"], psnr_mean_db=res["paired"]["psnr_mean_db"], mse=res["paired"]["mse_mean"])
    return out


def all_reuse_schedule(nfe: int, depth: int, sampler: str = "ddim") -> CacheSchedule:
    steps = default_cache_steps(nfe, sampler)
    flat = np.ones((nfe, 2 * depth), bool)
    flat[steps] = False
    return CacheSchedule.from_mask(flat, steps, sampler=sampler, source="all-reuse-every-other-step")


def embedded_report(out_dir: str | os.PathLike, checkpoint: str | os.PathLike = EMBEDDED_MODEL, n_main: int = 2000,
                    n_cache: int = 1000, seeds: tuple[int, ...] = (0, 1, 2), cfg_scale: float = 1.5, sampler: str = "ddim",
                    progress: bool = True) -> dict:
    """Keys are named by solver: ``ddim50`` / ``ddim20`` / ``ddim10`` (DDIM) or ``dpm50`` / ``dpm20`` /
    ``dpm10`` (DPM-Solver-2, U-ViT's sampler; its cache steps are the shifted ones)."""
    from .metrics.evaluate import evaluate
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = out / "digits-reference.npz"
    digits_reference_npz(ref)
    train = load_dataset("digits:train")
    write_npz(out / "digits-train.npz", arr_0=float_to_uint8(train.x), arr_1=train.y.numpy())
    p = "ddim" if sampler == "ddim" else "dpm"
    report: dict = {"checkpoint": str(checkpoint), "sampler": sampler, "cfg_scale": cfg_scale, "environment": environment_record("cpu")}
    report["floor_train_vs_reference"] = _metrics(evaluate(out / "digits-train.npz", ref))
    report["reference_vs_reference"] = _metrics(evaluate(ref, ref))

    base = SampleConfig(checkpoint=str(checkpoint), cfg_scale=cfg_scale, sampler=sampler, shard_size=500, batch_size=500)
    main = generate(replace(base, nfe=50, num_samples=n_main, seed=100), out / f"{p}50.npz", progress=progress)
    report[f"{p}50"] = {**_metrics(evaluate(main, ref)), "label_agreement": label_agreement(main), "n": n_main}

    depth = num_sublayers(load_model(checkpoint)) // 2
    sched = out / "all-reuse-20.json"
    all_reuse_schedule(20, depth, sampler).save(sched)
    rows = []
    for seed in seeds:
        t0 = time.time()
        full = generate(replace(base, nfe=20, num_samples=n_cache, seed=seed), out / f"{p}20-s{seed}.npz", progress=progress)
        wall = time.time() - t0
        few = generate(replace(base, nfe=10, num_samples=n_cache, seed=seed), out / f"{p}10-s{seed}.npz", progress=progress)
        reuse = generate(replace(base, nfe=20, num_samples=n_cache, seed=seed, schedule=str(sched)), out / f"allreuse20-s{seed}.npz", progress=progress)
        for name, path in ((f"{p}20", full), (f"{p}10", few), ("all-reuse-20", reuse)):
            m = _metrics(evaluate(path, ref, paired_with=None if name == f"{p}20" else full))
            rows.append({"seed": seed, "setting": name, **m, "label_agreement": label_agreement(path)})
        rows[-3]["sampling_wall_s_1000"] = wall * 1000 / n_cache
    report["caching_sensitivity"] = rows
    summary = {}
    for name in (f"{p}20", f"{p}10", "all-reuse-20"):
        sel = [r for r in rows if r["setting"] == name]
        summary[name] = {k: {"mean": float(np.mean([r[k] for r in sel])), "std": float(np.std([r[k] for r in sel], ddof=1)) if len(sel) > 1 else 0.0}
                         for k in ("fid", "psnr_db", "mse", "label_agreement") if all(r.get(k) is not None for r in sel)}
    report["caching_sensitivity_summary"] = summary
    report["sampling_wall_s_1000_nfe20_cfg"] = float(np.median([r["sampling_wall_s_1000"] for r in rows if "sampling_wall_s_1000" in r]))
    write_json(out / "quality.json", report)
    return report

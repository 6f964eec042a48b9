"""``l2c bench``: latency of full vs cached sampling of the same model, side by side in one run,
with the MACs-ideal speedup and the ratio measured / ideal (the paper's latency convention: batch 8
with CFG, warm-up, device sync, here the median of repeats)."""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .cache import CacheEngine, CacheSchedule, default_cache_steps
from .io import L2CError, environment_record, write_json
from .macs import count_model_macs, macs_report
from .models import create_model, load_model, num_sublayers
from .sampling import sample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_threads_header(threads: int, what: str) -> dict[str, Any]:
    """Set torch's CPU thread count, print the run's header line (CPU, threads, dtype, torch version,
    git revision, ``what``) and return the environment record for the JSON rows."""
    torch.set_num_threads(threads)
    env = environment_record("cpu", "fp32")
    print(f"\n{env['device_name']} | threads {threads} | fp32 | torch {env['torch']} | rev {env['git_revision']} | {what}")
    return env


def forward_inputs(model: nn.Module, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded inputs of one model call on ``n`` images: noise, timesteps in [0, 999), labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_channels, model.input_size, model.input_size, generator=g)
    return x, torch.rand(n, generator=g) * 999, torch.randint(model.num_classes, (n,), generator=g)


def fraction_schedule(nfe: int, depth: int, fraction: float, sampler: str = "ddim", seed: int = 0) -> CacheSchedule:
    """Reuse a seeded random ``fraction`` of the sub-layers in every cache step (a bench schedule)."""
    rng = np.random.RandomState(seed)
    cache_steps = default_cache_steps(nfe, sampler)
    flat = np.ones((nfe, 2 * depth), bool)
    k = int(round(fraction * 2 * depth))
    for step in cache_steps:
        flat[step, rng.permutation(2 * depth)[:k]] = False
    return CacheSchedule.from_mask(flat, cache_steps, sampler=sampler, source=f"bench:fraction={fraction}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, repeats: int, warmup: int,
                  autocast: Any, **kw: Any) -> list[float]:
    """Wall-clock seconds of ``repeats`` sampling runs after ``warmup`` untimed ones."""
    times = []
    for r in range(warmup + repeats):
        _sync(noise.device)
        t0 = time.perf_counter()
        with autocast:
            sample(model, noise, labels, **kw)
        _sync(noise.device)
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_bench(model: nn.Module, schedule: CacheSchedule, *, nfe: int, sampler: str = "ddim", batch: int = 8,
              cfg_scale: float = 1.5, repeats: int = 5, warmup: int = 1, device: str = "cpu", dtype: str = "fp32",
              seed: int = 0, compile: bool = False) -> dict:
    """Time full and cached sampling alternately (interleaved repeats, so drift hits both alike).
    ``compile``: both through ``CacheEngine(compile=True)`` engines (compiled branches; the warm-up
    compiles them, or loads them from inductor's disk cache)."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    in_ch, size = model.in_channels, model.input_size
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, in_ch, size, size, generator=g).to(dev)
    labels = torch.randint(model.num_classes, (batch,), generator=g).to(dev)
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if dtype != "fp32" else nullcontext()
    common = dict(sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, autocast=autocast)
    plain = dict(common, engine=CacheEngine(model, None, compile=True) if compile else None)
    cache = dict(common, schedule=schedule, engine=CacheEngine(model, schedule, compile=True) if compile else None)
    full, cached = [], []
    time_sampling(model, noise, labels, repeats=0, warmup=warmup, **plain)
    time_sampling(model, noise, labels, repeats=0, warmup=warmup, **cache)
    for _ in range(repeats):
        full += time_sampling(model, noise, labels, repeats=1, warmup=0, **plain)
        cached += time_sampling(model, noise, labels, repeats=1, warmup=0, **cache)
    mm = count_model_macs(model, noise[:1], torch.zeros(1, device=dev), labels[:1])
    rep = macs_report(mm, schedule, nfe)
    t_full, t_cached = statistics.median(full), statistics.median(cached)
    measured = t_full / t_cached
    return {
        "nfe": nfe, "sampler": sampler, "batch": batch, "cfg_scale": cfg_scale, "repeats": repeats, "warmup": warmup,
        "compile": compile,
        "latency_full_s": t_full, "latency_cached_s": t_cached, "latency_full_all_s": full, "latency_cached_all_s": cached,
        "speedup_measured": measured, "speedup_macs_ideal": rep["macs_ideal_speedup"],
        "efficiency": measured / rep["macs_ideal_speedup"], "remove_ratio": rep["remove_ratio"],
        "macs_total": rep["macs_total"], "macs_total_full": rep["macs_total_full"], "schedule_source": schedule.source,
        "environment": environment_record(dev, dtype),
    }


# the default model of the bench commands: the embedded digits DiT's architecture (random weights)
DEFAULT_MODEL = "DiT-Tiny/2"
DEFAULT_GEOMETRY = {"image_size": 8, "pixel": True, "in_channels": 1, "num_classes": 10}
NAMED_GEOMETRY = {"image_size": 256, "pixel": False, "in_channels": None, "num_classes": 1000}  # paper models: SD latents


def resolve_model_args(a: argparse.Namespace) -> None:
    """Fill the unset geometry flags: the embedded model's (8x8x1 pixels, 10 classes) without --model,
    the paper models' (256 px images as SD-VAE latents, 1000 classes) with one; then check that the
    network input is a whole number of patches."""
    if a.checkpoint and a.model is None:  # our checkpoints record their architecture and geometry
        given = [f for f, v in (("--image-size", a.image_size), ("--in-channels", a.in_channels),
                                ("--num-classes", a.num_classes), ("--pixel", a.pixel), ("--latent", getattr(a, "latent", False)))
                 if v not in (None, False)]
        if given:
            raise L2CError(f"{', '.join(given)}: the checkpoint {a.checkpoint} records its own geometry; drop "
                           f"{'them' if len(given) > 1 else 'it'} (or give --model for an official state dict)")
    base = DEFAULT_GEOMETRY if a.model is None else NAMED_GEOMETRY
    if getattr(a, "latent", False):
        a.pixel = False
    elif a.pixel is None:
        a.pixel = base["pixel"]
    for key in ("image_size", "in_channels", "num_classes"):
        if getattr(a, key) is None:
            setattr(a, key, base[key])
    if not a.pixel and a.image_size % 8:
        raise L2CError(f"--image-size {a.image_size}: a latent model sees image size / 8; expected a multiple of 8 "
                       "(or --pixel for a pixel-space model)")


def _bench_model(a: argparse.Namespace) -> nn.Module:
    """The model a bench command times: ``--checkpoint`` weights, or seeded random weights."""
    if getattr(a, "image_size", None) is None or getattr(a, "pixel", None) is None:
        resolve_model_args(a)
    opts: dict[str, Any] = {"num_classes": a.num_classes}
    opts["input_size"] = a.image_size if a.pixel else a.image_size // 8
    if a.in_channels is not None:
        opts["in_channels"] = a.in_channels
    try:
        if a.checkpoint:  # our checkpoints record architecture and options; official files need --model
            model = load_model(a.checkpoint, a.model, **({} if a.model is None else opts))
        else:
            torch.manual_seed(0)
            model = create_model(a.model or DEFAULT_MODEL, **opts)
            for p in model.parameters():  # random weights (DiT's zero-init would make the output trivial)
                nn.init.normal_(p, std=0.02)
    except ValueError as e:
        raise L2CError(f"--model {a.model or DEFAULT_MODEL} cannot be built with {opts} ({e}); check --image-size, "
                       "--pixel / --latent and --in-channels") from None
    return model


def bench_cli(a: argparse.Namespace) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    model = _bench_model(a)
    depth = num_sublayers(model) // 2
    if a.schedule:
        schedule = CacheSchedule.load(a.schedule)
    elif a.router:  # ours (router.pt of l2c train-router) or the authors' file
        if a.theta is None:
            raise L2CError("--router needs --theta (0.1 for DiT-XL/2 256, 0.9 for U-ViT-H/2)")
        from .router import load_schedule_from_router
        schedule = load_schedule_from_router(a.router, a.theta, sampler=a.sampler, nfe=a.nfe)
    else:
        schedule = fraction_schedule(a.nfe, depth, a.reuse_fraction if a.reuse_fraction is not None else 0.45, a.sampler)
    schedule.check_nfe(a.nfe)
    schedule.check_model(model)
    if schedule.sampler.split("-")[0] != a.sampler:
        raise L2CError(f"schedule ({schedule.source}) was made for sampler {schedule.sampler!r}, not --sampler {a.sampler}")
    res = run_bench(model, schedule, nfe=a.nfe, sampler=a.sampler, batch=a.batch, cfg_scale=a.cfg_scale,
                    repeats=a.repeats, warmup=a.warmup, device=a.device, dtype=a.dtype, compile=a.compile)
    env = res["environment"]
    print(f"model {a.model or a.checkpoint} | {env['device_name']} ({env['device']}) | {a.dtype}"
          f"{' | torch.compile per branch' if a.compile else ''} | torch {env['torch']} | threads {env['num_threads']} | rev {env['git_revision']}")
    print(f"sampler {a.sampler} NFE {a.nfe}, batch {a.batch}, CFG {a.cfg_scale}; schedule {res['schedule_source']} "
          f"(remove ratio {100 * res['remove_ratio']:.2f}% in cache steps)")
    print(f"{'':10s}{'latency (s)':>14s}{'speedup':>10s}")
    print(f"{'full':10s}{res['latency_full_s']:14.4f}{1.0:10.3f}")
    print(f"{'cached':10s}{res['latency_cached_s']:14.4f}{res['speedup_measured']:10.3f}")
    print(f"MACs-ideal speedup {res['speedup_macs_ideal']:.3f}x | measured / ideal = {res['efficiency']:.3f}")
    if a.json:
        write_json(a.json, res)
    return res


ROUTER_PHASES = ("data", "cache_fill", "teacher", "student", "backward", "optimizer")


def run_router_bench(model: nn.Module, *, nfe: int = 20, sampler: str = "ddim", batch: int = 8, iters: int = 20,
                     warmup: int = 3, device: str = "cpu", lam: float = 1e-3, seed: int = 0) -> dict:
    """Iterations/s of ``l2c train-router`` (the L2C objective) on ``model`` with random data of its
    input shape, and the split of an iteration into its phases: data, cache fill (the no-grad full
    step before the cache step), teacher (no-grad full forward), student (soft-router forward),
    backward (to the router logits only) and optimizer. The first ``warmup`` iterations are dropped."""
    import tempfile

    from .router import RouterConfig, train_router
    spec = f"random:{model.in_channels}x{model.input_size}x{model.input_size}:{model.num_classes}:{max(batch, 64)}"
    cfg = RouterConfig(checkpoint="(random weights)", data=spec, sampler=sampler, nfe=nfe, lam=lam, steps=warmup + iters,
                       batch_size=batch, seed=seed, ckpt_every=10 ** 9, log_every=10 ** 9, device=device)
    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_router(cfg, tmp, progress=False, model=model, timings=timings)
    per_phase = {k: statistics.mean(v[warmup:]) for k, v in timings.items()}
    per_it = sum(per_phase.values())
    return {"nfe": nfe, "sampler": sampler, "batch": batch, "iters": iters, "warmup": warmup,
            "s_per_it": per_it, "it_per_s": 1 / per_it, "s_per_1000_it": 1000 * per_it,
            "phases_s": per_phase, "phases_share": {k: v / per_it for k, v in per_phase.items()},
            "environment": environment_record(torch.device(device), "fp32")}


def bench_router_cli(a: argparse.Namespace) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    model = _bench_model(a)
    res = run_router_bench(model, nfe=a.nfe, sampler=a.sampler, batch=a.batch, iters=a.iters, warmup=a.warmup,
                           device=a.device, lam=a.lam)
    env = res["environment"]
    print(f"router training, model {a.model or a.checkpoint} | {env['device_name']} ({env['device']}) | fp32 | "
          f"torch {env['torch']} | threads {env['num_threads']} | rev {env['git_revision']}")
    print(f"sampler {a.sampler} NFE {a.nfe}, batch {a.batch}, {a.iters} timed iterations after {a.warmup} warm-up")
    print(f"{'phase':12s}{'ms / it':>12s}{'share':>9s}")
    for k in ROUTER_PHASES:
        if k in res["phases_s"]:
            print(f"{k:12s}{1000 * res['phases_s'][k]:12.2f}{100 * res['phases_share'][k]:8.1f}%")
    print(f"{'total':12s}{1000 * res['s_per_it']:12.2f}   -> {res['it_per_s']:.3f} it/s, "
          f"{res['s_per_1000_it']:.1f} s per 1,000 iterations")
    if a.json:
        write_json(a.json, res)
    return res

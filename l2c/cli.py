"""The ``l2c`` command line: one sub-command per stage, each a thin call into the package."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .io import L2CError

COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def _read_yaml(path: str) -> dict:
    import yaml
    p = Path(path)
    if not p.exists():
        raise L2CError(f"config {path}: file not found")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise L2CError(f"config {path}: not valid YAML ({e})") from e
    if not isinstance(d, dict):
        raise L2CError(f"config {path}: expected a mapping of keys to values")
    return d


def _dataclass_from(cls, d: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise L2CError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**d)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- commands --------------------------------------------------------------------------------------

@command("pretrain")
def cmd_pretrain(a: argparse.Namespace) -> None:
    from .pretrain import PretrainConfig, pretrain
    d = _read_yaml(a.config) if a.config else {}
    for key in ("steps", "batch_size", "seed", "threads"):
        if getattr(a, key) is not None:
            d[key] = getattr(a, key)
    cfg = _dataclass_from(PretrainConfig, d, a.config or "pretrain options")
    print(pretrain(cfg, a.out, progress=not a.no_progress))


@command("macs")
def cmd_macs(a: argparse.Namespace) -> None:
    if getattr(a, "method", None):
        from .caching.cli import macs_cli
        macs_cli(a)
        return
    from .macs import macs_for
    rep = macs_for(a.model, image_size=a.image_size, sampler=a.sampler, nfe=a.nfe, router=a.router, theta=a.theta,
                   schedule=a.schedule, latent=not a.pixel, in_channels=a.in_channels, num_classes=a.num_classes)
    if a.json:
        _print_json(rep)
    else:
        print(f"{a.model} {a.image_size}px {a.sampler} NFE {a.nfe}: {rep['macs_total'] / 1e12:.3f} T MACs per image "
              f"(full {rep['macs_total_full'] / 1e12:.3f} T, {rep['macs_per_eval_full'] / 1e9:.2f} G per evaluation); "
              f"remove ratio {100 * rep['remove_ratio']:.2f}% (attn {100 * rep['remove_ratio_attn']:.2f}%, "
              f"mlp {100 * rep['remove_ratio_mlp']:.2f}%); MACs-ideal speedup {rep['macs_ideal_speedup']:.3f}x")


@command("sample")
def cmd_sample(a: argparse.Namespace) -> None:
    from .generate import SampleConfig, generate
    d = _read_yaml(a.config) if a.config else {}
    for f in fields(SampleConfig):
        v = getattr(a, f.name, None)
        if v is not None:
            d[f.name] = v
    if a.model_kwargs:
        d["model_kwargs"] = json.loads(a.model_kwargs)
    cfg = _dataclass_from(SampleConfig, d, a.config or "sample options")
    shards = tuple(int(v) for v in a.shards.split(":")) if a.shards else None
    res = generate(cfg, a.out, shards=shards, progress=not a.no_progress, keep_shards=a.keep_shards)
    print(res if res else f"shards {a.shards} done; run again without --shards to merge")


@command("train-router")
def cmd_train_router(a: argparse.Namespace) -> None:
    from .router import RouterConfig, train_router
    d = _read_yaml(a.config) if a.config else {}
    for key in ("checkpoint", "data", "sampler", "nfe", "lam", "objective", "steps", "batch_size", "lr", "seed", "threads", "ste_threshold", "device", "reduction", "trajectory_loss"):
        if getattr(a, key, None) is not None:
            d[key] = getattr(a, key)
    if a.no_clamp:
        d["clamp"] = None
    cfg = _dataclass_from(RouterConfig, d, a.config or "train-router options")
    if not cfg.checkpoint:
        from .generate import EMBEDDED_MODEL
        cfg.checkpoint = str(EMBEDDED_MODEL)
    print(train_router(cfg, a.out, progress=not a.no_progress))


@command("schedule")
def cmd_schedule(a: argparse.Namespace) -> None:
    """Write a cache schedule JSON: from a router at theta, or a heuristic / interval at a budget."""
    from .baselines import deepcache_schedule, faster_diffusion_schedule, heuristic_schedule, interval_schedule
    from .cache import CacheSchedule
    from .router import load_schedule_from_router
    if a.router:
        if a.theta is None:
            raise L2CError("--router needs --theta")
        sched = load_schedule_from_router(a.router, a.theta, nfe=a.nfe)
    elif a.kind == "interval":
        sched = interval_schedule(a.nfe, a.depth, a.interval, a.sampler, deep_from=a.deep_from)
    elif a.kind == "deepcache":
        sched = deepcache_schedule(a.nfe, a.depth, a.shallow, a.sampler, interval=a.interval)
    elif a.kind == "faster-diffusion":
        keys = [int(k) for k in a.key_steps.split(",")] if a.key_steps else None
        sched = faster_diffusion_schedule(a.nfe, a.depth, a.encoder_blocks or a.depth // 2, a.sampler, key_steps=keys)
    elif a.kind == "full":
        sched = CacheSchedule.full(a.nfe, a.depth, a.sampler)
    elif a.kind:
        budget = a.budget
        if a.match:
            budget = CacheSchedule.load(a.match).num_reused
        if budget is None:
            raise L2CError("a heuristic needs --budget N or --match SCHEDULE.json")
        profile = None
        if a.kind == "metrics":
            from .profile import profile_matrix, read_profile
            profile = profile_matrix(read_profile(a.profile)) if a.profile else None
        sched = heuristic_schedule(a.kind, budget, a.nfe, a.depth, a.sampler, seed=a.seed, profile=profile)
    else:
        raise L2CError("give --router FILE --theta T, or --kind")
    sched.save(a.out)
    r = sched.remove_ratio()
    print(f"{a.out}: {sched.source}, {sched.num_reused} sub-layers reused, remove ratio {100 * r['remove_ratio']:.2f}%")


@command("profile")
def cmd_profile(a: argparse.Namespace) -> None:
    import numpy as np
    from .generate import EMBEDDED_MODEL, noise_and_labels
    from .models import load_model
    from .profile import profile_redundancy, write_profile
    model = load_model(a.checkpoint or EMBEDDED_MODEL, a.model)
    noise, labels = noise_and_labels(a.seed, np.arange(a.num_samples), (model.in_channels, model.input_size, model.input_size), model.num_classes)
    df = profile_redundancy(model, noise, labels, nfe=a.nfe, sampler=a.sampler, cfg_scale=a.cfg_scale, cfg_channels=a.cfg_channels)
    write_profile(df, a.out)
    print(a.out)


@command("evaluate")
def cmd_evaluate(a: argparse.Namespace) -> None:
    from .metrics.evaluate import evaluate, write_evaluation
    res = evaluate(a.samples, a.ref, backend=a.backend, weights=a.weights, batch_size=a.batch_size, device=a.device,
                   paired_with=a.paired_with, kid=not a.no_kid, allow_download=a.allow_download)
    if a.out:
        write_evaluation(res, a.out)
    keys = ("inception_score", "fid", "sfid", "precision", "recall", "kid_mean")
    print(f"{a.samples} [{res['backend']}: {res.get('feature_extractor', '')}] " + " ".join(
        f"{k}={res[k]:.4g}" for k in keys if res.get(k) is not None) +
        (f" psnr={res['paired']['psnr_db']:.2f}dB mse={res['paired']['mse_mean']:.3g}" if "paired" in res else ""))


@command("reference")
def cmd_reference(a: argparse.Namespace) -> None:
    from .data import digits_reference_npz
    digits_reference_npz(a.out)
    print(a.out)


@command("train-features")
def cmd_train_features(a: argparse.Namespace) -> None:
    from .metrics.features import train_digit_features
    print(train_digit_features(a.out, seed=a.seed))


@command("embedded-report")
def cmd_embedded_report(a: argparse.Namespace) -> None:
    from .embedded import embedded_report
    from .generate import EMBEDDED_MODEL
    rep = embedded_report(a.out, a.checkpoint or EMBEDDED_MODEL, n_main=a.n_main, n_cache=a.n_cache,
                          seeds=tuple(a.seeds), cfg_scale=a.cfg_scale, sampler=a.sampler, progress=not a.no_progress)
    main = "ddim50" if a.sampler == "ddim" else "dpm50"
    _print_json({k: rep[k] for k in ("floor_train_vs_reference", main, "caching_sensitivity_summary", "sampling_wall_s_1000_nfe20_cfg")})


@command("calibrate")
def cmd_calibrate(a: argparse.Namespace) -> None:
    from .caching.cli import run_calibrate
    run_calibrate(a)


@command("bench")
def cmd_bench(a: argparse.Namespace) -> None:
    if getattr(a, "method", None):
        from .caching.cli import bench_method
        bench_method(a)
        return
    from .bench import bench_cli
    bench_cli(a)


@command("bench-router")
def cmd_bench_router(a: argparse.Namespace) -> None:
    from .bench import bench_router_cli
    bench_router_cli(a)


@command("encode-latents")
def cmd_encode_latents(a: argparse.Namespace) -> None:
    from .vae import encode_latents
    print(encode_latents(a.data, a.out, a.vae, image_size=a.image_size, mode=a.mode, seed=a.seed, limit=a.limit,
                         batch_size=a.batch_size, shard_size=a.shard_size, device=a.device, progress=not a.no_progress))


# -- parser ----------------------------------------------------------------------------------------

def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", help="an official router file (DDIM*_router.pt / dpm*_router.pth) or one of ours")
    p.add_argument("--theta", type=float, default=None, help="router threshold: compute iff sigmoid(beta) > theta")
    p.add_argument("--schedule", help="a cache schedule JSON written by the suite")


def build_parser() -> argparse.ArgumentParser:
    from .caching.cli import add_calibrate_parser, add_method_args
    ap = argparse.ArgumentParser(prog="l2c", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train a diffusion transformer on a data set (resumable)")
    p.add_argument("--config", help="YAML with PretrainConfig keys (model, model_kwargs, data, steps, ...)")
    p.add_argument("--out", required=True, help="output folder (checkpoint.pt, model.pt, train_log.jsonl, record.json)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("macs", help="MACs (thop convention) and remove ratios of a sampling setting")
    p.add_argument("--model", required=True, help="e.g. DiT-XL/2")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--pixel", action="store_true", help="pixel-space model (default: SD-VAE latents, image/8)")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, required=True)
    _schedule_args(p)
    add_method_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sample", help="generate one cell's samples as an ADM .npz (sharded, resumable)")
    p.add_argument("--config", help="YAML with SampleConfig keys; flags override it")
    p.add_argument("--out", required=True, help="output .npz (arr_0 uint8 NHWC, arr_1 labels) + .json sidecar")
    p.add_argument("--checkpoint", help="model checkpoint (default: the embedded digits DiT)")
    p.add_argument("--model", help="model name for official state dicts, e.g. DiT-XL/2")
    p.add_argument("--model-kwargs", help='JSON model options, e.g. \'{"input_size": 32}\'')
    p.add_argument("--vae", help="AutoencoderKL folder for latent models (SD VAE)")
    p.add_argument("--sampler", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int)
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float)
    p.add_argument("--cfg-channels", dest="cfg_channels", type=int, help="guide only the first C eps channels (DiT-XL/2 official: 3)")
    _schedule_args(p)
    p.add_argument("--num-samples", dest="num_samples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--labels", choices=["uniform", "balanced"])
    p.add_argument("--shard-size", dest="shard_size", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "bf16", "tf32"])
    p.add_argument("--shards", help="compute only shards A:B (fan-out over jobs); a later run without it merges")
    p.add_argument("--keep-shards", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-router", help="train a Learning-to-Cache, learning-to-drop or trajectory router (resumable)")
    p.add_argument("--config", help="YAML with RouterConfig keys; flags override it")
    p.add_argument("--out", required=True, help="folder: router.pt, router_official.pt, train_log.jsonl, record.json")
    p.add_argument("--checkpoint", help="model (default: the embedded digits DiT)")
    p.add_argument("--data", help="digits:train, folder:PATH or latents:PATH.npz")
    p.add_argument("--sampler", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int)
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="lambda of Eq. 9")
    p.add_argument("--objective", choices=["cache", "drop", "trajectory"])
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ste-threshold", dest="ste_threshold", type=float)
    p.add_argument("--no-clamp", action="store_true", help="do not clamp the logits to [-5, 5] (U-ViT recipe)")
    p.add_argument("--reduction", choices=["mean", "sum"], help="MSE over all outputs (mean, DiT) or per-sample sum (U-ViT)")
    p.add_argument("--trajectory-loss", dest="trajectory_loss", choices=["x0", "final"],
                   help="trajectory objective: per-step predicted-x0 error (x0) or the final image's error (final)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("schedule", help="write a cache schedule: router at theta, heuristic or interval at a budget")
    p.add_argument("--out", required=True)
    _schedule_args(p)
    p.add_argument("--kind", choices=["full", "interval", "deepcache", "faster-diffusion", "bottom", "top", "random", "metrics",
                                      "bottom-attn", "bottom-mlp", "top-attn", "top-mlp", "random-drop"])
    p.add_argument("--budget", type=int, help="number of (cache step, sub-layer) pairs to reuse")
    p.add_argument("--match", help="take the budget from this schedule JSON (matched budget)")
    p.add_argument("--profile", help="redundancy profile CSV (for --kind metrics)")
    p.add_argument("--nfe", type=int, required=True)
    p.add_argument("--depth", type=int, default=12, help="number of blocks (embedded DiT: 12, DiT-XL/2: 28)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--interval", type=int, default=2)
    p.add_argument("--deep-from", dest="deep_from", type=int, default=0, help="interval: reuse blocks from this one on")
    p.add_argument("--shallow", type=int, default=1, help="deepcache: blocks recomputed on each side of the U")
    p.add_argument("--encoder-blocks", dest="encoder_blocks", type=int, default=None,
                   help="faster-diffusion: leading blocks reused at non-key steps (default depth // 2: U-ViT's in-blocks)")
    p.add_argument("--key-steps", dest="key_steps", help="faster-diffusion: comma-separated key steps (default: its DDIM-50 set scaled)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("profile", help="redundancy profile: error of reusing each sub-layer's previous output")
    p.add_argument("--out", required=True, help="tidy CSV")
    p.add_argument("--checkpoint")
    p.add_argument("--model")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--cfg-channels", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)

    p = sub.add_parser("evaluate", help="IS / FID / sFID / precision / recall / KID of a sample file (ADM protocol)")
    p.add_argument("samples", help="samples .npz (arr_0 uint8 NHWC)")
    p.add_argument("--ref", required=True, help="reference batch .npz (arr_0; mu/sigma/mu_s/sigma_s used when present)")
    p.add_argument("--backend", default="digits", choices=["digits", "inception-adm"])
    p.add_argument("--weights", help="feature network weights (default: embedded digits net / $TORCH_HOME Inception)")
    p.add_argument("--paired-with", dest="paired_with", help="uncached samples of the same seeds: adds PSNR / MSE")
    p.add_argument("--out", help="result JSON")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--allow-download", action="store_true", help="let torch-fidelity download the Inception weights")

    p = sub.add_parser("reference", help="write the digits reference split as an ADM reference batch")
    p.add_argument("--out", required=True)

    p = sub.add_parser("train-features", help="train the digits feature network of the embedded metrics back-end")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("embedded-report", help="quality of the embedded model (issue 3 numbers) into OUT/quality.json")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--n-main", type=int, default=2000)
    p.add_argument("--n-cache", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--cfg-scale", type=float, default=1.5,
                   help="guidance scale (DiT form for DiT; U-ViT form eps_c + s (eps_c - eps_u) for U-ViT: 0.5 ~ DiT's 1.5)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench", help="latency of full vs cached sampling, with the MACs-ideal speedup beside it")
    _bench_model_args(p)
    _schedule_args(p)
    p.add_argument("--reuse-fraction", type=float, default=None,
                   help="without a router/schedule: reuse a seeded random share of the sub-layers in every cache step")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true",
                   help="time the torch.compile path (one graph per step pattern; the warm-up runs compile)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result to this JSON file")
    add_method_args(p)

    add_calibrate_parser(sub)

    p = sub.add_parser("encode-latents", help="encode an image data set once with the SD autoencoder (latents:PATH.npz)")
    p.add_argument("--data", required=True, help="folder:PATH (ImageNet-style class folders)")
    p.add_argument("--vae", required=True, help="AutoencoderKL folder / local HF id, or an LDM-layout file (autoencoder_kl_ema.pth)")
    p.add_argument("--out", required=True, help="output .npz (latents [N,4,H/8,W/8] scaled by 0.18215, labels [N])")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--mode", default="sample", choices=["sample", "mean"], help="posterior sample (seeded per image) or mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=4096, help="images per resumable shard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench-router", help="router-training iterations/s with the teacher/student/cache-fill split")
    _bench_model_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result to this JSON file")
    return ap


def _bench_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered model name (default DiT-Tiny/2; official checkpoints need it)")
    p.add_argument("--checkpoint", help="model weights (default: random weights; speed does not depend on them)")
    p.add_argument("--image-size", type=int, default=8, help="image size in pixels (latent size = /8 unless --pixel)")
    p.add_argument("--pixel", action="store_true", help="the model works on pixels, not SD latents")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, default=20)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        COMMANDS[a.command](a)
    except L2CError as e:
        print(f"l2c {a.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


@command("bench")
def cmd_bench(a: argparse.Namespace) -> None:
    from .bench import bench_cli
    bench_cli(a)


# -- parser ----------------------------------------------------------------------------------------

def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", help="an official router file (DDIM*_router.pt / dpm*_router.pth) or one of ours")
    p.add_argument("--theta", type=float, default=None, help="router threshold: compute iff sigmoid(beta) > theta")
    p.add_argument("--schedule", help="a cache schedule JSON written by the suite")


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="latency of full vs cached sampling, with the MACs-ideal speedup beside it")
    p.add_argument("--model", default=None, help="registered model name (default DiT-Tiny/2; official checkpoints need it)")
    p.add_argument("--checkpoint", help="model weights (default: random weights; speed does not depend on them)")
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--pixel", action="store_true")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, default=20)
    _schedule_args(p)
    p.add_argument("--reuse-fraction", type=float, default=None,
                   help="without a router/schedule: reuse this share of sub-layers (the most expensive first) in every cache step")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result to this JSON file")
    return ap


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

"""The Stable-Diffusion autoencoder of the latent models, and ``l2c encode-latents``.

Two weight layouts are read, both into diffusers' ``AutoencoderKL`` (never downloading):
  * a diffusers folder or local Hugging Face id (``stabilityai/sd-vae-ft-ema``: DiT's VAE);
  * a single LDM-layout state-dict file (``encoder.down.0.block.0.norm1.weight``, ...), e.g. the
    U-ViT authors' ``autoencoder_kl_ema.pth``: their ``FrozenAutoencoderKL`` is the LDM KL-f8
    autoencoder (ch 128, ch_mult 1-2-4-4, 2 res blocks, 4 latent channels, mid-block attention),
    i.e. the SD VAE architecture; its keys are converted with diffusers' own LDM converter and
    loaded strictly. Both models use the latent scale 0.18215 (U-ViT's ImageNet configs keep
    ``get_model``'s default; 0.23010 is its MS-COCO text-to-image setting, not used here).

``l2c encode-latents`` encodes an image data set once (the L2C authors re-encode ImageNet at every
router-training step) into ``latents:PATH.npz`` (``latents`` [N, 4, H/8, W/8] float32 already
multiplied by the scale, ``labels`` [N]). ``mode=sample`` draws z = mean + std * noise with a noise
seeded per image index (as the authors' ``latent_dist.sample()``, but reproducible); ``mode=mean``
stores the posterior mean. Work goes in shards written atomically to ``OUT.shards/``, so a killed
run resumes; the merged file is written atomically and the shards removed."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .io import L2CError, check_resume, environment_record, load_torch, read_json, write_json, write_npz

log = logging.getLogger("l2c.vae")

SD_VAE_SCALE = 0.18215
VAE_HINT = ("download the SD VAE once where you have internet, e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema "
            "--local-dir models/sd-vae-ft-ema` (files config.json and diffusion_pytorch_model.safetensors), and pass that "
            "folder; for U-ViT pass the authors' autoencoder_kl_ema.pth file itself")
# The SD / LDM KL-f8 autoencoder (what both the DiT and the U-ViT releases use).
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
LDM_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


def _diffusers():
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as e:
        raise L2CError("latent models need diffusers: pip install -e '.[real]'") from e
    return AutoencoderKL


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = load_torch(path, "autoencoder weights")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # a Lightning checkpoint of the LDM autoencoder
    if not isinstance(sd, dict):
        raise L2CError(f"autoencoder weights {path}: expected a state dict, got {type(sd).__name__}")
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}  # LDM training checkpoints carry the loss net


def ldm_vae_config(sd: dict, source: str) -> dict:
    """The AutoencoderKL config of an LDM-layout state dict, read off its shapes (widths per level,
    res blocks per level, latent channels); the rest as the SD autoencoder (32 norm groups)."""
    if not any(k.startswith("encoder.down.") for k in sd):
        raise L2CError(f"autoencoder weights {source}: not in the LDM layout (no 'encoder.down.*' keys; "
                       f"first keys {list(sd)[:3]}); pass a diffusers folder instead")
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    widths = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels))
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    return {**SD_VAE_CONFIG, "block_out_channels": widths, "layers_per_block": blocks,
            "latent_channels": int(sd["post_quant_conv.weight"].shape[1]),
            "down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels}


def vae_from_ldm_state_dict(sd: dict, source: str) -> nn.Module:
    """An ``AutoencoderKL`` holding LDM-layout weights (strict: every key used, every weight filled)."""
    AutoencoderKL = _diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    try:
        vae = AutoencoderKL(**ldm_vae_config(sd, source))
    except KeyError as e:
        raise L2CError(f"autoencoder weights {source}: LDM layout without {e}") from None
    converted = convert_ldm_vae_checkpoint(sd, vae.config)
    if len(converted) != len(sd):  # the converter maps keys one to one and skips those it does not know
        raise L2CError(f"autoencoder weights {source}: {len(sd) - len(converted)} of its {len(sd)} tensors have no place "
                       "in the SD KL-f8 autoencoder (not an LDM KL autoencoder?)")
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise L2CError(f"autoencoder weights {source}: do not fit the SD KL-f8 autoencoder "
                       f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return vae


def load_vae(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """diffusers' AutoencoderKL from a diffusers folder / local HF cache id, or from an LDM-layout
    state-dict file (U-ViT's ``autoencoder_kl_ema.pth``). Never downloads."""
    p = Path(path)
    if p.suffix in LDM_FILE_SUFFIXES:
        if not p.is_file():
            raise L2CError(f"autoencoder file {path} not found: {VAE_HINT}")
        vae = vae_from_ldm_state_dict(_read_state_dict(p), str(p))
    else:
        AutoencoderKL = _diffusers()
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise L2CError(f"SD VAE {path!r} not found locally ({str(e).splitlines()[0][:160]}): {VAE_HINT}") from e
    return vae.to(device).eval().requires_grad_(False)


def encode_latents(data: str, out: str | os.PathLike, vae: str | nn.Module, *, image_size: int = 256, mode: str = "sample",
                   seed: int = 0, limit: int | None = None, batch_size: int = 32, shard_size: int = 4096,
                   device: str = "cpu", progress: bool = True) -> Path:
    """Encode the images of ``data`` (a data spec, e.g. ``folder:ImageNet/train``) into ``out`` (.npz)."""
    from .data import load_dataset
    if mode not in ("sample", "mean"):
        raise L2CError(f"encode mode {mode!r}: expected sample or mean")
    out = Path(out)
    ds = load_dataset(data, image_size=image_size)
    n = len(ds) if limit is None else min(limit, len(ds))
    dev = torch.device(device)
    run = {"data": data, "image_size": image_size, "mode": mode, "seed": seed, "count": n, "shard_size": shard_size,
           "vae": vae if isinstance(vae, str) else "(module)"}
    record = out.with_suffix(".json")
    if out.exists() and record.exists() and isinstance(vae, str):
        done = read_json(record)
        if {k: done.get(k) for k in run} == run:
            log.info("%s is complete for this configuration; nothing to do", out)
            return out
    model = load_vae(vae, dev) if isinstance(vae, str) else vae.to(dev).eval()
    shards = out.with_name(out.name + ".shards")
    shards.mkdir(parents=True, exist_ok=True)
    if (shards / "config.json").exists():
        check_resume(read_json(shards / "config.json"), run, shards, "latent shard folder")
    else:
        write_json(shards / "config.json", run)
    starts = list(range(0, n, shard_size))
    bar = tqdm(total=n, disable=not progress, desc="encode", unit="img")
    for s in starts:
        shard = shards / f"{s:09d}.npz"
        stop = min(s + shard_size, n)
        if shard.exists():
            bar.update(stop - s)
            continue
        zs, ys = [], []
        for b in range(s, stop, batch_size):
            idx = torch.arange(b, min(b + batch_size, stop))
            x, y = ds.batch(idx)
            if x.shape[1] != 3:
                raise L2CError(f"data {data}: the SD autoencoder encodes RGB images, got {x.shape[1]} channels")
            with torch.no_grad():
                dist = model.encode(x.to(dev)).latent_dist
                z = dist.mean
                if mode == "sample":  # per-image seeded noise: the result does not depend on the batching
                    eps = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
                                       for i in idx]).to(dev)
                    z = z + dist.std * eps
            zs.append((SD_VAE_SCALE * z).float().cpu().numpy())
            ys.append(y.numpy())
            bar.update(len(idx))
        write_npz(shard, latents=np.concatenate(zs), labels=np.concatenate(ys).astype(np.int64))
    bar.close()
    parts = [np.load(shards / f"{s:09d}.npz") for s in starts]
    write_npz(out, latents=np.concatenate([p["latents"] for p in parts]), labels=np.concatenate([p["labels"] for p in parts]))
    write_json(record, {**run, "scale": SD_VAE_SCALE, "environment": environment_record(dev)})
    shutil.rmtree(shards)
    return out

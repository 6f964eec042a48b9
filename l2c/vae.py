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

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .io import (L2CError, check_resume, environment_record, load_torch, lock_path, locked, read_json, read_npz_verified,
                 sha256_file, write_json, write_npz)

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
        vae = _vae_from_folder(path)
    return vae.to(device).eval().requires_grad_(False)


def _vae_folder(path: str) -> Path:
    """A diffusers VAE folder: ``path`` itself, or a Hugging Face id's snapshot already in the local
    cache (never downloaded)."""
    p = Path(path)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=path, local_files_only=True))
    except Exception as e:  # not a folder, not a valid id, or not in the cache
        raise L2CError(f"SD VAE {path!r} not found locally ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}): "
                       f"{VAE_HINT}") from None


def _vae_from_folder(path: str) -> nn.Module:
    """diffusers' AutoencoderKL of a folder: safetensors weights through diffusers (``use_safetensors``:
    never its pickle path), or ``diffusion_pytorch_model.bin`` read here with ``weights_only=True``
    and loaded strictly into a model built from the folder's ``config.json``."""
    AutoencoderKL = _diffusers()
    folder = _vae_folder(path)
    if not (folder / "config.json").is_file():
        raise L2CError(f"SD VAE {path!r}: folder {folder} has no config.json; {VAE_HINT}")
    if any(folder.glob("diffusion_pytorch_model*.safetensors")) or (folder / "diffusion_pytorch_model.safetensors.index.json").exists():
        try:
            return AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise L2CError(f"SD VAE {folder}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "the files are corrupt or not an AutoencoderKL: download them again") from None
    weights = folder / "diffusion_pytorch_model.bin"
    if not weights.is_file():
        raise L2CError(f"SD VAE {path!r}: folder {folder} has neither diffusion_pytorch_model.safetensors nor "
                       f"diffusion_pytorch_model.bin; {VAE_HINT}")
    sd = load_torch(weights, "SD VAE weights")  # weights_only: a pickled payload is refused, never run
    try:
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
    except (OSError, ValueError, TypeError) as e:
        raise L2CError(f"SD VAE {folder}/config.json: not an AutoencoderKL config ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(sd, dict):
        raise L2CError(f"SD VAE weights {weights}: expected a state dict, got {type(sd).__name__}")
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise L2CError(f"SD VAE weights {weights}: do not fit the AutoencoderKL of {folder / 'config.json'} "
                       f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return vae


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
    with locked(lock_path(out), what="latents output"):  # a second identical run waits, then finds it complete
        if isinstance(vae, str) and _latents_complete(out, record, run):
            log.info("%s is complete for this configuration (sha256 verified); nothing to do", out)
            return out
        model = load_vae(vae, dev) if isinstance(vae, str) else vae.to(dev).eval()
        shards = out.with_name(out.name + ".shards")
        if any(shards.glob("*.npz")):  # shards of another configuration are refused, never mixed in
            check_resume(read_json(shards / "config.json"), run, shards, "latent shard folder")
        else:  # written only once every input has been validated; a folder without shards binds nothing
            shards.mkdir(parents=True, exist_ok=True)
            write_json(shards / "config.json", run)
        return _encode_shards(ds, model, run, out, record, shards, batch_size, dev, progress)


def _latents_complete(out: Path, record: Path, run: dict) -> bool:
    if not out.exists() or not record.exists():
        return False
    try:
        done = read_json(record)
    except L2CError:
        log.warning("%s: unreadable record; recomputing %s", record, out)
        return False
    if not isinstance(done, dict) or {k: done.get(k) for k in run} != run:
        return False
    if done.get("sha256") != sha256_file(out):
        log.warning("%s is damaged or truncated (or has no recorded sha256): its bytes do not have the sha256 in %s; "
                    "recomputing it", out, record)
        return False
    return True


def _encode_shards(ds, model, run: dict, out: Path, record: Path, shards: Path, batch_size: int, dev: torch.device,
                   progress: bool) -> Path:
    """Encode every shard whose recorded sha256 does not match its bytes, then merge verified shards."""
    n, shard_size, mode, seed, data = run["count"], run["shard_size"], run["mode"], run["seed"], run["data"]
    starts = list(range(0, n, shard_size))
    bar = tqdm(total=n, disable=not progress, desc="encode", unit="img")
    for s in starts:
        shard, shard_rec = shards / f"{s:09d}.npz", shards / f"{s:09d}.json"
        stop = min(s + shard_size, n)
        if shard.exists():
            rec = _read_record(shard_rec)
            if rec.get("sha256") == sha256_file(shard):
                bar.update(stop - s)
                continue
            log.warning("latent shard %s %s; recomputing it", shard,
                        "is damaged: its bytes do not have the sha256 in its record" if rec
                        else "has no record (its run was killed before recording it)")
        shard_rec.unlink(missing_ok=True)
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
        sha = write_npz(shard, latents=np.concatenate(zs), labels=np.concatenate(ys).astype(np.int64))
        write_json(shard_rec, {"sha256": sha, "first": s, "stop": stop})
    bar.close()
    parts = []
    for s in starts:
        arrays = read_npz_verified(shards / f"{s:09d}.npz", _read_record(shards / f"{s:09d}.json").get("sha256", ""),
                                   "latent shard")
        if arrays is None:
            raise L2CError(f"latent shard {shards / f'{s:09d}.npz'} changed while merging (is another program writing "
                           "there?); rerun to recompute it")
        parts.append(arrays)
    sha = write_npz(out, latents=np.concatenate([p["latents"] for p in parts]), labels=np.concatenate([p["labels"] for p in parts]))
    write_json(record, {**run, "scale": SD_VAE_SCALE, "sha256": sha, "environment": environment_record(dev)})
    shutil.rmtree(shards, ignore_errors=True)
    return out


def _read_record(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}

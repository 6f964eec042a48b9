"""Stand-in inputs for rehearsing the paper's grid (``config/rehearsal.yaml``) on any machine.

Every file the paper's workflow reads but cannot make is generated here, in the layout of the real
one and with random values, so that the rehearsal exercises exactly the code paths the real files
go through. Nothing here is data: the numbers a rehearsal produces are meaningless.

- :func:`standin_checkpoint`: a plain state dict in the official release layout (DiT's
  ``DiT-XL-2-256x256.pt``, U-ViT's ``imagenet256_uvit_huge.pth``) at the official depth (DiT-XL/2:
  28 blocks, U-ViT-H/2: 29) but the width of ``model_kwargs`` (``hidden_size``, ``num_heads``), so
  the authors' router files (56 / 58 sub-layers) apply unchanged;
- :func:`standin_sd_vae`: a narrow SD-VAE in diffusers' folder format (``config.json`` +
  ``diffusion_pytorch_model.safetensors``), 8x down-sampling and 4 latent channels as the real one;
- :func:`standin_ldm_vae`: a narrow KL-f8 autoencoder as one LDM-layout state-dict file (U-ViT's
  ``autoencoder_kl_ema.pth``: ``encoder.down.0.block.0.norm1.weight``, ...);
- :func:`standin_images`: a few PNG images in class folders (``l2c encode-latents --data folder:``);
- :func:`standin_inception`: Inception-v3 weights in torch-fidelity's layout (the state dict of its
  ``FeatureExtractorInceptionV3``, as ``weights-inception-2015-12-05-6726825d.pth``), He-initialised
  so the features keep their scale through the network;
- :func:`build_reference` / :func:`standin_reference`: an ADM-format reference batch (``arr_0``,
  ``mu``, ``sigma``, ``mu_s``, ``sigma_s``) whose statistics come from the ``inception-adm``
  back-end's own feature extraction (:mod:`l2c.metrics.evaluate`), the path a real batch is read by.

:func:`standin_plan` lists the stand-ins a resolved config (``rehearsal`` section) needs and
:func:`make_standin` writes one (:func:`standin_spec` + :func:`write_standin`); the workflow's ``rehearsal_*`` rules (``workflow/rules/rehearsal.smk``)
call it, and ``l2c encode-latents`` turns the images into the router-training latents."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .cells import ConfigError  # planning runs at workflow parse time: no torch import (l2c.io imports it)

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "vae_width": 32,  # channels of every level of the stand-in autoencoders (norm groups: 32)
    "vae_blocks": 1,  # res blocks per level (the real SD VAE has 2)
    "images_dir": None,  # where the router-training image folder goes
    "images": {"classes": 4, "per_class": 2, "size": 64},  # its classes, images per class, image size
    "reference": {"num_images": 8},  # images of each reference batch
}


@contextmanager
def _atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` (an absent or earlier folder) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _generator(seed: int):
    import torch
    return torch.Generator().manual_seed(int(seed))


def _random_tensor(shape: tuple[int, ...], key: str, g):
    """He-normal weights for convolutions / linears, unit scales and zero shifts for norms, zero biases."""
    import torch
    last = key.rsplit(".", 1)[-1]
    if last in ("bias", "running_mean", "beta"):
        return torch.zeros(shape)
    if last in ("running_var",) or (last == "weight" and len(shape) == 1):
        return torch.ones(shape)
    if last == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    return torch.randn(shape, generator=g) * (2.0 / max(fan_in, 1)) ** 0.5


# -- model checkpoints -----------------------------------------------------------------------------

def standin_checkpoint(model: str, model_kwargs: dict, out: str | os.PathLike, seed: int = 0, std: float = 0.05) -> Path:
    """A random ``model`` (registry name, e.g. DiT-XL/2) saved as a plain state dict, the layout of
    the official release files (loaded by ``l2c.models.load_model(path, model, **model_kwargs)``).
    Every weight is N(0, std) (the official zero-initialised adaLN / output layers would make the
    model output zero); DiT's fixed sin-cos positional embedding is kept as the model computes it."""
    import torch

    from .models import create_model
    g = _generator(seed)
    m = create_model(model, **model_kwargs)
    sd = m.state_dict()
    out_sd = {}
    for k, v in sd.items():
        if k == "pos_embed" and hasattr(m, "x_embedder"):  # DiT: sin-cos, not learned
            out_sd[k] = v.clone()
        elif v.is_floating_point():
            out_sd[k] = torch.randn(v.shape, generator=g) * std
        else:
            out_sd[k] = v.clone()
    from .io import save_torch
    save_torch(out_sd, out)
    return Path(out)


# -- autoencoders ----------------------------------------------------------------------------------

def _vae_config(width: int, blocks: int) -> dict:
    from .vae import SD_VAE_CONFIG
    return {**SD_VAE_CONFIG, "block_out_channels": (width,) * 4, "layers_per_block": blocks}


def standin_sd_vae(out_dir: str | os.PathLike, seed: int = 0, width: int = 32, blocks: int = 1) -> Path:
    """A random narrow SD-VAE (diffusers ``AutoencoderKL``, KL-f8, 4 latent channels) saved in the
    diffusers folder format of ``stabilityai/sd-vae-ft-ema``."""
    import torch

    from .vae import _diffusers
    AutoencoderKL = _diffusers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**_vae_config(width, blocks))
    out = Path(out_dir)
    with _atomic_dir(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    return out


def ldm_vae_shapes(width: int = 32, blocks: int = 1, levels: int = 4, z: int = 4) -> dict[str, tuple[int, ...]]:
    """Every tensor of an LDM ``AutoencoderKL`` (``ldm.modules.diffusionmodules.model`` Encoder /
    Decoder, ``quant_conv`` / ``post_quant_conv``) with ``levels`` levels of ``width`` channels."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resblock(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(prefix: str, c: int) -> None:
        resblock(f"{prefix}.mid.block_1", c, c)
        norm(f"{prefix}.mid.attn_1.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{p}", c, c, 1)
        resblock(f"{prefix}.mid.block_2", c, c)

    conv("encoder.conv_in", width, 3, 3)
    for i in range(levels):
        for j in range(blocks):
            resblock(f"encoder.down.{i}.block.{j}", width, width)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", width, width, 3)
    mid("encoder", width)
    norm("encoder.norm_out", width)
    conv("encoder.conv_out", 2 * z, width, 3)
    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", width, z, 3)
    mid("decoder", width)
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", width, width)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", width, width, 3)
    norm("decoder.norm_out", width)
    conv("decoder.conv_out", 3, width, 3)
    return shapes


def standin_ldm_vae(out: str | os.PathLike, seed: int = 0, width: int = 32, blocks: int = 1) -> Path:
    """A random narrow KL-f8 autoencoder as one LDM-layout state-dict file (the layout of U-ViT's
    ``autoencoder_kl_ema.pth``); ``l2c.vae.load_vae`` reads it through diffusers' LDM converter."""
    g = _generator(seed)
    sd = {k: _random_tensor(s, k, g) for k, s in ldm_vae_shapes(width, blocks).items()}
    for k in sd:  # keep the stand-in decoder's output in range: small last conv
        if k == "decoder.conv_out.weight":
            sd[k] = sd[k] * 0.1
    from .io import save_torch
    save_torch(sd, out)
    return Path(out)


# -- images, Inception weights, reference batches ------------------------------------------------------

def standin_images(out_dir: str | os.PathLike, classes: int = 4, per_class: int = 2, size: int = 64, seed: int = 0) -> Path:
    """``classes`` sub-folders (``n0000000``, ...) of ``per_class`` smooth random RGB PNGs."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    with _atomic_dir(out) as tmp:
        for c in range(classes):
            d = tmp / f"n{c:07d}"
            d.mkdir()
            for i in range(per_class):
                coarse = rng.uniform(0, 255, size=(4, 4, 3))
                img = np.kron(coarse, np.ones((size // 4, size // 4, 1))) + rng.normal(0, 12, size=(size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img{i:03d}.png")
    return out


def standin_inception(out: str | os.PathLike, seed: int = 0) -> Path:
    """Random Inception-v3 weights in torch-fidelity's layout: the state dict of its
    ``FeatureExtractorInceptionV3`` (what ``weights-inception-2015-12-05-6726825d.pth`` holds), convolutions
    and the classifier He-initialised, batch norms at unit scale and zero shift."""
    from .metrics.features import INCEPTION_ADM_NAME, AdmInceptionExtractor
    ext = AdmInceptionExtractor(INCEPTION_ADM_NAME, ["2048"], random_weights=True)
    g = _generator(seed)
    sd = {k: _random_tensor(tuple(v.shape), k, g).to(v.dtype) for k, v in ext.state_dict().items()}
    from .io import save_torch
    save_torch(sd, out)
    return Path(out)


def build_reference(images: np.ndarray, out: str | os.PathLike, weights: str | os.PathLike | None,
                    batch_size: int = 64, device: str = "cpu") -> Path:
    """An ADM-format reference batch from uint8 NHWC ``images``: ``arr_0`` plus the pool and spatial
    statistics (``mu``, ``sigma``, ``mu_s``, ``sigma_s``) of the ``inception-adm`` back-end's features
    (the extractor, the feature loop and the statistics that ``l2c evaluate`` uses)."""
    from .io import L2CError, write_json, write_npz
    from .metrics import adm
    from .metrics.evaluate import extract_features, make_extractor
    from .metrics.npz import open_npz
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise L2CError(f"reference images: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    ext, info, layers = make_extractor("inception-adm", weights, device)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "images.npz"
        write_npz(tmp, arr_0=images)
        feats = extract_features(open_npz(tmp, "reference"), ext, {"pool": layers["pool"], "spatial": layers["spatial"]},
                                 batch_size, device)
    mu, sigma = adm.feature_statistics(feats["pool"])
    mu_s, sigma_s = adm.feature_statistics(feats["spatial"])
    write_npz(out, arr_0=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    write_json(Path(out).with_suffix(".json"), {"feature_extractor": info["feature_extractor"],
                                                "weights_sha256": info["weights_sha256"], "n": int(len(images))})
    return Path(out)


def standin_reference(out: str | os.PathLike, weights: str | os.PathLike, num_images: int = 8, size: int = 64,
                      seed: int = 0) -> Path:
    """A reference batch of ``num_images`` smooth random ``size`` x ``size`` images (:func:`build_reference`)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_images, 4, 4, 3))
    imgs = np.kron(coarse, np.ones((1, size // 4, size // 4, 1))) + rng.normal(0, 12, size=(num_images, size, size, 3))
    return build_reference(np.clip(imgs, 0, 255).astype(np.uint8), out, weights)


# -- everything a config names -------------------------------------------------------------------------

def settings(cfg: dict) -> dict:
    """The ``rehearsal`` section of a resolved config with defaults filled in."""
    from .cells import _merge
    r = cfg.get("rehearsal")
    if not r:
        raise ConfigError("this config has no 'rehearsal' section: stand-in inputs are made only for rehearsal configs "
                       "(config/rehearsal.yaml); bring the real files for the others")
    r = _merge(DEFAULTS, r)
    if not r.get("images_dir"):
        raise ConfigError("rehearsal.images_dir: give the folder the stand-in training images go to "
                       "(e.g. work/rehearsal/inputs/ImageNet/train)")
    return r


def standin_plan(cfg: dict) -> dict[str, list[dict]]:
    """What the rehearsal makes for a resolved config: per kind, one entry per distinct path
    (``checkpoint``, ``vae``, ``reference``, ``inception``, ``images``, ``latents``). Latents are
    encoded from the images by ``l2c encode-latents`` with the row's autoencoder at the row's image
    size (8 x the latent ``input_size``), as a real data set is. No torch import (workflow parse time)."""
    r = settings(cfg)
    plan: dict[str, dict[str, dict]] = {k: {} for k in ("checkpoint", "vae", "reference", "inception", "images", "latents")}
    if any(m["backend"] == "inception-adm" for m in cfg["models"].values()):
        if not cfg.get("inception_weights"):
            raise ConfigError("a rehearsal with inception-adm rows needs inception_weights: the path its stand-in "
                           "Inception weights go to (e.g. work/rehearsal/inputs/weights-inception-2015-12-05-6726825d.pth)")
        plan["inception"][cfg["inception_weights"]] = {"path": cfg["inception_weights"]}
    for name, m in cfg["models"].items():
        if m["pretrain"]:
            continue
        if not m["model"]:
            raise ConfigError(f"models.{name}: a rehearsal row needs 'model' (the registry name its stand-in checkpoint is built as)")
        size = 8 * int(m["model_kwargs"].get("input_size", 32))
        plan["checkpoint"].setdefault(m["checkpoint"], {"path": m["checkpoint"], "model": m["model"],
                                                        "model_kwargs": m["model_kwargs"], "row": name})
        if m["vae"]:
            plan["vae"].setdefault(m["vae"], {"path": m["vae"], "layout": "ldm" if Path(m["vae"]).suffix else "diffusers"})
        if m["backend"] == "inception-adm" and m["reference"].endswith(".npz"):
            ref = plan["reference"].setdefault(m["reference"], {"path": m["reference"], "size": size})
            if ref["size"] != size:
                raise ConfigError(f"models.{name}.reference {m['reference']}: shared by rows of image sizes {ref['size']} and {size}")
        kind, _, arg = m["data"].partition(":")
        if kind == "latents" and m["vae"]:
            plan["latents"].setdefault(arg, {"path": arg, "vae": m["vae"], "image_size": size})
        elif kind == "folder":
            raise ConfigError(f"models.{name}.data: a rehearsal trains routers on latents:PATH (encoded from its stand-in images)")
    if plan["latents"]:
        plan["images"][r["images_dir"]] = {"path": r["images_dir"], **r["images"]}
    return {k: list(v.values()) for k, v in plan.items()}


def standin_paths(cfg: dict) -> set[str]:
    """Every path a rehearsal config's stand-in rules make (the workflow does not ask the user for them)."""
    return {e["path"] for entries in standin_plan(cfg).values() for e in entries}


def standin_spec(cfg: dict, kind: str, path: str) -> dict:
    """Everything the stand-in ``path`` of ``kind`` depends on (the workflow's rule params, so that
    editing other config keys re-makes no stand-in)."""
    r = settings(cfg)
    entries = standin_plan(cfg)[kind]
    idx = [i for i, e in enumerate(entries) if e["path"] == path]
    if not idx:
        raise ConfigError(f"no {kind} stand-in {path} in this config (planned: {[e['path'] for e in entries]})")
    spec = {"kind": kind, "index": idx[0], "entry": entries[idx[0]], "seed": int(r["seed"])}
    if kind == "vae":
        spec.update(width=int(r["vae_width"]), blocks=int(r["vae_blocks"]))
    if kind == "reference":
        spec.update(num_images=int(r["reference"]["num_images"]), weights=cfg["inception_weights"])
    return spec


def write_standin(spec: dict, path: str | os.PathLike) -> Path:
    """Write one stand-in from its :func:`standin_spec`."""
    kind, i, e, seed = spec["kind"], spec["index"], spec["entry"], spec["seed"]
    if kind == "checkpoint":
        return standin_checkpoint(e["model"], e["model_kwargs"], path, seed=seed + i)
    if kind == "vae":
        make = standin_ldm_vae if e["layout"] == "ldm" else standin_sd_vae
        return make(path, seed=seed + i, width=spec["width"], blocks=spec["blocks"])
    if kind == "images":
        return standin_images(path, int(e["classes"]), int(e["per_class"]), int(e["size"]), seed)
    if kind == "inception":
        return standin_inception(path, seed=seed)
    if kind == "reference":
        return standin_reference(path, spec["weights"], spec["num_images"], e["size"], seed=seed + 100 + i)
    raise ConfigError(f"stand-in kind {kind!r}: expected checkpoint, vae, images, inception or reference (latents are encoded)")


def make_standin(cfg: dict, kind: str, path: str) -> Path:
    """Write the stand-in ``path`` of ``kind`` (an entry of :func:`standin_plan`) for a resolved
    rehearsal config."""
    return write_standin(standin_spec(cfg, kind, path), path)

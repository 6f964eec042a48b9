"""Sampling with classifier-free guidance and an optional static cache schedule.

``sample(model, noise, labels, nfe=..., cfg_scale=..., schedule=...)`` returns the final
latents/images of the N conditional samples; with the same weights, noise and labels it matches the
official DiT ``ddim_sample_loop(model.forward_with_cfg, ...)`` (first half of its batch)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .cache import CacheEngine, CacheSchedule
from .diffusion import Diffusion, ddim_sample
from .io import L2CError

SAMPLERS = ("ddim", "dpm2")


def guided_model_fn(model: nn.Module, engine: CacheEngine, labels: torch.Tensor, cfg_scale: float,
                    cfg_channels: int | None = None) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """DiT-style guidance: one batch [cond; uncond] (null label), eps_u + s (eps_c - eps_u) on the first
    ``cfg_channels`` output channels (DiT-XL/2 official: 3, "for exact reproducibility"; None: all
    eps channels); the remaining channels are the conditional pass's. ``cfg_scale <= 1``: no guidance."""
    if cfg_scale <= 1.0:
        return lambda x, t, step: engine(model, x, t, labels, step=step)
    y2 = torch.cat([labels, torch.full_like(labels, model.num_classes)])

    def model_fn(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        out = engine(model, torch.cat([x, x]), torch.cat([t, t]), y2, step=step)  # (2N, C_out, H, W)
        cond, uncond = out.chunk(2)
        C = cfg_channels or x.shape[1]
        guided = uncond[:, :C] + cfg_scale * (cond[:, :C] - uncond[:, :C])
        return torch.cat([guided, cond[:, C:]], dim=1)
    return model_fn


def ddim_diffusion(model: nn.Module, nfe: int) -> Diffusion:
    """The respaced diffusion DDIM samples ``model`` with: the noise schedule and time input the
    model was trained with (``l2c.dpm_solver.dpm_defaults``). DiT: DDPM's linear betas, network
    input the timestep index 0..999. U-ViT on the SD schedule (the ImageNet releases): Stable
    Diffusion's scaled-linear betas, network input U-ViT's n = index + 1 (its ``Schedule`` draws
    n in 1..1000 and noises with the cumulative product of the first n betas)."""
    from .dpm_solver import dpm_defaults, sd_betas  # noqa: PLC0415 (dpm_solver imports this module lazily)
    d = dpm_defaults(model)
    if d["noise_schedule"] not in ("sd", "linear") or d["time_input"] not in ("scaled", "type1"):
        raise L2CError(f"DDIM for {type(model).__name__}: noise schedule {d['noise_schedule']!r} with time input "
                       f"{d['time_input']!r} is not implemented; use the dpm2 sampler")
    betas = sd_betas() if d["noise_schedule"] == "sd" else None
    return Diffusion.create(nfe, betas=betas, time_offset=1 if d["time_input"] == "scaled" else 0)


def ddim_setup(model: nn.Module, engine: CacheEngine, labels: torch.Tensor, nfe: int, cfg_scale: float,
               cfg_channels: int | None = None) -> tuple[Diffusion, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]:
    """(diffusion, eps function) of DDIM for ``model``: :func:`ddim_diffusion` and the model's
    guidance form (DiT: one batched pass, eps_u + s (eps_c - eps_u), on for s > 1; U-ViT: two passes
    on cache streams 0/1, eps_c + s (eps_c - eps_u), on for s > 0)."""
    from .dpm_solver import dpm_defaults, guided_eps_fn  # noqa: PLC0415
    diffusion = ddim_diffusion(model, nfe)
    if dpm_defaults(model)["guidance"] == "uvit":
        return diffusion, guided_eps_fn(model, engine, labels, cfg_scale, "uvit", cfg_channels)
    return diffusion, guided_model_fn(model, engine, labels, cfg_scale, cfg_channels)


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str = "ddim", nfe: int,
           cfg_scale: float = 1.0, schedule: Optional[CacheSchedule] = None, cfg_channels: int | None = None,
           callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
           engine: Optional[CacheEngine] = None) -> torch.Tensor:
    """Generate from ``noise`` (N, C, H, W) for ``labels`` (N,) with ``nfe`` model evaluations.
    ``engine``: a ``CacheEngine`` of this model and schedule to reuse across calls (e.g. one built with
    ``compile=True``, whose compiled step patterns then serve every batch); default: a fresh one."""
    if sampler not in SAMPLERS:
        raise L2CError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS}")
    if noise.shape[0] != labels.shape[0]:
        raise L2CError(f"noise has {noise.shape[0]} samples but labels has {labels.shape[0]}")
    if schedule is not None:
        schedule.check_nfe(nfe)
        if schedule.sampler.split("-")[0] != sampler:
            raise L2CError(f"schedule ({schedule.source}) was made for sampler {schedule.sampler!r}, not {sampler!r}: "
                           "its cache steps differ (DPM-Solver-2 needs shifted cache steps); make one for this sampler")
    if engine is None:
        engine = CacheEngine(model, schedule)
    elif engine.model is not model or engine.schedule is not schedule:
        raise L2CError("the engine passed to sample() was built for another model or schedule")
    with engine.installed():
        if sampler == "ddim":
            diffusion, fn = ddim_setup(model, engine, labels, nfe, cfg_scale, cfg_channels)
            return ddim_sample(fn, noise, diffusion, callback)
        from .dpm_solver import dpm2_sample  # noqa: PLC0415
        return dpm2_sample(model, engine, noise, labels, nfe=nfe, cfg_scale=cfg_scale, callback=callback)

"""Discrete Gaussian diffusion (DDPM/ADM conventions as DiT uses them): noise schedule, timestep
respacing, DDIM (eta = 0) and the hybrid training loss with learned sigma.

Samplers are functions of a denoiser ``model_fn(x, t, step) -> model output`` that receive the step
index explicitly (sampling order, 0 = the noisiest step)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .io import L2CError

ModelFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
StepCallback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule, scaled so that any length spans the same range as 1000 steps."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, nfe: int) -> list[int]:
    """The original timesteps kept when respacing to ``nfe`` steps, as the DiT/ADM code does for an
    integer step count: evenly strided over [0, T-1] with Python rounding (any NFE, odd ones too)."""
    if not 1 <= nfe <= num_timesteps:
        raise L2CError(f"NFE must be between 1 and {num_timesteps}, got {nfe}")
    stride = 1 if nfe <= 1 else (num_timesteps - 1) / (nfe - 1)
    taken, cur = [], 0.0
    for _ in range(nfe):  # accumulated, not multiplied: the same float rounding as the ADM code
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


@dataclass
class Diffusion:
    """A (possibly respaced) discrete diffusion. Index ``i`` counts respaced timesteps (0 = least
    noisy); ``timestep_map[i]`` is the original timestep the model is conditioned on."""

    betas: np.ndarray  # (N,) float64
    timestep_map: np.ndarray  # (N,) int64
    time_offset: int = 0  # network input = timestep_map + time_offset (U-ViT's labels n = 1..N: 1)

    @classmethod
    def create(cls, nfe: int | None = None, num_timesteps: int = 1000, betas: np.ndarray | None = None,
               time_offset: int = 0) -> "Diffusion":
        """Diffusion over ``betas`` (default: DDPM's linear betas), respaced to ``nfe`` steps when
        given (``None`` keeps all steps). ``time_offset``: added to the original timestep index to
        give the network's time input (0: ADM/DiT, index 0..N-1; 1: U-ViT, n = 1..N)."""
        base = linear_betas(num_timesteps) if betas is None else np.asarray(betas, dtype=np.float64)
        if len(base) != num_timesteps:
            raise L2CError(f"diffusion: {len(base)} betas for {num_timesteps} timesteps")
        if nfe is None:
            return cls(base, np.arange(num_timesteps), time_offset)
        keep = space_timesteps(num_timesteps, nfe)
        acp = np.cumprod(1.0 - base)
        last, betas = 1.0, []
        for t in keep:
            betas.append(1 - acp[t] / last)
            last = acp[t]
        return cls(np.array(betas, dtype=np.float64), np.array(keep, dtype=np.int64), time_offset)

    def __post_init__(self) -> None:
        b = self.betas
        self.num_timesteps = len(b)
        self.alphas_cumprod = np.cumprod(1.0 - b)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]) if len(pv) > 1 else np.array([b[0]]))
        self.posterior_mean_coef1 = b * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - b) / (1.0 - self.alphas_cumprod)

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _extract(arr: np.ndarray, i: torch.Tensor, ndim: int) -> torch.Tensor:
        """arr[i] as float32, shaped to broadcast against an ``ndim``-dim batch."""
        out = torch.from_numpy(arr).to(i.device)[i].float()
        return out.reshape(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Network time input of every respaced index: the original timestep, plus ``time_offset``."""
        return torch.from_numpy(self.timestep_map + self.time_offset).to(device)

    # -- forward process --------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_i ~ q(x_i | x_0)."""
        return (self._extract(self.sqrt_alphas_cumprod, i, x0.ndim) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, i, x0.ndim) * noise)

    def predict_x0(self, x: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._extract(self.sqrt_recip_alphas_cumprod, i, x.ndim) * x - self._extract(self.sqrt_recipm1_alphas_cumprod, i, x.ndim) * eps

    def predict_eps(self, x: torch.Tensor, i: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._extract(self.sqrt_recip_alphas_cumprod, i, x.ndim) * x - x0) / self._extract(self.sqrt_recipm1_alphas_cumprod, i, x.ndim)

    # -- DDIM ---------------------------------------------------------------------------------------
    def ddim_coefficients(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Per-index float32 DDIM coefficients, precomputed once so the loop reads no host values."""
        f32 = lambda a: torch.from_numpy(np.asarray(a)).float().to(device)  # noqa: E731
        return {
            "recip": f32(self.sqrt_recip_alphas_cumprod),
            "recipm1": f32(self.sqrt_recipm1_alphas_cumprod),
            "sqrt_prev": torch.sqrt(f32(self.alphas_cumprod_prev)),
            "sqrt_1m_prev": torch.sqrt(1 - f32(self.alphas_cumprod_prev)),
        }

    def ddim_step(self, x: torch.Tensor, eps: torch.Tensor, i: int, coef: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM update x_i -> x_{i-1} (eta = 0, no clipping, as DiT samples).
        Returns (x_prev, pred_x0). The eps is re-derived from pred_x0 as the ADM code does."""
        pred_x0 = coef["recip"][i] * x - coef["recipm1"][i] * eps
        eps = (coef["recip"][i] * x - pred_x0) / coef["recipm1"][i]
        return pred_x0 * coef["sqrt_prev"][i] + coef["sqrt_1m_prev"][i] * eps, pred_x0

    # -- training loss (learned sigma, hybrid) ------------------------------------------------------
    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self._extract(self.posterior_mean_coef1, i, xt.ndim) * x0 + self._extract(self.posterior_mean_coef2, i, xt.ndim) * xt
        return mean, self._extract(self.posterior_log_variance_clipped, i, xt.ndim)

    def vb_terms_bpd(self, eps: torch.Tensor, var_values: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Variational bound term (bits/dim) of improved DDPM for the learned-range variance."""
        true_mean, true_logvar = self.q_posterior(x0, xt, i)
        min_log = self._extract(self.posterior_log_variance_clipped, i, xt.ndim)
        max_log = self._extract(np.log(self.betas), i, xt.ndim)
        frac = (var_values + 1) / 2
        model_logvar = frac * max_log + (1 - frac) * min_log
        model_mean, _ = self.q_posterior(self.predict_x0(xt, i, eps), xt, i)
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1) / math.log(2.0)
        return torch.where(i == 0, nll, kl)

    def training_losses(self, model_out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-sample DiT loss: eps MSE, plus the VB term through a stop-gradient mean when the
        model learns sigma (output has twice the input channels)."""
        C = x0.shape[1]
        eps = model_out[:, :C]
        mse = (noise - eps).pow(2).flatten(1).mean(1)
        if model_out.shape[1] == C:
            return mse
        return mse + self.vb_terms_bpd(eps.detach(), model_out[:, C:], x0, xt, i)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of 8-bit data in [-1, 1] under a Gaussian discretised to 256 bins."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def ddim_sample(model_fn: ModelFn, x: torch.Tensor, diffusion: Diffusion, callback: StepCallback = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eta = 0) over all indices of a respaced diffusion, noisiest first.
    ``model_fn(x, t, step)`` returns eps (extra channels, e.g. learned sigma, are ignored)."""
    coef = diffusion.ddim_coefficients(x.device)
    ts = diffusion.model_timesteps(x.device)
    C = x.shape[1]
    n = diffusion.num_timesteps
    for step in range(n):
        i = n - 1 - step
        t = ts[i].expand(x.shape[0])
        eps = model_fn(x, t, step)[:, :C]
        x, pred_x0 = diffusion.ddim_step(x, eps, i, coef)
        if callback is not None:
            callback(step, x, pred_x0)
    return x

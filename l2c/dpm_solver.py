"""DPM-Solver-2 as the U-ViT / Learning-to-Cache authors sample ImageNet 256 with U-ViT-H/2.

The official sampling script builds DPM-Solver++ (data prediction, ``predict_x0=True``), method
``singlestep``, order 2, ``steps = NFE`` (K = NFE // 2 outer steps of two model evaluations), time
steps uniform in t from T = 1 to eps = 1/1000, no final denoising; the noise schedule is
DPM-Solver's ``discrete`` VP schedule over Stable Diffusion's betas
``linspace(0.00085**0.5, 0.0120**0.5, 1000)**2``: log(alpha) = 0.5 cumsum(log(1 - beta)) placed at
t_n = n / 1000 (n = 1..1000) and interpolated piecewise-linearly in t (inverse: piecewise-linearly
in log alpha). Each outer step s -> t, with lambda = log(alpha / sigma), h = lambda_t - lambda_s,
r1 = 1/2 and s1 the time of lambda_s + r1 h, is

    x_s1 = (sigma_s1 / sigma_s) x - alpha_s1 expm1(-r1 h) D(x, s)
    x_t  = (sigma_t / sigma_s) x - alpha_t expm1(-h) [D(x, s) + (1 / (2 r1)) (D(x_s1, s1) - D(x, s))]

with D(x, t) = (x - sigma_t eps(x, t)) / alpha_t. The network receives ``t_continuous * 1000``
(the script's own model function, *not* DPM-Solver's ``model_wrapper``, whose type-1 discrete
input would be 1000 (t - 1/1000)); guidance is two separate passes, eps_c + s (eps_c - eps_u)
with the null label 1000, s = 0.4.

Model evaluations are counted in sampling order (k = 0 .. NFE-1; outer step i evaluates k = 2i at
its start and k = 2i + 1 at its midpoint); both guidance passes of one evaluation share k and use
cache streams 0 (conditional) and 1 (unconditional), as the official dynamic U-ViT keeps separate
caches. The sampler is independent of the architecture: the noise schedule, the time input and
the guidance form are arguments whose defaults come from the model (``model.dpm_defaults``; U-ViT:
the above, or DDPM's linear betas with ``noise_schedule="linear"`` for U-ViTs trained by l2c.pretrain; DiT:
DDPM's linear betas, type-1 discrete time input 1000 (t - 1/1000), DiT-style batched guidance
eps_u + s (eps_c - eps_u) on the eps channels, learned-sigma channels dropped).

The outer-step times are the official float32 grid; the rest of the schedule arithmetic runs in
float64 (the official code runs it in float32 on the device; the difference is at the 1e-7 level);
the state ``x`` keeps its dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .diffusion import linear_betas
from .io import L2CError

NOISE_SCHEDULES = ("sd", "linear")
TIME_INPUTS = ("scaled", "type1")
GUIDANCE_FORMS = ("uvit", "dit")
EpsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, network time input, k) -> eps


def sd_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Stable Diffusion's "scaled linear" betas, as the U-ViT latent-diffusion scripts use them."""
    return np.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, num_timesteps, dtype=np.float64) ** 2


def _interp(x: float, xp: np.ndarray, fp: np.ndarray) -> float:
    """Piecewise-linear interpolation through increasing knots ``xp``, extended linearly beyond the
    end knots (as DPM-Solver's ``interpolate_fn``)."""
    j = int(np.clip(np.searchsorted(xp, x) - 1, 0, len(xp) - 2))
    x0, x1, y0, y1 = xp[j], xp[j + 1], fp[j], fp[j + 1]
    return float(y0 + (x - x0) * (y1 - y0) / (x1 - x0))


class DiscreteVPSchedule:
    """DPM-Solver's ``NoiseScheduleVP('discrete', betas)``: continuous t in [1/N, 1]."""

    def __init__(self, betas: Sequence[float] | np.ndarray | torch.Tensor):
        b = np.asarray(torch.as_tensor(betas, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
        if len(b) < 2 or not np.all((b > 0) & (b < 1)):
            raise L2CError("noise schedule: betas must be at least 2 values in (0, 1)")
        self.betas = b
        self.total_n = len(b)
        self.t_grid = np.linspace(1.0 / self.total_n, 1.0, self.total_n)
        self.log_alpha_grid = 0.5 * np.cumsum(np.log1p(-b))
        self._la_inc = self.log_alpha_grid[::-1].copy()  # increasing, for the inverse
        self._t_inc = self.t_grid[::-1].copy()

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> "DiscreteVPSchedule":
        if name == "sd":
            return cls(sd_betas(num_timesteps))
        if name == "linear":
            return cls(linear_betas(num_timesteps))
        raise L2CError(f"unknown noise schedule {name!r}: expected one of {NOISE_SCHEDULES} or an array of betas")

    def log_alpha(self, t: float) -> float:
        return _interp(t, self.t_grid, self.log_alpha_grid)

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """Half log-SNR lambda_t = log(alpha_t) - log(sigma_t)."""
        la = self.log_alpha(t)
        return la - 0.5 * math.log(-math.expm1(2.0 * la))

    def inverse_lambda(self, lam: float) -> float:
        log_alpha = -0.5 * float(np.logaddexp(0.0, -2.0 * lam))
        return _interp(log_alpha, self._la_inc, self._t_inc)

    def model_time(self, t: float, time_input: str) -> float:
        """The network's time input for continuous time t."""
        if time_input == "scaled":  # U-ViT script: t * N
            return t * self.total_n
        if time_input == "type1":  # DPM-Solver's type-1 discrete label (ADM/DiT timestep index)
            return self.total_n * max(t - 1.0 / self.total_n, 0.0)
        raise L2CError(f"unknown time input {time_input!r}: expected one of {TIME_INPUTS}")


@dataclass
class DPM2Step:
    """Precomputed scalars of one outer step s -> t (float64, converted at use)."""

    s: float
    s1: float
    t: float
    model_t_s: float  # network time input at s (evaluation 2i)
    model_t_s1: float  # network time input at the midpoint s1 (evaluation 2i + 1)
    alpha_s: float
    sigma_s: float
    alpha_s1: float
    sigma_s1: float
    a1: float  # x_s1 = a1 x + b1 D_s
    b1: float
    a2: float  # x_t = a2 x + b2 (D_s + c2 (D_s1 - D_s))
    b2: float
    c2: float


@dataclass
class DPM2Plan:
    nfe: int
    times: np.ndarray  # (K + 1,) continuous times t_0 = T > ... > t_K = eps
    steps: list[DPM2Step] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def model_times(self) -> list[float]:
        """Network time input of every evaluation k = 0 .. NFE-1."""
        return [v for st in self.steps for v in (st.model_t_s, st.model_t_s1)]


def check_nfe(nfe: Any) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)):
        raise L2CError(f"NFE must be an integer, got {nfe!r}")
    nfe = int(nfe)
    if nfe < 2 or nfe % 2:
        raise L2CError(f"DPM-Solver-2 (singlestep, order 2) makes 2 model evaluations per step, so NFE must be "
                       f"an even number >= 2; got NFE {nfe}" + (f" (use {nfe - 1} or {nfe + 1})" if nfe % 2 and nfe > 1 else ""))
    return nfe


def resolve_schedule(noise_schedule: Any) -> DiscreteVPSchedule:
    if isinstance(noise_schedule, DiscreteVPSchedule):
        return noise_schedule
    if isinstance(noise_schedule, str):
        return DiscreteVPSchedule.named(noise_schedule)
    return DiscreteVPSchedule(noise_schedule)


def _time_grid(t_start: float, t_end: float, k_steps: int) -> np.ndarray:
    """Time-uniform outer-step times, made as the official code makes them (a float32
    ``torch.linspace``), so that the network time inputs t * 1000 of the first evaluations are the
    official float32 values (e.g. 500.50003 for t = 0.5005 at NFE 20, which rounds to the router
    map's 501) and the rest of the arithmetic runs in float64."""
    return torch.linspace(t_start, t_end, k_steps + 1, dtype=torch.float32).double().numpy()


def dpm2_plan(nfe: int, noise_schedule: Any = "sd", time_input: str = "scaled", *, t_start: float = 1.0,
              t_end: float = 1e-3, r1: float = 0.5) -> DPM2Plan:
    """All scalars of a DPM-Solver-2 (data prediction, singlestep) run, time-uniform steps."""
    nfe = check_nfe(nfe)
    ns = resolve_schedule(noise_schedule)
    if time_input not in TIME_INPUTS:
        raise L2CError(f"unknown time input {time_input!r}: expected one of {TIME_INPUTS}")
    if not 0 < t_end < t_start <= 1.0:
        raise L2CError(f"need 0 < t_end < t_start <= 1, got t_start {t_start}, t_end {t_end}")
    k_steps = nfe // 2
    times = _time_grid(t_start, t_end, k_steps)
    plan = DPM2Plan(nfe=nfe, times=times)
    for i in range(k_steps):
        s, t = float(times[i]), float(times[i + 1])
        lam_s, lam_t = ns.lam(s), ns.lam(t)
        h = lam_t - lam_s
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        alpha_s, sigma_s = ns.alpha(s), ns.sigma(s)
        alpha_s1, sigma_s1 = ns.alpha(s1), ns.sigma(s1)
        alpha_t, sigma_t = ns.alpha(t), ns.sigma(t)
        plan.steps.append(DPM2Step(
            s=s, s1=s1, t=t,
            model_t_s=ns.model_time(s, time_input), model_t_s1=ns.model_time(s1, time_input),
            alpha_s=alpha_s, sigma_s=sigma_s, alpha_s1=alpha_s1, sigma_s1=sigma_s1,
            a1=sigma_s1 / sigma_s, b1=-alpha_s1 * math.expm1(-r1 * h),
            a2=sigma_t / sigma_s, b2=-alpha_t * math.expm1(-h), c2=0.5 / r1,
        ))
    return plan


def router_timestep_map(nfe: int) -> list[int]:
    """The official router's timestep map: round(linspace(1, 1/1000, NFE/2 + 1) * 1000); router
    index i belongs to the first evaluation (k = 2i) of outer step i."""
    k_steps = check_nfe(nfe) // 2
    return [int(v) for v in np.round(torch.linspace(1.0, 1e-3, k_steps + 1).numpy() * 1000)]


def dpm2_step(eps_fn: EpsFn, x: torch.Tensor, plan: DPM2Plan, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer step i (evaluations k = 2i, 2i + 1): returns (x at times[i + 1], the data prediction
    the update used). ``eps_fn(x, t_in, k)`` returns the (guided) noise prediction."""
    st = plan.steps[i]
    n = x.shape[0]
    t_s = torch.full((n,), st.model_t_s, dtype=torch.float32, device=x.device)
    t_s1 = torch.full((n,), st.model_t_s1, dtype=torch.float32, device=x.device)
    d_s = (x - st.sigma_s * eps_fn(x, t_s, 2 * i)) / st.alpha_s
    x_s1 = st.a1 * x + st.b1 * d_s
    d_s1 = (x_s1 - st.sigma_s1 * eps_fn(x_s1, t_s1, 2 * i + 1)) / st.alpha_s1
    d = d_s + st.c2 * (d_s1 - d_s)
    return st.a2 * x + st.b2 * d, d


# -- model-facing part -------------------------------------------------------------------------------

def dpm_defaults(model: nn.Module) -> dict[str, str]:
    """Sampler defaults by architecture: U-ViT (``dpm_defaults`` class attribute) or DiT."""
    base = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    d = getattr(base, "dpm_defaults", None)
    if isinstance(d, dict):
        return dict(d)
    from .models.dit import DiT  # noqa: PLC0415
    if isinstance(base, DiT):
        return {"noise_schedule": "linear", "time_input": "type1", "guidance": "dit"}
    raise L2CError(f"no DPM-Solver defaults for {type(base).__name__}: pass noise_schedule, time_input and guidance")


def _direct_engine(fn: Callable[..., torch.Tensor], *args: Any, step: int, stream: int = 0, **_: Any) -> torch.Tensor:
    return fn(*args)


def check_labels(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor) -> None:
    n_cls = getattr(model, "num_classes", None)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise L2CError(f"labels must be a 1-D tensor of class indices, got {type(labels).__name__} "
                       f"{tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise L2CError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape[0] != noise.shape[0]:
        raise L2CError(f"noise has {noise.shape[0]} samples but labels has {labels.shape[0]}")
    if n_cls is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > n_cls:
            raise L2CError(f"labels must lie in [0, {n_cls - 1}] (or {n_cls}, the null label, for unconditional "
                           f"samples); got values in [{lo}, {hi}]")


def guided_eps_fn(model: nn.Module, engine: Any, labels: torch.Tensor, cfg_scale: float, guidance: str,
                  cfg_channels: int | None = None) -> EpsFn:
    """Noise prediction with classifier-free guidance; ``eps_fn(x, t_in, k)``.

    ``uvit``: two separate evaluations, conditional on stream 0 then unconditional (null label) on
    stream 1, eps_c + s (eps_c - eps_u); off when s <= 0 (as the official script).
    ``dit``: one batch [cond; uncond] on stream 0, eps_u + s (eps_c - eps_u) on the first
    ``cfg_channels`` eps channels (None: all); off when s <= 1 (as ``l2c.sampling``)."""
    engine = engine if engine is not None else _direct_engine
    if guidance == "uvit":
        null = torch.full_like(labels, model.num_classes)

        def eps_uvit(x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
            C = x.shape[1]
            cond = engine(model, x, t, labels, step=k, stream=0)[:, :C]
            if cfg_scale <= 0:
                return cond
            uncond = engine(model, x, t, null, step=k, stream=1)[:, :C]
            return cond + cfg_scale * (cond - uncond)
        return eps_uvit
    if guidance == "dit":
        from .sampling import guided_model_fn  # noqa: PLC0415 (sampling imports this module lazily)
        fn = guided_model_fn(model, engine, labels, cfg_scale, cfg_channels)
        return lambda x, t, k: fn(x, t, k)[:, :x.shape[1]]
    raise L2CError(f"unknown guidance form {guidance!r}: expected one of {GUIDANCE_FORMS}")


@torch.no_grad()
def dpm2_sample(model: nn.Module, engine: Any, noise: torch.Tensor, labels: torch.Tensor, *, nfe: int,
                cfg_scale: float, callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
                noise_schedule: Any = None, time_input: str | None = None, guidance: str | None = None,
                cfg_channels: int | None = None, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """Sample with DPM-Solver-2 from ``noise`` (x at t = 1) for ``labels``; returns x at t = 1/1000
    (no final denoising step, as the official script). ``engine``: a ``CacheEngine`` installed on
    the model (or None for plain calls); evaluation k runs with ``step=k``. ``callback(i, x, d)``
    after each outer step i with the new x and the data prediction the step used. Unset
    ``noise_schedule`` / ``time_input`` / ``guidance`` default by model type (``dpm_defaults``)."""
    nfe = check_nfe(nfe)
    check_labels(model, noise, labels)
    sched = getattr(engine, "schedule", None)
    if sched is not None:
        sched.check_nfe(nfe)
    if noise_schedule is None or time_input is None or guidance is None:
        d = dpm_defaults(model)
        noise_schedule = d["noise_schedule"] if noise_schedule is None else noise_schedule
        time_input = d["time_input"] if time_input is None else time_input
        guidance = d["guidance"] if guidance is None else guidance
    if guidance not in GUIDANCE_FORMS:
        raise L2CError(f"unknown guidance form {guidance!r}: expected one of {GUIDANCE_FORMS}")
    plan = dpm2_plan(nfe, noise_schedule, time_input, t_start=t_start, t_end=t_end)
    eps_fn = guided_eps_fn(model, engine, labels, float(cfg_scale), guidance, cfg_channels)
    x = noise
    for i in range(plan.num_steps):
        x, d = dpm2_step(eps_fn, x, plan, i)
        if callback is not None:
            callback(i, x, d)
    return x


__all__ = ["DiscreteVPSchedule", "DPM2Plan", "dpm2_plan", "dpm2_sample", "dpm2_step", "dpm_defaults",
           "guided_eps_fn", "router_timestep_map", "sd_betas", "check_nfe"]

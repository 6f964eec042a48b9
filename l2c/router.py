"""``l2c train-router``: the Learning-to-Cache objective (paper Eq. 9, official code semantics).

Router: one logit beta per (step, sub-layer), shape [NFE, 2*blocks], in sampling order here (the
official files index i = NFE-1-k; the export converts). Soft forward: branch = r*cached + (1-r)*fresh
with r = 1 - sigmoid(beta). One iteration: draw a cache step m uniformly among the cache steps, noise
a real x0 to its previous (full) step s with q_sample, run one full no-grad DDIM step s -> m (this
fills the cache), then teacher (frozen model, computing fully) and student (soft router) at m;
loss = MSE(student, teacher) over all output channels + lambda * sum_j sigmoid(beta[m][j]).
Labels are dropped to the null class with p = 0.1 for both passes; AdamW lr 1e-3; optional clamp
of the logits to [-c, c] after every step (DiT: 5) and optional straight-through threshold.

``objective="drop"`` trains Learning-to-Drop (paper Tables 5/7): the same loss, but the student's
branch is (1-r)*fresh, i.e. a skipped branch contributes nothing instead of its cached value."""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .cache import CacheEngine, CacheSchedule, default_cache_steps
from .data import load_dataset
from .sampling import ddim_diffusion
from .io import (L2CError, check_resume, environment_record, exclusive_run, load_torch, save_torch, truncate_jsonl_log,
                 write_json)
from .models import load_model, num_sublayers

log = logging.getLogger("l2c.router")
ROUTER_FORMAT = "l2c-suite/router"
OBJECTIVES = ("cache", "drop", "trajectory")


@dataclass
class RouterConfig:
    checkpoint: str = ""  # model weights (our format records the architecture)
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits:train"  # images in the model's input space, or latents:PATH.npz for latent models
    sampler: str = "ddim"
    nfe: int = 20
    lam: float = 1e-3  # lambda of Eq. 9 (per sub-layer penalty)
    objective: str = "cache"  # cache (L2C) | drop (learning-to-drop) | trajectory (HarmoniCa-style, image-free)
    trajectory_loss: str = "x0"  # trajectory objective: x0 (per-step predicted-x0 error) | final (final-image error)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    clamp: float | None = 5.0  # DiT clamps logits to [-5, 5]; U-ViT does not (None)
    ste_threshold: float | None = None  # straight-through hard threshold in the forward pass
    label_dropout: float = 0.1
    reduction: str = "mean"  # mean (DiT) | sum (per-sample sum of squares, U-ViT)
    seed: int = 0
    thetas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # logged: active sub-layers
    ckpt_every: int = 500
    log_every: int = 50
    threads: int | None = None
    device: str = "cpu"  # cuda for the paper's models; the router, caches and batches live there


def _reuse_weights(beta_row: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """r = 1 - sigmoid(beta) (optionally hard-thresholded with straight-through gradients)."""
    s = torch.sigmoid(beta_row)
    if cfg.ste_threshold is not None:
        s = (s > cfg.ste_threshold).float() + s - s.detach()
    return 1 - s


def train_router(cfg: RouterConfig, out_dir: str | os.PathLike, progress: bool = True, *,
                 model: torch.nn.Module | None = None, timings: dict[str, list[float]] | None = None) -> Path:
    """Train and write ``out_dir/router.pt`` (ours), ``router_official.pt`` (authors' layout),
    ``train_log.jsonl`` and ``record.json``. Resumes from ``out_dir/checkpoint.pt``.

    ``model`` replaces loading ``cfg.checkpoint`` (the router benchmark passes random weights);
    ``timings`` collects per-iteration seconds of each phase (data, cache_fill, teacher, student,
    backward, optimizer), with device syncs around each, for ``l2c bench-router``."""
    if cfg.sampler not in ("ddim", "dpm2"):
        raise L2CError(f"router training for sampler {cfg.sampler!r}: expected ddim or dpm2")
    if cfg.objective not in OBJECTIVES:
        raise L2CError(f"objective {cfg.objective!r}: expected one of {OBJECTIVES}")
    if cfg.objective == "trajectory" and cfg.sampler != "ddim":
        raise L2CError("the trajectory objective is implemented for the ddim sampler")
    if cfg.trajectory_loss not in ("x0", "final"):
        raise L2CError(f"trajectory_loss {cfg.trajectory_loss!r}: expected x0 or final")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_run(out, "router training folder"):  # a second run into the same folder is refused
        return _train_router(cfg, out, progress, model=model, timings=timings)


def _train_router(cfg: RouterConfig, out: Path, progress: bool, *, model: torch.nn.Module | None,
                  timings: dict[str, list[float]] | None) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = _device(cfg.device)
    if model is None:
        model = load_model(cfg.checkpoint, cfg.model, **cfg.model_kwargs)
    model = model.to(dev).eval().requires_grad_(False)
    data = None if cfg.objective == "trajectory" else load_dataset(cfg.data)  # trajectory training is image-free
    n_sub = num_sublayers(model)
    depth = n_sub // 2
    # L2C reuses only right after a full step; the trajectory objective lets every step but the first reuse
    cache_steps = list(range(1, cfg.nfe)) if cfg.objective == "trajectory" else default_cache_steps(cfg.nfe, cfg.sampler)
    if not cache_steps:
        raise L2CError(f"NFE {cfg.nfe} has no cache steps")
    diffusion = ddim_diffusion(model, cfg.nfe)  # the model's own noise schedule and time input (U-ViT: SD betas)
    coef = diffusion.ddim_coefficients(dev)
    ts = diffusion.model_timesteps(dev)
    plan = None
    if cfg.sampler == "dpm2":
        from .dpm_solver import dpm2_plan, dpm_defaults
        d = dpm_defaults(model)
        plan = dpm2_plan(cfg.nfe, d["noise_schedule"], d["time_input"])
    gen = torch.Generator().manual_seed(cfg.seed)
    beta = torch.randn(cfg.nfe, n_sub, generator=gen).to(dev).requires_grad_(True)  # N(0, 1) init
    opt = torch.optim.AdamW([beta], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    step, elapsed = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        ck = load_torch(ckpt, "router checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != "l2c-suite/router-state":
            raise L2CError(f"router checkpoint {ckpt}: not a router training state; delete it to start afresh")
        check_resume(ck.get("config", {}), asdict(cfg), ckpt, "router checkpoint")
        with torch.no_grad():
            beta.copy_(ck["beta"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["rng"])
        step, elapsed = ck["step"], ck["elapsed"]
    # the log keeps exactly the lines up to the checkpoint resumed from (none without one: a run
    # killed before its first checkpoint restarts it empty), so no line is ever written twice
    truncate_jsonl_log(out / "train_log.jsonl", step)

    engine = CacheEngine(model)
    steps_t = torch.tensor(cache_steps)
    log_f = open(out / "train_log.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"router λ={cfg.lam:g}", unit="it")
    t0, acc = time.time(), {"loss": 0.0, "mse": 0.0, "n": 0}
    with engine.installed():
        while step < cfg.steps:
            opt.zero_grad(set_to_none=True)
            if cfg.objective == "trajectory":
                loss_v, mse_v = _trajectory_iteration(model, engine, beta, cfg, diffusion, coef, ts, gen)
            else:
                loss_v, mse_v = _single_step_iteration(model, engine, beta, cfg, data, diffusion, coef, ts, gen, plan,
                                                       steps_t, timings)
            with _phase(timings, "optimizer", dev):
                opt.step()
                if cfg.clamp is not None:
                    with torch.no_grad():
                        beta.clamp_(-cfg.clamp, cfg.clamp)
            engine.cache.clear()
            step += 1
            acc["loss"] += loss_v
            acc["mse"] += mse_v
            acc["n"] += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                with torch.no_grad():
                    probs = torch.sigmoid(beta[cache_steps])
                rec = {"step": step, "loss": acc["loss"] / acc["n"], "mse": acc["mse"] / acc["n"],
                       "elapsed_s": elapsed + time.time() - t0,
                       "active": {f"{th:g}": int((probs > th).sum()) for th in cfg.thetas},
                       "cache_sublayers": len(cache_steps) * n_sub}
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3g}", active=rec["active"].get("0.5"))
                acc = {"loss": 0.0, "mse": 0.0, "n": 0}
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                elapsed += time.time() - t0
                t0 = time.time()
                save_torch({"format": "l2c-suite/router-state", "config": asdict(cfg), "beta": beta.detach().cpu().clone(),
                            "opt": opt.state_dict(), "rng": gen.get_state(), "step": step, "elapsed": elapsed}, ckpt)
    bar.close()
    log_f.close()
    router = {"format": ROUTER_FORMAT, "beta": beta.detach().cpu().clone(), "nfe": cfg.nfe, "sampler": cfg.sampler,
              "cache_steps": cache_steps, "objective": cfg.objective, "lam": cfg.lam, "depth": depth,
              "checkpoint": cfg.checkpoint, "steps": step}
    save_torch(router, out / "router.pt")
    if cfg.objective != "trajectory":  # the authors' layout has no place for free cache steps
        export_official(router, out / "router_official.pt")
    write_json(out / "record.json", {"config": asdict(cfg), "steps": step, "wall_time_s": elapsed,
                                     "s_per_1000_it": 1000 * elapsed / max(step, 1), "environment": environment_record(dev)})
    return out / "router.pt"


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise L2CError(f"router device {name!r}: CUDA is not available on this machine; use device: cpu")
    return dev


@contextmanager
def _phase(timings: dict[str, list[float]] | None, name: str, dev: torch.device):
    """Time one phase of an iteration into ``timings[name]`` (synchronising the device around it)."""
    if timings is None:
        yield
        return
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    yield
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    timings.setdefault(name, []).append(time.perf_counter() - t0)


def _drop_labels(y: torch.Tensor, null: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(y.shape[0], generator=gen) < p, torch.full_like(y, null), y)


def _single_step_iteration(model, engine, beta, cfg, data, diffusion, coef, ts, gen, plan, steps_t,
                           timings=None) -> tuple[float, float]:
    """One L2C / learning-to-drop iteration (see the module docstring); backpropagates, returns (loss, mse).
    Random draws come from the CPU generator ``gen`` (the same run on any device), tensors live on
    ``beta``'s device."""
    C, B, dev = model.in_channels, cfg.batch_size, beta.device
    depth = beta.shape[1] // 2
    with _phase(timings, "data", dev):
        m = int(steps_t[torch.randint(len(steps_t), (1,), generator=gen)])  # cache step (sampling order)
        x0, y = data.batch(torch.randint(len(data), (B,), generator=gen))
        y = _drop_labels(y, model.num_classes, cfg.label_dropout, gen).to(dev)
        x0 = x0.to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
    fill = "fill" if cfg.objective == "cache" else "off"
    with torch.no_grad():
        with _phase(timings, "cache_fill", dev):
            if plan is None:  # DDIM: full step s = m-1 (respaced index i_s) -> cache step m
                i_m, i_s = cfg.nfe - 1 - m, cfg.nfe - m
                x_s = diffusion.q_sample(x0, torch.full((B,), i_s, device=dev), noise)
                eps = engine(model, x_s, ts[i_s].expand(B), y, step=m - 1, mode=fill)[:, :C]
                x_m, _ = diffusion.ddim_step(x_s, eps, i_s, coef)
                t_m = ts[i_m].expand(B)
            else:  # DPM-Solver-2, shifted: outer step m/2-1 (its midpoint m-1 fills the cache) -> evaluation m
                from .dpm_solver import dpm2_step
                prev = plan.steps[m // 2 - 1]
                x_s = prev.alpha_s * x0 + prev.sigma_s * noise
                x_m, _ = dpm2_step(lambda x, t, k: engine(model, x, t, y, step=k, mode=fill if k == m - 1 else "off")[:, :C],
                                   x_s, plan, m // 2 - 1)
                t_m = torch.full((B,), plan.steps[m // 2].model_t_s, device=dev)
        with _phase(timings, "teacher", dev):
            teacher = engine(model, x_m, t_m, y, step=m, mode="off")
    with _phase(timings, "student", dev):
        r = _reuse_weights(beta[m], cfg).reshape(depth, 2)
        student = engine(model, x_m, t_m, y, step=m, mode="mix" if cfg.objective == "cache" else "drop-mix", mix=r)
        sq = (student - teacher).pow(2)
        mse = sq.mean() if cfg.reduction == "mean" else sq.flatten(1).sum(1).mean()
        loss = mse + cfg.lam * torch.sigmoid(beta[m]).sum()
    with _phase(timings, "backward", dev):
        loss.backward()
        loss_v, mse_v = loss.item(), mse.item()
    engine.cache.clear()
    return loss_v, mse_v


def _trajectory_iteration(model, engine, beta, cfg, diffusion, coef, ts, gen) -> tuple[float, float]:
    """One trajectory-trained iteration (HarmoniCa-style, image-free): from fresh noise, the teacher
    samples fully while the student samples with the soft router on its own trajectory (so each step
    sees the cache errors of the steps before it; soft caches of any age via ``mix-update``). Loss =
    mean over steps k >= 1 of ||x0_student(k) - x0_teacher(k)||^2 (the predicted clean image, a proxy
    of the final-image error) + lambda * mean_k sum_j sigmoid(beta[k][j]). States are detached
    between steps (truncated backpropagation), so each step's graph is freed after its backward.
    ``cfg.trajectory_loss == "final"``: the loss is the final image's error ||x_student - x_teacher||^2
    + the same penalty, backpropagated through the whole student trajectory (the states are not
    detached; the cached values are), in one backward at the end."""
    C, B, n, dev = model.in_channels, cfg.batch_size, cfg.nfe, beta.device
    depth = beta.shape[1] // 2
    x = torch.randn(B, C, model.input_size, model.input_size, generator=gen).to(dev)
    y = _drop_labels(torch.randint(model.num_classes, (B,), generator=gen), model.num_classes, cfg.label_dropout, gen).to(dev)
    xs = xt = x
    final = cfg.trajectory_loss == "final"
    tot_loss = tot_mse = 0.0
    penalty = 0.0
    for k in range(n):
        i = n - 1 - k
        t = ts[i].expand(B)
        with torch.no_grad():
            xt_next, x0_t = diffusion.ddim_step(xt, engine(model, xt, t, y, step=k, mode="off")[:, :C], i, coef)
        if k == 0:
            with torch.no_grad():
                xs_next, _ = diffusion.ddim_step(xs, engine(model, xs, t, y, step=0, mode="fill")[:, :C], i, coef)
        else:
            r = _reuse_weights(beta[k], cfg).reshape(depth, 2)
            xs_next, x0_s = diffusion.ddim_step(xs, engine(model, xs, t, y, step=k, mode="mix-update", mix=r)[:, :C], i, coef)
            if final:
                penalty = penalty + cfg.lam * torch.sigmoid(beta[k]).sum() / (n - 1)
            else:
                mse = (x0_s - x0_t).pow(2).mean()
                loss = (mse + cfg.lam * torch.sigmoid(beta[k]).sum()) / (n - 1)
                loss.backward()
                tot_loss += loss.item()
                tot_mse += mse.item() / (n - 1)
        xs, xt = (xs_next if final else xs_next.detach()), xt_next
    if final:
        mse = (xs - xt).pow(2).mean()
        loss = mse + penalty
        loss.backward()
        tot_loss, tot_mse = loss.item(), mse.item()
    engine.cache.clear()
    return tot_loss, tot_mse


def export_official(router: dict, path: str | os.PathLike) -> None:
    """Write a router in the authors' DiT layout ({'routers': {'<i>.prob': beta}}, i = NFE-1-k) or U-ViT
    layout ({'<i>.prob': beta}, index i = outer step whose first evaluation 2i reuses)."""
    beta = router["beta"]
    nfe = router["nfe"]
    if router["sampler"] == "ddim":
        save_torch({"routers": {f"{i}.prob": beta[nfe - 1 - i].clone() for i in range(nfe)},
                    "args": {"num_sampling_steps": nfe, "l1": router["lam"], "exported_by": "l2c-suite"}}, path)
    else:
        out = {f"{i}.prob": torch.full_like(beta[0], 10.0) for i in range(nfe)}
        for k in router["cache_steps"]:
            out[f"{k // 2}.prob"] = beta[k].clone()
        save_torch(out, path)


def load_router(path: str | os.PathLike) -> dict:
    obj = load_torch(path, "router file")
    if not isinstance(obj, dict) or obj.get("format") != ROUTER_FORMAT:
        raise L2CError(f"router file {path}: not an l2c-suite router")
    return obj


def load_schedule_from_router(path: str | os.PathLike, theta: float, sampler: str | None = None, nfe: int | None = None) -> CacheSchedule:
    """A thresholded schedule from one of our routers or an official router file."""
    obj = load_torch(path, "router file")
    if isinstance(obj, dict) and obj.get("format") == ROUTER_FORMAT:
        policy = "drop" if obj["objective"] == "drop" else "cache"
        sched = CacheSchedule.from_router(obj["beta"], theta, obj["cache_steps"], sampler=obj["sampler"],
                                          source=f"router:{Path(path).name}", policy=policy, meta={"lambda": obj["lam"]})
    else:
        sched = CacheSchedule.from_official_router(path, theta, sampler=sampler)
    if nfe is not None:
        sched.check_nfe(nfe)
    return sched

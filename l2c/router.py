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
branch is (1-r)*fresh, i.e. a skipped branch contributes nothing instead of its cached value.

``train_routers`` trains several lambdas (and L2C beside learning-to-drop) in one pass: the draws,
the cache fill and the teacher of an iteration do not depend on the router, so they run once; the
routers' students run side by side in one batch (``stack_students`` at a time) with one backward of
their summed losses (a router's logits reach only its own loss), and each router takes its own
optimizer step. Each router is bit-identical to training it alone: no operation mixes the rows of
two samples, and the kernels compute a row the same in any batch (tested).

``compile=True`` runs the branches through the compiled path, forward and backward (one graph per
branch, batch shape and grad mode, compiled once per machine through inductor's disk cache): the
same gradients to fp32 rounding (tested), worth its warm-up on long runs of the trajectory objective
(``python benchmarks/router_paths.py``)."""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack, contextmanager
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
    stack_students: int = 0  # routers trained together whose students share one batch (0: all; fewer: less memory)
    compile: bool = False  # the model's branches through the compiled path (l2c.cache.branch_function), forward and backward


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
    return train_routers([cfg], [out_dir], progress, model=model, timings=timings)[0]


def joint_key(cfg: RouterConfig) -> dict[str, Any]:
    """What routers trained together share: every setting but lambda, and for the single-step
    objectives not whether it is L2C or learning-to-drop (both draw the same batches, cache fills
    and teacher outputs)."""
    key = asdict(cfg)
    key.pop("lam")
    key["objective"] = "trajectory" if cfg.objective == "trajectory" else "single-step"
    return key


def train_routers(cfgs: list[RouterConfig], out_dirs: list[str | os.PathLike], progress: bool = True, *,
                  model: torch.nn.Module | None = None, timings: dict[str, list[float]] | None = None) -> list[Path]:
    """Train several routers that differ only in lambda (single-step ones also in L2C vs drop) in one
    pass, each into its own folder as :func:`train_router` writes it. Every iteration draws its
    batch, runs the no-grad passes that do not depend on the router (the cache fill and the teacher;
    the teacher trajectory for the trajectory objective) once, then the routers' students side by
    side in one batch, one backward, and each router's AdamW step. The draws and the shared passes
    do not depend on any router, so each router is bit-identical to training it alone, for a
    fraction of the cost. Routers whose checkpoints stand
    at different steps resume in separate passes. A router already at its last step is not trained
    again: the first one's files are rewritten from its checkpoint, the others' are left as they
    are (so a workflow rerun of one router's job does not touch the files of the others)."""
    if len(cfgs) != len(out_dirs) or not cfgs:
        raise L2CError("train_routers: expected one output folder per router config")
    shared = joint_key(cfgs[0])
    for cfg in cfgs:
        if cfg.steps < 1:
            raise L2CError(f"router steps {cfg.steps}: expected at least 1")
        if cfg.sampler not in ("ddim", "dpm2"):
            raise L2CError(f"router training for sampler {cfg.sampler!r}: expected ddim or dpm2")
        if cfg.objective not in OBJECTIVES:
            raise L2CError(f"objective {cfg.objective!r}: expected one of {OBJECTIVES}")
        if cfg.objective == "trajectory" and cfg.sampler != "ddim":
            raise L2CError("the trajectory objective is implemented for the ddim sampler")
        if cfg.trajectory_loss not in ("x0", "final"):
            raise L2CError(f"trajectory_loss {cfg.trajectory_loss!r}: expected x0 or final")
        diff = sorted(k for k, v in joint_key(cfg).items() if shared[k] != v)
        if diff:
            raise L2CError(f"routers trained together must differ only in lambda (and cache vs drop); "
                           f"lambda {cfg.lam:g} ({cfg.objective}) differs from lambda {cfgs[0].lam:g} in {diff}")
    outs = [Path(o) for o in out_dirs]
    if len({o.resolve() for o in outs}) != len(outs):
        raise L2CError(f"train_routers: two routers share an output folder ({[str(o) for o in outs]})")
    with ExitStack() as stack:
        for out in outs:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_run(out, "router training folder"))  # a second run into a folder is refused
        return _train_group(cfgs, outs, progress, model=model, timings=timings)


class _Run:
    """One router of a joint pass: its logits, optimizer, progress and log."""

    def __init__(self, cfg: RouterConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.ckpt = out / "checkpoint.pt"
        self.state = None
        if self.ckpt.exists():
            ck = load_torch(self.ckpt, "router checkpoint")
            if not isinstance(ck, dict) or ck.get("format") != "l2c-suite/router-state":
                raise L2CError(f"router checkpoint {self.ckpt}: not a router training state; delete it to start afresh")
            # keys added since the checkpoint was written take their defaults (what it was trained with)
            check_resume({**asdict(RouterConfig()), **ck.get("config", {})}, asdict(cfg), self.ckpt, "router checkpoint")
            self.state = ck
        self.step = self.state["step"] if self.state else 0
        self.elapsed = self.state["elapsed"] if self.state else 0.0
        self.beta: torch.Tensor | None = None
        self.acc = {"loss": 0.0, "mse": 0.0, "n": 0}

    def resume_key(self) -> tuple:
        """Routers train in one pass iff they resume from the same step and random state."""
        return (self.step, None if self.state is None else bytes(self.state["rng"].numpy()))


def _train_group(cfgs: list[RouterConfig], outs: list[Path], progress: bool, *, model: torch.nn.Module | None,
                 timings: dict[str, list[float]] | None) -> list[Path]:
    cfg0 = cfgs[0]
    if cfg0.threads:
        torch.set_num_threads(cfg0.threads)
    dev = _device(cfg0.device)
    runs = [_Run(c, o) for c, o in zip(cfgs, outs)]
    # the log of each keeps exactly the lines up to the checkpoint resumed from (none without one: a
    # run killed before its first checkpoint restarts it empty), so no line is ever written twice
    for r in runs:
        truncate_jsonl_log(r.out / "train_log.jsonl", r.step)
    pending = [r for r in runs if r.step < r.cfg.steps]
    if pending:
        if model is None:
            model = load_model(cfg0.checkpoint, cfg0.model, **cfg0.model_kwargs)
        model = model.to(dev).eval().requires_grad_(False)
        env = _Setup(model, cfg0, dev)
        passes: dict[tuple, list[_Run]] = {}
        for r in pending:
            passes.setdefault(r.resume_key(), []).append(r)
        for group in passes.values():
            _joint_pass(env, group, progress, timings)
    written = []
    for i, r in enumerate(runs):
        if i and r.beta is None:  # finished before this call: its files are its own job's
            written.append(r.out / "router.pt")
            continue
        beta = r.beta if r.beta is not None else r.state["beta"]
        router = {"format": ROUTER_FORMAT, "beta": beta.detach().cpu().clone(), "nfe": r.cfg.nfe, "sampler": r.cfg.sampler,
                  "cache_steps": _cache_steps(r.cfg), "objective": r.cfg.objective, "lam": r.cfg.lam,
                  "depth": beta.shape[1] // 2, "checkpoint": r.cfg.checkpoint, "steps": r.step}
        save_torch(router, r.out / "router.pt")
        if r.cfg.objective != "trajectory":  # the authors' layout has no place for free cache steps
            export_official(router, r.out / "router_official.pt")
        together = (r.state or {}).get("trained_with", [[r.cfg.objective, r.cfg.lam]])
        write_json(r.out / "record.json", {"config": asdict(r.cfg), "steps": r.step, "wall_time_s": r.elapsed,
                                           "s_per_1000_it": 1000 * r.elapsed / max(r.step, 1),
                                           "routers_trained_together": len(together), "trained_with": together,
                                           "environment": environment_record(dev)})
        written.append(r.out / "router.pt")
    return written


def _cache_steps(cfg: RouterConfig) -> list[int]:
    # L2C reuses only right after a full step; the trajectory objective lets every step but the first reuse
    return list(range(1, cfg.nfe)) if cfg.objective == "trajectory" else default_cache_steps(cfg.nfe, cfg.sampler)


class _Setup:
    """What every router of a joint pass shares: the model, data, noise schedule and cache steps."""

    def __init__(self, model: torch.nn.Module, cfg: RouterConfig, dev: torch.device):
        self.model, self.cfg, self.dev = model, cfg, dev
        self.data = None if cfg.objective == "trajectory" else load_dataset(cfg.data)  # trajectory training is image-free
        self.n_sub = num_sublayers(model)
        self.cache_steps = _cache_steps(cfg)
        if not self.cache_steps:
            raise L2CError(f"NFE {cfg.nfe} has no cache steps")
        self.diffusion = ddim_diffusion(model, cfg.nfe)  # the model's own noise schedule and time input (U-ViT: SD betas)
        self.coef = self.diffusion.ddim_coefficients(dev)
        self.ts = self.diffusion.model_timesteps(dev)
        self.plan = None
        if cfg.sampler == "dpm2":
            from .dpm_solver import dpm2_plan, dpm_defaults
            d = dpm_defaults(model)
            self.plan = dpm2_plan(cfg.nfe, d["noise_schedule"], d["time_input"])
        self.steps_t = torch.tensor(self.cache_steps)
        self.engine = CacheEngine(model, compile=cfg.compile, whole=False)  # teacher passes through the branches too


def _joint_pass(env: _Setup, runs: list[_Run], progress: bool, timings: dict[str, list[float]] | None) -> None:
    """Train ``runs`` (same step, same random state) together to their last step."""
    cfg0, dev = runs[0].cfg, env.dev
    gen = torch.Generator().manual_seed(cfg0.seed)
    beta0 = torch.randn(cfg0.nfe, env.n_sub, generator=gen)  # N(0, 1) init, the same for every lambda
    if runs[0].state is not None:
        gen.set_state(runs[0].state["rng"])
    lams = [r.cfg.lam for r in runs]
    together = [[r.cfg.objective, r.cfg.lam] for r in runs]
    opts = []
    for r in runs:
        r.beta = (r.state["beta"] if r.state else beta0).clone().to(dev).requires_grad_(True)
        opt = torch.optim.AdamW([r.beta], lr=r.cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        if r.state:
            opt.load_state_dict(r.state["opt"])
        opts.append(opt)
    logs = [open(r.out / "train_log.jsonl", "a") for r in runs]
    step = runs[0].step
    bar = tqdm(total=cfg0.steps, initial=step, disable=not progress, unit="it",
               desc=f"router{'s' if len(runs) > 1 else ''} λ={','.join(f'{lam:g}' for lam in lams)}")
    t0 = time.time()
    try:
        with env.engine.installed():
            while step < cfg0.steps:
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                if cfg0.objective == "trajectory":
                    res = _trajectory_iteration(env, runs, gen)
                else:
                    res = _single_step_iteration(env, runs, gen, timings)
                step += 1
                for r, opt, (loss_v, mse_v) in zip(runs, opts, res):
                    with _phase(timings, "optimizer", dev):
                        opt.step()
                        if r.cfg.clamp is not None:
                            with torch.no_grad():
                                r.beta.clamp_(-r.cfg.clamp, r.cfg.clamp)
                    r.step = step
                    r.acc["loss"] += loss_v
                    r.acc["mse"] += mse_v
                    r.acc["n"] += 1
                bar.update(1)
                if step % cfg0.log_every == 0 or step == cfg0.steps:
                    for r, f in zip(runs, logs):
                        with torch.no_grad():
                            probs = torch.sigmoid(r.beta[env.cache_steps])
                        rec = {"step": step, "loss": r.acc["loss"] / r.acc["n"], "mse": r.acc["mse"] / r.acc["n"],
                               "elapsed_s": r.elapsed + time.time() - t0,
                               "active": {f"{th:g}": int((probs > th).sum()) for th in r.cfg.thetas},
                               "cache_sublayers": len(env.cache_steps) * env.n_sub}
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        r.acc = {"loss": 0.0, "mse": 0.0, "n": 0}
                    bar.set_postfix(loss=f"{rec['loss']:.3g}", active=rec["active"].get("0.5"))
                if step % cfg0.ckpt_every == 0 or step == cfg0.steps:
                    now = time.time()
                    for r, opt in zip(runs, opts):
                        r.elapsed += now - t0
                        save_torch({"format": "l2c-suite/router-state", "config": asdict(r.cfg),
                                    "beta": r.beta.detach().cpu().clone(), "opt": opt.state_dict(), "rng": gen.get_state(),
                                    "step": step, "elapsed": r.elapsed, "trained_with": together}, r.ckpt)
                    t0 = now
    finally:
        bar.close()
        for f in logs:
            f.close()
    for r in runs:
        r.state = {**(r.state or {}), "trained_with": together}


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


def _stacks(runs: list[_Run]) -> list[list[_Run]]:
    """The routers whose students run side by side in one batch (``stack_students`` at a time; 0: all)."""
    n = runs[0].cfg.stack_students or len(runs)
    return [runs[i:i + n] for i in range(0, len(runs), n)]


def _stacked_mix(betas: list[torch.Tensor], cfgs: list[RouterConfig], batch: int, depth: int) -> torch.Tensor:
    """Per-sample reuse weights [blocks, 2, len(betas) * batch]: rows j*batch .. (j+1)*batch - 1 are
    router j's student (the engine broadcasts them over each sample's tokens and channels)."""
    r = torch.stack([_reuse_weights(b, c) for b, c in zip(betas, cfgs)])  # [routers, 2*blocks]
    return r.repeat_interleave(batch, dim=0).T.reshape(depth, 2, -1)


def _stack_cache(filled: dict, fills: list[bool]) -> dict:
    """The cache a stack of students reads: the filled entries once per student, zeros for a
    learning-to-drop student beside L2C ones ((1-r)*fresh = r*0 + (1-r)*fresh)."""
    return {key: torch.cat([v if f else torch.zeros_like(v) for f in fills]) for key, v in filled.items()}


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat((n,) + (1,) * (t.ndim - 1))


def _single_step_iteration(env: _Setup, runs: list[_Run], gen: torch.Generator,
                           timings: dict[str, list[float]] | None = None) -> list[tuple[float, float]]:
    """One L2C / learning-to-drop iteration of every router in ``runs`` (see the module docstring):
    the draws, the cache fill and the teacher once, then the routers' students side by side in one
    batch (``stack_students`` at a time) and one backward of the sum of their losses (each router's
    logits reach only its own loss). Returns (loss, mse) per router. Random draws come from the CPU
    generator ``gen`` (the same run on any device), tensors live on the routers' device."""
    model, engine, cfg, dev = env.model, env.engine, env.cfg, env.dev
    C, B = model.in_channels, cfg.batch_size
    depth = env.n_sub // 2
    diffusion, coef, ts, plan = env.diffusion, env.coef, env.ts, env.plan
    with _phase(timings, "data", dev):
        m = int(env.steps_t[torch.randint(len(env.steps_t), (1,), generator=gen)])  # cache step (sampling order)
        x0, y = env.data.batch(torch.randint(len(env.data), (B,), generator=gen))
        y = _drop_labels(y, model.num_classes, cfg.label_dropout, gen).to(dev)
        x0 = x0.to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
    fill = "fill" if any(r.cfg.objective == "cache" for r in runs) else "off"
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
    filled = engine.cache
    out = []
    try:
        for stack in _stacks(runs):
            n = len(stack)
            with _phase(timings, "student", dev):
                kinds = {r.cfg.objective for r in stack}
                mode = "drop-mix" if kinds == {"drop"} else "mix"
                if mode == "mix" and (n > 1 or kinds != {"cache"}):
                    engine.cache = _stack_cache(filled, [r.cfg.objective == "cache" for r in stack])
                mix = _stacked_mix([r.beta[m] for r in stack], [r.cfg for r in stack], B, depth)
                student = engine(model, _repeat(x_m, n), _repeat(t_m, n), _repeat(y, n), step=m, mode=mode, mix=mix)
                engine.cache = filled
                losses = []
                for j, run in enumerate(stack):
                    sq = (student[j * B:(j + 1) * B] - teacher).pow(2)
                    mse = sq.mean() if run.cfg.reduction == "mean" else sq.flatten(1).sum(1).mean()
                    losses.append((mse + run.cfg.lam * torch.sigmoid(run.beta[m]).sum(), mse))
            with _phase(timings, "backward", dev):
                sum(loss for loss, _ in losses).backward()
                out += [(loss.item(), mse.item()) for loss, mse in losses]
    finally:
        engine.cache = filled
        filled.clear()
    return out


def _trajectory_iteration(env: _Setup, runs: list[_Run], gen: torch.Generator) -> list[tuple[float, float]]:
    """One trajectory-trained iteration (HarmoniCa-style, image-free) of every router in ``runs``:
    from fresh noise, the teacher samples fully (once) while each router's student samples with its
    soft router on its own trajectory (so each step sees the cache errors of the steps before it;
    soft caches of any age via ``mix-update``); the students run side by side in one batch
    (``stack_students`` at a time) from the teacher's first step, which they share (no step reuses
    before it). Loss = mean over steps k >= 1 of ||x0_student(k) - x0_teacher(k)||^2 (the predicted
    clean image, a proxy of the final-image error) + lambda * mean_k sum_j sigmoid(beta[k][j]).
    States are detached between steps (truncated backpropagation), so each step's graph is freed
    after its backward. ``trajectory_loss == "final"``: the loss is the final image's error
    ||x_student - x_teacher||^2 + the same penalty, backpropagated through the whole student
    trajectory (the states are not detached; the cached values are), in one backward at the end.
    Each backward is of the sum of the stacked routers' losses (a router's logits reach only its
    own). Returns (loss, mse) per router."""
    model, engine, cfg, dev = env.model, env.engine, env.cfg, env.dev
    C, B, n = model.in_channels, cfg.batch_size, cfg.nfe
    depth = env.n_sub // 2
    diffusion, coef, ts = env.diffusion, env.coef, env.ts
    x = torch.randn(B, C, model.input_size, model.input_size, generator=gen).to(dev)
    y = _drop_labels(torch.randint(model.num_classes, (B,), generator=gen), model.num_classes, cfg.label_dropout, gen).to(dev)
    final = cfg.trajectory_loss == "final"
    teacher_x0: list[torch.Tensor] = []
    xt = x
    with torch.no_grad():
        for k in range(n):
            i = n - 1 - k
            xt, x0_t = diffusion.ddim_step(xt, engine(model, xt, ts[i].expand(B), y, step=k, mode="fill" if k == 0 else "off")[:, :C], i, coef)
            teacher_x0.append(x0_t)
            if k == 0:
                x1 = xt  # every student's state after step 0, whose branch outputs fill the cache
    filled = engine.cache
    out = []
    try:
        for stack in _stacks(runs):
            s = len(stack)
            engine.cache = {key: _repeat(v, s) for key, v in filled.items()}  # soft caches of its own
            xs, ys = _repeat(x1, s), _repeat(y, s)
            tot = [[0.0, 0.0] for _ in stack]
            penalty = [0.0] * s
            for k in range(1, n):
                i = n - 1 - k
                mix = _stacked_mix([r.beta[k] for r in stack], [r.cfg for r in stack], B, depth)
                eps = engine(model, xs, ts[i].expand(s * B), ys, step=k, mode="mix-update", mix=mix)[:, :C]
                xs_next, x0_s = diffusion.ddim_step(xs, eps, i, coef)
                pens = [r.cfg.lam * torch.sigmoid(r.beta[k]).sum() for r in stack]
                if final:
                    penalty = [p + q / (n - 1) for p, q in zip(penalty, pens)]
                else:
                    mses = [(x0_s[j * B:(j + 1) * B] - teacher_x0[k]).pow(2).mean() for j in range(s)]
                    losses = [(mse + p) / (n - 1) for mse, p in zip(mses, pens)]
                    sum(losses).backward()
                    for acc, loss, mse in zip(tot, losses, mses):
                        acc[0] += loss.item()
                        acc[1] += mse.item() / (n - 1)
                xs = xs_next if final else xs_next.detach()
            if final:
                mses = [(xs[j * B:(j + 1) * B] - xt).pow(2).mean() for j in range(s)]
                losses = [mse + p for mse, p in zip(mses, penalty)]
                sum(losses).backward()
                tot = [[loss.item(), mse.item()] for loss, mse in zip(losses, mses)]
            out += map(tuple, tot)
    finally:
        engine.cache = filled
        filled.clear()
    return out


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

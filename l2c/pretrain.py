"""``l2c pretrain``: train a diffusion transformer (DiT recipe: learned sigma, hybrid loss, label
dropout for CFG, EMA weights, AdamW) on a data set, with resumable checkpoints.

Determinism: every random draw (batch indices, timesteps, noise, label dropout) comes from one
seeded ``torch.Generator`` whose state is checkpointed, so an interrupted run resumed from its
checkpoint reaches the same weights as an uninterrupted run (on the same device and threads)."""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .data import load_dataset
from .diffusion import Diffusion
from .io import (L2CError, check_resume, environment_record, exclusive_run, load_torch, save_torch, truncate_jsonl_log,
                 write_json)
from .models import create_model

log = logging.getLogger("l2c.pretrain")


@dataclass
class PretrainConfig:
    model: str = "DiT-Tiny/2"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"input_size": 8, "in_channels": 1, "num_classes": 10})
    data: str = "digits:train"
    steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear warm-up, then constant (short runs on small data like it)
    lr_decay_to: float = 0.1  # cosine decay to this fraction of lr over the last half
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 100
    threads: int | None = None


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    import math
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    half = cfg.steps // 2
    if step < half:
        return cfg.lr
    frac = (step - half) / max(1, cfg.steps - half)
    return cfg.lr * (cfg.lr_decay_to + (1 - cfg.lr_decay_to) * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(cfg: PretrainConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Train, checkpointing to ``out_dir/checkpoint.pt``; writes ``out_dir/model.pt`` (EMA weights,
    our model format), ``train_log.jsonl`` and ``record.json``. Resumes from a checkpoint if present."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_run(out, "pretraining folder"):  # a second run into the same folder is refused
        return _pretrain(cfg, out, progress)


def _pretrain(cfg: PretrainConfig, out: Path, progress: bool) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_dataset(cfg.data)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, **cfg.model_kwargs)
    if getattr(model, "num_classes", None) is not None and data.num_classes > model.num_classes:
        raise L2CError(f"data {cfg.data} has {data.num_classes} classes but the model was built for {model.num_classes}")
    ema = copy.deepcopy(model).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    diffusion = Diffusion.create()
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed = 0, 0.0

    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ck = load_torch(ckpt_path, "pretraining checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != "l2c-suite/pretrain-state":
            raise L2CError(f"pretraining checkpoint {ckpt_path}: not a pretraining state; delete it to start afresh")
        check_resume(ck["config"], asdict(cfg), ckpt_path, "pretraining checkpoint")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["rng"])
        step, elapsed = ck["step"], ck["elapsed"]
        log.info("resumed from %s at step %d", ckpt_path, step)
    # the log keeps exactly the lines up to the checkpoint resumed from (none without one)
    truncate_jsonl_log(out / "train_log.jsonl", step)

    def save_state() -> None:
        save_torch({"format": "l2c-suite/pretrain-state", "config": asdict(cfg), "model": model.state_dict(),
                    "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(),
                    "step": step, "elapsed": elapsed}, ckpt_path)

    # The model stays in eval mode: label dropout is drawn here from the seeded generator
    # (train-mode dropout inside the model would use the global RNG); DiT has no other dropout.
    model.eval()
    null = model.num_classes
    log_f = open(out / "train_log.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="pretrain", unit="it")
    t0, run_loss, run_n = time.time(), 0.0, 0
    while step < cfg.steps:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        x0, y = data.batch(idx)
        i = torch.randint(diffusion.num_timesteps, (cfg.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(cfg.batch_size, generator=gen) < 0.1
        y = torch.where(drop, torch.full_like(y, null), y)
        xt = diffusion.q_sample(x0, i, noise)
        loss = diffusion.training_losses(model(xt, i, y), x0, xt, i, noise).mean()
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema_decay)
        step += 1
        run_loss += loss.item()
        run_n += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rec = {"step": step, "loss": run_loss / run_n, "lr": _lr_at(cfg, step - 1), "elapsed_s": elapsed + now - t0}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            log.info("step %d loss %.5f", step, rec["loss"])
            run_loss, run_n = 0.0, 0
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            now = time.time()
            elapsed += now - t0
            t0 = now
            save_state()
    bar.close()
    log_f.close()
    final = out / "model.pt"
    save_torch({"format": "l2c-suite/model", "model": cfg.model, "model_kwargs": cfg.model_kwargs,
                "ema": ema.state_dict(), "meta": {"steps": step, "seed": cfg.seed, "data": cfg.data}}, final)
    write_json(out / "record.json", {"config": asdict(cfg), "steps": step, "wall_time_s": elapsed,
                                     "environment": environment_record("cpu")})
    return final

"""``l2c sample``: generate the samples of one table cell as an ADM-format ``.npz``.

Sample ``n``'s initial noise and label depend only on ``(seed, n)``, never on the method, schedule,
batch size or sharding, so two cells that differ only in their schedule are paired sample by sample.
Work is split in shards of ``shard_size`` samples written atomically to ``OUT.shards/``; a killed run
resumes from its finished shards and the merged file equals an uninterrupted run's byte for byte.
Several processes/GPUs can each compute a shard range and one merge assembles the file."""
from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .cache import CacheSchedule
from .data import float_to_uint8
from .io import L2CError, environment_record, write_json, write_npz
from .models import load_model
from .sampling import sample
from .vae import SD_VAE_SCALE, load_vae

log = logging.getLogger("l2c.generate")

EMBEDDED_DIR = Path(__file__).resolve().parent / "assets" / "embedded"
EMBEDDED_MODEL = EMBEDDED_DIR / "dit-digits.pt"


@dataclass
class SampleConfig:
    """One table cell's generation settings (recorded in the output's JSON sidecar)."""

    checkpoint: str = str(EMBEDDED_MODEL)
    model: str | None = None  # needed for official plain state dicts, e.g. DiT-XL/2
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"input_size": 32}
    vae: str | None = None  # AutoencoderKL folder / HF id, or an LDM-layout file (U-ViT); None: pixel space
    sampler: str = "ddim"
    nfe: int = 20
    cfg_scale: float = 1.5
    cfg_channels: int | None = None  # DiT-XL/2 official: 3
    schedule: str | None = None  # a cache schedule JSON
    router: str | None = None  # or an official router file + theta
    theta: float | None = None
    method: str | None = None  # or a caching method of l2c.caching (docs/methods.md)
    method_params: dict[str, Any] = field(default_factory=dict)  # its parameters
    calibration: str | None = None  # its calibration file (default: the one beside the checkpoint)
    num_samples: int = 1000
    seed: int = 0
    labels: str = "uniform"  # uniform (DiT evaluation) or balanced (n mod classes)
    shard_size: int = 500
    batch_size: int = 250
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | bf16 | tf32


def sample_seeds(seed: int, indices: np.ndarray) -> list[int]:
    """A 63-bit seed per (seed, sample index), independent of everything else."""
    return [int(np.random.SeedSequence([seed, int(n)]).generate_state(2, np.uint64)[0] >> np.uint64(1)) for n in indices]


def noise_and_labels(seed: int, indices: np.ndarray, shape: tuple[int, ...], num_classes: int, mode: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Initial noise (N, *shape) and labels (N,) of the given sample indices."""
    xs, ys = [], []
    for n, s in zip(indices, sample_seeds(seed, indices)):
        g = torch.Generator().manual_seed(s)
        ys.append(int(torch.randint(num_classes, (1,), generator=g)) if mode == "uniform" else int(n) % num_classes)
        xs.append(torch.randn(shape, generator=g))
    if mode not in ("uniform", "balanced"):
        raise L2CError(f"labels mode {mode!r}: expected uniform or balanced")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def resolve_schedule(cfg: SampleConfig) -> CacheSchedule | None:
    if cfg.schedule:
        return CacheSchedule.load(cfg.schedule)
    if cfg.router:
        if cfg.theta is None:
            raise L2CError("a router needs theta (compute iff sigmoid(beta) > theta)")
        from .router import load_schedule_from_router
        return load_schedule_from_router(cfg.router, cfg.theta, sampler=cfg.sampler, nfe=cfg.nfe)
    return None


class Generator:
    """Holds the model (and VAE) of one cell and turns sample indices into uint8 NHWC images."""

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if cfg.dtype not in ("fp32", "bf16", "tf32"):
            raise L2CError(f"dtype {cfg.dtype!r}: expected fp32, bf16 or tf32")
        if cfg.dtype == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = load_model(cfg.checkpoint, cfg.model, **cfg.model_kwargs).to(self.device)
        self.schedule = resolve_schedule(cfg)
        if self.schedule is not None:
            self.schedule.check_model(self.model)
            self.schedule.check_nfe(cfg.nfe)
        self.engine = None
        if cfg.method:
            from .caching.cli import method_engine
            self.engine = method_engine(cfg, self.model, self.schedule)
        self.vae = load_vae(cfg.vae, self.device) if cfg.vae else None
        m = self.model
        self.shape = (m.in_channels, m.input_size, m.input_size)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else nullcontext()

    def images(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        noise, labels = noise_and_labels(cfg.seed, indices, self.shape, self.model.num_classes, cfg.labels)
        noise, labels = noise.to(self.device), labels.to(self.device)
        with self.autocast:
            x = sample(self.model, noise, labels, sampler=cfg.sampler, nfe=cfg.nfe, cfg_scale=cfg.cfg_scale,
                       schedule=self.schedule, cfg_channels=cfg.cfg_channels, engine=self.engine)
            if self.vae is not None:
                with torch.no_grad():
                    x = self.vae.decode(x / SD_VAE_SCALE).sample
        x = x.float()
        if not torch.isfinite(x).all():
            raise L2CError(f"generated samples {indices[0]}..{indices[-1]} contain NaN/inf (dtype {cfg.dtype}); "
                           "try fp32 or check the checkpoint")
        return float_to_uint8(x), labels.cpu().numpy()


def shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def num_shards(cfg: SampleConfig) -> int:
    return -(-cfg.num_samples // cfg.shard_size)


def _shard_ok(path: Path) -> bool:
    try:
        with np.load(path) as f:
            return "arr_0" in f and "arr_1" in f
    except Exception:  # a truncated shard from a crash is recomputed
        return False


def generate(cfg: SampleConfig, out: str | os.PathLike, shards: tuple[int, int] | None = None,
             progress: bool = True, keep_shards: bool = False) -> Path | None:
    """Compute the missing shards (all, or the range ``shards = (first, stop)``) and, when every shard
    is present, merge them into ``out`` (``arr_0`` uint8 NHWC, ``arr_1`` labels) plus ``out.json``."""
    out = Path(out)
    if cfg.num_samples < 1 or cfg.shard_size < 1 or cfg.batch_size < 1:
        raise L2CError("num_samples, shard_size and batch_size must be positive")
    for name in ("schedule", "router", "checkpoint"):
        given = getattr(cfg, name)
        if given and Path(given).resolve() == out.with_suffix(".json").resolve():
            raise L2CError(f"output {out} would write its record {out.with_suffix('.json')} over the {name} file it "
                           f"reads; choose another output name")
    if out.exists() and out.with_suffix(".json").exists() and _sidecar_config(out) == asdict(cfg):
        log.info("%s is complete for this configuration; nothing to do", out)
        return out
    sdir = shard_dir(out)
    sdir.mkdir(parents=True, exist_ok=True)
    if (sdir / "config.json").exists():
        _check_same_config(sdir, cfg)
    else:
        write_json(sdir / "config.json", asdict(cfg))
    total = num_shards(cfg)
    first, stop = shards or (0, total)
    todo = [s for s in range(first, min(stop, total)) if not _shard_ok(sdir / f"shard-{s:05d}.npz")]
    t0 = time.time()
    if todo:
        gen = Generator(cfg)
        n_todo = sum(min(cfg.shard_size, cfg.num_samples - s * cfg.shard_size) for s in todo)
        bar = tqdm(total=n_todo, disable=not progress, desc=f"sample {out.name}", unit="img")
        for s in todo:
            lo, hi = s * cfg.shard_size, min((s + 1) * cfg.shard_size, cfg.num_samples)
            imgs, labs = [], []
            for b in range(lo, hi, cfg.batch_size):
                idx = np.arange(b, min(b + cfg.batch_size, hi))
                x, y = gen.images(idx)
                imgs.append(x)
                labs.append(y)
                bar.update(len(idx))
                bar.set_postfix(img_s=f"{bar.n / max(time.time() - t0, 1e-9):.1f}")
            write_npz(sdir / f"shard-{s:05d}.npz", arr_0=np.concatenate(imgs), arr_1=np.concatenate(labs))
            log.info("shard %d/%d written (%d samples)", s + 1, total, hi - lo)
        bar.close()
    missing = [s for s in range(total) if not _shard_ok(sdir / f"shard-{s:05d}.npz")]
    if missing:
        log.info("%d shards still missing; not merging", len(missing))
        return None
    merge(cfg, out, elapsed=time.time() - t0)
    if not keep_shards:
        shutil.rmtree(sdir)
    return out


def _sidecar_config(out: Path) -> dict | None:
    from .io import read_json
    try:
        return read_json(out.with_suffix(".json")).get("config")
    except (L2CError, AttributeError):
        return None


def _check_same_config(sdir: Path, cfg: SampleConfig) -> None:
    from .io import read_json
    old = read_json(sdir / "config.json")
    if old != asdict(cfg):
        diff = sorted(k for k in set(old) | set(asdict(cfg)) if old.get(k) != asdict(cfg).get(k))
        raise L2CError(f"{sdir} holds shards of a different configuration (differs in {diff}); "
                       "delete that folder or use another output path")


def merge(cfg: SampleConfig, out: Path, elapsed: float | None = None) -> None:
    sdir = shard_dir(out)
    imgs, labs = [], []
    for s in range(num_shards(cfg)):
        with np.load(sdir / f"shard-{s:05d}.npz") as f:
            imgs.append(f["arr_0"])
            labs.append(f["arr_1"])
    write_npz(out, arr_0=np.concatenate(imgs), arr_1=np.concatenate(labs))
    meta = {"config": asdict(cfg), "num_samples": cfg.num_samples, "environment": environment_record(cfg.device, cfg.dtype)}
    if elapsed is not None:
        meta["wall_time_s_this_run"] = elapsed
    write_json(out.with_suffix(".json"), meta)

"""``l2c sample``: generate the samples of one table cell as an ADM-format ``.npz``.

Sample ``n``'s initial noise and label depend only on ``(seed, n)``, never on the method, schedule,
batch size or sharding, so two cells that differ only in their schedule are paired sample by sample.
Work is split in shards of ``shard_size`` samples written atomically to ``OUT.shards/``, each with a
record of its sha256; a killed run resumes from its verified shards and the merged file equals an
uninterrupted run's byte for byte. Several processes/GPUs can each compute a shard range (or simply
run the same command: shards are claimed with file locks) and one merge assembles the file; the
sidecar ``OUT.json`` records the merged file's sha256, so a damaged output is recomputed, never
reported complete (see :func:`generate`)."""
from __future__ import annotations

import hashlib
import json
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

from .cache import CacheEngine, CacheSchedule
from .data import float_to_uint8
from .io import L2CError, environment_record, lock_path, locked, read_npz_verified, sha256_file, write_json, write_npz
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
    compile: bool = False  # branches through torch.compile (l2c.cache.branch_function): equal to eager up to fp32 rounding, faster


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
        self.method_macs: list[tuple[int, int]] = []  # (images, MACs per image) of each batch a method sampled
        if cfg.method:
            from .caching.cli import method_engine
            self.engine = method_engine(cfg, self.model, self.schedule)
        elif cfg.compile:
            self.engine = CacheEngine(self.model, self.schedule, compile=True)
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
            if cfg.method:  # MACs of the decisions this batch took (l2c.caching)
                self.method_macs.append((len(indices), sum(self.engine.macs_per_step())))
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


def config_digest(cfg: SampleConfig) -> str:
    """sha256 of the configuration (recorded with every shard, so a shard names what made it)."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()


def _shard_files(sdir: Path, s: int) -> tuple[Path, Path]:
    return sdir / f"shard-{s:05d}.npz", sdir / f"shard-{s:05d}.json"


def _shard_record(sdir: Path, s: int) -> dict | None:
    try:
        rec = json.loads(_shard_files(sdir, s)[1].read_text())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def shard_problem(sdir: Path, s: int, cfg: SampleConfig, warn: bool = True) -> str | None:
    """Why shard ``s`` cannot be used (``None``: it is complete and its bytes have the sha256 of its
    record). Anything but a plain absence is logged as a warning naming the shard (``warn``)."""
    npz, rec_path = _shard_files(sdir, s)
    if not npz.exists():
        return "missing"
    rec = _shard_record(sdir, s)
    if rec is None:
        why = "has no readable record (its run was killed before recording it)"
    elif rec.get("config_sha256") != config_digest(cfg):
        why = "was made by another configuration"
    elif rec.get("sha256") != sha256_file(npz):
        why = "is damaged: its bytes do not have the sha256 in its record"
    else:
        return None
    if warn:
        log.warning("shard %s %s; recomputing it", npz, why)
    return why


def _complete(out: Path, cfg: SampleConfig) -> bool:
    """Whether ``out`` holds this configuration's samples: its sidecar records this configuration and
    the sha256 of ``out``'s bytes, and the bytes still have it (a damaged output is logged)."""
    rec = out.with_suffix(".json")
    if not out.exists() or not rec.exists():
        return False
    try:
        meta = json.loads(rec.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable record; recomputing %s", rec, out)
        return False
    if not isinstance(meta, dict) or meta.get("config") != json.loads(json.dumps(asdict(cfg))):
        return False
    if "sha256" not in meta:
        log.warning("%s: its record %s has no sha256 (written by an older version), so it cannot be verified; "
                    "recomputing it", out, rec)
        return False
    if sha256_file(out) != meta["sha256"]:
        log.warning("%s is damaged or truncated: its bytes do not have the sha256 recorded in %s; recomputing it",
                    out, rec)
        return False
    return True


def _check_shard_dir(sdir: Path, cfg: SampleConfig) -> bool:
    """Refuse a shards folder holding another configuration's shards; True when its config.json
    must be (re)written (absent, or naming another configuration but holding no shard)."""
    from .io import read_json
    conf = sdir / "config.json"
    if not conf.exists():
        return True
    try:
        old = read_json(conf)
    except L2CError:
        old = None
    if old == json.loads(json.dumps(asdict(cfg))):
        return False
    if not any(sdir.glob("shard-*.npz")):
        return True  # nothing computed under the old configuration: nothing to protect
    if not isinstance(old, dict):
        raise L2CError(f"{conf}: unreadable, and {sdir} holds shards; delete that folder or use another output path")
    diff = sorted(k for k in set(old) | set(asdict(cfg)) if old.get(k) != json.loads(json.dumps(asdict(cfg))).get(k))
    raise L2CError(f"{sdir} holds shards of a different configuration (differs in {diff}); "
                   "delete that folder or use another output path")


def _write_shard(gen: Generator, cfg: SampleConfig, sdir: Path, s: int, bar, t0: float) -> None:
    npz, rec = _shard_files(sdir, s)
    rec.unlink(missing_ok=True)  # a record never outlives the bytes it describes
    lo, hi = s * cfg.shard_size, min((s + 1) * cfg.shard_size, cfg.num_samples)
    imgs, labs = [], []
    gen.method_macs.clear()
    for b in range(lo, hi, cfg.batch_size):
        idx = np.arange(b, min(b + cfg.batch_size, hi))
        x, y = gen.images(idx)
        imgs.append(x)
        labs.append(y)
        bar.update(len(idx))
        bar.set_postfix(img_s=f"{bar.n / max(time.time() - t0, 1e-9):.1f}")
    sha = write_npz(npz, arr_0=np.concatenate(imgs), arr_1=np.concatenate(labs))
    macs = {"method_macs_per_image": sum(n * m for n, m in gen.method_macs) / (hi - lo)} if gen.cfg.method else {}
    write_json(rec, {"sha256": sha, "config_sha256": config_digest(cfg), "first_sample": lo, "stop_sample": hi, **macs})
    log.info("shard %d/%d written (%d samples)", s + 1, num_shards(cfg), hi - lo)


def _compute_shards(gen: Generator, cfg: SampleConfig, sdir: Path, todo: list[int], out: Path, progress: bool,
                    t0: float) -> None:
    """Compute the shards of ``todo``, each under its claim ``shard-N.lock``: a shard claimed by
    another run is skipped at first, then waited for and recomputed only if that run did not finish it."""
    n_todo = sum(min(cfg.shard_size, cfg.num_samples - s * cfg.shard_size) for s in todo)
    bar = tqdm(total=n_todo, disable=not progress, desc=f"sample {out.name}", unit="img")
    pending, blocking = list(todo), False
    try:
        while pending:
            busy = []
            for s in pending:
                try:
                    with locked(sdir / f"shard-{s:05d}.lock", blocking=blocking, what="shard") as held:
                        if not held:
                            busy.append(s)
                        elif shard_problem(sdir, s, cfg, warn=False) is not None:
                            _write_shard(gen, cfg, sdir, s, bar, t0)
                except FileNotFoundError:  # the shards folder is gone: another run merged the output
                    return
            pending, blocking = busy, True
    finally:
        bar.close()


def generate(cfg: SampleConfig, out: str | os.PathLike, shards: tuple[int, int] | None = None,
             progress: bool = True, keep_shards: bool = False) -> Path | None:
    """Compute the missing shards (all, or the range ``shards = (first, stop)``) and, when every shard
    is present, merge them into ``out`` (``arr_0`` uint8 NHWC, ``arr_1`` labels) plus ``out.json``.

    Nothing is trusted unverified: ``out`` counts as done only when ``out.json`` records this
    configuration and ``out``'s sha256; a shard only when ``shard-N.json`` records its sha256 and this
    configuration's; anything else is logged by name and recomputed. Every check happens before
    anything is written (the shards folder and its ``config.json`` appear with the first work).

    Concurrent runs into one output cooperate: each shard is claimed with ``flock`` on
    ``OUT.shards/shard-N.lock`` (another run's shard is skipped, then waited for), and the completeness
    check and the merge hold ``OUT.lock``, so a second identical run shares the work and then finds
    the output complete. A killed run's locks vanish with it."""
    out = Path(out)
    if cfg.num_samples < 1 or cfg.shard_size < 1 or cfg.batch_size < 1:
        raise L2CError("num_samples, shard_size and batch_size must be positive")
    for name in ("schedule", "router", "checkpoint"):
        given = getattr(cfg, name)
        if given and Path(given).resolve() == out.with_suffix(".json").resolve():
            raise L2CError(f"output {out} would write its record {out.with_suffix('.json')} over the {name} file it "
                           f"reads; choose another output name")
    total = num_shards(cfg)
    first, stop = shards or (0, total)
    if first < 0 or stop < first:
        raise L2CError(f"shard range {first}:{stop}: expected 0 <= first <= stop (this configuration has {total} shards)")
    wanted = list(range(first, min(stop, total)))
    sdir = shard_dir(out)
    with locked(lock_path(out)):
        if _complete(out, cfg):
            log.info("%s is complete for this configuration (sha256 verified); nothing to do", out)
            return out
    t0 = time.time()
    gen = None
    for _attempt in range(3):
        todo = [s for s in wanted if shard_problem(sdir, s, cfg) is not None]
        if todo:
            _check_shard_dir(sdir, cfg)
            if gen is None:
                gen = Generator(cfg)  # validates model, schedule and VAE before anything is written
            with locked(lock_path(out)):
                if _check_shard_dir(sdir, cfg):
                    sdir.mkdir(parents=True, exist_ok=True)
                    write_json(sdir / "config.json", asdict(cfg))
            _compute_shards(gen, cfg, sdir, todo, out, progress, t0)
        with locked(lock_path(out)):
            if _complete(out, cfg):  # merged meanwhile by a run sharing the work
                return out
            # presence only here: the merge verifies every shard's sha256 as it reads it
            missing = [s for s in range(total) if not all(f.exists() for f in _shard_files(sdir, s))]
            if missing and not set(missing) & set(wanted):
                log.info("%d shards still missing; not merging", len(missing))
                return None
            if not missing and merge(cfg, out, elapsed=time.time() - t0):
                if not keep_shards:
                    shutil.rmtree(sdir, ignore_errors=True)
                return out
    raise L2CError(f"{sdir}: shards kept failing verification after 3 attempts (is another program writing there?); "
                   "delete that folder and rerun")


def merge(cfg: SampleConfig, out: Path, elapsed: float | None = None) -> bool:
    """Concatenate the verified shards into ``out`` and write ``out.json`` (configuration, sha256 of
    ``out``, environment). False (nothing written) if a shard fails verification while being read."""
    sdir = shard_dir(out)
    imgs, labs, macs = [], [], []
    for s in range(num_shards(cfg)):
        npz, _ = _shard_files(sdir, s)
        rec = _shard_record(sdir, s) or {}
        arrays = read_npz_verified(npz, rec.get("sha256", ""), "shard") if npz.exists() else None
        if arrays is None or rec.get("config_sha256") != config_digest(cfg):
            log.warning("shard %s is damaged, changed or gone at the merge (its bytes do not have the sha256 in its "
                        "record); recomputing it", npz)
            return False
        imgs.append(arrays["arr_0"])
        labs.append(arrays["arr_1"])
        macs.append((len(arrays["arr_0"]), rec.get("method_macs_per_image")))
    sha = write_npz(out, arr_0=np.concatenate(imgs), arr_1=np.concatenate(labs))
    meta = {"config": asdict(cfg), "num_samples": cfg.num_samples, "sha256": sha,
            "environment": environment_record(cfg.device, cfg.dtype)}
    if elapsed is not None:
        meta["wall_time_s_this_run"] = elapsed
    if cfg.method and all(m is not None for _, m in macs):  # a caching method: MACs of what its runs computed
        meta["method_macs_per_image"] = sum(n * m for n, m in macs) / sum(n for n, _ in macs)
    write_json(out.with_suffix(".json"), meta)
    return True

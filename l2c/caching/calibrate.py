"""Calibration passes on uncached sampling runs of a model (``l2c calibrate``):

* ``teacache``: at every model call, the relative L1 change of block 0's ``cache_signal`` (the
  policy's input) and of the model output since the previous call (same stream); a polynomial of
  degree 4 (TeaCache's choice) of output change against input change is fitted with
  ``numpy.polyfit`` over all steps but the first of every run;
* ``smoothcache``: per component type (attention / MLP), step k and distance g to an earlier step,
  the relative L1 error of reusing the output of step k - g at step k, averaged over blocks and samples.

Records are JSON files, saved by default beside the checkpoint (``calibration_path``)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from ..io import L2CError, environment_record, write_json
from ..models import cacheable_blocks
from .engine import COMPUTE, MethodEngine, Plan, relative_l1

CALIBRATIONS = ("teacache", "smoothcache")
TEACACHE_DEGREE = 4


def calibration_path(checkpoint: str | os.PathLike, method: str, sampler: str, nfe: int) -> Path:
    """``<checkpoint stem>.teacache.json`` (fitted over all steps: one per model) or
    ``<stem>.smoothcache-<sampler><nfe>.json`` (a mask per step: one per sampler and NFE)."""
    ck = Path(checkpoint)
    tail = "teacache" if method == "teacache" else f"{method}-{sampler}{nfe}"
    return ck.with_name(f"{ck.stem}.{tail}.json")


class _SignalRecorder:
    """A plain engine (``l2c.sampling.sample(engine=...)``) that records, per call, block 0's
    ``cache_signal`` and the model output."""

    schedule = None

    def __init__(self, model: nn.Module):
        self.model = model
        self.block0 = cacheable_blocks(model)[0]
        self.rows: list[tuple[int, float, float]] = []  # (step, input change, output change)
        self.prev: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._signal: torch.Tensor | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator["_SignalRecorder"]:
        def pre(module: nn.Module, args: tuple) -> None:
            self._signal = module.cache_signal(*args)
        h = self.block0.register_forward_pre_hook(pre)
        try:
            yield self
        finally:
            h.remove()
            self.prev.clear()

    def __call__(self, model_call: Any, *args: Any, step: int, stream: int = 0, **_: Any) -> torch.Tensor:
        out = model_call(*args)
        sig, o = self._signal, out[:, : args[0].shape[1]].float()  # eps channels (learned sigma dropped)
        if stream in self.prev:
            ps, po = self.prev[stream]
            self.rows.append((step, relative_l1(sig, ps), relative_l1(o, po)))
        self.prev[stream] = (sig, o)
        return out


def _inputs(model: nn.Module, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..generate import noise_and_labels  # noqa: PLC0415
    p = next(model.parameters())
    noise, labels = noise_and_labels(seed, np.arange(num_samples), (model.in_channels, model.input_size, model.input_size),
                                     model.num_classes)
    return noise.to(p.device), labels.to(p.device)


def calibrate_teacache(model: nn.Module, *, nfe: int, sampler: str = "ddim", cfg_scale: float = 1.5,
                       num_samples: int = 8, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    from ..sampling import sample  # noqa: PLC0415
    noise, labels = _inputs(model, num_samples, seed)
    rows: list[tuple[int, float, float]] = []
    for i in range(0, num_samples, batch_size):
        rec = _SignalRecorder(model)
        sample(model, noise[i:i + batch_size], labels[i:i + batch_size], sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, engine=rec)
        rows += rec.rows
    x = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows])
    if len(x) <= TEACACHE_DEGREE or not np.isfinite(x).all() or not np.isfinite(y).all():
        raise L2CError(f"TeaCache calibration: {len(x)} usable (input change, output change) pairs; need more than "
                       f"{TEACACHE_DEGREE} finite ones (use a larger NFE or more samples)")
    coef = np.polyfit(x, y, TEACACHE_DEGREE)
    resid = y - np.polyval(coef, x)
    return {"format": "l2c-suite/calibration", "method": "teacache", "coefficients": [float(c) for c in coef],
            "degree": TEACACHE_DEGREE, "fit_rmse": float(np.sqrt(np.mean(resid ** 2))),
            "input_change": x.tolist(), "output_change": y.tolist(), "steps": [r[0] for r in rows]}


def calibrate_smoothcache(model: nn.Module, *, nfe: int, sampler: str = "ddim", cfg_scale: float = 1.5,
                          num_samples: int = 10, seed: int = 0, batch_size: int = 10, max_gap: int = 3) -> dict[str, Any]:
    """SmoothCache's calibration (authors: 10 samples) on the pre-gate branch outputs, stream 0."""
    from ..sampling import sample  # noqa: PLC0415
    if max_gap < 1:
        raise L2CError(f"max_gap must be >= 1, got {max_gap}")
    depth = len(cacheable_blocks(model))
    total = np.zeros((2, max_gap, nfe))
    count = np.zeros((2, max_gap, nfe))
    noise, labels = _inputs(model, num_samples, seed)
    for i in range(0, num_samples, batch_size):
        kept: dict[tuple[int, int], dict[int, torch.Tensor]] = {}

        def observe(step: int, stream: int, b: int, s: int, out: torch.Tensor) -> None:
            if stream:
                return
            hist = kept.setdefault((b, s), {})
            for g in range(1, max_gap + 1):
                if step - g in hist:
                    total[s, g - 1, step] += relative_l1(out, hist[step - g])
                    count[s, g - 1, step] += 1
            hist[step] = out
            hist.pop(step - max_gap, None)

        plan = Plan(np.full((nfe, depth, 2), COMPUTE, np.uint8), method="calibration")
        eng = MethodEngine(model, plan, observer=observe)
        sample(model, noise[i:i + batch_size], labels[i:i + batch_size], sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, engine=eng)
    with np.errstate(invalid="ignore"):
        errors = total / count
    return {"format": "l2c-suite/calibration", "method": "smoothcache", "max_gap": max_gap,
            "errors": [[[float(v) if np.isfinite(v) else None for v in row] for row in plane] for plane in errors]}  # None: undefined


def calibrate(model: nn.Module, method: str, out: str | os.PathLike, *, nfe: int, sampler: str = "ddim",
              cfg_scale: float = 1.5, num_samples: int | None = None, seed: int = 0, checkpoint: str = "") -> Path:
    """Run the calibration pass of ``method`` and write its JSON record to ``out``."""
    if method not in CALIBRATIONS:
        raise L2CError(f"no calibration for method {method!r}: calibrate one of {CALIBRATIONS}")
    num_samples = num_samples or (8 if method == "teacache" else 10)
    with torch.no_grad():
        if method == "teacache":
            rec = calibrate_teacache(model, nfe=nfe, sampler=sampler, cfg_scale=cfg_scale, num_samples=num_samples, seed=seed)
        else:
            rec = calibrate_smoothcache(model, nfe=nfe, sampler=sampler, cfg_scale=cfg_scale, num_samples=num_samples, seed=seed)
    rec.update({"checkpoint": str(checkpoint), "depth": len(cacheable_blocks(model)), "nfe": nfe, "sampler": sampler,
                "cfg_scale": cfg_scale, "num_samples": num_samples, "seed": seed,
                "environment": environment_record(str(next(model.parameters()).device), "fp32")})
    write_json(out, rec)
    return Path(out)

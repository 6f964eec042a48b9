"""SmoothCache (Liu et al., 2024; Roblox/SmoothCache): one calibration pass records, per component
type (attention / MLP), step and distance to the last computed step, the relative L1 error of reusing
(averaged over blocks and calibration samples; ``l2c calibrate --method smoothcache``); the static
mask reuses a component type at a step whenever that error, measured from the last step it was
computed, is below ``alpha`` (and the distance is within the calibrated ``max_gap``)."""
from __future__ import annotations

import numpy as np

from ...io import L2CError
from ..registry import Context, Family, check_number, register


def schedule_from_errors(errors: np.ndarray, alpha: float) -> np.ndarray:
    """errors [2, max_gap, NFE] (type, gap - 1, step; NaN where undefined) -> compute [NFE, 2]."""
    _, max_gap, nfe = errors.shape
    compute = np.ones((nfe, 2), bool)
    for s in range(2):
        last = 0
        for k in range(1, nfe):
            gap = k - last
            if gap <= max_gap and np.isfinite(errors[s, gap - 1, k]) and errors[s, gap - 1, k] < alpha:
                compute[k, s] = False
            else:
                last = k
    return compute


def build(ctx: Context, p: dict) -> tuple:
    from ..engine import COMPUTE, REUSE, Plan  # noqa: PLC0415  (torch: only when a plan is built)
    alpha = check_number("smoothcache", "alpha", p["alpha"])
    cal = ctx.calibration
    if not cal or "errors" not in cal:
        raise L2CError("method smoothcache needs its calibration pass: run "
                       "`l2c calibrate --method smoothcache --checkpoint CKPT --nfe N` and pass its file")
    try:
        errors = np.array([[[np.nan if v is None else v for v in row] for row in plane] for plane in cal["errors"]], np.float64)
    except (TypeError, ValueError) as e:
        raise L2CError(f"SmoothCache calibration: malformed errors ({e}); run l2c calibrate again") from e
    if errors.ndim != 3 or errors.shape[0] != 2 or errors.shape[2] != ctx.nfe:
        raise L2CError(f"SmoothCache calibration has errors of shape {errors.shape}; expected [2, gaps, {ctx.nfe}]: "
                       f"calibrate at NFE {ctx.nfe} with sampler {ctx.sampler}")
    if cal.get("sampler", ctx.sampler) != ctx.sampler or cal.get("depth", ctx.depth) != ctx.depth:
        raise L2CError(f"SmoothCache calibration is for sampler {cal.get('sampler')} / {cal.get('depth')} blocks; "
                       f"this run uses {ctx.sampler} / {ctx.depth}: calibrate again")
    compute = schedule_from_errors(errors, alpha)
    branch = np.where(compute[:, None, :], COMPUTE, REUSE).astype(np.uint8).repeat(ctx.depth, axis=1)
    return Plan(branch, order=0, method="smoothcache", params=p), None, None


register(Family(
    name="smoothcache",
    summary="static mask: reuse a component type where its calibrated reuse error is below alpha",
    defaults={"alpha": 0.18},
    build=build,
    tags={"alpha": "a"},
    calibration="smoothcache",
    doc={"alpha": "error threshold (the DiT-XL/2 DDIM-50 row of SmoothCache's Table 1: 0.18)"},
))

"""TeaCache (Liu et al., CVPR 2025; ali-vilab/TeaCache): at every call the relative L1 change of
block 0's timestep-modulated input (U-ViT, which has no adaLN: block 0's ``norm1`` of every token,
the time token included), rescaled by a polynomial fitted on uncached runs of this model
(``l2c calibrate --method teacache``), is accumulated; while the sum stays under ``threshold`` the
step adds the cached whole-trunk residual instead of running any block. First and last steps compute."""
from __future__ import annotations

import numpy as np

from ...io import L2CError
from ..registry import Context, Family, check_number, register


def build(ctx: Context, p: dict) -> tuple:
    from ..engine import COMPUTE, AccumulatedChange, Guards, Plan, ResidualUnit  # noqa: PLC0415  (torch: only when a plan is built)
    threshold = check_number("teacache", "threshold", p["threshold"])
    coef = p["coefficients"]
    if coef is None:
        if not ctx.calibration or "coefficients" not in ctx.calibration:
            raise L2CError("method teacache needs its rescaling polynomial fitted on this model: run "
                           "`l2c calibrate --method teacache --checkpoint CKPT` (or pass coefficients=[...])")
        cal = ctx.calibration
        if cal.get("depth") not in (None, ctx.depth):
            raise L2CError(f"TeaCache calibration is for a model with {cal.get('depth')} blocks, not {ctx.depth}: "
                           "calibrate this model")
        coef = cal["coefficients"]
    if not isinstance(coef, (list, tuple)) or not coef or not all(isinstance(c, (int, float)) for c in coef):
        raise L2CError(f"method teacache: coefficients must be a non-empty list of numbers, got {coef!r}")
    branch = np.full((ctx.nfe, ctx.depth, 2), COMPUTE, np.uint8)
    plan = Plan(branch, [ResidualUnit(0, ctx.depth - 1)], method="teacache", params={**p, "coefficients": list(coef)})
    return plan, AccumulatedChange(threshold, coef, unit=0, guards=Guards(warmup=1, last=True)), None


register(Family(
    name="teacache",
    summary="skip the whole trunk while the accumulated, rescaled input change stays under a threshold",
    defaults={"threshold": 0.4, "coefficients": None},
    build=build,
    tags={"threshold": "th"},
    calibration="teacache",
    doc={"threshold": "accumulated rescaled distance under which steps reuse (FLUX defaults 0.25/0.4/0.6/0.8)",
         "coefficients": "rescaling polynomial, highest power first (default: the calibration file's fit)"},
))

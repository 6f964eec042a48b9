"""TaylorSeer (Liu et al., ICCV 2025; Shenyi-Z/TaylorSeer, ``TaylorSeer-DiT``): the first
``first_enhance`` steps and then one step in ``interval`` compute every branch; the other steps
forecast each block's pre-gate attention and MLP outputs with a Taylor expansion of order ``order``
around the last computed step (finite-difference ladder), the current gate applied."""
from __future__ import annotations

import numpy as np

from ..registry import Context, Family, check_positive_int, register


def full_steps(nfe: int, interval: int, first_enhance: int = 2) -> list[int]:
    """TaylorSeer's ``cal_type``: the first ``first_enhance`` steps, then a counter that makes every
    ``interval``-th step after them full (e.g. N = 3, NFE 50: 0, 1, 4, 7, ..., 49: 18 steps)."""
    full, counter = [], 0
    for k in range(nfe):
        if k < first_enhance or counter == interval - 1:
            full.append(k)
            counter = 0
        else:
            counter += 1
    return full


def build(ctx: Context, p: dict) -> tuple:
    from ..engine import COMPUTE, FORECAST, Plan  # noqa: PLC0415  (torch: only when a plan is built)
    n = check_positive_int("taylorseer", "interval", p["interval"])
    order = check_positive_int("taylorseer", "order", p["order"], minimum=0)
    first = check_positive_int("taylorseer", "first_enhance", p["first_enhance"])
    variable = p["variable"] or ("step" if ctx.sampler == "ddim" else "time")
    if variable not in ("step", "time"):
        from ...io import L2CError
        raise L2CError(f"method taylorseer: variable must be step or time, got {variable!r}")
    branch = np.full((ctx.nfe, ctx.depth, 2), FORECAST, np.uint8)
    branch[full_steps(ctx.nfe, n, first)] = COMPUTE
    positions = None if variable == "step" else ctx.times()
    if p["form"] not in ("taylor", "newton"):
        from ...io import L2CError
        raise L2CError(f"method taylorseer: form must be taylor or newton, got {p['form']!r}")
    plan = Plan(branch, order=order, form=p["form"], method="taylorseer", params={**p, "variable": variable})
    return plan, None, positions


register(Family(
    name="taylorseer",
    summary="forecast every branch from the last full steps (Taylor series), full every N steps",
    defaults={"interval": 4, "order": 4, "first_enhance": 2, "variable": None, "form": "taylor"},
    build=build,
    tags={"interval": "n", "order": "o", "first_enhance": "f"},
    doc={"interval": "N: one full step every N steps after the first ones (authors' DiT default 4)",
         "order": "Taylor order (authors' DiT default 4; 0 = plain reuse)",
         "first_enhance": "leading steps always computed (authors: 2)",
         "form": "taylor (the authors' ladder: every order divided by the last spacing) or newton (divided differences, exact on polynomials)",
         "variable": "expansion variable: step (DDIM default, as the authors' DiT code) or time (DPM-Solver-2 default)"},
))

"""Delta-DiT-style block-range residual caching (Chen et al., arXiv 2406.01125; no official code
found): every ``interval``-th step computes everything; in between, the early steps (the first
``boundary`` share) reuse the residual of the rear ``blocks`` blocks and the late steps that of the
front ``blocks`` blocks (the paper's reading: early steps shape the outline, which the front blocks
carry; late steps the details). DiT only: a front range of U-ViT would cut its long skips."""
from __future__ import annotations

import numpy as np

from ...io import L2CError
from ..registry import Context, Family, check_number, check_positive_int, register


def build(ctx: Context, p: dict) -> tuple:
    from ..engine import COMPUTE, Plan, ResidualUnit  # noqa: PLC0415  (torch: only when a plan is built)
    if ctx.is_uvit:
        raise L2CError("method delta-dit applies to DiT only (a front block range of U-ViT would cut its long skips)")
    interval = check_positive_int("delta-dit", "interval", p["interval"])
    n = ctx.depth // 2 if p["blocks"] is None else check_positive_int("delta-dit", "blocks", p["blocks"])
    if 2 * n > ctx.depth:
        raise L2CError(f"method delta-dit: blocks = {n} front and rear ranges overlap in {ctx.depth} blocks (at most {ctx.depth // 2})")
    boundary = check_number("delta-dit", "boundary", p["boundary"])
    units = [ResidualUnit(0, n - 1), ResidualUnit(ctx.depth - n, ctx.depth - 1)]  # front, rear
    uc = np.ones((ctx.nfe, 2), bool)
    for k in range(ctx.nfe):
        if k % interval:
            uc[k, 1 if k < boundary * ctx.nfe else 0] = False
    branch = np.full((ctx.nfe, ctx.depth, 2), COMPUTE, np.uint8)
    return Plan(branch, units, uc, method="delta-dit", params={**p, "blocks": n}), None, None


register(Family(
    name="delta-dit", uvit=False,
    summary="reuse the rear blocks' residual in early steps and the front blocks' in late steps",
    defaults={"interval": 2, "blocks": None, "boundary": 0.5},
    build=build,
    tags={"interval": "n", "blocks": "b"},
    doc={"interval": "one full step every N steps", "blocks": "blocks in each cached range (default depth // 2)",
         "boundary": "share of steps (from the noisiest) that cache the rear range"},
))

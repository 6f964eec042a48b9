"""ToCa (Zou et al., ICLR 2025; Shenyi-Z/ToCa, ``DiT-ToCa``): full steps by its force-activation
cycle; on the other steps every attention output is reused and each MLP runs only on the top-k
tokens scored by the block's attention map of the last full step (column sums, L2-normalised), plus
``soft_weight`` x the steps since the token last ran / ``interval``, plus a ``bonus`` for the best
token of every 2x2 patch; the fresh tokens are scattered into the cached MLP output. DiT only: its
token score assumes a square grid of patch tokens (U-ViT adds label and time tokens)."""
from __future__ import annotations

import numpy as np

from ...io import L2CError
from ..registry import Context, Family, check_number, check_positive_int, register


def full_step(k: int, nfe: int, interval: int, linear_weight: float = 0.4, window: tuple[float, float] = (0.2, 0.4)) -> bool:
    """ToCa's ``cal_type`` with its ``force_scheduler``: i = NFE-1-k counts down; the first step is
    full, then i is full when i % n == 0, n = round(N / (1 + w - 2 w i / NFE)), n = 2 for i in
    [int(0.2 NFE), int(0.4 NFE))."""
    i = nfe - 1 - k
    if k == 0:
        return True
    n = float(np.round(interval / (1 + linear_weight - 2 * linear_weight * i / nfe)))
    if int(nfe * window[0]) <= i < int(nfe * window[1]):
        n = 2.0
    return i % max(n, 1.0) == 0


def fresh_ratio(k: int, b: int, nfe: int, depth: int, ratio: float, step_weight: float = 2.0,
                layer_weight: float = -0.2, mlp_factor: float = 1 + 0.6 * 2.5) -> float:
    """ToCa's DDIM-50 ratio schedule for the MLP (the attention's module factor is 0: reused)."""
    i = nfe - 1 - k
    step_factor = 1 + step_weight - 2 * step_weight * i / nfe
    layer_factor = 1 + layer_weight - 2 * layer_weight * b / max(depth - 1, 1)
    return float(np.clip(ratio * layer_factor * step_factor * mlp_factor, 0.0, 1.0))


def build(ctx: Context, p: dict) -> tuple:
    from ..engine import COMPUTE, REUSE, TOKENS, Plan  # noqa: PLC0415  (torch: only when a plan is built)
    if ctx.is_uvit:
        raise L2CError("method toca applies to DiT only (its token score needs a square grid of patch tokens)")
    n = check_positive_int("toca", "interval", p["interval"])
    ratio = check_number("toca", "ratio", p["ratio"])
    tokens = ctx.model.x_embedder.num_patches
    branch = np.full((ctx.nfe, ctx.depth, 2), COMPUTE, np.uint8)
    counts = np.zeros((ctx.nfe, ctx.depth), np.int64)
    for k in range(ctx.nfe):
        if full_step(k, ctx.nfe, n):
            continue
        branch[k, :, 0] = REUSE if ratio < 1.0 else COMPUTE
        branch[k, :, 1] = TOKENS
        for b in range(ctx.depth):
            counts[k, b] = int(fresh_ratio(k, b, ctx.nfe, ctx.depth, ratio) * tokens)
    if ratio >= 1.0:  # every token fresh in every branch: ToCa degenerates to uncached sampling
        counts[branch[..., 1] == TOKENS] = tokens
    score = {"soft_weight": check_number("toca", "soft_weight", p["soft_weight"]), "age_scale": float(n),
             "bonus": check_number("toca", "bonus", p["bonus"]), "grid": 2}
    return Plan(branch, order=0, tokens=counts, token_score=score, method="toca", params=p), None, None


register(Family(
    name="toca", uvit=False,
    summary="reuse attention, recompute the MLP on the top-scored tokens only, full steps by ToCa's cycle",
    defaults={"interval": 4, "ratio": 0.07, "soft_weight": 0.25, "bonus": 0.8},
    build=build,
    tags={"interval": "n", "ratio": "r"},
    doc={"interval": "N of the force-activation cycle (authors' DiT default 4)",
         "ratio": "base fresh-token ratio (authors' DiT DDIM-50 default 0.07; scaled per step and layer)",
         "soft_weight": "weight of the cache-age score (authors: 0.25)", "bonus": "2x2-patch bonus (authors: 0.8)"},
))

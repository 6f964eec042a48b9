"""First-block cache (diffusers ``FirstBlockCache``) and DBCache (vipshop/cache-dit): always run the
first ``Fn`` blocks; when the relative L1 change of their residual since the last computed step is
at most ``threshold``, add the cached residual of the middle blocks instead of running them; always
run the last ``Bn`` blocks. Guards: ``warmup`` leading steps and the last step compute; optional cap
``max_consecutive`` on consecutive reuses. ``fbcache`` is DBCache with Fn = 1, Bn = 0 (on U-ViT,
whose long skips must stay inside the cached range, Bn defaults to Fn)."""
from __future__ import annotations

import numpy as np

from ...io import L2CError
from ..registry import Context, Family, check_number, check_positive_int, register


def default_warmup(nfe: int) -> int:
    """cache-dit's 8 warm-up steps, stated at DiT's DDIM-50 and kept as the same share of steps."""
    return max(1, round(8 * nfe / 50))


def make_build(name: str):
    def build(ctx: Context, p: dict) -> tuple:
        from ..engine import COMPUTE, Guards, Plan, ResidualChange, ResidualUnit  # noqa: PLC0415  (torch: only when a plan is built)
        fn = check_positive_int(name, "Fn", p["Fn"])
        bn = p["Bn"] if p["Bn"] is not None else (fn if ctx.is_uvit else 0)
        bn = check_positive_int(name, "Bn", bn, minimum=0)
        tau = check_number(name, "threshold", p["threshold"])
        warmup = default_warmup(ctx.nfe) if p["warmup"] is None else check_positive_int(name, "warmup", p["warmup"])
        cap = p["max_consecutive"]
        if cap is not None:
            cap = check_positive_int(name, "max_consecutive", cap)
        if fn + bn >= ctx.depth:
            raise L2CError(f"method {name}: Fn + Bn = {fn + bn} leaves no middle block of {ctx.depth} to cache")
        branch = np.full((ctx.nfe, ctx.depth, 2), COMPUTE, np.uint8)
        plan = Plan(branch, [ResidualUnit(fn, ctx.depth - 1 - bn)], method=name,
                    params={**p, "Bn": bn, "warmup": warmup})
        return plan, ResidualChange(tau, unit=0, guards=Guards(warmup=warmup, last=True, max_consecutive=cap)), None
    return build


_DOC = {"Fn": "leading blocks always run; their residual is the signal", "Bn": "trailing blocks always run",
        "threshold": "relative L1 change of the Fn blocks' residual at or under which the middle blocks are reused (cache-dit 0.08)",
        "warmup": "leading steps always computed (default: cache-dit's 8 at NFE 50, same share of steps)",
        "max_consecutive": "cap on consecutive reused steps (default: none, as cache-dit)"}
_TAGS = {"Fn": "f", "Bn": "b", "threshold": "th"}
register(Family(name="dbcache", summary="run Fn first / Bn last blocks, reuse the middle residual while the Fn residual barely changes",
                defaults={"Fn": 1, "Bn": None, "threshold": 0.08, "warmup": None, "max_consecutive": None},
                build=make_build("dbcache"), doc=_DOC, tags=_TAGS))
register(Family(name="fbcache", summary="first-block cache: DBCache with Fn = 1, Bn = 0",
                defaults={"Fn": 1, "Bn": None, "threshold": 0.08, "warmup": None, "max_consecutive": None},
                build=make_build("fbcache"), doc=_DOC, tags=_TAGS))

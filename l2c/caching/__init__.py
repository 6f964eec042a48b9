"""The field's caching methods beside Learning-to-Cache, in one composable engine.

``build_engine(model, "taylorseer", nfe=50, params={"interval": 3, "order": 3})`` returns a
``MethodEngine`` that ``l2c.sampling.sample(model, noise, labels, nfe=..., engine=engine)`` runs;
``engine.calls`` then holds the MACs and decisions of every model call and
``engine.recorded_plan()`` the static plan that replays the run. Methods: see ``FAMILIES`` and
docs/methods.md. The static L2C engine stays in ``l2c.cache``. The engine's names load on first use,
so that ``l2c.caching.registry`` (the workflow plans its cells from it) imports no torch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..io import L2CError, read_json
from . import methods  # noqa: F401  (registers the families)
from .registry import FAMILIES, SAMPLERS, Context, Family, get_family, register, resolve_params

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from .engine import MethodEngine

_ENGINE_NAMES = ("ACTION_CHARS", "COMPUTE", "FORECAST", "REUSE", "TOKENS", "AccumulatedChange", "Guards", "MacsTable",
                 "MethodEngine", "Plan", "Policy", "ResidualChange", "ResidualUnit", "macs_table", "plan_macs",
                 "taylor_forecast")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engine  # noqa: PLC0415
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_engine(model: nn.Module, method: str, *, nfe: int, sampler: str = "ddim", params: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | str | None = None,
                 observer: Callable[[int, int, int, int, torch.Tensor], None] | None = None,
                 compile: bool = False) -> MethodEngine:
    """A ``MethodEngine`` running ``method`` (a registered family, or ``"plan"`` with
    ``params={"plan": PATH}`` to replay a recorded plan) on ``model`` for ``nfe`` evaluations
    (``compile``: its branches through ``l2c.cache.branch_function``'s compiled functions)."""
    from .engine import MethodEngine, Plan  # noqa: PLC0415
    if sampler not in SAMPLERS:
        raise L2CError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS}")
    if method == "plan":
        path = (params or {}).get("plan")
        if not path:
            raise L2CError("method plan needs params={'plan': PATH} (a plan recorded by a run)")
        plan = Plan.from_dict(read_json(path), str(path))
        if plan.nfe != nfe:
            raise L2CError(f"plan {path} has {plan.nfe} steps but sampling uses NFE {nfe}")
        return MethodEngine(model, plan, None, None, observer, compile)
    fam = get_family(method)
    if hasattr(model, "cache_blocks") and not fam.uvit:
        raise L2CError(f"method {method} does not apply to U-ViT (see docs/methods.md)")
    if isinstance(calibration, str):
        calibration = read_json(calibration)
    ctx = Context(model, nfe, sampler, calibration)
    plan, policy, positions = fam.build(ctx, resolve_params(fam, params))
    plan.positions = None if positions is None else [float(p) for p in positions]
    return MethodEngine(model, plan, policy, None, observer, compile)


__all__ = ["ACTION_CHARS", "AccumulatedChange", "COMPUTE", "Context", "FAMILIES", "FORECAST", "Family", "Guards",
           "MacsTable", "MethodEngine", "Plan", "Policy", "REUSE", "ResidualChange", "ResidualUnit", "TOKENS",
           "build_engine", "get_family", "macs_table", "plan_macs", "register", "resolve_params", "taylor_forecast"]

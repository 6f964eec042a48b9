"""Method families: each caching method is one module (``l2c.caching.methods.*``) that registers a
``Family`` (its name, parameters with their defaults, how it builds its plan and policy); the
engine, the Python API, the CLI and the workflow's cell planning (``l2c.cells``) know methods only
through this registry. Importing it (and ``l2c.caching.methods``) does not import torch: a family's
``build`` imports the engine when a plan is built."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..io import L2CError

if TYPE_CHECKING:
    import torch.nn as nn

    from .engine import Plan, Policy

SAMPLERS = ("ddim", "dpm2")


@dataclass
class Context:
    """What a family builds from: the model, the sampler and NFE, the forecast positions of the
    sampler's evaluations (step index and actual time), and a calibration record (or None)."""

    model: nn.Module
    nfe: int
    sampler: str
    calibration: dict[str, Any] | None = None

    @property
    def depth(self) -> int:
        from ..models import cacheable_blocks  # noqa: PLC0415
        return len(cacheable_blocks(self.model))

    @property
    def is_uvit(self) -> bool:
        return hasattr(self.model, "cache_blocks")

    def times(self) -> list[float]:
        """The sampler's time of every evaluation: the DDIM timestep the network sees, or
        DPM-Solver-2's continuous time t of each evaluation (start and midpoint of each step)."""
        if self.sampler == "ddim":
            from ..diffusion import Diffusion  # noqa: PLC0415
            tm = Diffusion.create(self.nfe).timestep_map
            return [float(tm[self.nfe - 1 - k]) for k in range(self.nfe)]
        from ..dpm_solver import dpm2_plan, dpm_defaults  # noqa: PLC0415
        d = dpm_defaults(self.model)
        plan = dpm2_plan(self.nfe, d["noise_schedule"], d["time_input"])
        return [v for st in plan.steps for v in (st.s, st.s1)]


@dataclass
class Family:
    name: str
    summary: str
    defaults: dict[str, Any]
    build: Callable[[Context, dict[str, Any]], tuple[Plan, Policy | None, list[float] | None]]
    uvit: bool = True  # applies to U-ViT
    calibration: str | None = None  # what ``l2c calibrate`` must produce first (None: nothing)
    doc: dict[str, str] = field(default_factory=dict)  # parameter -> one line
    tags: dict[str, str] = field(default_factory=dict)  # parameter -> its short tag in workflow cell names

    def cell_name(self, params: dict[str, Any]) -> str:
        """The workflow cell of this family with the given (non-default) parameters: the name, then
        ``<tag><value>`` of each given parameter in ``tags`` order (``taylorseer-n4o4``,
        ``teacache-th0.4``); parameters without a tag are spelled ``<key><value>``."""
        def val(v: Any) -> str:
            return f"{v:g}" if isinstance(v, float) else str(v).replace(" ", "")
        keys = [k for k in self.tags if k in params] + sorted(k for k in params if k not in self.tags)
        tail = "".join(f"{self.tags.get(k, k)}{val(params[k])}" for k in keys)
        return f"{self.name}-{tail}" if tail else self.name


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, FAMILIES, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise L2CError(f"unknown caching method {name!r}{hint}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def resolve_params(family: Family, params: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    unknown = sorted(set(params) - set(family.defaults))
    if unknown:
        raise L2CError(f"method {family.name}: unknown parameter(s) {unknown}; valid: {sorted(family.defaults)}")
    return {**family.defaults, **params}


def check_positive_int(family: str, key: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise L2CError(f"method {family}: {key} must be an integer >= {minimum}, got {v!r}")
    return v


def check_number(family: str, key: str, v: Any, minimum: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= minimum:
        raise L2CError(f"method {family}: {key} must be a number >= {minimum}, got {v!r}")
    return float(v)

"""The composable caching engine behind the field's methods (TaylorSeer, TeaCache, first-block /
DBCache, ToCa, SmoothCache, Delta-DiT) beside the static L2C engine of ``l2c.cache``.

Pieces, each usable alone or together:

* **branch actions** (per step, block and branch; the pre-gate unit of ``l2c.cache``):
  ``COMPUTE``; ``REUSE`` the last computed output; ``FORECAST`` it from the last computed outputs
  (Taylor / finite-difference ladder of a given order, the expansion variable being the step index or
  the sampler's actual time, ``positions``); ``TOKENS``: run the branch on the top-k tokens only and
  scatter them into the cached output (ToCa; the tokens are scored by the attention map of the block's
  last computed attention). The current step's gate and residual stream are always used.
* **residual units**: a contiguous block range ``[first, last]`` whose residual ``out - in`` is stored
  when the range runs and added to the range's input when it is skipped (Delta-DiT, DBCache's middle
  blocks; the whole trunk for TeaCache). Unlike the pre-gate unit, a stored residual carries the adaLN
  gates (and, on U-ViT, the skip merges) of the step that stored it.
* **run-time decisions**: a ``Policy`` decides once per model call, for the whole batch (both CFG
  halves of a DiT batch; on U-ViT, whose guidance makes two calls per evaluation, the conditional
  call decides and the unconditional call of the same step follows), whether a residual unit runs,
  from a signal of the current input, under guards (first / last step, warm-up, cap on consecutive
  reuse). Every decision is recorded: ``engine.recorded_plan()`` is the static ``Plan`` that replays
  the run exactly.
* **MACs** of what each call still computes, in the thop convention of ``l2c.macs`` (Linear / Conv
  only, per image): branches and blocks skipped are subtracted, token subsets counted pro rata, the
  signal's own layers added; recorded per call from the decisions actually taken (``engine.calls``).

Models stay plain ``nn.Module``s: the engine shadows each block's ``attn_branch`` / ``mlp_branch``
and ``forward`` by instance attributes while installed (``with engine.installed():``), exactly as
``l2c.cache.CacheEngine`` does, and ``l2c.sampling.sample(..., engine=engine)`` drives it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import branch_function
from ..io import L2CError
from ..macs import layer_macs
from ..models import BRANCHES, cacheable_blocks

COMPUTE, REUSE, FORECAST, TOKENS = 0, 1, 2, 3
ACTION_CHARS = "10ft"  # one character per sub-layer in recorded plans: compute, reuse, forecast, tokens
PLAN_FORMAT = "l2c-suite/method-plan"
FORECAST_FORMS = ("taylor", "newton")


# ------------------------------------------------------------------------------------------------
#   Static description of a run
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResidualUnit:
    """A contiguous block range ``first..last`` (inclusive, in ``cacheable_blocks`` order)."""

    first: int
    last: int

    def blocks(self) -> range:
        return range(self.first, self.last + 1)


@dataclass
class Plan:
    """What a run does at every step: ``branch[step, block, branch]`` action codes and, per residual
    unit, ``unit_compute[step, unit]`` (True = the range runs). With a ``Policy`` the unit decisions
    of the policy's unit are taken at run time instead (the array then holds what was recorded)."""

    branch: np.ndarray  # [NFE, blocks, 2] uint8
    units: list[ResidualUnit] = field(default_factory=list)
    unit_compute: np.ndarray | None = None  # [NFE, units] bool
    order: int = 1  # forecast order (terms beyond the value)
    form: str = "taylor"  # forecast form: "taylor" (TaylorSeer's ladder) or "newton" (divided differences)
    tokens: np.ndarray | None = None  # [NFE, blocks] tokens recomputed at TOKENS steps
    token_score: dict[str, float] = field(default_factory=dict)  # ToCa scoring (soft_weight, age_scale, bonus)
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    positions: list[float] | None = None  # forecast expansion variable per step (None: the step index)

    def __post_init__(self) -> None:
        self.branch = np.asarray(self.branch, dtype=np.uint8)
        if self.branch.ndim != 3 or self.branch.shape[2] != 2:
            raise L2CError(f"plan branch actions must have shape [NFE, blocks, 2], got {self.branch.shape}")
        if self.branch.max(initial=0) > TOKENS:
            raise L2CError(f"plan has unknown branch action codes (expected 0..{TOKENS})")
        if (self.branch[0] != COMPUTE).any():
            raise L2CError("plan: step 0 must compute every branch (nothing is cached yet)")
        if self.unit_compute is None:
            self.unit_compute = np.ones((self.nfe, len(self.units)), bool)
        self.unit_compute = np.asarray(self.unit_compute, dtype=bool).reshape(self.nfe, len(self.units))
        if len(self.units) and not self.unit_compute[0].all():
            raise L2CError("plan: step 0 must run every residual unit (nothing is cached yet)")
        for i, u in enumerate(self.units):
            if not 0 <= u.first <= u.last < self.depth:
                raise L2CError(f"residual unit {i} = blocks {u.first}..{u.last} is outside 0..{self.depth - 1}")
            for v in self.units[:i]:
                if u.first <= v.last and v.first <= u.last:
                    raise L2CError(f"residual units {v.first}..{v.last} and {u.first}..{u.last} overlap")
        if (self.branch == TOKENS).any():
            if self.tokens is None:
                raise L2CError("plan uses token subsets but gives no token counts")
            if (self.branch[..., 0] == TOKENS).any():
                raise L2CError("token subsets apply to the MLP branch only (attention mixes tokens)")
        if self.order < 0:
            raise L2CError(f"forecast order must be >= 0, got {self.order}")
        if self.form not in FORECAST_FORMS:
            raise L2CError(f"forecast form {self.form!r} unknown: expected one of {FORECAST_FORMS}")

    @property
    def nfe(self) -> int:
        return self.branch.shape[0]

    @property
    def depth(self) -> int:
        return self.branch.shape[1]

    def computed_steps(self) -> list[int]:
        """Steps that compute every branch and every unit."""
        return [k for k in range(self.nfe) if (self.branch[k] == COMPUTE).all() and self.unit_compute[k].all()]

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT, "version": 1, "method": self.method, "params": self.params,
            "nfe": self.nfe, "depth": self.depth, "order": self.order, "form": self.form,
            "branch": ["".join(ACTION_CHARS[a] for a in row) for row in self.branch.reshape(self.nfe, -1)],
            "units": [[u.first, u.last] for u in self.units],
            "unit_compute": ["".join("1" if c else "0" for c in row) for row in self.unit_compute],
            "tokens": None if self.tokens is None else self.tokens.tolist(),
            "token_score": self.token_score, "positions": self.positions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "plan") -> "Plan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise L2CError(f"{where}: not a method plan (missing \"format\": \"{PLAN_FORMAT}\")")
        try:
            rows = d["branch"]
            bad = sorted({ch for row in rows for ch in row} - set(ACTION_CHARS))
            if bad:
                raise L2CError(f"{where}: unknown branch actions {bad} (expected characters of {ACTION_CHARS!r})")
            branch = np.array([[ACTION_CHARS.index(ch) for ch in row] for row in rows], np.uint8)
            branch = branch.reshape(d["nfe"], d["depth"], 2)
            units = [ResidualUnit(int(a), int(b)) for a, b in d["units"]]
            uc = np.array([[ch == "1" for ch in row] for row in d["unit_compute"]], bool).reshape(d["nfe"], len(units))
            tokens = None if d.get("tokens") is None else np.asarray(d["tokens"], np.int64)
            return cls(branch, units, uc, order=int(d.get("order", 1)), form=d.get("form", "taylor"), tokens=tokens,
                       token_score=dict(d.get("token_score") or {}), method=d.get("method", ""), params=d.get("params", {}),
                       positions=d.get("positions"))
        except KeyError as e:
            raise L2CError(f"{where}: method plan lacks the key {e}") from e
        except ValueError as e:
            raise L2CError(f"{where}: malformed method plan ({e})") from e


# ------------------------------------------------------------------------------------------------
#   Run-time decisions
# ------------------------------------------------------------------------------------------------

def relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    """``mean|cur - prev| / mean|prev|`` over the whole tensor (the whole batch: one decision)."""
    return float((cur - prev).abs().mean() / prev.abs().mean())


@dataclass
class Guards:
    """Steps a run-time policy never reuses: the first ``warmup`` steps (at least step 0), the last
    step when ``last``, and any step after ``max_consecutive`` consecutive reuses (None: no cap)."""

    warmup: int = 1
    last: bool = True
    max_consecutive: int | None = None

    def forced(self, step: int, nfe: int, consecutive: int) -> bool:
        return (step < max(self.warmup, 1) or (self.last and step == nfe - 1)
                or (self.max_consecutive is not None and consecutive >= self.max_consecutive))


class Policy:
    """Decides at run time whether residual unit ``unit`` runs, once per step, from a signal:
    ``"modulated-input"`` (block 0's ``cache_signal``: the timestep-modulated input on DiT, the first
    LayerNorm of every token on U-ViT) or ``"head-residual"`` (the residual of the blocks before the
    unit: the first Fn blocks of DBCache). Subclasses implement ``_decide(distance)``."""

    signal = "modulated-input"

    def __init__(self, unit: int = 0, guards: Guards | None = None):
        self.unit = unit
        self.guards = guards or Guards()
        self.reset()

    def reset(self) -> None:
        self.prev: torch.Tensor | None = None
        self.consecutive = 0
        self.distances: list[float | None] = []

    def decide(self, step: int, nfe: int, signal: torch.Tensor) -> bool:
        """True = the unit runs at this step."""
        dist = None if self.prev is None else relative_l1(signal, self.prev)
        self.distances.append(dist)
        forced = dist is None or self.guards.forced(step, nfe, self.consecutive)
        compute = self._decide(dist, forced)
        self._update(signal, compute)
        self.consecutive = 0 if compute else self.consecutive + 1
        return compute

    def _decide(self, dist: float | None, forced: bool) -> bool:
        raise NotImplementedError

    def _update(self, signal: torch.Tensor, compute: bool) -> None:
        self.prev = signal


class AccumulatedChange(Policy):
    """TeaCache: the relative L1 change of the signal, rescaled by a polynomial fitted on uncached
    runs (``numpy.polyval`` order, highest power first; the rescaled value is clamped at 0: a distance,
    where a fit extrapolated below its data would otherwise go negative), accumulated over steps; reuse
    while the sum stays under ``threshold``, compute (and reset the sum) otherwise."""

    signal = "modulated-input"

    def __init__(self, threshold: float, coefficients: Sequence[float] = (1.0, 0.0), unit: int = 0, guards: Guards | None = None):
        self.threshold = float(threshold)
        self.coefficients = [float(c) for c in coefficients]
        super().__init__(unit, guards)

    def reset(self) -> None:
        super().reset()
        self.accumulated = 0.0

    def rescale(self, dist: float) -> float:
        return max(float(np.polyval(self.coefficients, dist)), 0.0)

    def _decide(self, dist: float | None, forced: bool) -> bool:
        if forced:
            self.accumulated = 0.0
            return True
        self.accumulated += self.rescale(dist)
        if self.accumulated < self.threshold:
            return False
        self.accumulated = 0.0
        return True


class ResidualChange(Policy):
    """First-block cache / DBCache: compute iff the relative L1 change of the head blocks' residual
    since the last computed step exceeds ``threshold`` (the reference is updated on computed steps
    only, as diffusers' and cache-dit's hooks do)."""

    signal = "head-residual"

    def __init__(self, threshold: float, unit: int = 0, guards: Guards | None = None):
        self.threshold = float(threshold)
        super().__init__(unit, guards)

    def _decide(self, dist: float | None, forced: bool) -> bool:
        return forced or dist > self.threshold

    def _update(self, signal: torch.Tensor, compute: bool) -> None:
        if compute:
            self.prev = signal


# ------------------------------------------------------------------------------------------------
#   MACs table
# ------------------------------------------------------------------------------------------------

@dataclass
class MacsTable:
    """Per image, thop convention: one full evaluation, each block, each branch, block 0's signal."""

    per_eval: int
    block: np.ndarray  # [blocks]
    branch: np.ndarray  # [blocks, 2]
    signal: int
    tokens: int  # tokens a branch runs on (for token subsets)


def macs_table(model: nn.Module) -> MacsTable:
    """Count one plain forward of a single image (zeros) with hooks on every Linear / Conv."""
    blocks = cacheable_blocks(model)
    owner: dict[nn.Module, tuple[int, int]] = {}  # module -> (block, part): 0 attn, 1 mlp, 2 rest
    for b, block in enumerate(blocks):
        for m in block.modules():
            owner[m] = (b, 2)
        for s, name in enumerate(BRANCHES):
            for sub in block.branch_modules[name]:
                for m in block.get_submodule(sub).modules():
                    owner[m] = (b, s)
    signal_mods = {m for sub in getattr(blocks[0], "signal_modules", ()) for m in blocks[0].get_submodule(sub).modules()}
    total, sig, tokens = [0], [0], [0]
    block_m = np.zeros(len(blocks), np.int64)
    branch_m = np.zeros((len(blocks), 2), np.int64)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        m = layer_macs(module, out)
        total[0] += m
        if module in owner:
            b, part = owner[module]
            block_m[b] += m
            if part < 2:
                branch_m[b, part] += m
                tokens[0] = out.shape[1]

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    p = next(model.parameters())
    size, ch = model.input_size, model.in_channels
    try:
        with torch.no_grad():
            model(torch.zeros(1, ch, size, size, device=p.device, dtype=p.dtype), torch.zeros(1, device=p.device),
                  torch.zeros(1, dtype=torch.long, device=p.device))
    finally:
        for h in handles:
            h.remove()
    for m in signal_mods:
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            sig[0] += m.in_features * m.out_features if isinstance(m, nn.Linear) else 0
    return MacsTable(per_eval=total[0], block=block_m, branch=branch_m, signal=sig[0], tokens=tokens[0])


# ------------------------------------------------------------------------------------------------
#   The engine
# ------------------------------------------------------------------------------------------------

class MethodEngine:
    """Applies a ``Plan`` (and optionally a run-time ``Policy``) to a model while installed.

    ``positions[k]``: the expansion variable of forecasts at step k (default: the step index, as
    TaylorSeer's DiT code; the sampler's time for DPM-Solver-2, whose evaluations are unevenly spaced).
    ``observer(step, stream, block, branch, output)``: called with every computed branch output
    (calibration passes). After a run, ``calls`` holds one record per model call (step, stream, MACs
    per image, the unit decisions) and ``recorded_plan()`` the plan that replays it.
    """

    schedule = None  # l2c.sampling.sample() checks engine.schedule against its schedule argument (None)

    def __init__(self, model: nn.Module, plan: Plan, policy: Policy | None = None,
                 positions: Sequence[float] | None = None,
                 observer: Callable[[int, int, int, int, torch.Tensor], None] | None = None, compile: bool = False):
        self.model = model
        self.blocks = cacheable_blocks(model)
        if plan.depth != len(self.blocks):
            raise L2CError(f"plan ({plan.method or 'manual'}) is for {plan.depth} blocks but {type(model).__name__} "
                           f"has {len(self.blocks)}: build the plan for this model")
        self.plan = plan
        self.policy = policy
        if policy is not None and not 0 <= policy.unit < len(plan.units):
            raise L2CError(f"policy decides residual unit {policy.unit} but the plan has {len(plan.units)} unit(s)")
        if policy is not None and policy.signal == "head-residual" and plan.units[policy.unit].first == 0:
            raise L2CError("a head-residual policy needs at least one block before its unit (Fn >= 1)")
        self._check_uvit_units()
        positions = plan.positions if positions is None else positions
        self.positions = list(range(plan.nfe)) if positions is None else [float(p) for p in positions]
        if len(self.positions) != plan.nfe:
            raise L2CError(f"{len(self.positions)} forecast positions for {plan.nfe} steps")
        self.observer = observer
        self._actions = plan.branch.tolist()
        self._keeps = (plan.branch != COMPUTE).any(axis=0).tolist()  # [blocks][2]: keep history
        self._scored = (plan.branch[..., 1] == TOKENS).any(axis=0).tolist()  # blocks whose MLP takes token subsets
        self._unit_of = {b: i for i, u in enumerate(plan.units) for b in u.blocks()}
        self._signal_at_block0 = policy is not None and policy.signal == "modulated-input"
        self._branch_overrides = {(b, name): self._branch(b, s, branch_function(blk, name, compile))
                                  for b, blk in enumerate(self.blocks) for s, name in enumerate(BRANCHES)}
        wrap = set(self._unit_of) | ({0} if plan.units else set())
        self._block_overrides = {b: self._block(b, type(self.blocks[b]).forward.__get__(self.blocks[b])) for b in sorted(wrap)}
        self._macs: MacsTable | None = None
        self.reset()
        if hasattr(model, "input_size") and hasattr(model, "in_channels"):  # an image model: count its MACs
            self._macs = macs_table(model)

    def _check_uvit_units(self) -> None:
        n = len(self.blocks)
        if not hasattr(self.model, "cache_blocks") or n < 3:
            return
        for u in self.plan.units:  # U-ViT: in-block i feeds out-block n-1-i through a long skip
            if u.first + u.last != n - 1 and u.first <= n // 2:
                raise L2CError(f"residual unit blocks {u.first}..{u.last} of U-ViT must be symmetric about the mid-block "
                               f"(first + last = {n - 1}; e.g. Fn = Bn for DBCache) or lie among the out-blocks "
                               f"(first > {n // 2}), so that no long skip leaves it")

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        self.mode = "off"
        self.step = 0
        self.stream = 0
        self.history: dict[tuple[int, int, int], tuple[list[float], list[torch.Tensor]]] = {}  # (stream,b,s) -> (positions newest first, ladder)
        self.residuals: dict[tuple[int, int], torch.Tensor] = {}  # (stream, unit) -> residual
        self.scores: dict[tuple[int, int], torch.Tensor] = {}  # (stream, block) -> attention score [B, T]
        self.ages: dict[tuple[int, int], torch.Tensor] = {}  # (stream, block) -> steps since each token's MLP ran
        self.decisions: dict[int, dict[int, bool]] = {}  # step -> unit -> runs
        self.calls: list[dict[str, Any]] = []
        self._call: dict[str, Any] = {}
        self.branch_calls = np.zeros((len(self.blocks), 2), np.int64)
        if self.policy is not None:
            self.policy.reset()

    @contextlib.contextmanager
    def installed(self) -> Iterator["MethodEngine"]:
        """Install the overrides for the duration of the block; state is dropped on exit."""
        hooks = []
        for b, block in enumerate(self.blocks):
            for name in BRANCHES:
                if f"{name}_branch" in block.__dict__:
                    raise L2CError("a cache engine is already installed on this model")
        self.reset()
        try:
            for (b, name), fn in self._branch_overrides.items():
                setattr(self.blocks[b], f"{name}_branch", fn)
            for b, fn in self._block_overrides.items():
                self.blocks[b].forward = fn
            for b, scored in enumerate(self._scored):
                if scored:
                    hooks.append(self.blocks[b].attn.qkv.register_forward_hook(self._score_hook(b)))
            yield self
        finally:
            for h in hooks:
                h.remove()
            for block in self.blocks:
                for name in (*(f"{n}_branch" for n in BRANCHES), "forward"):
                    block.__dict__.pop(name, None)
            self.history.clear()
            self.residuals.clear()
            self.scores.clear()
            self.ages.clear()
            self.mode = "off"

    def __call__(self, model_call: Any, *args: Any, step: int, stream: int = 0, mode: str = "schedule", **_: Any) -> torch.Tensor:
        """Run ``model_call(*args)`` at sampling step ``step`` (passed explicitly)."""
        if not 0 <= step < self.plan.nfe:
            raise L2CError(f"step {step} outside the plan's {self.plan.nfe} steps: build the method for this NFE")
        self.mode, self.step, self.stream = "run", step, stream
        self._call = {"step": step, "stream": stream, "skipped_blocks": set(), "tokens": {}, "signal": False, "units": {}}
        try:
            out = model_call(*args)
        finally:
            self.mode = "off"
        self.calls.append(self._record_call())
        return out

    # -- branch actions -------------------------------------------------------------------------
    def _branch(self, b: int, s: int, fn: Any) -> Any:
        def run(x: torch.Tensor, *args: Any) -> torch.Tensor:
            if self.mode == "off":
                return fn(x, *args)
            k, key = self.step, (self.stream, b, s)
            action = self._actions[k][b][s]
            if action == COMPUTE or key not in self.history:
                if action != COMPUTE:
                    raise L2CError(f"step {k} reuses block {b} {BRANCHES[s]} but nothing of it is cached (stream {self.stream})")
                out = fn(x, *args)
                self.branch_calls[b, s] += 1
                if self._keeps[b][s]:
                    self._store(key, out)
                if s == 1 and self._scored[b]:
                    self.ages[(self.stream, b)] = torch.zeros(out.shape[:2], device=out.device)
                if self.observer is not None:
                    self.observer(k, self.stream, b, s, out)
                return out
            pos, ladder = self.history[key]
            if action == REUSE:
                return ladder[0]
            if action == FORECAST:
                if self.plan.form == "newton":
                    return newton_forecast(ladder, pos, self.positions[k])
                return taylor_forecast(ladder, self.positions[k] - pos[0])
            return self._token_subset(b, key, x, args, fn)
        return run

    def _store(self, key: tuple[int, int, int], out: torch.Tensor) -> None:
        """New difference ladder from ``out`` and the previous one, up to the plan's order.
        ``taylor`` (TaylorSeer): F0 = out, F(i+1) = (F(i) - F_prev(i)) / (t - t_prev), every order
        divided by the last spacing; ``newton``: divided differences, F(i+1) = (F(i) - F_prev(i)) /
        (t - t_(i+1)), t_j the j-th previous computed position (exact for polynomials of degree <= order)."""
        pos = self.positions[self.step]
        ladder = [out]
        prev = self.history.get(key)
        positions = [pos]
        if prev is not None and self.plan.order > 0:
            p_pos, p_ladder = prev
            for i in range(min(self.plan.order, len(p_ladder))):
                delta = pos - (p_pos[0] if self.plan.form == "taylor" else p_pos[i])
                ladder.append((ladder[i] - p_ladder[i]) / delta)
            positions += p_pos[:self.plan.order]
        self.history[key] = (positions, ladder)

    def _token_subset(self, b: int, key: tuple[int, int, int], x: torch.Tensor, args: tuple, fn: Any) -> torch.Tensor:
        """ToCa: run the branch on the top-k scored tokens, scatter into the cached output."""
        cached = self.history[key][1][0]
        k = int(self.plan.tokens[self.step][b])
        sk = (self.stream, b)
        age = self.ages[sk]
        if k <= 0:
            self.ages[sk] = age + 1
            return cached
        k = min(k, cached.shape[1])
        if k == cached.shape[1]:  # every token fresh: the plain branch
            out = fn(x, *args)
            self.history[key] = (self.history[key][0], [out])
            self.ages[sk] = torch.zeros_like(age)
            self._call["tokens"][b] = k
            return out
        score = self.scores.get(sk)
        if score is None:
            raise L2CError(f"block {b}: token subsets need its attention computed at an earlier step")
        p = self.plan.token_score
        total = score + p.get("soft_weight", 0.0) * age / p.get("age_scale", 1.0)
        total = local_bonus(total, p.get("bonus", 0.0), int(p.get("grid", 2)))
        idx = total.argsort(dim=-1, descending=True)[:, :k]  # (B, k)
        fresh = fn(torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])), *args)
        out = cached.scatter(1, idx.unsqueeze(-1).expand(-1, -1, cached.shape[-1]), fresh)
        self.history[key] = (self.history[key][0], [out])
        self.ages[sk] = (age + 1).scatter(1, idx, 0.0)
        self._call["tokens"][b] = k
        return out

    def _score_hook(self, b: int) -> Any:
        def hook(module: nn.Module, args: tuple, qkv: torch.Tensor) -> None:
            if self.mode == "off" or self._actions[self.step][b][0] != COMPUTE:
                return
            attn = self.blocks[b].attn
            B, T, C3 = qkv.shape
            h = attn.num_heads
            q, k, _ = qkv.reshape(B, T, 3, h, C3 // 3 // h).permute(2, 0, 3, 1, 4).unbind(0)
            amap = torch.softmax((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1), dim=-1).mean(dim=1)  # (B, T, T)
            self.scores[(self.stream, b)] = F.normalize(amap.sum(dim=1), dim=1, p=2)  # column sums (B, T)
        return hook

    # -- residual units and run-time decisions --------------------------------------------------
    def _block(self, b: int, forward: Any) -> Any:
        def run(x: torch.Tensor, *args: Any) -> torch.Tensor:
            if self.mode == "off":
                return forward(x, *args)
            call = self._call
            if b == 0:
                call["trunk_in"] = x
                if self._signal_at_block0 and self.step not in self.decisions:
                    self._decide(self.blocks[0].cache_signal(x, *args))
                    call["signal"] = True
            u = self._unit_of.get(b)
            if u is None:
                return forward(x, *args)
            unit = self.plan.units[u]
            if b == unit.first:
                if self.policy is not None and self.policy.unit == u and not self._signal_at_block0:
                    self._decide(x - call["trunk_in"])
                call["unit_in"] = x
                call["units"][u] = self._unit_runs(u)
            if not call["units"][u]:
                call["skipped_blocks"].add(b)
                if b < unit.last:
                    return x
                key = (self.stream, u)
                if key not in self.residuals:
                    raise L2CError(f"step {self.step} skips blocks {unit.first}..{unit.last} but no residual of them is cached")
                return call["unit_in"] + self.residuals[key]
            out = forward(x, *args)
            if b == unit.last:
                self.residuals[(self.stream, u)] = out - call["unit_in"]
            return out
        return run

    def _decide(self, signal: torch.Tensor) -> None:
        """Once per step: the first call of a step (stream 0 / the whole CFG batch) decides."""
        k = self.step
        if k in self.decisions:
            return
        runs = self.policy.decide(k, self.plan.nfe, signal)
        self.decisions[k] = {self.policy.unit: runs}

    def _unit_runs(self, u: int) -> bool:
        k = self.step
        if self.policy is not None and self.policy.unit == u:
            return self.decisions[k][u]
        return bool(self.plan.unit_compute[k][u])

    # -- accounting -----------------------------------------------------------------------------
    def macs_table(self) -> MacsTable:
        if self._macs is None:
            raise L2CError(f"{type(self.model).__name__} has no input_size / in_channels: its MACs are not counted")
        return self._macs

    def _record_call(self) -> dict[str, Any]:
        c, k, mt = self._call, self.step, self._macs
        rec = {"step": k, "stream": c["stream"], "macs": None,
               "units": {int(u): bool(r) for u, r in c["units"].items()},
               "tokens": {int(b): int(n) for b, n in c["tokens"].items()}}
        if mt is None:
            return rec
        macs = mt.per_eval + (mt.signal if c["signal"] else 0)
        for b in range(len(self.blocks)):
            if b in c["skipped_blocks"]:
                macs -= int(mt.block[b])
                continue
            for s in range(2):
                a = self._actions[k][b][s]
                if a == REUSE or a == FORECAST:
                    macs -= int(mt.branch[b, s])
                elif a == TOKENS:
                    macs -= int(mt.branch[b, s]) - int(mt.branch[b, s]) * c["tokens"].get(b, 0) // max(mt.tokens, 1)
        rec["macs"] = int(macs)
        return rec

    def macs_per_step(self) -> list[int]:
        """MACs per image of each step's first call (the CFG duplicate / second stream not counted)."""
        out: dict[int, int] = {}
        for rec in self.calls:
            out.setdefault(rec["step"], rec["macs"])
        return [out[k] for k in sorted(out)]

    def recorded_plan(self) -> Plan:
        """The static plan that replays the last run: the policy's decisions become fixed."""
        uc = self.plan.unit_compute.copy()
        for k, d in self.decisions.items():
            for u, runs in d.items():
                uc[k, u] = runs
        return Plan(self.plan.branch.copy(), list(self.plan.units), uc, order=self.plan.order, form=self.plan.form,
                    tokens=None if self.plan.tokens is None else self.plan.tokens.copy(),
                    token_score=dict(self.plan.token_score), method=self.plan.method + ("+recorded" if self.policy else ""),
                    params=dict(self.plan.params), positions=None if self.positions == list(range(self.plan.nfe)) else list(self.positions))


def plan_macs(mt: MacsTable, plan: Plan) -> list[int]:
    """MACs per image of every step of a static plan (no run-time policy): what ``MethodEngine``
    records when it runs the plan (tokens as planned; a policy's signal not included)."""
    steps = []
    for k in range(plan.nfe):
        macs = mt.per_eval
        skipped = {b for u, unit in enumerate(plan.units) if not plan.unit_compute[k, u] for b in unit.blocks()}
        for b in range(plan.depth):
            if b in skipped:
                macs -= int(mt.block[b])
                continue
            for s in range(2):
                a = int(plan.branch[k, b, s])
                if a in (REUSE, FORECAST):
                    macs -= int(mt.branch[b, s])
                elif a == TOKENS:
                    n = min(int(plan.tokens[k, b]), mt.tokens)
                    macs -= int(mt.branch[b, s]) - int(mt.branch[b, s]) * n // max(mt.tokens, 1)
        steps.append(int(macs))
    return steps


def taylor_forecast(ladder: list[torch.Tensor], x: float) -> torch.Tensor:
    """``sum_i F(i) x^i / i!`` (TaylorSeer's formula; order 0 returns F(0) itself)."""
    if len(ladder) == 1:
        return ladder[0]
    out = 0
    for i, f in enumerate(ladder):
        out = out + (1 / math.factorial(i)) * f * (x ** i)
    return out


def newton_forecast(ladder: list[torch.Tensor], positions: list[float], t: float) -> torch.Tensor:
    """Newton's interpolation ``sum_i D(i) prod_(j<i) (t - t_j)`` through the last computed positions
    (newest first): exact for features that are polynomials of degree <= order in the variable."""
    out, w = ladder[0], 1.0
    for i in range(1, len(ladder)):
        w = w * (t - positions[i - 1])
        out = out + w * ladder[i]
    return out


def local_bonus(score: torch.Tensor, bonus: float, grid: int = 2) -> torch.Tensor:
    """ToCa's spatial spread: in every ``grid x grid`` patch of tokens the best-scored token gets
    ``bonus x`` its score added (tokens row-major on a square grid)."""
    if bonus == 0:
        return score
    B, T = score.shape
    side = int(round(T ** 0.5))
    if side * side != T or side % grid:
        raise L2CError(f"token bonus needs a square token grid divisible by {grid}; got {T} tokens")
    s = score.view(B, side // grid, grid, side // grid, grid).permute(0, 1, 3, 2, 4).reshape(B, -1, grid * grid)
    best, arg = s.max(dim=-1, keepdim=True)
    s = s + torch.zeros_like(s).scatter(-1, arg, 1.0) * best * bonus
    return s.view(B, side // grid, side // grid, grid, grid).permute(0, 1, 3, 2, 4).reshape(B, T)


__all__ = ["ACTION_CHARS", "AccumulatedChange", "COMPUTE", "FORECAST", "Guards", "MacsTable", "MethodEngine", "Plan",
           "Policy", "REUSE", "ResidualChange", "ResidualUnit", "TOKENS", "local_bonus", "macs_table", "relative_l1",
           "newton_forecast", "plan_macs", "taylor_forecast"]

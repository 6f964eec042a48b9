"""The layer-cache engine: a static schedule over (step, block, branch) and the engine that applies
it to a model's blocks by composition.

A *sub-layer* is one residual branch of a block (attention or MLP); sub-layer ``j = 2*b + s`` is
block ``b``'s attention (``s = 0``) or MLP (``s = 1``), the official routers' index convention.
Steps count model evaluations in sampling order (``k = 0`` is the noisiest).

What is cached is the branch output before the adaLN gate and the residual add (l2c-method.md):
on a step that reuses a sub-layer, its norm/modulate/branch are skipped and the most recently
computed output of that sub-layer is used; the gate and residual stream are the current ones.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from .io import L2CError, atomic_path, load_torch, read_json
from .models import BRANCHES, cacheable_blocks

SCHEDULE_FORMAT = "l2c-suite/cache-schedule"
POLICIES = ("cache", "drop")


def default_cache_steps(nfe: int, sampler: str = "ddim") -> list[int]:
    """Steps allowed to reuse. DDIM (official): every other step, starting with a full step, i.e.
    odd k. DPM-Solver-2 with shifted cache steps (appendix B.1): the first evaluation of every outer
    step but the first (0-based evaluations 2, 4, ..., NFE-2)."""
    if sampler == "ddim":
        return list(range(1, nfe, 2))
    if sampler in ("dpm2", "dpm-solver-2"):
        return list(range(2, nfe - 1, 2))
    if sampler in ("dpm2-unshifted",):
        return list(range(1, nfe, 2))
    raise L2CError(f"unknown sampler {sampler!r}: expected ddim or dpm2")


@dataclass
class CacheSchedule:
    """Static compute mask ``compute[step, block, branch]`` (True = compute, False = reuse) plus
    the structural cache steps (the steps allowed to reuse; remove ratios are counted over them)."""

    compute: np.ndarray
    cache_steps: list[int]
    model: str = ""
    sampler: str = "ddim"
    theta: float | None = None
    source: str = "manual"
    policy: str = "cache"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.compute = np.asarray(self.compute, dtype=bool)
        if self.compute.ndim != 3 or self.compute.shape[2] != 2:
            raise L2CError(f"schedule compute mask must have shape [NFE, blocks, 2], got {self.compute.shape}")
        self.cache_steps = sorted(int(k) for k in self.cache_steps)
        if self.policy not in POLICIES:
            raise L2CError(f"schedule policy {self.policy!r} unknown: expected one of {POLICIES}")
        if not self.compute[0].all() and self.policy == "cache":
            raise L2CError("schedule reuses sub-layers at step 0, where nothing is cached yet: step 0 must compute everything")
        bad = [k for k in range(self.nfe) if not self.compute[k].all() and k not in self.cache_steps]
        if bad:
            raise L2CError(f"schedule reuses sub-layers at steps {bad} that are not cache steps {self.cache_steps}")
        if any(k < 0 or k >= self.nfe for k in self.cache_steps):
            raise L2CError(f"cache steps {self.cache_steps} out of range for NFE {self.nfe}")

    # -- shape ----------------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        return self.compute.shape[0]

    @property
    def depth(self) -> int:
        return self.compute.shape[1]

    @property
    def full_steps(self) -> list[int]:
        return [k for k in range(self.nfe) if self.compute[k].all()]

    @property
    def num_reused(self) -> int:
        return int((~self.compute).sum())

    def flat(self) -> np.ndarray:
        """[NFE, 2*blocks] mask in the official sub-layer order (2b = attention, 2b+1 = MLP)."""
        return self.compute.reshape(self.nfe, -1)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def full(cls, nfe: int, depth: int, sampler: str = "ddim", **kw: Any) -> "CacheSchedule":
        """Computes everything (equivalent to no schedule)."""
        return cls(np.ones((nfe, depth, 2), bool), default_cache_steps(nfe, sampler), sampler=sampler, source=kw.pop("source", "full"), **kw)

    @classmethod
    def from_mask(cls, flat_compute: np.ndarray, cache_steps: Sequence[int], **kw: Any) -> "CacheSchedule":
        """From a [NFE, 2*blocks] mask in the official sub-layer order."""
        flat_compute = np.asarray(flat_compute, bool)
        return cls(flat_compute.reshape(flat_compute.shape[0], -1, 2), list(cache_steps), **kw)

    @classmethod
    def from_router(cls, logits: torch.Tensor | np.ndarray, theta: float, cache_steps: Sequence[int], **kw: Any) -> "CacheSchedule":
        """Threshold router logits [NFE, 2*blocks] (sampling order): at a cache step, sub-layer j is
        computed iff sigmoid(beta) > theta (the official inference rule); other steps compute all."""
        beta = torch.as_tensor(logits, dtype=torch.float64).cpu()
        compute = torch.ones(beta.shape, dtype=torch.bool)
        for k in cache_steps:
            compute[k] = torch.sigmoid(beta[k]) > theta
        return cls.from_mask(compute.numpy(), cache_steps, theta=float(theta), **kw)

    @classmethod
    def from_official_router(cls, path: str | os.PathLike, theta: float, sampler: str | None = None) -> "CacheSchedule":
        """Read the authors' released router files: DiT ``DDIM{20,50}_router.pt`` ({'routers':
        {'<i>.prob': [56]}, ...}, index i = NFE-1-k, cache steps = even i) and U-ViT
        ``dpm{20,50}_router.pth`` ({'<i>.prob': [58]}, index i = outer step, evaluation 2i reuses)."""
        obj = load_torch(path, "router file")
        if isinstance(obj, dict) and "routers" in obj:
            probs, layout = obj["routers"], "ddim"
        elif isinstance(obj, dict) and obj and all(str(k).endswith(".prob") for k in obj):
            probs, layout = obj, "dpm2"
        else:
            raise L2CError(f"router file {path}: not an official router (expected {{'routers': {{'<i>.prob': ...}}}} "
                           "for DiT or {'<i>.prob': ...} for U-ViT)")
        try:
            idx = sorted(int(str(k).split(".")[0]) for k in probs)
            beta = torch.stack([torch.as_tensor(probs[f"{i}.prob"]).float().reshape(-1) for i in idx])
        except (ValueError, KeyError, RuntimeError) as e:
            raise L2CError(f"router file {path}: malformed '<i>.prob' entries ({e})") from e
        if idx != list(range(len(idx))):
            raise L2CError(f"router file {path}: indices {idx} are not 0..N-1")
        if beta.shape[1] % 2:
            raise L2CError(f"router file {path}: {beta.shape[1]} sub-layers per step is odd (expected 2 per block)")
        nfe = len(idx)
        sampler = sampler or layout
        if layout == "ddim":
            beta = beta.flip(0)  # official index i = NFE-1-k -> sampling order k
            cache_steps = [k for k in range(1, nfe) if (nfe - 1 - k) % 2 == 0]
        else:
            cache_steps = default_cache_steps(nfe, "dpm2")
            by_eval = torch.full_like(beta, 10.0)
            for k in cache_steps:
                by_eval[k] = beta[k // 2]  # evaluation 2i reuses with router index i
            beta = by_eval
        return cls.from_router(beta, theta, cache_steps, sampler=sampler, source=f"official:{Path(path).name}",
                               meta={"router_layout": layout})

    # -- statistics -----------------------------------------------------------------------------
    def remove_ratio(self) -> dict[str, float]:
        """Share of sub-layers reused in cache steps, overall / attention / MLP (paper Table 4)."""
        if not self.cache_steps:
            return {"remove_ratio": 0.0, "remove_ratio_attn": 0.0, "remove_ratio_mlp": 0.0}
        reused = ~self.compute[self.cache_steps]  # [C, blocks, 2]
        return {
            "remove_ratio": float(reused.mean()),
            "remove_ratio_attn": float(reused[..., 0].mean()),
            "remove_ratio_mlp": float(reused[..., 1].mean()),
        }

    def check_model(self, model: nn.Module) -> None:
        depth = len(cacheable_blocks(model))
        if depth != self.depth:
            raise L2CError(f"schedule ({self.source}) is for a model with {self.depth} blocks ({2 * self.depth} sub-layers) "
                           f"but {type(model).__name__} has {depth}: use a schedule/router trained for this model")

    def check_nfe(self, nfe: int) -> None:
        if nfe != self.nfe:
            raise L2CError(f"schedule ({self.source}) has {self.nfe} steps but sampling uses NFE {nfe}: "
                           f"use the schedule/router made for NFE {nfe}")

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCHEDULE_FORMAT, "version": 1,
            "model": self.model, "sampler": self.sampler, "nfe": self.nfe, "depth": self.depth,
            "theta": self.theta, "source": self.source, "policy": self.policy,
            "cache_steps": self.cache_steps,
            # one string per step, one character per sub-layer in the official order: 1 compute, 0 reuse
            "compute": ["".join("1" if c else "0" for c in row) for row in self.flat()],
            "meta": self.meta, **self.remove_ratio(),
        }

    def save(self, path: str | os.PathLike) -> None:
        import json
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CacheSchedule":
        d = read_json(path)
        if not isinstance(d, dict) or d.get("format") != SCHEDULE_FORMAT:
            raise L2CError(f"{path}: not a cache schedule (missing \"format\": \"{SCHEDULE_FORMAT}\"); "
                           "for the authors' router files use --router FILE --theta T")
        try:
            rows = d["compute"]
            if not isinstance(rows, list) or not isinstance(d["depth"], int) or not isinstance(d["nfe"], int):
                raise L2CError(f"{path}: expected \"compute\": a list of rows, integer \"nfe\" and \"depth\"; "
                               "regenerate the schedule with `l2c schedule`")
            width = 2 * d["depth"]
            bad = [k for k, row in enumerate(rows) if not isinstance(row, str) or len(row) != width or set(row) - {"0", "1"}]
            if bad:
                raise L2CError(f"{path}: compute row {bad[0]} is not a string of {width} characters 0/1 (depth "
                               f"{d['depth']}); regenerate the schedule with `l2c schedule`")
            mask = np.array([[ch == "1" for ch in row] for row in rows], dtype=bool)
            if mask.shape != (d["nfe"], 2 * d["depth"]):
                raise L2CError(f"{path}: compute mask is {mask.shape}, expected ({d['nfe']}, {2 * d['depth']})")
            return cls.from_mask(mask, d["cache_steps"], model=d.get("model", ""), sampler=d.get("sampler", "ddim"),
                                 theta=d.get("theta"), source=d.get("source", str(path)), policy=d.get("policy", "cache"),
                                 meta=d.get("meta", {}))
        except KeyError as e:
            raise L2CError(f"{path}: cache schedule lacks the key {e}") from e


def _rewrite_names(rewrites: bool | Sequence[str]) -> tuple[str, ...]:
    """The graph rewrites of :mod:`l2c.compile_passes` to apply: ``True`` all, ``False`` none, or by name."""
    from .compile_passes import REWRITES

    return REWRITES if rewrites is True else () if rewrites is False else tuple(sorted(rewrites))


def _compiled(fn: Any, rewrites: tuple[str, ...]) -> Any:
    from .compile_passes import inductor_options

    return torch.compile(fn, dynamic=False, options=inductor_options(rewrites) if rewrites else None)


_COMPILED_BRANCHES: dict[tuple[type, str, tuple[str, ...]], Any] = {}  # (block class, branch, rewrites) -> compiled unbound branch


def branch_function(block: nn.Module, name: str, compile: bool = False, rewrites: bool | Sequence[str] = True) -> Any:
    """``block.<name>_branch`` as the model class defines it (bound to ``block``); with ``compile``,
    through one ``torch.compile``d function per block class and branch, shared by every block of
    that class and every engine of this process: parameters are graph inputs, so the 28 blocks of a
    DiT-XL/2 share two graphs (attention, MLP), whatever the schedule, step or caching method, and
    the cache engine's decisions stay eager Python around them. Compiled kernels are also cached on
    disk by inductor, so later processes on the machine load rather than compile them. The graphs
    go through :mod:`l2c.compile_passes` (the same mathematics, computed faster; ``rewrites=False``
    or a subset of their names: compiled as the model class writes them, or with some rewrites, for
    benchmarks that measure the rewrites)."""
    fn = getattr(type(block), f"{name}_branch")
    if not compile:
        return fn.__get__(block)
    import functools

    key = (type(block), name, _rewrite_names(rewrites))
    if key not in _COMPILED_BRANCHES:
        _COMPILED_BRANCHES[key] = _compiled(fn, key[2])
    return functools.partial(_COMPILED_BRANCHES[key], block)


_COMPILED_FORWARDS: dict[tuple[type, tuple[str, ...]], Any] = {}  # (model class, rewrites) -> compiled unbound forward


def forward_function(model: nn.Module, rewrites: bool | Sequence[str] = True) -> Any:
    """``model.forward`` through one ``torch.compile``d function per model class (parameters are graph
    inputs, as for :func:`branch_function`; the same rewrites): the whole network as one graph, so
    inductor also fuses what lies between the branches (gates, residual adds, adaLN, the final layer)
    and one guard check replaces one per branch. For calls that compute every branch
    (:class:`CacheEngine` ``whole=True``)."""
    key = (type(model), _rewrite_names(rewrites))
    if key not in _COMPILED_FORWARDS:
        _COMPILED_FORWARDS[key] = _compiled(type(model).forward, key[1])
    return _COMPILED_FORWARDS[key]


class CacheEngine:
    """Composes caching around a model's blocks while installed (``with engine.installed():``).

    Each block's ``attn_branch`` / ``mlp_branch`` is shadowed by an instance attribute that
    consults the engine; the model class is untouched and the overrides are removed on exit.
    Modes: ``schedule`` (static hard schedule at ``step``), ``off`` (plain), ``fill`` (compute and
    store every branch), ``mix`` (router training: r*cached + (1-r)*fresh), ``mix-update`` (the same,
    and the mixed value replaces the cache: a soft cache of any age, for trajectory training) and
    ``drop-mix`` (learning-to-drop: (1-r)*fresh). Caches are kept per stream (e.g. cond / uncond passes).

    ``compile=True``: every branch runs through its compiled function (:func:`branch_function`):
    two graphs per block class, compiled once per process (and loaded from inductor's disk cache
    by later processes); outputs equal eager ones up to fp32 rounding (tested on CPU).
    ``rewrites=False``: the compiled branches without :mod:`l2c.compile_passes` (benchmarks).
    ``whole=True`` (with ``compile``): a call of the model itself under ``no_grad`` that computes every
    branch runs the whole forward as one compiled graph (:func:`forward_function`) instead of the
    branches one by one: every call of the uncached sampler (mode ``off``), and a schedule's steps
    that compute every sub-layer, which store every branch output for the steps after (one more
    graph: mode ``store-all``). The steps that reuse keep the branch graphs, as do the other modes and
    any call that records gradients. On the digits DiT at batch 50, one thread: 1.16x uncached, 1.08x
    cached (``python benchmarks/roofline.py``, path ``compiled`` against ``compiled-branches``;
    ``results/benchmarks/roofline_cpu_b50.json``).
    """

    def __init__(self, model: nn.Module, schedule: CacheSchedule | None = None, compile: bool = False,
                 rewrites: bool | Sequence[str] = True, whole: bool = True):
        self.model = model
        self._forward = forward_function(model, rewrites) if compile and whole else None
        self.blocks = cacheable_blocks(model)
        self.schedule = schedule
        self._overrides = {(b, name): self._branch(b, s, branch_function(block, name, compile, rewrites))
                           for b, block in enumerate(self.blocks) for s, name in enumerate(BRANCHES)}
        if schedule is not None:
            schedule.check_model(model)
            self._compute = schedule.compute.tolist()  # Python bools: no host sync in the loop
            self._store = self._store_plan(schedule).tolist()
            self._full = schedule.compute.all(axis=(1, 2)).tolist()  # steps that compute every sub-layer
        self.mode = "off"
        self.step = 0
        self.stream = 0
        self.mix: torch.Tensor | None = None  # reuse weights r in mix modes: [blocks, 2], or [blocks, 2, batch] per sample
        self.cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._stored: dict[tuple[int, int], torch.Tensor] = {}  # a store-all call's branch outputs
        self.calls = np.zeros((len(self.blocks), 2), dtype=np.int64)  # branch evaluations (for tests/accounting)

    @staticmethod
    def _store_plan(schedule: CacheSchedule) -> np.ndarray:
        """store[k, b, s]: keep the output computed at step k because a later step reuses it
        before the sub-layer is computed again (saves memory and copies otherwise)."""
        c = schedule.compute
        store = np.zeros_like(c)
        needed = np.zeros(c.shape[1:], bool)  # a later step reuses, scanning backwards
        for k in range(schedule.nfe - 1, -1, -1):
            store[k] = c[k] & needed
            needed = ~c[k]
        return store & (schedule.policy == "cache")

    def _branch(self, b: int, s: int, fn: Any) -> Any:
        def run(x: torch.Tensor, *args: Any) -> torch.Tensor:
            mode = self.mode
            if mode == "off":
                return fn(x, *args)
            if mode == "store-all":  # inside the whole-forward graph of a step that computes everything
                out = self._stored[(b, s)] = fn(x, *args)
                return out
            key = (self.stream, b, s)
            if mode == "schedule":
                if self._compute[self.step][b][s]:
                    self.calls[b, s] += 1
                    out = fn(x, *args)
                    if self._store[self.step][b][s]:
                        self.cache[key] = out
                    return out
                if self.schedule.policy == "drop":
                    return torch.zeros_like(x)
                return self.cache[key]
            self.calls[b, s] += 1
            out = fn(x, *args)
            if mode == "fill":
                self.cache[key] = out
                return out
            r = self.mix[b, s]
            if r.ndim:  # per-sample weights [batch] (routers trained side by side in one batch)
                r = r.reshape(r.shape + (1,) * (out.ndim - 1))
            if mode == "mix":
                return r * self.cache[key] + (1 - r) * out
            if mode == "mix-update":  # soft free-age cache along a trajectory: the mixed value becomes the cache
                mixed = r * self.cache[key] + (1 - r) * out
                self.cache[key] = mixed.detach()
                return mixed
            if mode == "drop-mix":
                return (1 - r) * out
            raise L2CError(f"unknown cache engine mode {mode!r}")
        return run

    @contextlib.contextmanager
    def installed(self) -> Iterator["CacheEngine"]:
        """Install the branch overrides for the duration of the block; caches are freed on exit."""
        for b, block in enumerate(self.blocks):
            for s, name in enumerate(BRANCHES):
                if f"{name}_branch" in block.__dict__:
                    raise L2CError("a cache engine is already installed on this model")
                setattr(block, f"{name}_branch", self._overrides[(b, name)])
        try:
            yield self
        finally:
            for block in self.blocks:
                for name in BRANCHES:
                    block.__dict__.pop(f"{name}_branch", None)
            self.reset()

    def reset(self) -> None:
        """Drop every cached tensor (between batches, and on exit)."""
        self.cache.clear()
        self.mode = "off"
        self.mix = None

    def __call__(self, model_call: Any, *args: Any, step: int, stream: int = 0, mode: str = "schedule", mix: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``model_call(*args)`` at sampling step ``step`` (passed explicitly) in ``mode``."""
        if mode == "schedule" and self.schedule is None:
            mode = "off"
        whole = self._forward is not None and model_call is self.model and not torch.is_grad_enabled()
        if whole and mode == "schedule" and self._full[step]:
            self.calls += 1
            mode = "off" if self.schedule.policy == "drop" else "store-all"  # drop: nothing is ever reused
        self.mode, self.step, self.stream, self.mix = mode, step, stream, mix
        try:
            if whole and mode in ("off", "store-all"):
                out = self._forward(self.model, *args)
                for (b, s), stored in self._stored.items():
                    self.cache[(stream, b, s)] = stored
                return out
            return model_call(*args)
        finally:
            self.mode, self.mix = "off", None
            self._stored = {}

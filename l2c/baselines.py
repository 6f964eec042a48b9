"""Heuristic cache schedules at a matched budget (paper Fig. 4 and Tables 5/7), plus interval
(FORA / DeepCache-style) caching and a greedy error-driven static schedule.

Budget = the number of (cache step, sub-layer) pairs reused, over the structural cache steps. A
per-layer heuristic reuses the same ranked sub-layers in every cache step; when the budget does not
divide evenly, the earliest (noisiest) cache steps take one more, so every heuristic hits its
budget exactly."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .cache import CacheSchedule, default_cache_steps
from .io import L2CError

KINDS = ("bottom", "top", "random", "metrics", "bottom-attn", "bottom-mlp", "top-attn", "top-mlp", "random-drop")


def _per_step_counts(budget: int, n_steps: int, per_step_max: int) -> list[int]:
    if not 0 <= budget <= n_steps * per_step_max:
        raise L2CError(f"budget {budget} out of range: at most {n_steps * per_step_max} sub-layers can be reused in {n_steps} cache steps")
    q, r = divmod(budget, n_steps)
    return [q + (1 if i < r else 0) for i in range(n_steps)]


def _from_order(order: Sequence[int], budget: int, nfe: int, n_sub: int, sampler: str, source: str, policy: str = "cache") -> CacheSchedule:
    """Reuse the first c_k sub-layers of ``order`` in cache step k."""
    cache_steps = default_cache_steps(nfe, sampler)
    flat = np.ones((nfe, n_sub), bool)
    for k, c in zip(cache_steps, _per_step_counts(budget, len(cache_steps), len(order))):
        flat[k, list(order[:c])] = False
    return CacheSchedule.from_mask(flat, cache_steps, sampler=sampler, source=source, policy=policy, meta={"budget": budget})


def heuristic_schedule(kind: str, budget: int, nfe: int, depth: int, sampler: str = "ddim", seed: int = 0,
                       profile: np.ndarray | None = None) -> CacheSchedule:
    """``bottom``: the shallowest sub-layers first; ``top``: the deepest first; ``-attn`` / ``-mlp``:
    that branch type only; ``random``: a seeded random choice per cache step; ``random-drop``: the
    same choice, skipping instead of reusing; ``metrics``: the (cache step, sub-layer) pairs with the
    lowest profiled reuse error (``profile`` [NFE, 2*depth], from ``l2c profile``)."""
    n_sub = 2 * depth
    attn, mlp = list(range(0, n_sub, 2)), list(range(1, n_sub, 2))
    orders = {"bottom": list(range(n_sub)), "top": list(range(n_sub))[::-1],
              "bottom-attn": attn, "bottom-mlp": mlp, "top-attn": attn[::-1], "top-mlp": mlp[::-1]}
    src = f"heuristic:{kind}"
    if kind in orders:
        return _from_order(orders[kind], budget, nfe, n_sub, sampler, src)
    cache_steps = default_cache_steps(nfe, sampler)
    flat = np.ones((nfe, n_sub), bool)
    if kind in ("random", "random-drop"):
        rng = np.random.RandomState(seed)
        for k, c in zip(cache_steps, _per_step_counts(budget, len(cache_steps), n_sub)):
            flat[k, rng.permutation(n_sub)[:c]] = False
        return CacheSchedule.from_mask(flat, cache_steps, sampler=sampler, source=f"{src}:seed={seed}",
                                       policy="drop" if kind == "random-drop" else "cache", meta={"budget": budget, "seed": seed})
    if kind == "metrics":
        if profile is None:
            raise L2CError("the metrics heuristic needs a redundancy profile (run `l2c profile` first)")
        prof = np.asarray(profile, dtype=np.float64)
        if prof.shape != (nfe, n_sub):
            raise L2CError(f"profile has shape {prof.shape}, expected ({nfe}, {n_sub}) for this model and NFE")
        pairs = [(prof[k, j], k, j) for k in cache_steps for j in range(n_sub)]
        _per_step_counts(budget, len(cache_steps), n_sub)
        for _, k, j in sorted(pairs)[:budget]:
            flat[k, j] = False
        return CacheSchedule.from_mask(flat, cache_steps, sampler=sampler, source=src, meta={"budget": budget})
    raise L2CError(f"unknown heuristic {kind!r}: expected one of {KINDS}")


def interval_schedule(nfe: int, depth: int, interval: int, sampler: str = "ddim", deep_from: int = 0) -> CacheSchedule:
    """FORA / DeepCache-style: a full step every ``interval`` steps; in between, blocks >= ``deep_from``
    reuse their most recent outputs (``deep_from = 0``: the whole step is reused). Cache ages up to
    interval-1 steps (the engine reuses the most recently computed output)."""
    if interval < 1:
        raise L2CError("interval must be >= 1")
    cache_steps = [k for k in range(nfe) if k % interval]
    compute = np.ones((nfe, depth, 2), bool)
    for k in cache_steps:
        compute[k, deep_from:] = False
    return CacheSchedule(compute, cache_steps, sampler=sampler, source=f"interval:{interval}:from={deep_from}",
                         meta={"interval": interval, "deep_from": deep_from})


def greedy_schedule(budget: int, nfe: int, depth: int, error_fn: Callable[[CacheSchedule], float],
                    sampler: str = "ddim", rounds: int = 4) -> CacheSchedule:
    """Greedy error-driven static schedule: in each round, score every remaining (cache step,
    sub-layer) candidate by the final-output error of the current schedule plus that candidate
    (``error_fn``), and add the best share of the remaining budget; ``rounds`` trades cost for
    greediness (rounds = budget is the pure one-at-a-time greedy)."""
    cache_steps = default_cache_steps(nfe, sampler)
    n_sub = 2 * depth
    _per_step_counts(budget, len(cache_steps), n_sub)
    flat = np.ones((nfe, n_sub), bool)
    chosen = 0
    for r in range(rounds):
        take = -(-(budget - chosen) // (rounds - r))
        if take <= 0:
            break
        scores = []
        for k in cache_steps:
            for j in range(n_sub):
                if flat[k, j]:
                    trial = flat.copy()
                    trial[k, j] = False
                    scores.append((error_fn(CacheSchedule.from_mask(trial, cache_steps, sampler=sampler)), k, j))
        for _, k, j in sorted(scores)[:take]:
            flat[k, j] = False
        chosen += take
    return CacheSchedule.from_mask(flat, cache_steps, sampler=sampler, source=f"greedy:rounds={rounds}", meta={"budget": budget})


def output_error_fn(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, nfe: int, cfg_scale: float,
                    sampler: str = "ddim", cfg_channels: int | None = None) -> Callable[[CacheSchedule], float]:
    """MSE between the cached and the uncached final output on a fixed calibration batch."""
    from .sampling import sample
    ref = sample(model, noise, labels, sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, cfg_channels=cfg_channels)

    def err(schedule: CacheSchedule) -> float:
        out = sample(model, noise, labels, sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, schedule=schedule, cfg_channels=cfg_channels)
        return float((out - ref).pow(2).mean())
    return err

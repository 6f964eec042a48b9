"""Heuristic cache schedules at a matched budget (paper Fig. 4 and Tables 5/7), plus interval
(FORA-style) caching, the DeepCache- and Faster-Diffusion-style schedules of the paper's Table 3,
and a greedy error-driven static schedule.

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
    """FORA-style: a full step every ``interval`` steps; in between, blocks >= ``deep_from``
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


def deepcache_schedule(nfe: int, depth: int, shallow: int, sampler: str = "ddim", interval: int = 2) -> CacheSchedule:
    """DeepCache-style (Ma et al., 2024), for a U-shaped network whose blocks are listed in-blocks,
    mid-block, out-blocks (U-ViT's ``cache_blocks`` order): in cache steps, recompute only the
    ``shallow`` outermost blocks on each side (the first in-blocks and, through their long skips, the
    last out-blocks) and reuse the deep middle from the most recent full step. Cache steps: every step
    not a multiple of ``interval`` (DDIM), or the shifted cache steps of DPM-Solver-2 (``interval``
    ignored). On a network without skips it reuses the middle blocks all the same."""
    if not 0 <= 2 * shallow <= depth:
        raise L2CError(f"deepcache: shallow={shallow} blocks on each side do not fit a depth of {depth}")
    if interval < 2:
        raise L2CError("deepcache: interval must be >= 2 (a full step, then cache steps)")
    cache_steps = [k for k in range(nfe) if k % interval] if sampler == "ddim" else default_cache_steps(nfe, sampler)
    compute = np.ones((nfe, depth, 2), bool)
    for k in cache_steps:
        compute[k, shallow:depth - shallow] = False
    return CacheSchedule(compute, cache_steps, sampler=sampler, source=f"deepcache:shallow={shallow}:interval={interval}",
                         meta={"shallow": shallow, "interval": interval})


FD_KEY_STEPS_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)  # Faster Diffusion's key steps of DDIM-50, sampling order


def fd_key_steps(nfe: int, n_key: int) -> list[int]:
    """``n_key`` key steps, dense early and sparse late as Faster Diffusion chooses them (its DDIM-50
    set is steps 0, 1, 2, 3, 5, 10, 15, 25, 35 in sampling order): the distinct values of
    round(nfe * (i / K)^2), i < K, for the smallest K giving at least ``n_key`` of them; when that K
    gives more, the first ``n_key - 1`` and the last are kept."""
    if not 1 <= n_key <= nfe:
        raise L2CError(f"faster-diffusion: {n_key} key steps do not fit NFE {nfe}")
    for K in range(n_key, 100 * nfe):
        keys = sorted({min(nfe - 1, round(nfe * (i / K) ** 2)) for i in range(K)})
        if len(keys) >= n_key:
            return keys[:n_key] if len(keys) == n_key else sorted(set(keys[:n_key - 1]) | {keys[-1]})
    return list(range(n_key))


def faster_diffusion_schedule(nfe: int, depth: int, encoder_blocks: int, sampler: str = "ddim",
                              key_steps: Sequence[int] | None = None) -> CacheSchedule:
    """Faster-Diffusion-style encoder propagation (Li et al., 2023): at non-key steps the encoder (the
    first ``encoder_blocks`` blocks: U-ViT's in-blocks) is not evaluated and its sub-layer outputs
    from the last key step are reused, while the decoder half is recomputed at every step. Key steps
    default to Faster Diffusion's DDIM-50 set scaled to the NFE (``FD_KEY_STEPS_50``; for a given
    number of key steps, ``fd_key_steps``). Variant, documented: the reuse is per sub-layer branch (the engine's unit), so the fresh
    token embedding of x_t still enters the residual stream; Faster Diffusion reuses the encoder's
    output features whole (with a stale embedding) and adds prior-noise injection and parallel
    decoding of the non-key steps, which change speed, not the schedule, and are not modelled."""
    if not 1 <= encoder_blocks <= depth:
        raise L2CError(f"faster-diffusion: encoder_blocks={encoder_blocks} must be in 1..{depth}")
    if key_steps is None:
        key_steps = {round(k * nfe / 50) for k in FD_KEY_STEPS_50}
    keys = sorted(set(int(k) for k in key_steps))
    if not keys or keys[0] != 0 or keys[-1] >= nfe:
        raise L2CError(f"faster-diffusion: key steps {keys} must include step 0 and lie below NFE {nfe}")
    cache_steps = [k for k in range(nfe) if k not in keys]
    compute = np.ones((nfe, depth, 2), bool)
    for k in cache_steps:
        compute[k, :encoder_blocks] = False
    return CacheSchedule(compute, cache_steps, sampler=sampler, source=f"faster-diffusion:enc={encoder_blocks}:keys={len(keys)}",
                         meta={"encoder_blocks": encoder_blocks, "key_steps": keys})


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

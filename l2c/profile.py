"""``l2c profile``: how redundant is each sub-layer at each step (paper Fig. 3, and the ranking
behind the "Metrics" heuristic). For a seeded calibration batch sampled fully, the error of reusing
a sub-layer's previous-step output at step k is ||o_k - o_{k-1}|| / ||o_k|| (relative L2 over the
batch), for the branch output (what the cache would hold) and for the block output."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .io import atomic_path
from .models import BRANCHES, cacheable_blocks
from .sampling import sample


def _rel(cur: torch.Tensor, prev: torch.Tensor) -> float:
    return float((cur - prev).norm() / cur.norm().clamp_min(1e-12))


@torch.no_grad()
def profile_redundancy(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, nfe: int, sampler: str = "ddim",
                       cfg_scale: float = 1.5, cfg_channels: int | None = None) -> pd.DataFrame:
    """Tidy frame: step, block, branch, sublayer, branch_rel_err, block_rel_err (step 0: NaN)."""
    blocks = cacheable_blocks(model)
    cur: dict[tuple, torch.Tensor] = {}
    prev: dict[tuple, torch.Tensor] = {}
    rows: list[dict] = []
    hooks = []
    for b, blk in enumerate(blocks):
        for s, name in enumerate(BRANCHES):
            hooks.append(getattr(blk, name).register_forward_hook(lambda m, a, o, key=(b, s): cur.__setitem__(key + (len(cur),), o)))
        hooks.append(blk.register_forward_hook(lambda m, a, o, key=(b, "block"): cur.__setitem__(key + (len(cur),), o)))

    def collect(step: int, x, x0) -> None:
        # group this step's captures by key (b, s) in call order: one entry per stream
        by_key: dict[tuple, list[torch.Tensor]] = {}
        for key in sorted(cur, key=lambda k: k[2]):
            by_key.setdefault(key[:2], []).append(cur[key])
        cur.clear()
        step_vals = {k: torch.cat([v.flatten() for v in vs]) for k, vs in by_key.items()}
        for b in range(len(blocks)):
            for s, name in enumerate(BRANCHES):
                has_prev = (b, s) in prev
                rows.append({"step": step, "block": b, "branch": name, "sublayer": 2 * b + s,
                             "branch_rel_err": _rel(step_vals[b, s], prev[b, s]) if has_prev else np.nan,
                             "block_rel_err": _rel(step_vals[b, "block"], prev[b, "block"]) if has_prev else np.nan})
        prev.clear()
        prev.update(step_vals)

    try:
        sample(model, noise, labels, sampler=sampler, nfe=nfe, cfg_scale=cfg_scale, cfg_channels=cfg_channels,
               callback=lambda step, x, x0: collect(step, x, x0))
    finally:
        for h in hooks:
            h.remove()
    return pd.DataFrame(rows)


def profile_matrix(df: pd.DataFrame, column: str = "branch_rel_err") -> np.ndarray:
    """[NFE, 2*blocks] array of one error column (for the Metrics heuristic)."""
    return df.pivot(index="step", columns="sublayer", values=column).sort_index().to_numpy()


def write_profile(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_profile(path: str | os.PathLike) -> pd.DataFrame:
    from .io import L2CError
    p = Path(path)
    if not p.exists():
        raise L2CError(f"profile {p}: not found (run `l2c profile` first)")
    df = pd.read_csv(p)
    need = {"step", "block", "branch", "sublayer", "branch_rel_err", "block_rel_err"}
    if not need <= set(df.columns):
        raise L2CError(f"profile {p}: missing columns {sorted(need - set(df.columns))}")
    return df

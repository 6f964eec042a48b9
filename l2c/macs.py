"""MACs in the thop convention (paper's MACs column): Linear and Conv layers only, attention
matmuls not counted, per image and model evaluation, the CFG duplicate not counted."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .cache import CacheSchedule
from .models import BRANCHES, cacheable_blocks


@dataclass
class ModelMacs:
    per_eval: int  # MACs of one full evaluation for one image
    branch: np.ndarray  # [blocks, 2] MACs of each cacheable branch

    def per_step(self, schedule: CacheSchedule | None, nfe: int) -> np.ndarray:
        """MACs of each evaluation (reused or dropped branches subtracted)."""
        steps = np.full(nfe, self.per_eval, dtype=np.int64)
        if schedule is not None:
            steps -= ((~schedule.compute) * self.branch[None]).sum(axis=(1, 2)).astype(np.int64)
        return steps


def layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs of one Linear / Conv call per image (thop convention); 0 for any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features * out.numel() // out.shape[0]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = int(np.prod(module.kernel_size)) * module.in_channels // module.groups
        return k * out.numel() // out.shape[0]
    return 0


def count_model_macs(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> ModelMacs:
    """Count by running one forward (batch 1 recommended; meta tensors work) with hooks."""
    blocks = cacheable_blocks(model)
    owner: dict[nn.Module, tuple[int, int]] = {}
    for b, block in enumerate(blocks):
        for s, name in enumerate(BRANCHES):
            for sub in block.branch_modules[name]:
                for m in block.get_submodule(sub).modules():
                    owner[m] = (b, s)
    total = [0]
    branch = np.zeros((len(blocks), 2), dtype=np.int64)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        macs = layer_macs(module, out)
        total[0] += macs
        if module in owner:
            branch[owner[module]] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            model(x, t, y)
    finally:
        for h in handles:
            h.remove()
    return ModelMacs(per_eval=total[0], branch=branch)


def macs_report(mm: ModelMacs, schedule: CacheSchedule | None, nfe: int) -> dict:
    """The JSON of ``l2c macs``: totals per image over the whole sampling and the remove ratios."""
    steps = mm.per_step(schedule, nfe)
    full = mm.per_eval * nfe
    rep = {
        "nfe": nfe,
        "macs_per_eval_full": int(mm.per_eval),
        "macs_per_step": [int(v) for v in steps],
        "macs_total": int(steps.sum()),
        "macs_total_full": int(full),
        "macs_ideal_speedup": float(full / steps.sum()),
        "remove_ratio": 0.0, "remove_ratio_attn": 0.0, "remove_ratio_mlp": 0.0,
        "num_reused": 0,
    }
    if schedule is not None:
        rep.update(schedule.remove_ratio())
        rep["num_reused"] = schedule.num_reused
        rep["cache_sublayers"] = len(schedule.cache_steps) * 2 * schedule.depth
    return rep


def model_input_size(image_size: int, latent: bool) -> int:
    """Network input resolution: SD-VAE latents are image/8."""
    return image_size // 8 if latent else image_size


def macs_for(model: str, *, image_size: int, sampler: str, nfe: int, router: str | None = None,
             theta: float | None = None, schedule: str | None = None, latent: bool = True,
             in_channels: int | None = None, num_classes: int = 1000) -> dict:
    """``l2c macs``: build the model on the meta device (no memory, no weights), count, report."""
    from .io import L2CError
    from .models import create_model
    opts = {"input_size": model_input_size(image_size, latent), "num_classes": num_classes}
    if in_channels is not None:
        opts["in_channels"] = in_channels
    if latent and image_size % 8:
        raise L2CError(f"--image-size {image_size}: a latent model sees image size / 8; expected a multiple of 8 "
                       "(or --pixel for a pixel-space model)")
    with torch.device("meta"):
        try:
            m = create_model(model, **opts)
        except ValueError as e:
            raise L2CError(f"--model {model} cannot be built with {opts} ({e}); check --image-size, --pixel and "
                           "--in-channels") from None
        size, ch = m.input_size, m.in_channels
        mm = count_model_macs(m, torch.zeros(1, ch, size, size), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    sched = None
    if schedule:
        sched = CacheSchedule.load(schedule)
    elif router:
        if theta is None:
            raise L2CError("--router needs --theta (0.1 for DiT-XL/2 256 and DiT-L/2, 0.9 for DiT-XL/2 512 and U-ViT-H/2)")
        from .router import load_schedule_from_router  # ours (router.pt) or the authors' file
        sched = load_schedule_from_router(router, theta, sampler=sampler)
    if sched is not None:
        sched.check_nfe(nfe)
        sched.check_model(m)
    rep = macs_report(mm, sched, nfe)
    rep.update({"model": model, "image_size": image_size, "sampler": sampler})
    return rep

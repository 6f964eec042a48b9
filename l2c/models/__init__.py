"""Model registry: ``create_model(name, ...)`` for every official size, and checkpoint loading."""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable

import torch
import torch.nn as nn

from ..io import L2CError, load_torch
from .dit import BRANCHES, DIT_SIZES, DiT

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    _REGISTRY[name] = factory


def _dit_factory(depth: int, hidden: int, heads: int, patch: int) -> Callable[..., nn.Module]:
    # hidden_size / num_heads may be overridden (a narrower model at the official depth and key
    # layout, e.g. the stand-in checkpoints of config/rehearsal.yaml); depth and patch are the name's
    def make(*, hidden_size: int = hidden, num_heads: int = heads, **kwargs: Any) -> nn.Module:
        return DiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch, **kwargs)
    return make


for _size, (_depth, _hidden, _heads) in DIT_SIZES.items():
    for _patch in (2, 4, 8):
        register(f"DiT-{_size}/{_patch}", _dit_factory(_depth, _hidden, _heads, _patch))


def _register_optional() -> None:
    try:  # U-ViT lives in its own module; register its sizes when present.
        from . import uvit
    except ImportError:
        return
    for name, factory in uvit.UVIT_MODELS.items():
        register(name, _uvit_width(uvit, name, factory))


def _uvit_width(uvit: Any, name: str, factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A U-ViT factory that also takes ``hidden_size`` / ``num_heads`` (narrower, same depth and keys)."""
    size, patch = name[len("U-ViT-"):].split("/")
    hidden, depth, heads = uvit.UVIT_SIZES[size]

    def make(*, hidden_size: int | None = None, num_heads: int | None = None, **kwargs: Any) -> nn.Module:
        if hidden_size is None and num_heads is None:
            return factory(**kwargs)
        return uvit._uvit_factory(hidden_size or hidden, depth, num_heads or heads, int(patch))(**kwargs)
    return make


_register_optional()


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("DiT-XL/2", input_size=32, num_classes=1000)``."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise L2CError(f"unknown model name {name!r}{hint} Known models: {', '.join(model_names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise L2CError(f"model {name!r}: bad option ({e})") from e


def cacheable_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in the official router order (DiT: ``blocks``; U-ViT: in, mid, out)."""
    if hasattr(model, "cache_blocks"):
        return list(model.cache_blocks())
    if hasattr(model, "blocks"):
        return list(model.blocks)
    raise L2CError(f"{type(model).__name__} has no transformer blocks the cache engine knows")


def num_sublayers(model: nn.Module) -> int:
    return 2 * len(cacheable_blocks(model))


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint: our own format (EMA weights), DiT training
    checkpoints (``ema``/``model`` keys) or a plain state dict (official release files)."""
    if isinstance(obj, dict) and obj.get("format") == "l2c-suite/model":
        return obj["ema"]
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike, obj: Any = None) -> nn.Module:
    """Load a checkpoint (``obj``: its already-loaded content) into ``model`` with strict key and
    shape checks and a clear error."""
    sd = extract_state_dict(load_torch(path, "model checkpoint") if obj is None else obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise L2CError(f"model checkpoint {path}: no state dict found inside (expected a dict of tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        lines = []
        if wrong:
            lines.append("shape mismatches: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
        if missing:
            lines.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise L2CError(
            f"model checkpoint {path} does not fit {type(model).__name__} "
            f"({'; '.join(lines)}). Check the model name, image size (input_size), in_channels, "
            "num_classes and learn_sigma given for this checkpoint."
        )
    model.load_state_dict(sd, strict=True)
    return model


def architecture(obj: Any, path: str | os.PathLike, name: str | None, options: dict) -> tuple[str, dict]:
    """(model name, options) of a loaded checkpoint: ours record them, official plain state dicts
    need ``name`` (explicit ``name`` / ``options`` win over what the file records)."""
    if isinstance(obj, dict) and obj.get("format") == "l2c-suite/model":
        name = name or obj["model"]
        options = {**obj["model_kwargs"], **options}
    if name is None:
        raise L2CError(f"model checkpoint {path} does not record its architecture: pass the model name (e.g. DiT-XL/2)")
    return name, options


def load_model(path: str | os.PathLike, name: str | None = None, **options: Any) -> nn.Module:
    """Build and load a model in eval mode. Our own checkpoints carry their name and options;
    official files (plain state dicts) need ``name`` and options such as ``input_size``."""
    obj = load_torch(path, "model checkpoint")
    name, options = architecture(obj, path, name, options)
    model = create_model(name, **options)
    load_weights(model, path, obj)
    return model.eval().requires_grad_(False)


__all__ = ["BRANCHES", "DiT", "create_model", "load_model", "load_weights", "model_names", "cacheable_blocks", "num_sublayers", "register"]

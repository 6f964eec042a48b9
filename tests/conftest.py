"""Shared fixtures: tiny random-weight models saved in the suite's checkpoint format."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from l2c.models import create_model

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official-routers"
# torch.compile on CPU writes and builds C++ kernels
needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
                                    reason="torch.compile on CPU needs a C++ compiler")


def make_tiny(path: Path, name: str = "DiT-Micro/2", seed: int = 0, **kw) -> Path:
    """A randomised tiny DiT on 8x8x1 digits-like inputs, 10 classes, in our checkpoint format."""
    torch.manual_seed(seed)
    kwargs = {"input_size": 8, "in_channels": 1, "num_classes": 10, **kw}
    m = create_model(name, **kwargs)
    for p in m.parameters():
        nn.init.normal_(p, std=0.1)
    torch.save({"format": "l2c-suite/model", "model": name, "model_kwargs": kwargs, "ema": m.state_dict(), "meta": {}}, path)
    return path


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    return make_tiny(tmp_path / "tiny.pt")

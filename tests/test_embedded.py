"""Embedded default: data split, pretraining (resume, corrupt checkpoint), the committed model (issue 3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from l2c.data import digits_split, load_dataset
from l2c.generate import EMBEDDED_MODEL, noise_and_labels
from l2c.io import L2CError
from l2c.models import load_model
from l2c.pretrain import PretrainConfig, pretrain
from l2c.sampling import sample


def test_digits_split_deterministic_and_disjoint():
    a, b = digits_split(), digits_split()
    assert np.array_equal(a["train"], b["train"]) and np.array_equal(a["reference"], b["reference"])
    assert len(np.intersect1d(a["train"], a["reference"])) == 0
    assert len(a["train"]) + len(a["reference"]) == 1797 and len(a["reference"]) == 500
    ref = load_dataset("digits:reference")
    assert np.bincount(ref.y.numpy()).tolist() == [50] * 10
    assert ref.x.min() >= -1 and ref.x.max() <= 1


def tiny_cfg(**kw):
    base = dict(model="DiT-Micro/2", model_kwargs={"input_size": 8, "in_channels": 1, "num_classes": 10},
                steps=12, batch_size=8, warmup_steps=2, ckpt_every=6, log_every=3, threads=1)
    return PretrainConfig(**{**base, **kw})


def test_pretrain_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = torch.load(pretrain(tiny_cfg(), tmp_path / "a", progress=False), weights_only=True)["ema"]
    # an interrupted run: the same config killed during step 9 (after its step-6 checkpoint), then resumed
    real_clip, calls = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_clip(*a, **k)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg(), tmp_path / "b", progress=False)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    assert not (tmp_path / "b" / "model.pt").exists()
    resumed = torch.load(pretrain(tiny_cfg(), tmp_path / "b", progress=False), weights_only=True)["ema"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    steps = [int(ln.split('"step": ')[1].split(",")[0]) for ln in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_pretrain_refuses_corrupt_or_foreign_checkpoint(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(L2CError, match="checkpoint.pt: cannot be read"):
        pretrain(tiny_cfg(), tmp_path / "c", progress=False)
    pretrain(tiny_cfg(steps=6), tmp_path / "d", progress=False)
    with pytest.raises(L2CError, match="different config \\(differs in \\['lr'\\]\\)"):
        pretrain(tiny_cfg(steps=6, lr=0.5), tmp_path / "d", progress=False)


def test_committed_model_generates_its_labels():
    from l2c.metrics.features import load_digits_net
    from l2c.data import float_to_uint8
    from l2c.metrics.features import uint8_nhwc_to_float
    model = load_model(EMBEDDED_MODEL)
    assert len(model.blocks) == 12 and EMBEDDED_MODEL.stat().st_size < 20 * 2**20
    noise, labels = noise_and_labels(5, np.arange(40), (1, 8, 8), 10, mode="balanced")
    x = sample(model, noise, labels, nfe=10, cfg_scale=1.5)
    net, _ = load_digits_net()
    with torch.no_grad():
        pred = net(uint8_nhwc_to_float(torch.from_numpy(float_to_uint8(x))))["logits"].argmax(1)
    assert (pred == labels).float().mean() >= 0.9


def test_committed_uvit_generates_its_labels_with_dpm_solver():
    from l2c.data import float_to_uint8
    from l2c.generate import EMBEDDED_DIR
    from l2c.metrics.features import load_digits_net, uint8_nhwc_to_float
    path = EMBEDDED_DIR / "uvit-digits.pt"
    model = load_model(path)
    assert len(model.cache_blocks()) == 13 and model.dpm_defaults["noise_schedule"] == "linear"
    assert path.stat().st_size < 20 * 2**20
    noise, labels = noise_and_labels(5, np.arange(40), (1, 8, 8), 10, mode="balanced")
    x = sample(model, noise, labels, sampler="dpm2", nfe=10, cfg_scale=0.5)
    net, _ = load_digits_net()
    with torch.no_grad():
        pred = net(uint8_nhwc_to_float(torch.from_numpy(float_to_uint8(x))))["logits"].argmax(1)
    assert (pred == labels).float().mean() >= 0.9

"""`l2c sample`: sharded, resumable, paired generation of ADM-format sample files (issue 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from l2c.cache import CacheSchedule
from l2c.generate import SampleConfig, generate, noise_and_labels, shard_dir
from l2c.io import L2CError
from conftest import make_tiny


def cfg(ckpt, **kw):
    base = dict(checkpoint=str(ckpt), nfe=4, cfg_scale=1.5, num_samples=10, shard_size=4, batch_size=3, seed=7)
    return SampleConfig(**{**base, **kw})


def test_noise_and_labels_depend_only_on_seed_and_index():
    a, la = noise_and_labels(3, np.arange(10), (1, 8, 8), 10)
    b, lb = noise_and_labels(3, np.array([5, 6]), (1, 8, 8), 10)
    assert torch.equal(a[5:7], b) and torch.equal(la[5:7], lb)
    c, lc = noise_and_labels(4, np.arange(10), (1, 8, 8), 10)
    assert not torch.equal(a, c)
    _, bal = noise_and_labels(3, np.arange(12), (1, 8, 8), 10, mode="balanced")
    assert bal.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_sample_file_format_and_resume_byte_identical(tiny_ckpt, tmp_path):
    out = generate(cfg(tiny_ckpt), tmp_path / "full.npz", progress=False)
    with np.load(out) as f:
        x, y = f["arr_0"], f["arr_1"]
    assert x.shape == (10, 8, 8, 1) and x.dtype == np.uint8 and y.shape == (10,)
    assert json.loads((tmp_path / "full.json").read_text())["config"]["nfe"] == 4
    assert not shard_dir(tmp_path / "full.npz").exists()
    # "Killed" after the first shard (a shard range run), then resumed: identical bytes.
    part = tmp_path / "part.npz"
    assert generate(cfg(tiny_ckpt), part, shards=(0, 1), progress=False) is None
    assert not part.exists() and (shard_dir(part) / "shard-00000.npz").exists()
    (shard_dir(part) / "shard-00001.npz").write_bytes(b"truncated")  # a crash mid-write is recomputed
    generate(cfg(tiny_ckpt), part, progress=False)
    assert part.read_bytes() == (tmp_path / "full.npz").read_bytes()


def test_batch_size_and_pairing(tiny_ckpt, tmp_path):
    a = generate(cfg(tiny_ckpt, batch_size=10, shard_size=10), tmp_path / "a.npz", progress=False)
    b = generate(cfg(tiny_ckpt, batch_size=1, shard_size=3), tmp_path / "b.npz", progress=False)
    with np.load(a) as fa, np.load(b) as fb:
        assert np.array_equal(fa["arr_1"], fb["arr_1"])
        assert np.abs(fa["arr_0"].astype(int) - fb["arr_0"].astype(int)).max() <= 1  # fp32 rounding only
    sched = tmp_path / "s.json"
    flat = np.ones((4, 8), bool)
    flat[[1, 3]] = False
    CacheSchedule.from_mask(flat, [1, 3]).save(sched)
    c = generate(cfg(tiny_ckpt, schedule=str(sched)), tmp_path / "c.npz", progress=False)
    with np.load(a) as fa, np.load(c) as fc:
        assert np.array_equal(fa["arr_1"], fc["arr_1"])  # same labels (and noise) per index
        assert not np.array_equal(fa["arr_0"], fc["arr_0"])


def test_bad_inputs_leave_nothing(tiny_ckpt, tmp_path):
    sched = tmp_path / "s.json"
    CacheSchedule.full(5, 4).save(sched)
    with pytest.raises(L2CError, match="5 steps but sampling uses NFE 4"):
        generate(cfg(tiny_ckpt, schedule=str(sched)), tmp_path / "x.npz", progress=False)
    assert not (tmp_path / "x.npz").exists()
    generate(cfg(tiny_ckpt), tmp_path / "y.npz", shards=(0, 1), progress=False)
    with pytest.raises(L2CError, match="different configuration \\(differs in \\['nfe'\\]\\)"):
        generate(cfg(tiny_ckpt, nfe=5), tmp_path / "y.npz", progress=False)
    CacheSchedule.full(4, 4).save(tmp_path / "same.json")
    with pytest.raises(L2CError, match="over the schedule file it reads"):
        generate(cfg(tiny_ckpt, schedule=str(tmp_path / "same.json")), tmp_path / "same.npz", progress=False)
    assert CacheSchedule.load(tmp_path / "same.json").nfe == 4
    with pytest.raises(L2CError, match="SD VAE .* not found locally.*huggingface-cli download"):
        generate(cfg(tiny_ckpt, vae=str(tmp_path / "no-vae")), tmp_path / "z.npz", progress=False)


def test_latent_model_decodes_with_tiny_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae")
    ckpt = make_tiny(tmp_path / "latent.pt", in_channels=4, input_size=4)
    out = generate(cfg(ckpt, vae=str(tmp_path / "vae"), num_samples=3, cfg_channels=3), tmp_path / "l.npz", progress=False)
    with np.load(out) as f:
        assert f["arr_0"].shape == (3, 8, 8, 3) and f["arr_0"].dtype == np.uint8


def test_cli_sample(tiny_ckpt, tmp_path, capsys):
    from l2c.cli import main
    assert main(["sample", "--checkpoint", str(tiny_ckpt), "--nfe", "3", "--num-samples", "5", "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert len(f["arr_0"]) == 5


def test_embedded_report_runs_on_a_tiny_model(tiny_ckpt, tmp_path):
    from l2c.embedded import embedded_report
    rep = embedded_report(tmp_path / "rep", tiny_ckpt, n_main=16, n_cache=12, seeds=(0, 1), progress=False)
    assert rep["floor_train_vs_reference"]["fid"] > 0
    s = rep["caching_sensitivity_summary"]
    assert {"ddim20", "ddim10", "all-reuse-20"} <= set(s)
    assert "psnr_db" in s["ddim10"] and "psnr_db" not in s["ddim20"]
    assert 0 <= rep["ddim50"]["label_agreement"] <= 1
    assert json.loads((tmp_path / "rep" / "quality.json").read_text())["sampling_wall_s_1000_nfe20_cfg"] > 0


def test_complete_output_is_not_recomputed(tiny_ckpt, tmp_path):
    out = generate(cfg(tiny_ckpt), tmp_path / "a.npz", progress=False)
    mtime = out.stat().st_mtime_ns
    assert generate(cfg(tiny_ckpt), out, progress=False) == out and out.stat().st_mtime_ns == mtime
    generate(cfg(tiny_ckpt, nfe=3), out, progress=False)  # another configuration: regenerated
    assert out.stat().st_mtime_ns != mtime


def test_embedded_report_for_a_uvit_with_dpm_solver(tmp_path):
    from l2c.embedded import embedded_report
    ckpt = make_tiny(tmp_path / "uvit.pt", name="U-ViT-Micro/2", noise_schedule="linear")
    rep = embedded_report(tmp_path / "rep", ckpt, n_main=8, n_cache=8, seeds=(0,), cfg_scale=0.5, sampler="dpm2", progress=False)
    assert rep["sampler"] == "dpm2" and {"dpm20", "dpm10", "all-reuse-20"} <= set(rep["caching_sensitivity_summary"])
    assert 0 <= rep["dpm50"]["label_agreement"] <= 1
    assert rep["caching_sensitivity"][2]["psnr_db"] < 100  # the all-reuse samples differ from the uncached ones

"""The SD autoencoder loaders (diffusers folder, LDM-layout file as U-ViT ships it) and encode-latents."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from l2c.io import L2CError

diffusers = pytest.importorskip("diffusers")


def small_vae(seed: int = 0):
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=32, sample_size=8)
    for p in vae.parameters():  # non-trivial weights everywhere (zero-initialised biases would hide a swap)
        torch.nn.init.normal_(p, std=0.05)
    return vae.eval()


def to_ldm_layout(sd: dict, levels: int) -> dict:
    """Rename a diffusers AutoencoderKL state dict into the LDM layout of the U-ViT / LDM code
    (encoder.down.I.block.J, decoder.up.(L-1-I).block.J, mid.block_1/attn_1/block_2, nin_shortcut,
    norm_out, 1x1-conv attention q/k/v/proj_out), written from the LDM module structure."""
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", n)
        n = n.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        n = n.replace("mid_block.attentions.0.group_norm.", "mid.attn_1.norm.")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            if f"mid_block.attentions.0.{a}." in n:
                n = n.replace(f"mid_block.attentions.0.{a}.", f"mid.attn_1.{b}.")
                if v.ndim == 2:
                    v = v[:, :, None, None]  # LDM's attention uses 1x1 convolutions
        n = n.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[n] = v
    return out


def test_ldm_layout_file_loads_into_the_same_autoencoder(tmp_path):
    from l2c.vae import load_vae
    ref = small_vae()
    ldm = to_ldm_layout(ref.state_dict(), levels=2)
    assert "encoder.down.0.block.0.norm1.weight" in ldm and ldm["decoder.mid.attn_1.q.weight"].ndim == 4
    ldm["loss.logvar"] = torch.zeros(())  # LDM training checkpoints carry the loss; it is ignored
    torch.save(ldm, tmp_path / "autoencoder_kl_ema.pth")
    vae = load_vae(str(tmp_path / "autoencoder_kl_ema.pth"))
    assert vae.config.block_out_channels == (32, 64) or list(vae.config.block_out_channels) == [32, 64]
    z = torch.randn(2, 4, 4, 4)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, ref.decode(z).sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean, rtol=1e-5, atol=1e-5)
    # bad files name the file and the problem
    del ldm["decoder.conv_out.weight"]
    torch.save(ldm, tmp_path / "broken.pth")
    with pytest.raises(L2CError, match=r"broken.pth: do not fit .*missing"):
        load_vae(str(tmp_path / "broken.pth"))
    extra = dict(to_ldm_layout(ref.state_dict(), levels=2), **{"encoder.extra_head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(L2CError, match="1 of its .* tensors have no place"):
        load_vae(str(tmp_path / "extra.pth"))
    torch.save(ref.state_dict(), tmp_path / "diffusers_keys.pth")
    with pytest.raises(L2CError, match="not in the LDM layout"):
        load_vae(str(tmp_path / "diffusers_keys.pth"))
    with pytest.raises(L2CError, match="autoencoder file .*missing.pth not found"):
        load_vae(str(tmp_path / "missing.pth"))


def _image_folder(root, n_per_class=3):
    from PIL import Image
    rng = np.random.RandomState(0)
    for c in ("a_cls", "b_cls"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.randint(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_encode_latents_resumes_and_is_batch_independent(tmp_path, monkeypatch):
    from l2c.cli import main
    from l2c.data import load_dataset
    from l2c.vae import SD_VAE_SCALE, encode_latents
    _image_folder(tmp_path / "imgs")
    small_vae().save_pretrained(tmp_path / "vae")
    spec = f"folder:{tmp_path / 'imgs'}"
    a = encode_latents(spec, tmp_path / "a.npz", str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2, progress=False)
    b = encode_latents(spec, tmp_path / "b.npz", str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=6, progress=False)
    assert a.read_bytes() == b.read_bytes()  # sharding does not change a byte
    c = encode_latents(spec, tmp_path / "b1.npz", str(tmp_path / "vae"), image_size=8, batch_size=1, progress=False)
    # per-image seeded noise: the batch size changes only float rounding in the convolutions
    np.testing.assert_allclose(np.load(c)["latents"], np.load(a)["latents"], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "a.npz.shards").exists()
    stamp = a.stat().st_mtime_ns  # a complete output of the same settings is not encoded again
    assert encode_latents(spec, a, str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2, progress=False) == a
    assert a.stat().st_mtime_ns == stamp
    data = load_dataset(f"latents:{a}")
    assert data.x.shape == (6, 4, 4, 4) and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    # the posterior mean, scaled
    m = encode_latents(spec, tmp_path / "m.npz", small_vae(), image_size=8, mode="mean", progress=False)
    x, _ = load_dataset(spec, image_size=8).batch(torch.arange(6))
    with torch.no_grad():
        ref = SD_VAE_SCALE * small_vae().encode(x).latent_dist.mean
    torch.testing.assert_close(load_dataset(f"latents:{m}").x, ref, rtol=1e-5, atol=1e-6)
    # a run killed after its first shard resumes from it and gives the same file
    import l2c.vae as vae_mod
    real, calls = vae_mod.write_npz, []

    def dying(path, **arrays):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, **arrays)
    monkeypatch.setattr(vae_mod, "write_npz", dying)
    with pytest.raises(KeyboardInterrupt):
        encode_latents(spec, tmp_path / "c.npz", str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2, progress=False)
    monkeypatch.setattr(vae_mod, "write_npz", real)
    assert len(list((tmp_path / "c.npz.shards").glob("*.npz"))) == 1 and not (tmp_path / "c.npz").exists()
    encode_latents(spec, tmp_path / "c.npz", str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2, progress=False)
    assert (tmp_path / "c.npz").read_bytes() == a.read_bytes()
    # a shard folder holding another config's shards is refused, naming the key
    (tmp_path / "e.npz.shards").mkdir()
    (tmp_path / "e.npz.shards" / "config.json").write_text('{"mode": "mean"}')
    (tmp_path / "e.npz.shards" / "000000000.npz").write_bytes(b"other")
    with pytest.raises(L2CError, match="latent shard folder .*differs in"):
        encode_latents(spec, tmp_path / "e.npz", str(tmp_path / "vae"), image_size=8, shard_size=2, progress=False)
    # ... but a folder without shards (left by a run that failed validation) binds nothing
    (tmp_path / "e.npz.shards" / "000000000.npz").unlink()
    encode_latents(spec, tmp_path / "e.npz", str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2, progress=False)
    assert (tmp_path / "e.npz").read_bytes() == a.read_bytes()
    assert main(["encode-latents", "--data", spec, "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "d.npz"),
                 "--image-size", "8", "--limit", "4", "--no-progress"]) == 0
    assert len(load_dataset(f"latents:{tmp_path / 'd.npz'}")) == 4

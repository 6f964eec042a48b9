"""U-ViT (Bao et al., 2023), state-dict compatible with the official release
(``imagenet256_uvit_huge.pth``: U-ViT-H/2 on 4x32x32 SD latents).

Layout, as in the official ``libs/uvit.py``:
  * tokens = [label token, time token, patch tokens], plus a learned ``pos_embed`` over all of them
    (``extras`` = 2 leading tokens for a class-conditional model);
  * the time token is the sinusoidal embedding [cos | sin] of the raw timestep input (the network
    receives t_continuous * 1000 from the sampler), followed by ``time_embed`` (an MLP when
    ``mlp_time_embed``, otherwise ``nn.Identity``: no parameters);
  * ``depth // 2`` in-blocks, one mid-block, ``depth // 2`` out-blocks; out-block j first merges the
    output of in-block ``depth//2 - 1 - j`` through ``skip_linear(cat([x, skip]))`` (long skips,
    last in, first out);
  * pre-norm blocks with affine LayerNorms (eps 1e-5), qkv without bias, exact GELU, no gates;
  * final ``norm`` and ``decoder_pred`` run on every token, the extras are dropped, patches are
    unpatchified with channels innermost ``(p1 p2 C)``, then ``final_layer`` (3x3 conv when
    ``conv``, else ``nn.Identity``).

Label convention: ``num_classes`` is the number of real classes here (1000 for ImageNet); the label
table has ``num_classes + 1`` rows and the last one (index ``num_classes``) is the null label of
classifier-free guidance. The official configs count the table rows instead (``num_classes=1001``
for ImageNet, null label 1000 = ``dataset.K``): official ``num_classes = N + 1`` is ours ``N``.

``noise_schedule`` records the diffusion the weights were trained with, for the sampler defaults
(``l2c.dpm_solver``): ``"sd"`` (default; the official checkpoints: Stable Diffusion's betas, network
time t_continuous * 1000) or ``"linear"`` (a U-ViT trained by ``l2c.pretrain``: DDPM's linear betas,
network time = the ADM timestep index 0..999). It adds no weights.

Each block exposes its two residual branches as ``attn_branch`` / ``mlp_branch`` (the branch
outputs before the residual add, what Learning-to-Cache caches), so that ``l2c.cache.CacheEngine``
can shadow them. ``skip_linear`` is not a branch: it always runs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from ..io import L2CError
from .dit import Attention, Mlp, PatchEmbed, timestep_embedding


class UViTBlock(nn.Module):
    """Pre-norm transformer block with an optional long-skip merge (out-blocks)."""

    branch_modules = {"attn": ("attn",), "mlp": ("mlp",)}  # submodules each cacheable branch runs (MACs)
    signal_modules = ()  # submodules ``cache_signal`` runs (MACs): none with weights counted (LayerNorm only)

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="none")
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Attention branch output before the residual add (cacheable)."""
        return self.attn(self.norm1(x))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """MLP branch output before the residual add (cacheable)."""
        return self.mlp(self.norm2(x))

    def cache_signal(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        """``norm1(x)`` over every token, the label and time tokens included: U-ViT has no adaLN, so
        this is the input of the first attention branch that carries the timestep (through the time
        token); the signal run-time caching policies (TeaCache) read. Not used by ``forward``."""
        return self.norm1(x)  # (N, extras + T, D)

    def merge_skip(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Long-skip merge of an out-block (identity for in/mid blocks)."""
        if self.skip_linear is None:
            return x
        if skip is None:
            raise ValueError("an out-block of U-ViT needs the skip tensor of its in-block")
        return self.skip_linear(torch.cat([x, skip], dim=-1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.merge_skip(x, skip)
        x = x + self.attn_branch(x)
        x = x + self.mlp_branch(x)
        return x


class UViT(nn.Module):
    """Class-conditional U-ViT predicting noise; ``forward(x, t, y)`` with t as the official model
    receives it (t_continuous * 1000 under the U-ViT DPM-Solver script)."""

    # Sampler defaults by training diffusion (read by l2c.dpm_solver; guidance eps_c + s (eps_c - eps_u)):
    #   "sd": the official ImageNet latent models: Stable Diffusion's betas, network time t * 1000;
    #   "linear": trained by l2c.pretrain (DDPM linear betas, network time = ADM timestep index).
    DIFFUSIONS = {
        "sd": {"noise_schedule": "sd", "time_input": "scaled", "guidance": "uvit"},
        "linear": {"noise_schedule": "linear", "time_input": "type1", "guidance": "uvit"},
    }

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        num_classes: int = 1000,
        conv: bool = False,
        skip: bool = True,
        learn_sigma: bool = False,
        noise_schedule: str = "sd",
    ):
        super().__init__()
        if noise_schedule not in self.DIFFUSIONS:
            raise L2CError(f"noise_schedule must be one of {sorted(self.DIFFUSIONS)}, got {noise_schedule!r}")
        if learn_sigma:
            raise L2CError("U-ViT predicts noise only: learn_sigma must be False")
        if input_size % patch_size:
            raise L2CError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if num_classes < 1:
            raise L2CError(f"num_classes must be >= 1 (real classes; the null label is added), got {num_classes}")
        if depth < 0:
            raise L2CError(f"depth must be >= 0, got {depth}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.learn_sigma = False
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes  # real classes; index num_classes is the null label
        self.depth = depth
        self.noise_schedule = noise_schedule
        self.dpm_defaults = dict(self.DIFFUSIONS[noise_schedule])  # what l2c.dpm_solver samples with

        self.patch_embed = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        num_patches = self.patch_embed.num_patches
        self.time_embed = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.SiLU(),
            nn.Linear(4 * hidden_size, hidden_size),
        ) if mlp_time_embed else nn.Identity()
        self.label_emb = nn.Embedding(num_classes + 1, hidden_size)
        self.extras = 2  # label token, time token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, hidden_size))

        def block(with_skip: bool) -> UViTBlock:
            return UViTBlock(hidden_size, num_heads, mlp_ratio, qkv_bias=qkv_bias, skip=with_skip)

        self.in_blocks = nn.ModuleList([block(False) for _ in range(depth // 2)])
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(hidden_size)
        self.patch_dim = patch_size ** 2 * in_channels
        self.decoder_pred = nn.Linear(hidden_size, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(in_channels, in_channels, 3, padding=1) if conv else nn.Identity()
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.num_classes

    def cache_blocks(self) -> list[UViTBlock]:
        """Blocks in the official router order: in-blocks, mid-block, out-blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def initialize_weights(self) -> None:
        """The official initialisation: truncated normal (std 0.02) for linears and pos_embed, zero
        biases, unit LayerNorms; the patch conv and label table keep PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- pieces of the forward (also used by conformance tests) ----------------------------------
    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W), (N,), (N,) -> tokens (N, extras + T, D) with positions added."""
        patches = self.patch_embed(x)  # (N, T, D)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        time_token = self.time_embed(timestep_embedding(t, self.hidden_size).to(patches.dtype)).unsqueeze(1)
        label_token = self.label_emb(y).unsqueeze(1)
        return torch.cat([label_token, time_token, patches], dim=1) + self.pos_embed

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, extras + T, D) -> output (N, C, H, W)."""
        x = self.decoder_pred(self.norm(x))[:, self.extras:, :]  # (N, T, p*p*C)
        return self.final_layer(self.unpatchify(x))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) with channels innermost -> (N, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # N C h p1 w p2
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) network times (t_continuous * 1000), y: (N,) labels
        (``num_classes`` = the null label)."""
        h = self.embed(x, t, y)
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        h = self.mid_block(h)
        for blk in self.out_blocks:
            h = blk(h, skips.pop())
        return self.decode(h)


# name: (hidden_size, depth, num_heads) — depth as in the official configs: depth//2 in-blocks,
# one mid-block, depth//2 out-blocks.
UVIT_SIZES = {
    "H": (1152, 28, 16),  # official ImageNet 256 (patch 2): 29 blocks, 58 sub-layers
    "L": (1024, 20, 16),  # official ImageNet 512 large (there with patch 4)
    "M": (768, 16, 12),   # official ImageNet 64 mid (there with patch 4)
    # Small sizes for the embedded default and tests (not official).
    "Tiny": (128, 12, 4),  # 6 + 1 + 6 = 13 blocks
    "Micro": (32, 4, 2),   # 2 + 1 + 2 = 5 blocks
}


def _uvit_factory(hidden: int, depth: int, heads: int, patch: int) -> Callable[..., nn.Module]:
    def make(input_size: int | None = None, in_channels: int | None = None, *, img_size: int | None = None,
             in_chans: int | None = None, embed_dim: int | None = None, **kwargs: Any) -> nn.Module:
        if input_size is not None and img_size is not None and input_size != img_size:
            raise TypeError(f"input_size {input_size} and img_size {img_size} disagree")
        if in_channels is not None and in_chans is not None and in_channels != in_chans:
            raise TypeError(f"in_channels {in_channels} and in_chans {in_chans} disagree")
        if embed_dim is not None and embed_dim != hidden:
            raise TypeError(f"embed_dim {embed_dim} does not match this size ({hidden})")
        kwargs.pop("class_dropout_prob", None)  # DiT option: label dropout is drawn by the trainer
        if kwargs.get("learn_sigma"):
            raise L2CError("U-ViT predicts noise only (the official models have no learned variance): "
                           "learn_sigma must be False")
        size = input_size if input_size is not None else img_size
        chans = in_channels if in_channels is not None else in_chans
        return UViT(input_size=32 if size is None else size, in_channels=4 if chans is None else chans,
                    patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads, **kwargs)
    return make


UVIT_MODELS: dict[str, Callable[..., nn.Module]] = {
    f"U-ViT-{size}/{patch}": _uvit_factory(hidden, depth, heads, patch)
    for size, (hidden, depth, heads) in UVIT_SIZES.items()
    for patch in (2, 4)
}

__all__ = ["UViT", "UViTBlock", "UVIT_MODELS", "UVIT_SIZES"]

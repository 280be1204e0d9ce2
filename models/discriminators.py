"""Discriminators: AVFR's multi-scale patch discriminator and APB2FaceV2's PatchGAN critic.

Images are (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .blocks import resize


@dataclass
class MultiScaleDiscriminatorConfig:
    scales: tuple[float, ...] = (1.0, 0.5)  # one discriminator per input scale
    block_expansion: int = 32  # channels of the first block; doubled per block
    num_blocks: int = 4
    max_features: int = 256
    spectral_norm: bool = True  # spectral norm on every conv; False: instance norm instead


class _DownBlock(nn.Module):
    """4x4 conv (spectral norm, or instance norm after it) -> LeakyReLU(0.2) -> optional 2x average pool."""

    def __init__(self, in_ch: int, out_ch: int, use_sn: bool, use_norm: bool, pool: bool):
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch, 4, 1, 1)
        self.conv = spectral_norm(conv) if use_sn else conv
        self.norm = nn.InstanceNorm2d(out_ch, affine=True) if use_norm else nn.Identity()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm(self.conv(x)), 0.2)
        return F.avg_pool2d(x, 2) if self.pool else x


class PatchDiscriminator2d(nn.Module):
    """One scale: a stack of down blocks, then a 1x1 conv to patch logits."""

    def __init__(self, config: MultiScaleDiscriminatorConfig):
        super().__init__()
        sn, blocks, in_ch = config.spectral_norm, [], 3
        for i in range(config.num_blocks):
            out_ch = min(config.max_features, config.block_expansion * 2**i)
            use_norm = not sn and i > 0  # no norm on the first block (as in pix2pix / FOMM)
            blocks.append(_DownBlock(in_ch, out_ch, sn, use_norm, pool=i < config.num_blocks - 1))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        conv = nn.Conv2d(in_ch, 1, 1)
        self.head = spectral_norm(conv) if sn else conv

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, 3, H, W) -> (features of every block, logits (B, 1, h, w))."""
        features, x = [], image * 2 - 1  # [0, 1] -> [-1, 1]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.head(x)


class MultiScaleDiscriminator(nn.Module):
    """One patch discriminator per scale (AVFR-GAN / FOMM); the image is resized for each."""

    def __init__(self, config: MultiScaleDiscriminatorConfig | None = None):
        super().__init__()
        self.config = config or MultiScaleDiscriminatorConfig()
        self.discs = nn.ModuleList(PatchDiscriminator2d(self.config) for _ in self.config.scales)

    def forward(self, image: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """(B, 3, H, W) -> per scale: (features for feature matching, patch logits (B, 1, h, w))."""
        h, w = image.shape[-2:]
        outputs = []
        for scale, disc in zip(self.config.scales, self.discs):
            scaled = resize(image, (round(h * scale), round(w * scale)))
            outputs.append(disc(scaled))
        return outputs


@dataclass
class PatchDiscriminatorConfig:
    channels: int = 64  # first layer; doubled per stride-2 layer
    layers: int = 3  # stride-2 layers
    max_channels: int = 512


class PatchDiscriminator(nn.Module):
    """PatchGAN critic (pix2pix's 70x70 design at the defaults) for WGAN-GP: no normalisation at all,
    since the gradient penalty is per sample and batch statistics would couple the samples."""

    def __init__(self, config: PatchDiscriminatorConfig | None = None):
        super().__init__()
        self.config = cfg = config or PatchDiscriminatorConfig()
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(cfg.layers + 1):  # cfg.layers stride-2 convs, then one stride-1 conv
            out_ch = min(cfg.max_channels, cfg.channels * 2**i)
            stride = 2 if i < cfg.layers else 1
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride, 1), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> critic map (B, 1, h, w); at 256x256 with the defaults h = w = 30."""
        return self.net(image * 2 - 1)

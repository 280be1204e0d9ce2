"""Discriminator: APB2FaceV2's PatchGAN critic (for WGAN-GP).

Images are (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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

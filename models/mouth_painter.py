"""The mouth painter: a small U-Net that draws teeth, tongue and the dark of an open mouth on a
lip-aligned crop (``talkcodec.painter`` cuts and pastes it).

Input (B, 5, S, S): the warped reference's mouth (RGB in [0, 1]) + two rasters of the target
lips (the inner-lip opening, the outer-lip area). Output (B, 3, S, S): alpha * drawn + (1 - alpha)
* warped, so what the warp already has right (lips, skin) passes through and the network only
paints where it must (what the AVFR-GAN generator's occlusion map does for a whole face).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import Hourglass
from .config import bounded, config_from_dict

RASTERS = 2  # inner-lip opening, outer-lip area


@dataclass
class MouthPainterConfig:
    size: int = bounded(96, 32, 256)  # crop side, pixels
    block_expansion: int = bounded(16, 4, 128)
    num_blocks: int = bounded(3, 1, 5)
    max_features: int = bounded(96, 8, 512)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MouthPainterConfig:
        config = config_from_dict(cls, d)
        if config.size % (2**config.num_blocks):
            raise ValueError(f"painter size {config.size} is not a multiple of 2**num_blocks")
        return config


class MouthPainter(nn.Module):
    def __init__(self, config: MouthPainterConfig):
        super().__init__()
        self.config = config
        self.hourglass = Hourglass(3 + RASTERS, config.block_expansion, config.num_blocks, config.max_features)
        self.head = nn.Conv2d(self.hourglass.out_channels, 4, 3, padding=1)  # RGB + alpha

    def forward(self, warped: torch.Tensor, rasters: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) warped mouth, (B, 2, S, S) lip rasters -> (B, 3, S, S) painted mouth."""
        out = self.head(self.hourglass(torch.cat([warped, rasters], dim=1)))  # (B, 4, S, S)
        drawn, alpha = torch.sigmoid(out[:, :3]), torch.sigmoid(out[:, 3:])
        return alpha * drawn + (1.0 - alpha) * warped

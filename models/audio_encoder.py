"""AVFR audio encoder: a 2D CNN over the log-mel window around the driving frame (ENC_aud + attention query)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import conv_norm_act, normalise_mel
from .config import bounded

#: Stride-2 blocks: 80 mels x 10..80 steps -> 10 x 2..10 (a 200 ms window at 100 steps/s is 20 steps -> 10 x 3).
NUM_DOWN = 3


@dataclass
class AudioEncoderConfig:
    n_mels: int = bounded(80, 8, 256)
    steps: int = bounded(20, 4, 200)  # nominal window length in mel frames (200 ms at a 10 ms hop); 10..80 all work
    channels: int = bounded(32, 1, 256)  # width of the first conv block, doubled at each stride-2 block
    feature_channels: int = bounded(64, 1, 1024)  # channels of the ENC_aud feature map
    query_channels: int = bounded(256, 1, 1024)  # size of the audio query vector used by the audio-visual attention


class AudioEncoder(nn.Module):
    """(B, n_mels, steps) raw log-mel -> ENC_aud feature map (B, C_f, n_mels / 8, ~steps / 8) and query (B, C_q)."""

    def __init__(self, config: AudioEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or AudioEncoderConfig()
        widths = [config.channels * 2**i for i in range(NUM_DOWN + 1)]
        layers = [conv_norm_act(1, widths[0], 3)]
        layers += [conv_norm_act(a, b, 3, stride=2) for a, b in itertools.pairwise(widths)]
        self.body = nn.Sequential(*layers)
        self.feature = nn.Conv2d(widths[-1], config.feature_channels, 3, padding=1)
        self.query = nn.Linear(widths[-1], config.query_channels)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalise_mel(mel).unsqueeze(1)  # (B, n_mels, steps) -> (B, 1, n_mels, steps)
        x = self.body(x)  # (B, C, n_mels / 8, ceil(steps / 8))
        return self.feature(x), self.query(x.mean(dim=(2, 3)))  # (B, C_f, h', w'), (B, C) -> (B, C_q)

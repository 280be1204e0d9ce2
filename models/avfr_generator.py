"""AVFR identity-aware generator: warped motion features + audio + audio-visual attention, decoded by SPADE
residual blocks and a UNet decoder fed with the (warped) identity encoder's skips (AVFR eq. 5)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .blocks import (
    DownBlock,
    ResBlock,
    SPADEResBlock,
    UpBlock,
    blend_head,
    blend_warped,
    conv_norm_act,
    resize,
    warp,
)
from .config import bounded


@dataclass
class GeneratorConfig:
    block_expansion: int = bounded(32, 1, 256)  # channels at full resolution, doubled per downsampling
    max_features: int = bounded(256, 1, 1024)
    num_down: int = bounded(2, 1, 5)  # motion / identity features live at 1 / 2**num_down of the image size
    num_bottleneck: int = bounded(3, 0, 16)  # SPADE residual blocks at the bottleneck
    audio_channels: int = bounded(64, 1, 1024)  # channels of ENC_aud (AudioEncoderConfig.feature_channels)
    query_channels: int = bounded(256, 1, 1024)  # size of the audio query (AudioEncoderConfig.query_channels)
    spade_hidden: int = bounded(64, 1, 512)  # hidden width of the SPADE modulation convs
    image_blend: bool = False  # output = w * warped source + (1 - w) * decoded, w predicted per pixel


class SourceFeatures(NamedTuple):
    """Everything the generator needs from the reference image; computed once per reference."""

    motion: torch.Tensor  # (B, C_m, H / 2**n, W / 2**n) motion encoder output, still in the source pose
    identity: tuple[torch.Tensor, ...]  # identity skips, full resolution first: (B, w_i, H / 2**i, W / 2**i)
    source: torch.Tensor  # (B, 3, H, W) the source image in [0, 1]
    full_resolution: torch.Tensor | None = None  # (B, 3, R, R) the same picture larger: the blend outputs R x R


def widths(config: GeneratorConfig) -> list[int]:
    """Channels at each resolution level 0 (full) .. num_down (bottleneck)."""
    return [min(config.max_features, config.block_expansion * 2**i) for i in range(config.num_down + 1)]


class AudioVisualAttention(nn.Module):
    """ENC_att(i, j) = sigmoid(<W q, ENC_motion(i, j)> / sqrt(C_m)) (AVFR eq. 2, with a learned projection W)."""

    def __init__(self, query_channels: int, motion_channels: int):
        super().__init__()
        self.project = nn.Linear(query_channels, motion_channels)

    def forward(self, query: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """(B, C_q) query, (B, C_m, h, w) motion features -> (B, 1, h, w) attention in [0, 1]."""
        q = self.project(query)  # (B, C_q) -> (B, C_m)
        score = torch.einsum("bc,bchw->bhw", q, motion) / math.sqrt(motion.shape[1])  # (B, h, w)
        return torch.sigmoid(score).unsqueeze(1)  # (B, h, w) -> (B, 1, h, w)


class AVFRGenerator(nn.Module):
    """F_gen = M_gen(F_s, V_i, A_i) (AVFR eq. 5): source features + dense motion + audio -> the driving frame."""

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or GeneratorConfig()
        w = widths(config)
        motion_channels = w[-1]

        # motion encoder: 7x7 stem + num_down DownBlocks -> C_m channels at the bottleneck resolution
        self.motion_encoder = nn.Sequential(
            conv_norm_act(3, w[0], 7), *(DownBlock(a, b) for a, b in itertools.pairwise(w))
        )
        # identity encoder: its own stem + (DownBlock, ResBlock) per level; every level's output is a skip
        self.identity_stem = conv_norm_act(3, w[0], 7)
        self.identity_down = nn.ModuleList(
            nn.Sequential(DownBlock(a, b), ResBlock(b)) for a, b in itertools.pairwise(w)
        )

        self.attention = AudioVisualAttention(config.query_channels, motion_channels)
        # decoder input: warped identity bottleneck + ENC_dec = (ENC_motion, ENC_aud, ENC_att)
        dec_in = w[-1] + motion_channels + config.audio_channels + 1
        self.fuse = conv_norm_act(dec_in, w[-1], 3)
        self.bottleneck = nn.ModuleList(
            SPADEResBlock(w[-1], w[-1], 3, config.spade_hidden) for _ in range(config.num_bottleneck)
        )
        # up path: level i + 1 -> level i, then the warped identity skip of level i is concatenated
        self.up = nn.ModuleList(
            UpBlock(w[i + 1] if i == config.num_down - 1 else 2 * w[i + 1], w[i])
            for i in reversed(range(config.num_down))
        )
        self.out = nn.Conv2d(2 * w[0], 3, 7, padding=3)
        self.blend = blend_head(2 * w[0]) if config.image_blend else None

    def encode_source(self, source: torch.Tensor, full_resolution: torch.Tensor | None = None) -> SourceFeatures:
        """(B, 3, H, W) source in [0, 1] -> its motion features and identity skips (once per reference).

        ``full_resolution``: the same picture larger (B, 3, R, R); with an image blend, ``render`` then
        outputs R x R, warping it (``blocks.blend_warped``)."""
        skips = [self.identity_stem(source)]
        for block in self.identity_down:
            skips.append(block(skips[-1]))
        return SourceFeatures(self.motion_encoder(source), tuple(skips), source, full_resolution)

    def render(self, features: SourceFeatures, deformation: torch.Tensor, occlusion: torch.Tensor,
               audio_feature: torch.Tensor, audio_query: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """Decode one driving frame per batch item.

        deformation (B, h, w, 2) sampling grid into the source, occlusion (B, 1, h, w), audio_feature
        (B, C_a, h', w'), audio_query (B, C_q) -> image (B, 3, H, W) in [0, 1] (R x R with a full-resolution
        source and an image blend), attention (B, 1, h_m, w_m).
        """
        size = features.motion.shape[-2:]
        enc_motion = warp(features.motion, deformation) * resize(occlusion, size)  # (B, C_m, h_m, w_m)
        enc_aud = resize(audio_feature, size)  # (B, C_a, h', w') -> (B, C_a, h_m, w_m)
        enc_att = self.attention(audio_query, enc_motion)  # (B, 1, h_m, w_m)
        enc_dec = torch.cat([enc_motion, enc_aud, enc_att], dim=1)

        skips = [warp(skip, deformation) for skip in features.identity]
        source = features.source
        warped_source = warp(source, deformation)  # (B, 3, H, W) driving-aligned
        guide = warped_source * resize(occlusion, source.shape[-2:])

        x = self.fuse(torch.cat([skips[-1], enc_dec], dim=1))  # (B, C_m, h_m, w_m)
        for block in self.bottleneck:
            x = block(x, guide)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([block(x), skip], dim=1)  # (B, 2 w_i, H / 2**i, W / 2**i)
        image = torch.sigmoid(self.out(x))
        if self.blend is not None:  # sharp where the motion explains the frame, generated where it does not
            weight = torch.sigmoid(self.blend(x))  # (B, 1, H, W)
            reference = source if features.full_resolution is None else features.full_resolution
            image = blend_warped(reference, deformation, weight, image)
        return {"image": image, "attention": enc_att}

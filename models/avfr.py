"""AVFR-GAN's generator side as one module: keypoint detector, dense motion, audio encoder, generator.

Training calls ``forward``; a receiver calls ``prepare`` once per reference image and ``animate`` per frame
with the keypoints it received (the sender runs ``keypoints`` on each driving frame).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .audio_encoder import AudioEncoder, AudioEncoderConfig
from .avfr_generator import AVFRGenerator, GeneratorConfig, SourceFeatures
from .config import bounded, config_from_dict
from .dense_motion import DenseMotionConfig, DenseMotionNetwork
from .keypoint_detector import KeypointDetector, KeypointDetectorConfig


@dataclass
class AVFRConfig:
    size: int = bounded(256, 16, 1024)  # frames are size x size
    num_kp: int = bounded(10, 1, 64)  # K, shared by the keypoint detector and the dense motion network
    keypoints: KeypointDetectorConfig = field(default_factory=KeypointDetectorConfig)
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        if not self.keypoints.num_kp == self.dense_motion.num_kp == self.num_kp:
            raise ValueError(f"num_kp mismatch: config {self.num_kp}, keypoints {self.keypoints.num_kp}, "
                             f"dense_motion {self.dense_motion.num_kp}")  # fmt: skip
        if self.keypoints.in_channels != 5:
            raise ValueError(
                f"the keypoint detector reads RGB + mesh + mask = 5 channels, not {self.keypoints.in_channels}"
            )
        if (self.audio.feature_channels, self.audio.query_channels) != (
            self.generator.audio_channels, self.generator.query_channels
        ):  # fmt: skip
            raise ValueError(
                "audio.feature_channels / query_channels must equal generator.audio_channels / query_channels"
            )
        for name, sub in (("keypoints", self.keypoints), ("dense_motion", self.dense_motion)):
            inner = round(self.size * sub.scale)
            if inner % 2**sub.num_blocks:
                raise ValueError(
                    f"{name}: size * scale = {inner} is not divisible by 2**num_blocks = {2**sub.num_blocks}"
                )
        if self.size % 2**self.generator.num_down:
            raise ValueError(f"size {self.size} is not divisible by 2**generator.num_down")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AVFRConfig:
        """Inverse of ``to_dict``; lists become tuples; unknown keys raise ValueError, non-dicts TypeError."""
        return config_from_dict(cls, d)

    @classmethod
    def small(cls) -> AVFRConfig:
        """CPU-trainable: 128 x 128, narrow networks (batch 4 forward + backward ~0.3 s on 2 cores)."""
        return cls(
            size=128,
            keypoints=KeypointDetectorConfig(block_expansion=16, num_blocks=4, max_features=128),
            dense_motion=DenseMotionConfig(block_expansion=16, num_blocks=4, max_features=128),
            audio=AudioEncoderConfig(channels=16, feature_channels=32, query_channels=64),
            generator=GeneratorConfig(
                block_expansion=12,
                max_features=96,
                num_bottleneck=2,
                audio_channels=32,
                query_channels=64,
                spade_hidden=32,
                image_blend=True,
            ),
        )

    @classmethod
    def tiny(cls) -> AVFRConfig:
        """For tests: 64 x 64, a few channels per layer."""
        return cls(
            size=64,
            keypoints=KeypointDetectorConfig(block_expansion=4, num_blocks=2, max_features=8),
            dense_motion=DenseMotionConfig(block_expansion=4, num_blocks=2, max_features=8),
            audio=AudioEncoderConfig(channels=4, feature_channels=4, query_channels=8),
            generator=GeneratorConfig(
                block_expansion=4, max_features=8, num_bottleneck=1, audio_channels=4, query_channels=8, spade_hidden=4,
                image_blend=True,
            ),
        )


class AVFRModel(nn.Module):
    """Keypoints (sender) + dense motion, audio encoder and identity-aware generator (receiver)."""

    def __init__(self, config: AVFRConfig | None = None):
        super().__init__()
        self.config = config = config or AVFRConfig()
        self.keypoint_detector = KeypointDetector(config.keypoints)
        self.dense_motion = DenseMotionNetwork(config.dense_motion)
        self.audio_encoder = AudioEncoder(config.audio)
        self.generator = AVFRGenerator(config.generator)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def keypoints(self, image: torch.Tensor, mesh: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) image, (B, 1, S, S) mesh raster and mask -> value (B, K, 2), jacobian, heatmap."""
        return self.keypoint_detector(image, mesh, mask)

    def prepare(self, source: torch.Tensor, full_resolution: torch.Tensor | None = None) -> SourceFeatures:
        """(B, 3, S, S) reference image -> its generator features (once per reference); ``full_resolution``
        (B, 3, R, R), the same picture larger, makes ``animate`` draw R x R (needs the image blend)."""
        return self.generator.encode_source(source, full_resolution)

    def animate(self, features: SourceFeatures, kp_source: dict[str, torch.Tensor], kp_driving: dict[str, torch.Tensor],
                mel: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """Render the driving frame: image (B, 3, S, S), attention, occlusion (B, 1, h, w), deformation (B, h, w, 2).

        mel: (B, n_mels, steps) raw log-mel window around the driving frame.
        """
        motion = self.dense_motion(features.source, kp_driving, kp_source)
        audio_feature, audio_query = self.audio_encoder(mel)
        out = self.generator.render(features, motion["deformation"], motion["occlusion"], audio_feature, audio_query)
        return {**out, "occlusion": motion["occlusion"], "deformation": motion["deformation"]}

    def forward(self, source: torch.Tensor, source_mesh: torch.Tensor, source_mask: torch.Tensor,
                driving: torch.Tensor, driving_mesh: torch.Tensor, driving_mask: torch.Tensor,
                mel: torch.Tensor, full_resolution: torch.Tensor | None = None) -> dict[str, Any]:  # fmt: skip
        """Training path: reconstruct ``driving`` from ``source`` + both frames' keypoints + the audio window
        (at the size of ``full_resolution``, the source larger, if given: see ``prepare``).

        Returns image, attention, occlusion, deformation, kp_source and kp_driving (the detector's dicts).
        """
        kp_source = self.keypoints(source, source_mesh, source_mask)
        kp_driving = self.keypoints(driving, driving_mesh, driving_mask)
        out = self.animate(self.prepare(source, full_resolution), kp_source, kp_driving, mel)
        return {**out, "kp_source": kp_source, "kp_driving": kp_driving}

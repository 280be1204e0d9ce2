"""The APB2FaceV2 bundle: audio-aware fuser phi + multi-face reenactor psi, with one JSON-able config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .adaconv_reenactor import AdaConvReenactor, ReenactorConfig
from .apb_fuser import AudioAwareFuser, FuserConfig
from .config import bounded, config_from_dict


@dataclass
class APBConfig:
    size: int = bounded(256, 16, 1024)  # square crop side the reenactor renders
    fuser: FuserConfig = field(default_factory=FuserConfig)
    reenactor: ReenactorConfig = field(default_factory=ReenactorConfig)

    def __post_init__(self) -> None:
        if self.fuser.latent != self.reenactor.latent:
            raise ValueError(f"fuser.latent ({self.fuser.latent}) != reenactor.latent ({self.reenactor.latent})")
        if self.size % 4:
            raise ValueError(f"size must be a multiple of 4, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> APBConfig:
        """Inverse of ``to_dict``; lists become tuples; unknown keys raise ValueError."""
        return config_from_dict(cls, d)

    @classmethod
    def small(cls) -> APBConfig:
        """CPU-trainable: 128x128 crops, narrow full-resolution layers (they dominate the cost), 6 cells."""
        return cls(
            size=128,
            fuser=FuserConfig(audio_channels=(32, 48, 64, 96, 128), latent=128, hidden=32),
            reenactor=ReenactorConfig(
                stem_channels=16, cell_channels=64, cells=6, latent=128, adaconv_hidden=64, image_warp=True
            ),
        )

    @classmethod
    def tiny(cls) -> APBConfig:
        """For tests: 64x64 crops, minimal channels."""
        return cls(
            size=64,
            fuser=FuserConfig(audio_channels=(4, 4, 8, 8, 16), time_convs=2, hidden=8, latent=16),
            reenactor=ReenactorConfig(
                stem_channels=4, cell_channels=8, cells=2, latent=16, adaconv_hidden=8, mlp_ratio=2, image_warp=True
            ),
        )


class PreparedReference(NamedTuple):
    """What the receiver keeps of its reference image: psi_E's features and the image (for the warp)."""

    features: torch.Tensor  # (B, C, size/4, size/4)
    image: torch.Tensor  # (B, 3, R, R) in [0, 1], R >= size: the picture the output is warped from


class APBModel(nn.Module):
    """phi + psi. The sender's side needs nothing (pose and blink travel, audio is already in the call);
    the receiver runs ``prepare`` once per reference, then ``geometry`` + ``render`` per frame."""

    def __init__(self, config: APBConfig | None = None):
        super().__init__()
        self.config = config or APBConfig()
        self.fuser = AudioAwareFuser(self.config.fuser)
        self.reenactor = AdaConvReenactor(self.config.reenactor)

    def geometry(self, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi (eq. 2): (B, n_mels, steps), (B, 3), (B, 2) -> f_geo (B, latent), landmarks (B, L, 2)."""
        return self.fuser(mel, pose, blink)

    def prepare(self, reference: torch.Tensor, full_resolution: torch.Tensor | None = None) -> PreparedReference:
        """psi_E: reference (B, 3, size, size) -> features (B, C, size/4, size/4), and the image to warp:
        ``full_resolution`` (B, 3, R, R), the same picture larger, makes ``render`` output R x R."""
        return PreparedReference(self.reenactor.encode(reference), reference if full_resolution is None else full_resolution)

    def render(self, prepared: PreparedReference, f_geo: torch.Tensor) -> torch.Tensor:
        """psi_T + psi_D: the reference from ``prepare`` and f_geo -> image (B, 3, R, R) in [0, 1]."""
        return self.reenactor.decode(prepared.features, f_geo, prepared.image)

    def forward(
        self, reference: torch.Tensor, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor,
        full_resolution: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training pass: dict(image (B, 3, H, W), or R x R with ``full_resolution``; landmarks (B, L, 2), f_geo (B, latent))."""
        f_geo, landmarks = self.geometry(mel, pose, blink)
        image = self.render(self.prepare(reference, full_resolution), f_geo)
        return {"image": image, "landmarks": landmarks, "f_geo": f_geo}

"""The mouth coder: `avfr`'s learned keypoints, coding what the head pose and the audio cannot.

AVFR-GAN's sender sends keypoints a detector learns; here the detector reads the face mesh
(the paper's mesh prior) after the head pose is taken out, and learns a code of what is left
to say about the mouth:

    z_t = E(c_t)                            sent, quantized with step 1 (C values a frame)
    c^_t = a_t + D(z^_t, a_t, c_r)          the frame's mouth coefficients at the receiver

with c the K mouth coefficients of ``talkcodec.mouth.MouthBasis`` (units of their spread), r the
reference, a_t the mouth fuser's prediction from the heard audio (the paper's audio branch
attending the mouth), z^ the quantized code. Training (``training.mouth_code``) adds uniform
noise for the rounding (Balle et al.'s proxy) and an L1 rate term on what the stream codes:
the code's change from frame to frame and from the reference's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .apb_fuser import _mlp
from .config import bounded, config_from_dict


@dataclass
class MouthCoderConfig:
    coefficients: int = bounded(8, 1, 64)  # mouth coefficients (the basis's K)
    code: int = bounded(4, 1, 32)  # values a frame sends
    hidden: int = bounded(96, 4, 1024)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MouthCoderConfig:
        return config_from_dict(cls, d)

    @classmethod
    def tiny(cls) -> MouthCoderConfig:
        """For tests."""
        return cls(coefficients=4, code=2, hidden=8)


class MouthCoder(nn.Module):
    """Encoder (sender) and decoder (receiver) of the mouth code."""

    def __init__(self, config: MouthCoderConfig | None = None):
        super().__init__()
        self.config = config = config or MouthCoderConfig()
        k, h = config.coefficients, config.hidden
        self.encoder = nn.Sequential(_mlp([k, h, h]), nn.Linear(h, config.code))
        self.decoder = nn.Sequential(_mlp([config.code + 2 * k, h, h]), nn.Linear(h, k))

    def encode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, K) a frame's coefficients -> (B, C) its code in quantization steps (unrounded). The
        sender needs no reference: the reference packet carries the reference's own code."""
        return self.encoder(coefficients)

    def decode(self, code: torch.Tensor, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """code (B, C) rounded, audio (B, K) the fuser's prediction, reference (B, K) -> (B, K) coefficients."""
        return audio + self.decoder(torch.cat([code, audio - reference, reference], dim=1))

"""The mouth coder: `avfr`'s learned keypoints, coding what the head pose and the audio cannot.

AVFR-GAN's sender sends keypoints a detector learns; here the detector reads the face mesh
(the paper's mesh prior) after the head pose is taken out, and learns a code of what is left
to say about the mouth:

    z_t = c_t[:C] / s + E(c_t)                            sent, rounded (C values a frame)
    c^_t = [z^_t * s, a_t[C:]] + D(z^_t, a_t - c_r, c_r)    the frame's mouth coefficients at the receiver

with c the K mouth coefficients of ``talkcodec.mouth.MouthBasis`` (units of their spread, the
strongest first), r the reference, a_t the mouth fuser's prediction from the heard audio (the
paper's audio branch attending the mouth), z^ the rounded code and s a learned step per code
value. E's and D's last layers start at zero, so an untrained coder sends the first C
coefficients with step ``initial_step`` and takes the rest from the audio; training learns only
what improves on that (a coder started from random codes learned a worse code: docs/MODELS.md).
Training (``training.mouth_code``) adds uniform noise for the rounding (Balle et al.'s proxy)
and an L1 rate term on what the stream codes: the code's change from frame to frame and from
the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .apb_fuser import _mlp
from .config import bounded, config_from_dict


@dataclass
class MouthCoderConfig:
    coefficients: int = bounded(8, 1, 64)  # mouth coefficients (the basis's K)
    code: int = bounded(6, 1, 32)  # values a frame sends, at most ``coefficients``
    hidden: int = bounded(96, 4, 1024)
    initial_step: float = bounded(0.25, 1e-3, 10.0)  # the code's quantization step before training, in spreads

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
        k, c, h = config.coefficients, config.code, config.hidden
        if c > k:
            raise ValueError(f"MouthCoderConfig.code = {c} is more than its {k} coefficients")
        self.encoder = nn.Sequential(_mlp([k, h, h]), nn.Linear(h, c))
        self.decoder = nn.Sequential(_mlp([c + 2 * k, h, h]), nn.Linear(h, k))
        for last in (self.encoder[-1], self.decoder[-1]):  # start as plain coefficients (module docstring)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.log_step = nn.Parameter(torch.full((c,), math.log(config.initial_step)))

    def encode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, K) a frame's coefficients -> (B, C) its code in quantization steps (unrounded). The
        sender needs no reference: the reference packet carries the reference's own code."""
        c = self.config.code
        return coefficients[:, :c] * torch.exp(-self.log_step) + self.encoder(coefficients)

    def decode(self, code: torch.Tensor, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """code (B, C) rounded, audio (B, K) the fuser's prediction, reference (B, K) -> (B, K) coefficients."""
        base = torch.cat([code * torch.exp(self.log_step), audio[:, self.config.code :]], dim=1)  # (B, K)
        return base + self.decoder(torch.cat([code, audio - reference, reference], dim=1))

"""The mouth fuser: APB2FaceV2's fuser phi predicting the frame's mouth shape instead of f_geo.

    c_t = phi_D([f_A, f_H, f_E, f_R])                        (eq. 2, with f_R added)

The paper's branches (``apb_fuser.FuserBranches``: audio phi_A, head pose phi_H, eye blink
phi_E) plus one more, f_R, on the reference's own mouth coefficients (who is speaking: how wide
their lips are, how their jaw sits), and phi_D ends in the K mouth coefficients of
``talkcodec.mouth.MouthBasis`` (in units of each coefficient's spread), not a latent. The
geometry loss (eq. 6) then is the L1 distance of the lower-face landmarks the coefficients make.

With a few minutes of speech to learn from, one network's prediction depends on its random start
as much as on the data (unseen lip-sync 0.29-0.39 over four starts of one recipe): the fuser is
the mean of ``members`` such networks, each trained on its own loss (an ensemble), which halves
that spread for ``members`` times the compute (~2 ms each a frame on one CPU core).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .apb_fuser import BranchConfig, FuserBranches, _mlp
from .config import bounded, config_from_dict


@dataclass
class MouthFuserConfig(BranchConfig):
    coefficients: int = bounded(8, 1, 64)  # mouth coefficients predicted (the basis's first K)
    dropout: float = bounded(0.2, 0.0, 0.9)  # on the fused features, in training
    members: int = bounded(1, 1, 8)  # networks averaged (an ensemble of independently trained ones)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MouthFuserConfig:
        return config_from_dict(cls, d)

    @classmethod
    def small(cls) -> MouthFuserConfig:
        """What the shipped weights use: 3 members of ~0.45 M parameters, ~6 ms a frame for all three on one CPU core."""
        return cls(audio_channels=(32, 48, 64, 96, 128), time_convs=4, hidden=32, latent=128, members=3)

    @classmethod
    def tiny(cls) -> MouthFuserConfig:
        """For tests."""
        return cls(audio_channels=(4, 4, 8), time_convs=2, hidden=8, latent=16, coefficients=4)


class MouthFuserNetwork(FuserBranches):
    """One member: (log-mel window, head pose, eye blink, reference mouth) -> the frame's mouth coefficients."""

    def __init__(self, config: MouthFuserConfig):
        super().__init__(config)
        self.config = config
        self.reference_mlp = _mlp([config.coefficients, config.hidden, config.hidden])
        width = self.branch_width + config.hidden
        self.fuse = nn.Sequential(nn.Dropout(config.dropout), _mlp([width, config.latent, config.latent]),
                                  nn.Linear(config.latent, config.coefficients))  # fmt: skip

    def forward(self, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, steps) log-mel, pose (B, 3) degrees, blink (B, 2) eye aspect ratios,
        reference (B, K) the reference's coefficients -> (B, K) the frame's, all coefficients in
        units of their spread (``MouthBasis.scale``)."""
        features = torch.cat([self.branches(self.config, mel, pose, blink), self.reference_mlp(reference)], dim=1)
        return reference + self.fuse(features)  # a change from the reference's mouth


class MouthFuser(nn.Module):
    """The mean of ``config.members`` independently trained ``MouthFuserNetwork``s."""

    def __init__(self, config: MouthFuserConfig | None = None):
        super().__init__()
        self.config = config or MouthFuserConfig()
        self.members = nn.ModuleList(MouthFuserNetwork(self.config) for _ in range(self.config.members))

    def member_outputs(self, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(members, B, K): each member's prediction (training gives each its own loss)."""
        return torch.stack([member(mel, pose, blink, reference) for member in self.members])

    def forward(self, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """As ``MouthFuserNetwork.forward``: (B, K) coefficients, the members' mean."""
        return self.member_outputs(mel, pose, blink, reference).mean(dim=0)

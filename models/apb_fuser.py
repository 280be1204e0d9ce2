"""APB2FaceV2's audio-aware fuser phi: audio + head pose + eye blink -> geometry vector f_geo.

    f_geo = phi_D([f_A, f_H, f_E])                                             (eq. 2)

f_A comes from the audio branch phi_A (five convolutions along the mel axis of every time step,
then convolutions across time), f_H and f_E from three-layer MLPs on the head pose and the eye
blink. A linear landmark head on f_geo carries the geometry loss L_G (eq. 6), which supervises
f_geo with the frame's facial landmarks.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import normalise_mel
from .config import bounded


@dataclass
class BranchConfig:
    """The fuser's input branches: audio (phi_A), head pose (phi_H), eye blink (phi_E)."""

    n_mels: int = bounded(80, 8, 256)  # mel bands of the input window
    steps: int = bounded(20, 4, 200)  # mel frames per window the time convolutions are laid out for (10..80 all work)
    # one stride-2 1x3 conv along mel per entry
    audio_channels: tuple[int, ...] = bounded((72, 108, 162, 243, 256), 1, 1024, length=(1, 8))
    time_convs: int = bounded(5, 1, 16)  # convolutions across time
    hidden: int = bounded(64, 1, 1024)  # width of the pose and blink MLPs
    latent: int = bounded(256, 1, 1024)  # size of f_A (and of f_geo)
    pose_scale: float = bounded(30.0, 0.001, 1000.0)  # degrees -> O(1) network input
    blink_mean: float = bounded(0.28, 0.0, 1.0)  # typical open-eye aspect ratio
    blink_scale: float = bounded(0.1, 0.001, 10.0)


@dataclass
class FuserConfig(BranchConfig):
    num_landmarks: int = bounded(478, 1, 1024)  # mediapipe face mesh


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) after every one."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers)


def _time_strides(steps: int, count: int) -> list[int]:
    """Stride 2 while the sequence stays >= 2 long (kernel 3, padding 1), then stride 1."""
    strides = []
    for _ in range(count):
        stride = 2 if math.ceil(steps / 2) >= 2 else 1
        steps = math.ceil(steps / stride)
        strides.append(stride)
    return strides


class FuserBranches(nn.Module):
    """phi_A, phi_H, phi_E: (log-mel window, head pose, eye blink) -> their features, concatenated."""

    TIME_OUT = 2  # time steps left after the time convolutions (the authors' code: 2)

    def __init__(self, config: BranchConfig):
        super().__init__()
        # phi_A, part 1: per time step, 1x3 convs with stride 2 along the mel axis.
        freq_layers: list[nn.Module] = []
        freq, in_ch = config.n_mels, 1
        for out_ch in config.audio_channels:
            freq_layers += [nn.Conv2d(in_ch, out_ch, (1, 3), (1, 2), (0, 1)), nn.LeakyReLU(0.2, inplace=True)]
            freq, in_ch = math.ceil(freq / 2), out_ch
        self.freq_convs = nn.Sequential(*freq_layers)
        # phi_A, part 2: convs across time over the (channels x remaining mel bins) features.
        time_layers: list[nn.Module] = []
        in_ch = in_ch * freq
        for stride in _time_strides(config.steps, config.time_convs):
            time_layers += [nn.Conv1d(in_ch, config.latent, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = config.latent
        self.time_convs = nn.Sequential(*time_layers)
        self.time_pool = nn.AdaptiveAvgPool1d(self.TIME_OUT)  # any window length -> 2 steps
        self.audio_out = nn.Sequential(nn.Linear(in_ch * self.TIME_OUT, config.latent), nn.LeakyReLU(0.2, True))
        # phi_H and phi_E: three linear layers each.
        self.pose_mlp = _mlp([3, config.hidden, config.hidden, config.hidden])
        self.blink_mlp = _mlp([2, config.hidden, config.hidden, config.hidden])
        self.branch_width = config.latent + 2 * config.hidden

    def audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        """phi_A: (B, n_mels, steps) raw log-mel -> f_A (B, latent)."""
        x = normalise_mel(mel).transpose(1, 2).unsqueeze(1)  # (B, n_mels, T) -> (B, 1, T, n_mels)
        x = self.freq_convs(x)  # (B, C, T, F')
        b, c, t, f = x.shape
        x = x.permute(0, 1, 3, 2).reshape(b, c * f, t)  # (B, C, T, F') -> (B, C*F', T)
        x = self.time_pool(self.time_convs(x))  # (B, latent, 2)
        return self.audio_out(x.flatten(1))  # (B, latent*2) -> (B, latent)

    def branches(self, config: BranchConfig, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        """[f_A, f_H, f_E] (B, latent + 2 * hidden) of mel (B, n_mels, steps), pose (B, 3) yaw/pitch/roll
        in degrees and blink (B, 2) eye aspect ratios (right, left)."""
        if mel.dim() != 3 or mel.shape[1] != config.n_mels:
            raise ValueError(f"mel must be (B, {config.n_mels}, steps), got {tuple(mel.shape)}")
        f_pose = self.pose_mlp(pose / config.pose_scale)
        f_blink = self.blink_mlp((blink - config.blink_mean) / config.blink_scale)
        return torch.cat([self.audio_features(mel), f_pose, f_blink], dim=1)


class AudioAwareFuser(FuserBranches):
    """phi: (log-mel window, head pose, eye blink) -> (f_geo, landmarks)."""

    def __init__(self, config: FuserConfig | None = None):
        config = config or FuserConfig()
        super().__init__(config)
        self.config = config
        # phi_D: three linear layers, the last without activation.
        self.fuse = nn.Sequential(_mlp([self.branch_width, config.latent, config.latent]), nn.Linear(config.latent, config.latent))
        self.landmark_head = nn.Linear(config.latent, 2 * config.num_landmarks)

    def forward(self, mel: torch.Tensor, pose: torch.Tensor, blink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, steps) log-mel, pose (B, 3) yaw/pitch/roll in degrees, blink (B, 2) eye aspect
        ratios (right, left) -> f_geo (B, latent), landmarks (B, L, 2) in crop coords, [-1, 1]."""
        cfg = self.config
        f_geo = self.fuse(self.branches(cfg, mel, pose, blink))  # eq. 2
        f_geo = F.normalize(f_geo, dim=1) * math.sqrt(cfg.latent)  # unit norm per sample, O(1) entries
        landmarks = self.landmark_head(f_geo).view(-1, cfg.num_landmarks, 2)  # (B, 2L) -> (B, L, 2)
        return f_geo, landmarks

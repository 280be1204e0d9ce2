"""FOMM dense motion network: keypoints + jacobians -> a dense backward deformation and an occlusion map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Hourglass, make_grid, resize, warp
from .config import bounded

#: Added to the driving jacobians before inverting them, so that a singular one cannot raise.
JACOBIAN_EPS = 1e-6


@dataclass
class DenseMotionConfig:
    num_kp: int = bounded(10, 1, 64)
    block_expansion: int = bounded(64, 1, 256)
    num_blocks: int = bounded(5, 1, 8)
    max_features: int = bounded(256, 1, 1024)  # FOMM uses 1024; 256 keeps the whole AVFR model under 16M parameters
    scale: float = bounded(0.25, 0.05, 1.0)  # the network runs at this fraction of the source image size
    kp_variance: float = bounded(0.01, 0.0001, 1.0)  # variance of the gaussians placed on the keypoints
    occlusion: bool = True  # predict an occlusion map (else it is all ones)


def keypoint_gaussians(value: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """(B, K, 2) keypoints -> (B, K, h, w) unnormalised gaussians exp(-|z - x_k|^2 / (2 variance)) (FOMM Sec. 3.2, H_k)."""
    grid = make_grid(height, width, value)  # (h, w, 2)
    offset = grid - value[:, :, None, None, :]  # (h, w, 2) - (B, K, 1, 1, 2) -> (B, K, h, w, 2)
    return torch.exp(-0.5 * offset.pow(2).sum(-1) / variance)


def sparse_motions(kp_driving: dict[str, torch.Tensor], kp_source: dict[str, torch.Tensor], height: int, width: int,
                   ) -> torch.Tensor:  # fmt: skip
    """First-order motion per keypoint, T_{s<-d}(z) = x_s + J_s J_d^{-1} (z - x_d) (FOMM eqs. 3-4), plus the
    identity for the background: (B, K + 1, h, w, 2) backward sampling grids, background first."""
    value_d, value_s = kp_driving["value"], kp_source["value"]
    b, k, _ = value_d.shape
    grid = make_grid(height, width, value_d)  # (h, w, 2)
    eye = torch.eye(2, dtype=value_d.dtype, device=value_d.device)
    jacobian = kp_source["jacobian"] @ torch.linalg.inv(kp_driving["jacobian"] + JACOBIAN_EPS * eye)  # (B, K, 2, 2)
    offset = grid - value_d.view(b, k, 1, 1, 2)  # (h, w, 2) - (B, K, 1, 1, 2) -> (B, K, h, w, 2)
    # (B, K, 1, 1, 2, 2) @ (B, K, h, w, 2, 1) -> (B, K, h, w, 2, 1) -> (B, K, h, w, 2)
    offset = (jacobian.view(b, k, 1, 1, 2, 2) @ offset.unsqueeze(-1)).squeeze(-1)
    motions = offset + value_s.view(b, k, 1, 1, 2)  # (B, K, h, w, 2)
    background = grid.expand(b, 1, height, width, 2)  # (h, w, 2) -> (B, 1, h, w, 2)
    return torch.cat([background, motions], dim=1)


class DenseMotionNetwork(nn.Module):
    """Combines the K sparse motions (and the background's identity) into one dense motion with a learned
    soft mask M, and predicts an occlusion map O (FOMM Sec. 3.2 "Combining local motions", Sec. 3.3)."""

    def __init__(self, config: DenseMotionConfig | None = None):
        super().__init__()
        self.config = config = config or DenseMotionConfig()
        # per sparse motion (K + 1): a heatmap difference channel + the source warped by that motion (3 channels)
        in_channels = (config.num_kp + 1) * (1 + 3)
        self.hourglass = Hourglass(in_channels, config.block_expansion, config.num_blocks, config.max_features)
        self.mask = nn.Conv2d(self.hourglass.out_channels, config.num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels, 1, 7, padding=3) if config.occlusion else None

    def forward(self, source: torch.Tensor, kp_driving: dict[str, torch.Tensor], kp_source: dict[str, torch.Tensor],
                ) -> dict[str, torch.Tensor]:  # fmt: skip
        """(B, 3, H, W) source + the detector's dicts -> deformation (B, h, w, 2) (sampling grid into the
        source), occlusion (B, 1, h, w) in [0, 1] and mask (B, K + 1, h, w), h = H * scale."""
        b = source.shape[0]
        h, w = round(source.shape[2] * self.config.scale), round(source.shape[3] * self.config.scale)
        source = resize(source, (h, w))  # (B, 3, h, w)
        k1 = self.config.num_kp + 1

        # heatmap differences (driving minus source), zero for the background (FOMM H_k)
        heatmaps = keypoint_gaussians(kp_driving["value"], h, w, self.config.kp_variance) - keypoint_gaussians(
            kp_source["value"], h, w, self.config.kp_variance
        )  # (B, K, h, w)
        heatmaps = torch.cat([heatmaps.new_zeros(b, 1, h, w), heatmaps], dim=1)  # (B, K + 1, h, w)

        motions = sparse_motions(kp_driving, kp_source, h, w)  # (B, K + 1, h, w, 2)
        repeated = source.unsqueeze(1).expand(b, k1, 3, h, w).reshape(b * k1, 3, h, w)  # (B * (K + 1), 3, h, w)
        deformed = warp(repeated, motions.reshape(b * k1, h, w, 2))  # (B * (K + 1), 3, h, w)
        deformed = deformed.view(b, k1, 3, h, w)  # (B * (K + 1), 3, h, w) -> (B, K + 1, 3, h, w)

        x = torch.cat([heatmaps.unsqueeze(2), deformed], dim=2)  # (B, K + 1, 4, h, w)
        features = self.hourglass(x.view(b, k1 * 4, h, w))  # (B, K + 1, 4, h, w) -> (B, 4(K + 1), h, w) -> (B, C, h, w)

        mask = F.softmax(self.mask(features), dim=1)  # (B, K + 1, h, w)
        # (B, K + 1, h, w, 1) * (B, K + 1, h, w, 2) summed over the motions -> (B, h, w, 2): M_0 z + sum_k M_k T_k(z)
        deformation = (mask.unsqueeze(-1) * motions).sum(dim=1)
        if self.occlusion is None:
            occlusion = source.new_ones(b, 1, h, w)
        else:
            occlusion = torch.sigmoid(self.occlusion(features))  # (B, 1, h, w)
        return {"deformation": deformation, "occlusion": occlusion, "mask": mask}

"""FOMM keypoint detector on AVFR's 5-channel input (RGB + face-mesh raster + segmentation mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Hourglass, make_grid, resize
from .config import bounded


@dataclass
class KeypointDetectorConfig:
    num_kp: int = bounded(10, 1, 64)
    in_channels: int = bounded(5, 1, 8)  # RGB + mesh raster + segmentation mask (AVFR's structural priors)
    block_expansion: int = bounded(32, 1, 256)
    num_blocks: int = bounded(5, 1, 8)
    max_features: int = bounded(256, 1, 1024)  # FOMM uses 1024; 256 keeps the whole AVFR model under 16M parameters
    scale: float = bounded(0.25, 0.05, 1.0)  # the hourglass runs at this fraction of the input size
    temperature: float = bounded(0.1, 0.001, 10.0)  # softmax temperature of the heatmaps
    jacobian: bool = True  # predict a 2x2 jacobian per keypoint (FOMM's first-order term)


def soft_argmax(heatmap: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) spatial probabilities -> (B, K, 2) expected (x, y) in [-1, 1] (FOMM's gaussian2kp)."""
    grid = make_grid(heatmap.shape[2], heatmap.shape[3], heatmap)  # (h, w, 2)
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))  # (B, K, h, w, 1) * (h, w, 2) -> (B, K, 2)


class KeypointDetector(nn.Module):
    """Image + mesh + mask -> K keypoints with jacobians (FOMM Sec. 3; AVFR eq. 1: {x_k, J_k} = M_kp(I))."""

    def __init__(self, config: KeypointDetectorConfig | None = None):
        super().__init__()
        self.config = config = config or KeypointDetectorConfig()
        self.hourglass = Hourglass(config.in_channels, config.block_expansion, config.num_blocks, config.max_features)
        features = self.hourglass.out_channels
        self.heatmap = nn.Conv2d(features, config.num_kp, 7, padding=3)
        self.jacobian = None
        if config.jacobian:
            self.jacobian = nn.Conv2d(features, 4 * config.num_kp, 7, padding=3)
            nn.init.zeros_(self.jacobian.weight)  # every jacobian starts as the identity
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(config.num_kp))

    def forward(self, image: torch.Tensor, mesh: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) image, (B, 1, H, W) mesh raster and mask -> value (B, K, 2), jacobian (B, K, 2, 2),
        heatmap (B, K, h, w) with h = H * scale."""
        x = torch.cat([image, mesh, mask], dim=1)  # (B, 5, H, W)
        size = (round(x.shape[2] * self.config.scale), round(x.shape[3] * self.config.scale))
        features = self.hourglass(resize(x, size))  # (B, C, h, w)
        logits = self.heatmap(features)  # (B, K, h, w)
        b, k, h, w = logits.shape
        heatmap = F.softmax(logits.flatten(2) / self.config.temperature, dim=2)  # (B, K, h*w)
        heatmap = heatmap.view(b, k, h, w)  # (B, K, h*w) -> (B, K, h, w)
        out = {"value": soft_argmax(heatmap), "heatmap": heatmap}
        if self.jacobian is None:
            out["jacobian"] = torch.eye(2, dtype=x.dtype, device=x.device).expand(b, k, 2, 2)
            return out
        jacobian_map = self.jacobian(features).view(b, k, 4, h, w)  # (B, 4K, h, w) -> (B, K, 4, h, w)
        jacobian = (heatmap.unsqueeze(2) * jacobian_map).sum(dim=(3, 4))  # heatmap-weighted mean: (B, K, 4)
        out["jacobian"] = jacobian.view(b, k, 2, 2)  # (B, K, 4) -> (B, K, 2, 2)
        return out

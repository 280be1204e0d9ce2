"""APB2FaceV2's multi-face reenactor psi with adaptive convolution (AdaConv).

    I_T = psi_D(psi_T(psi_E(I_R)))                                             (eq. 3)
    F_out = Conv(F_in; W),  W = Linear(f_geo)                                  (eq. 4)

psi_E encodes the reference face once; psi_T is a chain of residual cells, each followed by an
AdaConv whose per-sample depthwise k x k kernel and bias are predicted from f_geo; psi_D
decodes back to an image. ``encode`` / ``decode`` are split so a receiver encodes its reference
image once and then only runs ``decode`` per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import blend_head, blend_warped, conv_norm_act, make_grid
from .config import bounded


@dataclass
class ReenactorConfig:
    stem_channels: int = bounded(64, 1, 256)  # after the 7x7 stem; the first stride-2 conv doubles it
    cell_channels: int = bounded(152, 1, 1024)  # feature width at 1/4 resolution
    cells: int = bounded(9, 1, 32)  # L in the paper
    latent: int = bounded(256, 1, 1024)  # size of f_geo
    kernel: int = bounded(3, 1, 7)  # AdaConv kernel: 3 as in the paper's text, 1 = the authors' code (AdaIN-like)
    adaconv_hidden: int = bounded(128, 1, 1024)  # width of AdaConv's two-layer parameter predictors
    mlp_ratio: int = bounded(3, 1, 8)  # channel-MLP expansion inside a cell
    image_warp: bool = False  # psi_D also predicts a flow + blend weight and blends in the warped reference


class AdaConv(nn.Module):
    """Per-sample depthwise k x k convolution whose weights and bias are predicted from f_geo (eq. 4)."""

    def __init__(self, channels: int, latent: int, kernel: int = 3, hidden: int = 128):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"AdaConv kernel must be odd and >= 1, got {kernel}")
        self.channels, self.kernel = channels, kernel
        self.to_weight = nn.Sequential(
            nn.Linear(latent, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, channels * kernel * kernel)
        )
        self.to_bias = nn.Sequential(
            nn.Linear(latent, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, channels)
        )
        # Start near the identity: small predicted deviations around a kernel whose centre tap is 1.
        with torch.no_grad():
            for head in (self.to_weight[-1], self.to_bias[-1]):
                head.weight.mul_(0.1)
                head.bias.zero_()
            identity = torch.zeros(channels, kernel * kernel)
            identity[:, kernel * kernel // 2] = 1.0
            self.to_weight[-1].bias.copy_(identity.flatten())

    def forward(self, x: torch.Tensor, f_geo: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), f_geo (B, latent) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        k = self.kernel
        weight = self.to_weight(f_geo).view(b * c, 1, k, k)  # (B, C*k*k) -> (B*C, 1, k, k)
        bias = self.to_bias(f_geo).reshape(b * c)  # (B, C) -> (B*C,)
        x = x.reshape(1, b * c, h, w)  # fold the batch into channels: (B, C, H, W) -> (1, B*C, H, W)
        out = F.conv2d(x, weight, bias, padding=k // 2, groups=b * c)  # (1, B*C, H, W)
        return out.view(b, c, h, w)  # (1, B*C, H, W) -> (B, C, H, W)


class Cell(nn.Module):
    """Transformer-like residual cell: depthwise 3x3 token mixer, then a 1x1 channel MLP, both pre-norm."""

    def __init__(self, channels: int, mlp_ratio: int = 3):
        super().__init__()
        self.mix = nn.Sequential(
            nn.InstanceNorm2d(channels, affine=True), nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        )
        self.mlp = nn.Sequential(
            nn.InstanceNorm2d(channels, affine=True),
            nn.Conv2d(channels, mlp_ratio * channels, 1),
            nn.GELU(),
            nn.Conv2d(mlp_ratio * channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x)
        return x + self.mlp(x)


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    """Stride-2 transposed conv (exact 2x) -> InstanceNorm -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 3, 2, 1, output_padding=1, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(inplace=True),
    )


class AdaConvReenactor(nn.Module):
    """psi: reference image (B, 3, H, W) in [0, 1] + f_geo (B, latent) -> image (B, 3, H, W) in [0, 1].

    H and W must be multiples of 4.
    """

    def __init__(self, config: ReenactorConfig | None = None):
        super().__init__()
        self.config = cfg = config or ReenactorConfig()
        stem, mid, width = cfg.stem_channels, 2 * cfg.stem_channels, cfg.cell_channels
        self.encoder = nn.Sequential(  # psi_E
            conv_norm_act(3, stem, 7), conv_norm_act(stem, mid, 3, stride=2), conv_norm_act(mid, width, 3, stride=2)
        )
        self.cells = nn.ModuleList(Cell(width, cfg.mlp_ratio) for _ in range(cfg.cells))  # psi_T
        self.adaconvs = nn.ModuleList(
            AdaConv(width, cfg.latent, cfg.kernel, cfg.adaconv_hidden) for _ in range(cfg.cells)
        )
        self.decoder = nn.Sequential(
            _up(width, mid), _up(mid, stem), nn.Conv2d(stem, 3, 7, 1, 3), nn.Sigmoid()
        )  # psi_D
        # optional: (flow x, flow y, blend logit) from psi_D's last features
        self.motion = blend_head(stem, flow_channels=2) if cfg.image_warp else None

    def encode(self, reference: torch.Tensor) -> torch.Tensor:
        """psi_E: (B, 3, H, W) -> features (B, cell_channels, H/4, W/4); run once per reference."""
        if reference.shape[-1] % 4 or reference.shape[-2] % 4:
            raise ValueError(f"reference height and width must be multiples of 4, got {tuple(reference.shape)}")
        return self.encoder(reference)

    def decode(
        self, features: torch.Tensor, f_geo: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """psi_D(psi_T(features; f_geo)): (B, C, H/4, W/4), (B, latent) -> (B, 3, H, W).

        A single reference's features (batch 1) are broadcast over a batch of f_geo. With
        ``image_warp`` the reference image (B or 1, 3, R, R) is needed too: the output is
        w * reference warped by the predicted flow + (1 - w) * the decoded image, at R x R
        (``blocks.blend_warped``: a reference larger than H keeps its sharpness).
        """
        if features.shape[0] == 1 and f_geo.shape[0] > 1:
            features = features.expand(f_geo.shape[0], -1, -1, -1)  # (1, C, h, w) -> (B, C, h, w)
        x = features
        for cell, adaconv in zip(self.cells, self.adaconvs):
            x = adaconv(cell(x), f_geo)
        if self.motion is None:
            return self.decoder(x)
        if reference is None:
            raise ValueError("this reenactor blends in the warped reference: pass reference=")
        hidden = self.decoder[:2](x)  # (B, stem, H, W)
        image = self.decoder[2:](hidden)
        motion = self.motion(hidden)  # (B, 3, H, W): flow x, flow y, blend logit
        h, w = motion.shape[-2:]
        grid = make_grid(h, w, motion) + motion[:, :2].permute(0, 2, 3, 1)  # (B, 2, H, W) -> (B, H, W, 2)
        return blend_warped(reference, grid, torch.sigmoid(motion[:, 2:]), image)

    def forward(self, reference: torch.Tensor, f_geo: torch.Tensor) -> torch.Tensor:
        """Eq. 3: reference (B, 3, H, W), f_geo (B, latent) -> reenacted image (B, 3, H, W)."""
        return self.decode(self.encode(reference), f_geo, reference)

"""Building blocks shared by the networks: conv blocks, an hourglass, SPADE, warping helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv -> InstanceNorm (affine) -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(inplace=True),
    )


class DownBlock(nn.Module):
    """Conv block then 2x average-pool downsampling (FOMM's DownBlock2d)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv_norm_act(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class UpBlock(nn.Module):
    """2x nearest upsampling then a conv block (FOMM's UpBlock2d)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv_norm_act(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(norm(conv(relu(norm(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=False), nn.Conv2d(channels, channels, 3, 1, 1),
            nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Hourglass(nn.Module):
    """UNet-like encoder/decoder (FOMM): ``num_blocks`` downsamplings, skips concatenated.

    Output: (B, in_ch + block_expansion, H, W) feature map (the input is the last skip).
    """

    def __init__(self, in_ch: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        width = [min(max_features, block_expansion * (2 ** (i + 1))) for i in range(num_blocks)]
        ins = [in_ch] + width[:-1]
        self.down = nn.ModuleList(DownBlock(a, b) for a, b in zip(ins, width))
        self.up = nn.ModuleList()
        for i in reversed(range(num_blocks)):
            up_in = width[i] if i == num_blocks - 1 else 2 * width[i]
            up_out = min(max_features, block_expansion * (2**i))
            self.up.append(UpBlock(up_in, up_out))
        self.out_channels = block_expansion + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al.): norm(x) * (1 + gamma(c)) + beta(c)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="bilinear", align_corners=False)
        hidden = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SPADEResBlock(nn.Module):
    """Residual block whose two norms are SPADE layers conditioned on ``cond``."""

    def __init__(self, in_ch: int, out_ch: int, cond_channels: int, hidden: int = 64):
        super().__init__()
        self.norm1 = SPADE(in_ch, cond_channels, hidden)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = SPADE(out_ch, cond_channels, hidden)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.leaky_relu(self.norm1(x, cond), 0.2))
        out = self.conv2(F.leaky_relu(self.norm2(out, cond), 0.2))
        return self.shortcut(x) + out


def blend_head(in_ch: int, flow_channels: int = 0) -> nn.Conv2d:
    """7x7 conv -> ``flow_channels`` flow values, then one blend logit. It starts as "no flow, 12 %
    warped image" (zero weights, logit -2), so a network it is added to keeps its output."""
    head = nn.Conv2d(in_ch, flow_channels + 1, 7, padding=3)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    nn.init.constant_(head.bias[flow_channels:], -2.0)
    return head


def make_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) sampling grid in [-1, 1], last dim (x, y), matching ``grid_sample``."""
    ys = torch.linspace(-1, 1, height, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1, 1, width, dtype=like.dtype, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def warp(features: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Backward-warp (B, C, H, W) features with a (B, h, w, 2) field, resized to H x W if needed."""
    if deformation.shape[1:3] != features.shape[-2:]:
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=features.shape[-2:], mode="bilinear")
        deformation = deformation.permute(0, 2, 3, 1)  # (B, 2, H, W) -> (B, H, W, 2)
    return F.grid_sample(features, deformation, mode="bilinear", padding_mode="border", align_corners=True)


def blend_warped(reference: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """The generators' image blend: ``weight * reference warped by grid + (1 - weight) * generated``.

    reference (B or 1, 3, R, R); grid (B, h, w, 2); weight (B, 1, S, S) in [0, 1]; generated (B, 3, S, S).
    A reference larger than the network's output (a receiver's full-resolution picture) is warped
    at its own size, the weight and generated image upsampled to it: the moved pixels, most of a
    frame, keep the reference's sharpness instead of the network's resolution. Output (B, 3, R, R).
    """
    warped = warp(reference.expand(grid.shape[0], -1, -1, -1), grid)
    size = warped.shape[-2:]
    if generated.shape[-2:] != size:
        weight = F.interpolate(weight, size=size, mode="bilinear", align_corners=False)
        generated = F.interpolate(generated, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    return weight * warped + (1 - weight) * generated


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of a (B, C, H, W) tensor (no-op at the same size)."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


#: Fixed affine normalisation of natural-log mel power (``talkcodec.audio.log_mel``): speech
#: sits around -5 +- 4, digital silence at log(1e-6) = -13.8.
MEL_OFFSET, MEL_SCALE = 5.0, 4.0


def normalise_mel(mel: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, steps) log-mel -> roughly zero-mean, unit-scale network input."""
    return (mel + MEL_OFFSET) / MEL_SCALE

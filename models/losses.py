"""Training losses: VGG perceptual pyramid, FOMM equivariance with a random TPS, GAN and WGAN-GP terms.

Images are (B, 3, H, W) in [0, 1]; keypoints are (x, y) in [-1, 1] (``grid_sample`` convention,
``align_corners=True``, as ``blocks.make_grid``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import make_grid, resize
from .pretrained import VGG16, VGG_WEIGHTS, vgg16

# --------------------------------------------------------------------------- perceptual


class PerceptualLoss(nn.Module):
    """sum_s sum_l w_l * mean |VGG_l(pred_s) - VGG_l(target_s)| over an image pyramid s (FOMM).

    ``weights=None`` keeps a randomly initialised VGG (tests only). The VGG is frozen.
    """

    def __init__(
        self,
        weights: str | Path | Traversable | None = VGG_WEIGHTS,
        scales: Sequence[float] = (1.0, 0.5, 0.25),
        layer_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ):
        super().__init__()
        if len(layer_weights) != 4:
            raise ValueError(f"layer_weights needs one weight per VGG layer (4), got {len(layer_weights)}")
        self.vgg = vgg16(weights) if weights is not None else VGG16(stages=4).eval()
        self.vgg.requires_grad_(False)
        self.scales = tuple(scales)
        self.layer_weights = tuple(layer_weights)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # always inference behaviour, whatever the trainer does
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target (B, 3, H, W) in [0, 1] -> scalar; gradients flow to ``pred`` only."""
        h, w = pred.shape[-2:]
        total = pred.new_zeros(())
        for scale in self.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            feats_pred = self.vgg(resize(pred, size))
            with torch.no_grad():
                feats_target = self.vgg(resize(target, size))
            for weight, a, b in zip(self.layer_weights, feats_pred, feats_target):
                total = total + weight * (a - b).abs().mean()
        return total


# --------------------------------------------------------------------------- equivariance


class RandomTPS:
    """FOMM's random transform T: an affine map plus a thin-plate spline, sampled per batch element.

        T(p) = A p + t + sum_k c_k U(|p - q_k|),   U(r) = r^2 log r,   q_k on a points x points grid

    with A - I, t ~ N(0, sigma_affine) and c_k ~ N(0, sigma_tps) (one coefficient per axis).
    ``warp_image`` samples the input at T(p): a keypoint p' of the warped image corresponds to T(p')
    in the original.
    """

    def __init__(
        self,
        batch: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points: int = 5,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ):
        noise = torch.randn(batch, 2, 3, generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3)).to(device)  # (B, 2, 3): [A | t]
        self.control = make_grid(points, points, torch.zeros(0)).view(-1, 2).to(device)  # (N, 2), N = points^2
        self.coef = (torch.randn(batch, points * points, 2, generator=generator) * sigma_tps).to(device)  # (B, N, 2)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """T applied to points: (B, K, 2) -> (B, K, 2)."""
        theta = self.theta.to(coords)
        out = coords @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]  # (B, K, 2) @ (B, 2, 2) + (B, 1, 2)
        # (B, K, 1, 2) - (1, 1, N, 2) -> (B, K, N, 2)
        diff = coords[:, :, None, :] - self.control.to(coords)[None, None]
        r2 = diff.pow(2).sum(-1)  # (B, K, N)
        kernel = 0.5 * r2 * torch.log(r2 + 1e-9)  # r^2 log r, smooth at r = 0 (no sqrt)
        return out + kernel @ self.coef.to(coords)  # (B, K, N) @ (B, N, 2) -> (B, K, 2)

    def warp_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): out(p) = x(T(p)), reflection padding."""
        b, _, h, w = x.shape
        grid = make_grid(h, w, x).view(1, h * w, 2).expand(b, -1, -1)  # (H, W, 2) -> (B, H*W, 2)
        grid = self.warp_coordinates(grid).view(b, h, w, 2)  # (B, H*W, 2) -> (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """dT/dp at the points: (B, K, 2) -> (B, K, 2, 2), rows = output axis; differentiable in coords."""
        with torch.enable_grad():
            if not coords.requires_grad:
                coords = coords.detach().requires_grad_(True)
            warped = self.warp_coordinates(coords)
            # Each output point depends only on its own input point, so the gradient of the sum is per point.
            grad_x = torch.autograd.grad(warped[..., 0].sum(), coords, create_graph=True)[0]  # (B, K, 2)
            grad_y = torch.autograd.grad(warped[..., 1].sum(), coords, create_graph=True)[0]  # (B, K, 2)
        return torch.stack([grad_x, grad_y], dim=-2)  # (B, K, 2) x 2 -> (B, K, 2, 2)


Detector = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def equivariance_losses(
    detector: Detector,
    image: torch.Tensor,
    mesh: torch.Tensor,
    mask: torch.Tensor,
    kp: dict[str, torch.Tensor],
    tps: RandomTPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FOMM's equivariance constraints for a keypoint detector (AVFR-GAN uses them unchanged).

    The image, mesh raster and mask are warped by the same T and the detector is run again:
      value:    mean | kp - T(kp') |
      jacobian: mean | I - J^-1 (dT(kp') J') |
    where kp, J come from the original input (``kp``) and kp', J' from the warped one.
    """
    warped = detector(tps.warp_image(image), tps.warp_image(mesh), tps.warp_image(mask))
    value_loss = (kp["value"] - tps.warp_coordinates(warped["value"])).abs().mean()
    jac_warped = tps.jacobian(warped["value"]) @ warped["jacobian"]  # (B, K, 2, 2)
    product = torch.linalg.inv(kp["jacobian"]) @ jac_warped  # (B, K, 2, 2)
    eye = torch.eye(2, dtype=product.dtype, device=product.device)
    jacobian_loss = (eye - product).abs().mean()
    return value_loss, jacobian_loss


# --------------------------------------------------------------------------- GAN (multi-scale, AVFR)

ScaleOutputs = list[tuple[list[torch.Tensor], torch.Tensor]]  # MultiScaleDiscriminator's output


def gan_generator_loss(outputs: ScaleOutputs) -> torch.Tensor:
    """Non-saturating generator loss, -log D(G(z)) = softplus(-logits), mean per scale, summed over scales."""
    return torch.stack([F.softplus(-logits).mean() for _, logits in outputs]).sum()


def gan_discriminator_loss(real_outputs: ScaleOutputs, fake_outputs: ScaleOutputs) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))) (AVFR eq. 3), mean per scale, summed over scales. Pass fakes detached."""
    terms = [
        F.softplus(-real).mean() + F.softplus(fake).mean() for (_, real), (_, fake) in zip(real_outputs, fake_outputs)
    ]
    return torch.stack(terms).sum()


def feature_matching_loss(real_outputs: ScaleOutputs, fake_outputs: ScaleOutputs) -> torch.Tensor:
    """L1 between the discriminator features of real and generated images (real detached),
    mean per layer, summed over layers and scales."""
    terms = [
        (fake - real.detach()).abs().mean()
        for (real_feats, _), (fake_feats, _) in zip(real_outputs, fake_outputs)
        for real, fake in zip(real_feats, fake_feats)
    ]
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------- WGAN-GP (APB2FaceV2)


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Critic side of eq. 8: E[D(fake)] - E[D(real)] (minimised by the critic)."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator side of eq. 8: -E[D(fake)]."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al.): E[(|grad_x D(x)|_2 - 1)^2] at random interpolates of real and fake.

    For a patch critic the scores are summed over the map. The weight lambda is the caller's.
    """
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)  # (B, 1, 1, 1)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    with torch.enable_grad():
        scores = critic(mixed)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)  # (B, ...) -> (B,)
    return (norm - 1).pow(2).mean()

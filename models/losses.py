"""Training losses: VGG perceptual pyramid and WGAN-GP terms.

Images are (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
from torch import nn

from .blocks import resize
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

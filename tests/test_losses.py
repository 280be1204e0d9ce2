"""Training losses, the VGG16 features behind the perceptual loss, and the discriminators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from talkcodec.models.discriminators import PatchDiscriminator, PatchDiscriminatorConfig
from talkcodec.models.losses import (
    PerceptualLoss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from talkcodec.models.pretrained import VGG_WEIGHTS


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """(1, 3, 64, 64) astronaut face crop in [0, 1]."""
    from skimage.data import astronaut

    image = torch.from_numpy(np.ascontiguousarray(astronaut()[0:320, 20:340])).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma) + 1
    taps = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None]).expand(3, 1, -1, -1)  # (2r+1, 2r+1) -> (3, 1, 2r+1, 2r+1)
    return F.conv2d(F.pad(x, (radius,) * 4, mode="reflect"), kernel, groups=3)


# --------------------------------------------------------------------------- perceptual / VGG


@pytest.fixture(scope="module")
def perceptual() -> PerceptualLoss:
    return PerceptualLoss()


def test_shipped_vgg_weights_are_real(perceptual: PerceptualLoss) -> None:
    assert VGG_WEIGHTS.is_file()
    for name, p in perceptual.vgg.named_parameters():
        assert p.abs().max() > 0, f"{name} is all zero"
        assert not p.requires_grad, f"{name} is not frozen"


def test_perceptual_loss_zero_for_identical_and_grows_with_blur(perceptual: PerceptualLoss, face: torch.Tensor) -> None:
    with torch.no_grad():
        same = perceptual(face, face.clone())
        mild, strong = (perceptual(_blur(face, s), face) for s in (0.7, 2.0))
    assert same.item() == 0.0
    assert 0 < mild < strong


def test_perceptual_loss_gradient_reaches_pred_only(perceptual: PerceptualLoss, face: torch.Tensor) -> None:
    pred = _blur(face, 1.0).requires_grad_(True)
    perceptual.train()
    assert not perceptual.vgg.training
    perceptual(pred, face).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.vgg.parameters())


def test_perceptual_loss_random_init_for_tests(face: torch.Tensor) -> None:
    loss = PerceptualLoss(weights=None, scales=(1.0,), layer_weights=(1, 0, 0, 0))
    assert loss(_blur(face, 2.0), face) > loss(face, face) == 0


# --------------------------------------------------------------------------- discriminators


def test_patch_discriminator() -> None:
    critic = PatchDiscriminator(PatchDiscriminatorConfig(channels=8, layers=3, max_channels=32))
    assert critic(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    norms = (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in critic.modules())
    assert PatchDiscriminator()(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 70x70 PatchGAN


# --------------------------------------------------------------------------- WGAN-GP


def test_wgan_losses() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(0.5)


@pytest.mark.parametrize("norm", [1.0, 2.0])
def test_gradient_penalty_of_a_linear_critic(norm: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(1, 3, 8, 8)
    w = w / w.norm() * norm

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).sum(dim=(1, 2, 3))  # |grad| = norm everywhere

    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx((norm - 1) ** 2, abs=1e-5)


def test_gradient_penalty_trains_the_critic() -> None:
    critic = PatchDiscriminator(PatchDiscriminatorConfig(channels=4, layers=2, max_channels=8))
    penalty = gradient_penalty(critic, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    penalty.backward()
    assert torch.isfinite(penalty) and critic.net[0].weight.grad.abs().sum() > 0

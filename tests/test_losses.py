"""Training losses, the VGG16 features behind the perceptual loss, and the discriminators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from talkcodec.models.blocks import make_grid
from talkcodec.models.discriminators import (
    MultiScaleDiscriminator,
    MultiScaleDiscriminatorConfig,
    PatchDiscriminator,
    PatchDiscriminatorConfig,
)
from talkcodec.models.losses import (
    PerceptualLoss,
    RandomTPS,
    equivariance_losses,
    feature_matching_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from talkcodec.models.pretrained import VGG_WEIGHTS
from torch.nn.utils import parametrize


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


# --------------------------------------------------------------------------- RandomTPS and equivariance


def test_identity_tps_is_identity(face: torch.Tensor) -> None:
    tps = RandomTPS(2, sigma_affine=0.0, sigma_tps=0.0)
    coords = torch.rand(2, 7, 2) * 2 - 1
    torch.testing.assert_close(tps.warp_coordinates(coords), coords)
    torch.testing.assert_close(tps.jacobian(coords), torch.eye(2).expand(2, 7, 2, 2))
    image = face.expand(2, -1, -1, -1)
    torch.testing.assert_close(tps.warp_image(image), image, atol=1e-5, rtol=0)


def test_tps_jacobian_matches_finite_differences() -> None:
    tps = RandomTPS(3, sigma_affine=0.1, sigma_tps=0.05, generator=torch.Generator().manual_seed(0))
    coords = (torch.rand(3, 5, 2, dtype=torch.float64) * 2 - 1) * 0.9
    jac = tps.jacobian(coords)  # (B, K, 2, 2)
    eps = 1e-6
    for axis in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[axis] = eps
        column = (tps.warp_coordinates(coords + step) - tps.warp_coordinates(coords - step)) / (2 * eps)
        torch.testing.assert_close(jac[..., axis], column, atol=1e-6, rtol=1e-5)
    assert (jac - torch.eye(2, dtype=torch.float64)).abs().max() > 0.01  # not the identity


def _blob(centres: torch.Tensor, size: int = 64, sigma: float = 0.15) -> torch.Tensor:
    """(B, 2) centres in [-1, 1] -> (B, 1, size, size) gaussian blobs."""
    grid = make_grid(size, size, centres)  # (H, W, 2)
    d2 = (grid[None] - centres[:, None, None]).pow(2).sum(-1)  # (B, H, W)
    return torch.exp(-d2 / (2 * sigma**2))[:, None]


def _blob_detector(image: torch.Tensor, mesh: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """An (almost exactly) equivariant detector: the centre of mass of the mask, identity jacobian."""
    weights = mask[:, 0] / mask[:, 0].sum(dim=(1, 2), keepdim=True)  # (B, H, W)
    value = (weights[..., None] * make_grid(*mask.shape[-2:], mask)).sum(dim=(1, 2))  # (B, 2)
    return {"value": value[:, None], "jacobian": torch.eye(2).expand(mask.shape[0], 1, 2, 2)}


def test_equivariance_value_loss_small_for_equivariant_detector_large_otherwise() -> None:
    centres = torch.tensor([[0.1, -0.2], [-0.15, 0.05]])
    mask = _blob(centres)
    image, mesh = mask.expand(-1, 3, -1, -1), mask
    tps = RandomTPS(2, sigma_affine=0.1, sigma_tps=0.0, generator=torch.Generator().manual_seed(3))
    kp = _blob_detector(image, mesh, mask)
    torch.testing.assert_close(kp["value"][:, 0], centres, atol=1e-3, rtol=0)
    value, _ = equivariance_losses(_blob_detector, image, mesh, mask, kp, tps)

    def constant_detector(image: torch.Tensor, mesh: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"value": centres[:, None], "jacobian": torch.eye(2).expand(2, 1, 2, 2)}

    wrong, _ = equivariance_losses(constant_detector, image, mesh, mask, kp, tps)
    assert value < 2e-3, value
    assert wrong > 0.02, wrong


def test_equivariance_losses_with_keypoint_detector() -> None:
    kpd = pytest.importorskip("talkcodec.models.keypoint_detector")
    torch.manual_seed(0)
    config = kpd.KeypointDetectorConfig(num_kp=3, block_expansion=4, num_blocks=2, max_features=8, scale=0.5)
    detector = kpd.KeypointDetector(config)
    image, mesh, mask = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    kp = detector(image, mesh, mask)
    # An identity transform gives exactly zero for a deterministic detector.
    still = RandomTPS(2, sigma_affine=0.0, sigma_tps=0.0)
    value, jacobian = equivariance_losses(detector, image, mesh, mask, kp, still)
    assert value.item() < 1e-5 and jacobian.item() < 1e-5
    # A random transform: finite and differentiable down to the detector's weights.
    value, jacobian = equivariance_losses(detector, image, mesh, mask, kp, RandomTPS(2))
    assert torch.isfinite(value) and torch.isfinite(jacobian)
    (value + jacobian).backward()
    assert detector.heatmap.weight.grad is not None and detector.heatmap.weight.grad.abs().sum() > 0
    assert detector.jacobian.weight.grad is not None and detector.jacobian.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize("sn", [True, False])
def test_multiscale_discriminator(sn: bool) -> None:
    config = MultiScaleDiscriminatorConfig(block_expansion=8, num_blocks=3, max_features=16, spectral_norm=sn)
    disc = MultiScaleDiscriminator(config)
    outputs = disc(torch.rand(2, 3, 64, 64))
    assert len(outputs) == len(config.scales)
    for features, logits in outputs:
        assert len(features) == 3 and [f.shape[1] for f in features] == [8, 16, 16]
        assert logits.shape[:2] == (2, 1) and logits.shape[-1] >= 1
    assert outputs[1][1].shape[-1] < outputs[0][1].shape[-1]
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(parametrize.is_parametrized(c, "weight") == sn for c in convs)
    has_instance_norm = any(isinstance(m, torch.nn.InstanceNorm2d) for m in disc.modules())
    assert has_instance_norm == (not sn)


def test_patch_discriminator() -> None:
    critic = PatchDiscriminator(PatchDiscriminatorConfig(channels=8, layers=3, max_channels=32))
    assert critic(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    norms = (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in critic.modules())
    assert PatchDiscriminator()(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 70x70 PatchGAN


# --------------------------------------------------------------------------- GAN losses


def _outputs(logit: float, feature: float = 0.0, scales: int = 2) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    return [([torch.full((2, 4, 3, 3), feature)], torch.full((2, 1, 3, 3), logit)) for _ in range(scales)]


def test_gan_losses_for_known_logits() -> None:
    log2 = math.log(2)
    assert gan_generator_loss(_outputs(0.0)).item() == pytest.approx(2 * log2)
    assert gan_discriminator_loss(_outputs(0.0), _outputs(0.0)).item() == pytest.approx(4 * log2)
    assert gan_generator_loss(_outputs(20.0)).item() == pytest.approx(0, abs=1e-6)  # fooled discriminator
    assert gan_discriminator_loss(_outputs(20.0), _outputs(-20.0)).item() == pytest.approx(0, abs=1e-6)
    assert gan_discriminator_loss(_outputs(-2.0), _outputs(2.0)).item() == pytest.approx(4 * math.log1p(math.exp(2)))


def test_feature_matching_loss() -> None:
    assert feature_matching_loss(_outputs(0.0, 1.0), _outputs(0.0, 1.0)).item() == 0
    real = _outputs(0.0, 1.0)
    real[0][0][0].requires_grad_(True)
    fake = _outputs(0.0, 0.5)
    fake[0][0][0].requires_grad_(True)
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(2 * 0.5)
    loss.backward()
    assert real[0][0][0].grad is None and fake[0][0][0].grad is not None


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

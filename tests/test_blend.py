"""The image blend at full resolution: a receiver warps its 256 px reference, not the network's copy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from talkcodec.models.apb import APBConfig, APBModel
from talkcodec.models.blocks import blend_warped, make_grid, resize

from talkcodec.training.data import rescale_affine

S, R = 32, 64  # network size, full resolution


def smooth(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random picture (low-frequency), so that resampling it changes little."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(batch, 3, 4, 4, generator=g), size=(size, size), mode="bicubic").clamp(0, 1)


def test_the_warped_reference_keeps_its_own_pixels_and_the_rest_is_upsampled():
    g = torch.Generator().manual_seed(1)
    reference = torch.rand(1, 3, R, R, generator=g)  # noise: any resampling would show
    generated = torch.rand(2, 3, S, S, generator=g)
    identity = make_grid(R, R, reference).expand(2, R, R, 2)
    out = blend_warped(reference, identity, torch.ones(2, 1, S, S), generated)
    assert out.shape == (2, 3, R, R) and torch.allclose(out, reference.expand(2, -1, -1, -1), atol=1e-5)
    out = blend_warped(reference, identity, torch.zeros(2, 1, S, S), generated)
    assert torch.allclose(out, F.interpolate(generated, size=(R, R), mode="bicubic").clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_a_full_resolution_blend_shrunk_is_the_network_size_blend(weight: float):
    reference = smooth(1, R)
    grid = make_grid(S // 2, S // 2, reference)[None] * 0.9 + 0.05  # a zoom and a shift at a coarse resolution
    generated = smooth(1, S, seed=3)
    mask = torch.full((1, 1, S, S), weight)
    full = blend_warped(reference, grid, mask, generated)
    small = blend_warped(resize(reference, S), grid, mask, generated)
    assert full.shape[-1] == R and small.shape[-1] == S
    assert (resize(full, S) - small).abs().mean() < 0.01


def test_networks_draw_at_the_full_resolution_they_are_given():
    torch.manual_seed(0)
    config = APBConfig.tiny()
    model, full = APBModel(config).eval(), smooth(1, 4 * config.size)
    args = (resize(full, config.size), torch.randn(1, config.fuser.n_mels, config.fuser.steps), torch.zeros(1, 3), torch.full((1, 2), 0.3))
    with torch.no_grad():
        small, large = model(*args)["image"], model(*args, full_resolution=full)["image"]
    assert small.shape[-1] == config.size and large.shape[-1] == 4 * config.size
    # the same picture drawn larger (an untrained network draws noise, which up- then down-sampling smooths a little)
    assert (resize(large, config.size) - small).abs().mean() < 0.04


def test_networks_without_a_blend_ignore_the_full_resolution_reference():
    config = APBConfig.tiny()
    model = APBModel(dataclasses.replace(config, reenactor=dataclasses.replace(config.reenactor, image_warp=False)))
    reference = smooth(1, config.size)
    args = (reference, torch.randn(1, config.fuser.n_mels, config.fuser.steps), torch.zeros(1, 3), torch.full((1, 2), 0.3))
    assert model(*args, full_resolution=smooth(1, 4 * config.size))["image"].shape[-1] == config.size


@pytest.mark.parametrize("matrix", [
    [[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]],  # shift
    [[1.08, 0.0, -5.0], [0.0, 1.08, -5.0]],  # zoom about a point
    [[-0.95, 0.0, 60.0], [0.0, 0.95, 1.0]],  # mirror, zoom and shift
])  # fmt: skip
def test_an_augmentation_moves_the_full_resolution_frame_as_it_moves_the_network_size_one(matrix):
    matrix = np.array(matrix)
    assert np.allclose(rescale_affine(rescale_affine(matrix, 64, 256), 256, 64), matrix)
    # where a pixel centre goes at 64 px is where the matching pixel centre goes at 256 px
    points = np.array([[0.0, 0.0], [10.0, 50.0], [63.0, 31.5]])
    moved = points @ matrix[:, :2].T + matrix[:, 2]
    large = rescale_affine(matrix, 64, 256)
    moved_large = ((points + 0.5) * 4 - 0.5) @ large[:, :2].T + large[:, 2]
    assert np.allclose(moved_large, (moved + 0.5) * 4 - 0.5)

"""AVFR networks: shapes, keypoint and motion invariants, gradients, configs (tiny config, CPU, offline)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from talkcodec.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from talkcodec.models.avfr import AVFRConfig, AVFRModel
from talkcodec.models.avfr_generator import AVFRGenerator
from talkcodec.models.blocks import make_grid
from talkcodec.models.dense_motion import DenseMotionConfig, DenseMotionNetwork
from talkcodec.models.keypoint_detector import KeypointDetector

B = 2
TINY = AVFRConfig.tiny()
S, K = TINY.size, TINY.num_kp


def batch(seed: int = 0, b: int = B) -> dict[str, torch.Tensor]:
    """Random inputs for AVFRModel.forward at the tiny size."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda c: torch.rand(b, c, S, S, generator=g)
    return {
        "source": rand(3), "source_mesh": rand(1), "source_mask": rand(1),
        "driving": rand(3), "driving_mesh": rand(1), "driving_mask": rand(1),
        "mel": torch.randn(b, TINY.audio.n_mels, TINY.audio.steps, generator=g) * 4 - 5,
    }  # fmt: skip


def random_kp(seed: int, jacobian: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    value = torch.rand(B, K, 2, generator=g) * 1.6 - 0.8
    if jacobian is None:
        jacobian = torch.eye(2).expand(B, K, 2, 2)
    return {"value": value, "jacobian": jacobian}


@pytest.fixture(scope="module")
def model() -> AVFRModel:
    torch.manual_seed(0)
    return AVFRModel(TINY)


def test_keypoint_detector_shapes_range_and_identity_jacobian(model: AVFRModel):
    x = batch()
    kp = model.keypoints(x["source"], x["source_mesh"], x["source_mask"])
    h = round(S * TINY.keypoints.scale)
    assert kp["value"].shape == (B, K, 2)
    assert kp["jacobian"].shape == (B, K, 2, 2)
    assert kp["heatmap"].shape == (B, K, h, h)
    assert kp["value"].abs().max() <= 1.0
    assert torch.allclose(kp["heatmap"].sum(dim=(2, 3)), torch.ones(B, K), atol=1e-5)
    assert torch.allclose(kp["jacobian"], torch.eye(2).expand(B, K, 2, 2), atol=1e-6)  # initialised to identity


def test_keypoint_detector_without_jacobian_returns_identity():
    detector = KeypointDetector(dataclasses.replace(TINY.keypoints, jacobian=False))
    x = batch()
    kp = detector(x["source"], x["source_mesh"], x["source_mask"])
    assert detector.jacobian is None
    assert torch.equal(kp["jacobian"], torch.eye(2).expand(B, K, 2, 2))


@pytest.mark.parametrize("occlusion", [True, False])
def test_dense_motion_shapes(occlusion: bool):
    torch.manual_seed(0)
    net = DenseMotionNetwork(dataclasses.replace(TINY.dense_motion, occlusion=occlusion))
    out = net(batch()["source"], random_kp(1), random_kp(2))
    h = round(S * TINY.dense_motion.scale)
    assert out["deformation"].shape == (B, h, h, 2)
    assert out["occlusion"].shape == (B, 1, h, h)
    assert out["mask"].shape == (B, K + 1, h, h)
    assert torch.allclose(out["mask"].sum(1), torch.ones(B, h, h), atol=1e-5)
    if not occlusion:
        assert torch.equal(out["occlusion"], torch.ones(B, 1, h, h))


@pytest.mark.parametrize("shared_jacobian", ["identity", "random"])
def test_dense_motion_is_identity_when_nothing_moves(shared_jacobian: str):
    torch.manual_seed(0)
    net = DenseMotionNetwork(TINY.dense_motion)
    jacobian = None
    if shared_jacobian == "random":
        jacobian = torch.eye(2) + 0.3 * torch.randn(B, K, 2, 2)
    kp = random_kp(3, jacobian)
    out = net(batch()["source"], kp, kp)
    h = round(S * TINY.dense_motion.scale)
    grid = make_grid(h, h, out["deformation"]).expand(B, h, h, 2)
    assert (out["deformation"] - grid).abs().max() < 1e-4


def test_dense_motion_survives_singular_jacobians():
    net = DenseMotionNetwork(TINY.dense_motion)
    singular = torch.zeros(B, K, 2, 2)
    out = net(batch()["source"], random_kp(4, singular), random_kp(5))
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("steps", [10, 20, 33, 80])
def test_audio_encoder_shapes(steps: int):
    config = AudioEncoderConfig()
    mel = torch.randn(B, config.n_mels, steps) * 4 - 5
    feature, query = AudioEncoder(config)(mel)
    assert feature.shape == (B, config.feature_channels, config.n_mels // 8, -(-steps // 8))
    assert query.shape == (B, config.query_channels)


def test_generator_shapes():
    torch.manual_seed(0)
    gen = AVFRGenerator(TINY.generator)
    source = batch()["source"]
    features = gen.encode_source(source)
    n = TINY.generator.num_down
    assert len(features.identity) == n + 1
    for i, skip in enumerate(features.identity):
        assert skip.shape[0] == B and skip.shape[-2:] == (S >> i, S >> i)
    h = S >> n
    assert features.motion.shape[-2:] == (h, h)
    grid = make_grid(16, 16, source).expand(B, 16, 16, 2)
    audio = torch.randn(B, TINY.generator.audio_channels, 10, 3)
    out = gen.render(features, grid, torch.rand(B, 1, 16, 16), audio, torch.randn(B, TINY.generator.query_channels))
    assert out["image"].shape == (B, 3, S, S)
    assert out["attention"].shape == (B, 1, h, h)
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert 0 <= out["attention"].min() and out["attention"].max() <= 1


def test_model_forward_shapes(model: AVFRModel):
    out = model(**batch())
    h = round(S * TINY.dense_motion.scale)
    assert out["image"].shape == (B, 3, S, S)
    assert out["deformation"].shape == (B, h, h, 2)
    assert out["occlusion"].shape == (B, 1, h, h)
    assert out["attention"].shape == (B, 1, S >> TINY.generator.num_down, S >> TINY.generator.num_down)
    assert out["kp_source"]["value"].shape == out["kp_driving"]["value"].shape == (B, K, 2)


def test_prepare_then_animate_equals_forward(model: AVFRModel):
    x = batch(seed=7)
    with torch.no_grad():
        full = model(**x)
        kp_source = model.keypoints(x["source"], x["source_mesh"], x["source_mask"])
        kp_driving = model.keypoints(x["driving"], x["driving_mesh"], x["driving_mask"])
        split = model.animate(model.prepare(x["source"]), kp_source, kp_driving, x["mel"])
    for key in ("image", "attention", "occlusion", "deformation"):
        assert torch.allclose(split[key], full[key], atol=1e-5), key


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = AVFRModel(TINY)
    x = batch(seed=1)
    (model(**x)["image"] - x["driving"]).abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing and not nonfinite, f"no grad: {missing}; non-finite grad: {nonfinite}"
    for name in ("keypoint_detector.jacobian.weight", "keypoint_detector.heatmap.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_adam_steps_lower_l1_loss():
    torch.manual_seed(0)
    model = AVFRModel(TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = batch(seed=2)
    losses = []
    for _ in range(4):
        loss = (model(**x)["image"] - x["driving"]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["default", "small", "tiny"])
def test_config_round_trip(name: str):
    config = AVFRConfig() if name == "default" else getattr(AVFRConfig, name)()
    restored = AVFRConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


@pytest.mark.parametrize("patch", [{"colour": 1}, {"keypoints": {"num_kps": 10}}, {"generator": {"spade": 1}}])
def test_config_rejects_unknown_keys(patch: dict):
    d = TINY.to_dict()
    for key, value in patch.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match="unknown keys"):
        AVFRConfig.from_dict(d)


@pytest.mark.parametrize("section", ["keypoints", "dense_motion"])
def test_config_rejects_num_kp_mismatch(section: str):
    d = TINY.to_dict()
    d[section]["num_kp"] = K + 1
    with pytest.raises(ValueError, match="num_kp"):
        AVFRConfig.from_dict(d)


def test_config_rejects_audio_generator_mismatch():
    with pytest.raises(ValueError, match="audio"):
        AVFRConfig(audio=AudioEncoderConfig(feature_channels=16))


def test_config_rejects_size_the_hourglass_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        AVFRConfig(size=200, dense_motion=DenseMotionConfig(num_blocks=5))


def test_parameter_counts():
    counts = {name: AVFRModel(config).num_parameters()
              for name, config in [("default", AVFRConfig()), ("small", AVFRConfig.small()), ("tiny", TINY)]}  # fmt: skip
    print("AVFR parameters:", counts)
    assert counts["default"] < 16_000_000
    assert counts["tiny"] < counts["small"] < counts["default"]

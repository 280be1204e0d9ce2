"""APB2FaceV2 networks: fuser, AdaConv reenactor and the bundle (tiny configs, CPU, seconds)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from talkcodec.models.adaconv_reenactor import AdaConv, AdaConvReenactor, ReenactorConfig
from talkcodec.models.apb import APBConfig, APBModel
from talkcodec.models.apb_fuser import AudioAwareFuser

PAPER_PARAMS = 4.1e6


def _inputs(config: APBConfig, batch: int = 2, steps: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    steps = steps or config.fuser.steps
    return {
        "reference": torch.rand(batch, 3, config.size, config.size, generator=g),
        "mel": torch.randn(batch, config.fuser.n_mels, steps, generator=g) * 3 - 5,
        "pose": torch.randn(batch, 3, generator=g) * 15,
        "blink": 0.28 + 0.05 * torch.randn(batch, 2, generator=g),
    }


@pytest.mark.parametrize("steps", [10, 20, 40])
def test_fuser_shapes_for_any_window(steps: int) -> None:
    cfg = dataclasses.replace(APBConfig.tiny().fuser, steps=steps)
    fuser = AudioAwareFuser(cfg)
    x = _inputs(APBConfig.tiny(), batch=3, steps=steps)
    f_geo, landmarks = fuser(x["mel"], x["pose"], x["blink"])
    assert f_geo.shape == (3, cfg.latent)
    assert landmarks.shape == (3, cfg.num_landmarks, 2)
    torch.testing.assert_close(f_geo.norm(dim=1), torch.full((3,), cfg.latent**0.5))
    # A fuser laid out for one window length still accepts others (adaptive pooling at the end).
    f_geo, _ = fuser(torch.randn(3, cfg.n_mels, 80), x["pose"], x["blink"])
    assert f_geo.shape == (3, cfg.latent) and torch.isfinite(f_geo).all()


def test_fuser_rejects_wrong_mel_shape() -> None:
    fuser = AudioAwareFuser(APBConfig.tiny().fuser)
    with pytest.raises(ValueError, match="mel"):
        fuser(torch.randn(2, 40, 20), torch.zeros(2, 3), torch.zeros(2, 2))


@pytest.mark.parametrize("image_warp", [False, True])
def test_reenactor_shapes(image_warp: bool) -> None:
    cfg = APBConfig.tiny()
    net = AdaConvReenactor(dataclasses.replace(cfg.reenactor, image_warp=image_warp))
    ref = torch.rand(2, 3, cfg.size, cfg.size)
    features = net.encode(ref)
    assert features.shape == (2, cfg.reenactor.cell_channels, cfg.size // 4, cfg.size // 4)
    image = net.decode(features, torch.randn(2, cfg.reenactor.latent), ref)
    assert image.shape == ref.shape and image.min() >= 0 and image.max() <= 1
    # One reference's features are broadcast over a batch of f_geo (a receiver's usual case).
    many = net.decode(features[:1], torch.randn(4, cfg.reenactor.latent), ref[:1])
    assert many.shape == (4, 3, cfg.size, cfg.size)


def test_reenactor_warp_starts_as_the_unmoved_reference_blended_in() -> None:
    """Zero flow at initialisation: the warp is the identity and 12 % of the output is the reference."""
    cfg = APBConfig.tiny()
    net = AdaConvReenactor(cfg.reenactor).eval()
    plain = AdaConvReenactor(dataclasses.replace(cfg.reenactor, image_warp=False)).eval()
    plain.load_state_dict(net.state_dict(), strict=False)
    ref, f_geo = torch.rand(1, 3, cfg.size, cfg.size), torch.randn(1, cfg.reenactor.latent)
    with torch.no_grad():
        blended, decoded = net.decode(net.encode(ref), f_geo, ref), plain.decode(plain.encode(ref), f_geo)
    weight = torch.sigmoid(torch.tensor(-2.0))
    torch.testing.assert_close(blended, weight * ref + (1 - weight) * decoded, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="reference"):
        net.decode(net.encode(ref), f_geo)


@pytest.mark.parametrize("kernel", [1, 3])
def test_adaconv_starts_near_identity_and_is_per_sample(kernel: int) -> None:
    torch.manual_seed(0)
    ada = AdaConv(channels=6, latent=16, kernel=kernel, hidden=8)
    x = torch.randn(1, 6, 9, 9).expand(2, -1, -1, -1).contiguous()  # identical inputs
    f_geo = torch.randn(2, 16) * 4  # different geometry
    out = ada(x, f_geo)
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1], atol=1e-4), "both samples got the same kernel"
    assert (out - x).abs().mean() < 0.5 * x.abs().mean(), "AdaConv should start close to the identity"


def test_adaconv_matches_a_per_sample_loop() -> None:
    torch.manual_seed(1)
    ada = AdaConv(channels=4, latent=8, kernel=3, hidden=8)
    x, f_geo = torch.randn(3, 4, 7, 7), torch.randn(3, 8)
    out = ada(x, f_geo)
    weight = ada.to_weight(f_geo).view(3, 4, 1, 3, 3)
    bias = ada.to_bias(f_geo)
    for i in range(3):
        expected = torch.nn.functional.conv2d(x[i : i + 1], weight[i], bias[i], padding=1, groups=4)
        torch.testing.assert_close(out[i : i + 1], expected)


def test_adaconv_rejects_even_kernel() -> None:
    with pytest.raises(ValueError):
        AdaConv(4, 8, kernel=2)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    cfg = APBConfig.tiny()
    model = APBModel(cfg)
    out = model(**_inputs(cfg))
    (out["image"].mean() + out["landmarks"].mean()).backward()
    offenders = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert offenders == []


def test_a_few_adam_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    cfg = APBConfig.tiny()
    model = APBModel(cfg)
    x = _inputs(cfg, batch=4)
    target_image = torch.rand(4, 3, cfg.size, cfg.size, generator=torch.Generator().manual_seed(5))
    target_landmarks = torch.rand(4, cfg.fuser.num_landmarks, 2) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))

    def loss() -> torch.Tensor:
        out = model(**x)
        return 100 * (out["image"] - target_image).abs().mean() + (out["landmarks"] - target_landmarks).abs().mean()

    first = loss()
    for _ in range(5):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < first.item()


def test_config_round_trip_and_validation() -> None:
    import json

    for config in (APBConfig(), APBConfig.small(), APBConfig.tiny()):
        d = json.loads(json.dumps(config.to_dict()))  # JSON turns tuples into lists
        assert APBConfig.from_dict(d) == config
    d = APBConfig.tiny().to_dict()
    with pytest.raises(ValueError, match="bogus"):
        APBConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        APBConfig.from_dict({**d, "fuser": {**d["fuser"], "bogus": 1}})
    with pytest.raises(ValueError, match="latent"):
        APBConfig(reenactor=ReenactorConfig(latent=128))


def test_prepare_then_render_equals_forward() -> None:
    torch.manual_seed(0)
    cfg = APBConfig.tiny()
    model = APBModel(cfg).eval()
    x = _inputs(cfg)
    with torch.no_grad():
        out = model(**x)
        f_geo, landmarks = model.geometry(x["mel"], x["pose"], x["blink"])
        image = model.render(model.prepare(x["reference"]), f_geo)
    assert set(out) == {"image", "landmarks", "f_geo"}
    torch.testing.assert_close(image, out["image"])
    torch.testing.assert_close(landmarks, out["landmarks"])


def test_paper_size_reenactor_parameter_count() -> None:
    count = sum(p.numel() for p in AdaConvReenactor(ReenactorConfig()).parameters())
    print(f"paper-size AdaConvReenactor: {count:,} parameters")
    assert abs(count - PAPER_PARAMS) / PAPER_PARAMS < 0.05

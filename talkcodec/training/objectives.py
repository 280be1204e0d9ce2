"""The training objective of `apb`'s image networks: networks, critic and weighted losses.

(`avfr` has no image network: its mouth coder trains on vectors, ``training.mouth_code``.)
APB2FaceV2: 1 * L_geo (landmark L1) + 100 * L1 + 1 * L_adv (WGAN with gradient
penalty, PatchGAN critic), plus an optional perceptual term. Weights are overridable by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.apb import APBConfig, APBModel
from ..models.blocks import resize
from ..models.discriminators import (
    PatchDiscriminator,
    PatchDiscriminatorConfig,
)
from ..models.losses import (
    PerceptualLoss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)

Batch = dict[str, torch.Tensor]


class Objective(ABC):
    """A codec's network, its critic, and how to score a batch."""

    codec: ClassVar[str]
    default_weights: ClassVar[dict[str, float]]
    flip: ClassVar[bool]  # horizontal flips keep the targets valid
    needs_audio: ClassVar[bool]  # train only on clips with audio
    posed: ClassVar[bool]  # the source is moved to the driving frame's head pose first, as the receiver does
    presets: ClassVar[dict[str, Any]]
    config_class: ClassVar[type]  # the network's config dataclass (from_dict / to_dict)

    @staticmethod
    @abstractmethod
    def audio_steps(config: Any) -> int:
        """Mel columns of the audio window the network reads."""

    @staticmethod
    @abstractmethod
    def blends(config: Any) -> bool:
        """Whether the network blends in the warped reference (and so can draw at full resolution)."""

    def __init__(self, config: Any, weights: dict[str, float] | None = None, perceptual: nn.Module | None = None):
        unknown = set(weights or {}) - set(self.default_weights)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; {self.codec} has {sorted(self.default_weights)}")
        self.weights = {**self.default_weights, **(weights or {})}
        self.config = config
        self.model: nn.Module = self.build_model(config)
        self.critic: nn.Module = self.build_critic()
        self.perceptual = perceptual if perceptual is not None else PerceptualLoss()
        if self.weights.get("perceptual", 0) == 0:
            self.perceptual = None

    @classmethod
    def preset(cls, name: str) -> Any:
        if name not in cls.presets:
            raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(cls.presets)}")
        return cls.presets[name]()

    @abstractmethod
    def build_model(self, config: Any) -> nn.Module: ...

    @abstractmethod
    def build_critic(self) -> nn.Module: ...

    @abstractmethod
    def generate(self, batch: Batch) -> dict[str, Any]:
        """The model's outputs for a batch (``image`` among them)."""

    @abstractmethod
    def generator_loss(self, batch: Batch, outputs: dict[str, Any], adversarial: bool) -> tuple[torch.Tensor, dict[str, float]]: ...

    @abstractmethod
    def critic_loss(self, batch: Batch, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...

    def target(self, batch: Batch, image: torch.Tensor) -> torch.Tensor:
        """What ``image`` is scored against: the full-resolution frame where the blend drew at that size."""
        full = batch.get("driving_full")
        return full if full is not None and full.shape[-2:] == image.shape[-2:] else batch["driving"]

    def network_view(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` at the network's size: what the critic sees and the equivariance loss reads."""
        return resize(image, self.config.size)

    def perceptual_loss(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """VGG term; on a full-resolution output, over one random window of the network's size
        (the VGG costs what it does at that size, and sees the blend's sharpness)."""
        assert self.perceptual is not None
        size, (height, width) = self.config.size, image.shape[-2:]
        if height > size and width > size:
            top, left = (int(torch.randint(0, n - size + 1, ())) for n in (height, width))
            image, target = (x[..., top : top + size, left : left + size] for x in (image, target))
        return self.perceptual(image, target)

    def _total(self, terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(self.weights[name] * value for name, value in terms.items())
        logs = {name: float(value.detach()) for name, value in terms.items()}
        assert isinstance(total, torch.Tensor)
        return total, logs


class APBObjective(Objective):
    codec = "apb"
    default_weights = {"geometry": 1.0, "l1": 100.0, "adversarial": 1.0, "perceptual": 1.0, "gradient_penalty": 10.0}
    flip, needs_audio, posed = False, True, True
    presets = {"tiny": APBConfig.tiny, "small": APBConfig.small, "paper": APBConfig}
    config_class = APBConfig

    @staticmethod
    def audio_steps(config: APBConfig) -> int:
        return config.fuser.steps

    @staticmethod
    def blends(config: APBConfig) -> bool:
        return config.reenactor.image_warp

    def build_model(self, config: APBConfig) -> APBModel:
        return APBModel(config)

    def build_critic(self) -> nn.Module:
        small = self.config.size <= 128  # a CPU-size generator gets a critic of its size
        return PatchDiscriminator(PatchDiscriminatorConfig(channels=32 if small else 64))

    def generate(self, batch: Batch) -> dict[str, Any]:
        return self.model(batch["source"], batch["mel"], batch["pose"], batch["blink"], batch.get("source_full"))

    def generator_loss(self, batch: Batch, outputs: dict[str, Any], adversarial: bool) -> tuple[torch.Tensor, dict[str, float]]:
        image = outputs["image"]
        target = self.target(batch, image)
        face = batch["face"].float()[:, None, None]  # (B,) -> (B, 1, 1): no landmark target without a face
        geometry = ((outputs["landmarks"] - batch["landmarks"]).abs() * face).sum() / (face.sum() * batch["landmarks"][0].numel()).clamp(min=1)
        terms = {"geometry": geometry, "l1": (image - target).abs().mean()}
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual_loss(image, target)
        if adversarial:
            terms["adversarial"] = wgan_generator_loss(self.critic(self.network_view(image)))
        return self._total(terms)

    def critic_loss(self, batch: Batch, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        fake = self.network_view(fake.detach())
        wasserstein = wgan_critic_loss(self.critic(batch["driving"]), self.critic(fake))
        penalty = gradient_penalty(self.critic, batch["driving"], fake)
        loss = wasserstein + self.weights["gradient_penalty"] * penalty
        return loss, {"critic": float(wasserstein.detach()), "gradient_penalty": float(penalty.detach())}


OBJECTIVES: dict[str, type[Objective]] = {"apb": APBObjective}

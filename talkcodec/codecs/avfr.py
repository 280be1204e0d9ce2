"""`avfr`: the AVFR-GAN keypoint codec. Sends 10 learned keypoints + jacobians per frame.

Sender: face crop + mesh raster + person mask -> keypoint detector -> 10 x (x, y) + 10 x 2x2
jacobians = 60 values -> quantized, range-coded (key / delta). The reference packet also
carries the reference's own keypoints (float16): a receiver never runs the detector, and keys
are coded as differences from them.
Receiver: reference -> generator features once; per frame: dense motion from the keypoint
pair, the log-mel window of the heard audio (200 ms centred on the frame), the identity-aware
generator -> 256x256 (networks of another size are resized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import PacketError
from ..face import CROP_SIZE, FaceObservation, rasterize_mesh
from ..models.avfr import AVFRConfig, AVFRModel
from ..registry import register_codec
from ..settings import setting
from .learned import LearnedCodec, LearnedSettings, to_image, to_tensor

# Steps: 4 crop pixels and 0.08 for jacobians. On vr_face2 with the CPU-trained model, halving
# both (2 px, 0.04) cost +1.0 kbps for +0.07 dB PSNR (docs/TRAINING.md).
VALUE_STEP = 8 / 256  # in [-1, 1] keypoint units over a 256-px crop
JACOBIAN_STEP = 0.08
MASK_SIZE = 64  # the person mask reaches the detector through this resolution (the training cache's)


def detector_inputs(image: np.ndarray, landmarks: np.ndarray | None, mask: np.ndarray | None, size: int,
                   matrix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The keypoint detector's inputs from a 256 crop, exactly as the sender makes them (training reads them the same way):
    image (area-resized to ``size``), mesh raster, person mask (via the cache's 64 px), each
    (size, size) float32; plus the landmarks in network pixels. ``matrix``: augmentation."""
    rgb = image if image.shape[0] == size else cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    rgb = rgb.astype(np.float32) / 255.0
    if mask is None:
        mask = np.zeros((size, size), np.float32)
    else:
        if mask.shape[0] != MASK_SIZE:
            mask = cv2.resize(mask.astype(np.float32), (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    points = None if landmarks is None else landmarks[:, :2] * (size / CROP_SIZE)
    if matrix is not None:
        rgb = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR)
        points = None if points is None else points @ matrix[:, :2].T + matrix[:, 2]
    mesh = np.zeros((size, size), np.float32) if points is None else rasterize_mesh(points * (CROP_SIZE / size), size)
    return rgb, mesh, mask, points if points is not None else np.zeros((0, 2), np.float32)


def keypoint_vector(kp: dict[str, torch.Tensor]) -> np.ndarray:
    """Detector output for one frame -> (K * 6,) = K (x, y) then K row-major 2x2 jacobians."""
    value = kp["value"][0].reshape(-1)  # (K, 2) -> (2K,)
    jacobian = kp["jacobian"][0].reshape(-1)  # (K, 2, 2) -> (4K,)
    return torch.cat([value, jacobian]).double().cpu().numpy()


def vector_keypoints(vector: np.ndarray, num_kp: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Inverse of ``keypoint_vector``: value (1, K, 2), jacobian (1, K, 2, 2). Keypoints far
    outside the picture or degenerate jacobians (from damaged or hostile packets) are a
    ``PacketError``: dense motion inverts the jacobians."""
    values, jacobians = vector[: 2 * num_kp], vector[2 * num_kp :].reshape(num_kp, 2, 2)
    determinants = jacobians[:, 0, 0] * jacobians[:, 1, 1] - jacobians[:, 0, 1] * jacobians[:, 1, 0]
    if not np.isfinite(vector).all() or np.abs(values).max() > 2 or np.abs(jacobians).max() > 10:
        raise PacketError("avfr keypoints out of range")
    if np.abs(determinants).min() < 1e-3:
        raise PacketError("avfr keypoint jacobian is singular")
    t = torch.as_tensor(vector, dtype=torch.float32, device=device)
    return {"value": t[: 2 * num_kp].reshape(1, num_kp, 2), "jacobian": t[2 * num_kp :].reshape(1, num_kp, 2, 2)}


def coding_step(num_kp: int) -> np.ndarray:
    return np.concatenate([np.full(2 * num_kp, VALUE_STEP), np.full(4 * num_kp, JACOBIAN_STEP)])


@dataclass(frozen=True)
class AVFRSettings(LearnedSettings):
    key_interval: int = setting(8, "a key packet every this many frames (coded against the reference: cheap)", (1, 10_000))


@register_codec("avfr")
class AVFRCodec(LearnedCodec):
    """Learned keypoints (AVFR-GAN): ~3 kbps; needs trained weights."""

    Settings = AVFRSettings

    segmentation = True

    def make_network(self, config: dict[str, Any]) -> AVFRModel:
        return AVFRModel(AVFRConfig.from_dict(config))

    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        return network.config.audio.n_mels, network.config.audio.steps

    def vector_size(self) -> int:
        num_kp = self.weights.config.get("num_kp")
        if not isinstance(num_kp, int) or not 1 <= num_kp <= 64:
            raise ValueError(f"num_kp {num_kp!r} out of range")
        return 6 * num_kp

    @property
    def config(self) -> AVFRConfig:
        return self.network.config

    def detect(self, image: np.ndarray, landmarks: np.ndarray, mask: np.ndarray | None) -> dict[str, torch.Tensor]:
        """Keypoints of a 256 crop from its landmarks (crop px) and person mask, prepared exactly
        as in training (``detector_inputs``)."""
        rgb, mesh, mask_, _ = detector_inputs(image, landmarks, mask, self.config.size)
        to = {"device": self.device, "dtype": torch.float32}
        with torch.inference_mode():
            return self.network.keypoints(torch.from_numpy(rgb).to(**to).permute(2, 0, 1)[None],  # (S, S, 3) -> (1, 3, S, S)
                                          torch.from_numpy(mesh).to(**to)[None, None], torch.from_numpy(mask_).to(**to)[None, None])  # fmt: skip

    def vector(self, observation: FaceObservation) -> np.ndarray:
        assert observation.landmarks is not None
        return keypoint_vector(self.detect(observation.crop, observation.landmarks, observation.mask))

    def prepare(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any]) -> Any:
        kp_source = vector_keypoints(vector, self.config.num_kp, self.device)
        with torch.inference_mode():
            features = self.network.prepare(to_tensor(image, self.config.size, self.device), self.full_resolution(image))
        return features, kp_source, image.shape[0]

    def render(self, state: Any, vector: np.ndarray, mel: np.ndarray) -> np.ndarray:
        features, kp_source, size = state
        kp_driving = vector_keypoints(vector, self.config.num_kp, self.device)
        mel_t = torch.from_numpy(mel).to(self.device)[None]  # (n_mels, steps) -> (1, n_mels, steps)
        return to_image(self.network.animate(features, kp_source, kp_driving, mel_t)["image"], size)

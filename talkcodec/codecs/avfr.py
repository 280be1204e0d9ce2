"""`avfr`: the AVFR-GAN keypoint codec. Sends 10 learned keypoints + jacobians per frame.

Sender: face crop + mesh raster + person mask -> keypoint detector -> 10 x (x, y) + 10 x 2x2
jacobians = 60 values -> quantized, range-coded (key / delta). The reference packet also
carries the reference's own keypoints (float16), so a receiver never runs the detector.
Receiver: reference -> generator features once; per frame: dense motion from the keypoint
pair, the log-mel window of the heard audio (200 ms centred on the frame), the identity-aware
generator -> 256x256 (networks of another size are resized).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PacketError
from ..face import FaceObservation, rasterize_mesh
from ..models.avfr import AVFRConfig, AVFRModel
from ..registry import register_codec
from ..weights import Weights, load_module
from .learned import LearnedCodec, to_image, to_tensor

VALUE_STEP = 2 / 256  # one 256-px crop pixel, in [-1, 1] keypoint units
JACOBIAN_STEP = 0.02


def keypoint_vector(kp: dict[str, torch.Tensor]) -> np.ndarray:
    """Detector output for one frame -> (K * 6,) = K (x, y) then K row-major 2x2 jacobians."""
    value = kp["value"][0].reshape(-1)  # (K, 2) -> (2K,)
    jacobian = kp["jacobian"][0].reshape(-1)  # (K, 2, 2) -> (4K,)
    return torch.cat([value, jacobian]).double().cpu().numpy()


def vector_keypoints(vector: np.ndarray, num_kp: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Inverse of ``keypoint_vector``: value (1, K, 2), jacobian (1, K, 2, 2)."""
    t = torch.as_tensor(vector, dtype=torch.float32, device=device)
    return {"value": t[: 2 * num_kp].reshape(1, num_kp, 2), "jacobian": t[2 * num_kp :].reshape(1, num_kp, 2, 2)}


def coding_step(num_kp: int) -> np.ndarray:
    return np.concatenate([np.full(2 * num_kp, VALUE_STEP), np.full(4 * num_kp, JACOBIAN_STEP)])


@register_codec("avfr")
class AVFRCodec(LearnedCodec):
    """Learned keypoints (AVFR-GAN): ~2-3 kbps; needs trained weights."""

    segmentation = True

    def build_network(self, weights: Weights) -> AVFRModel:
        model = AVFRModel(AVFRConfig.from_dict(weights.config))
        load_module(model, weights.tensors, weights.path, prefix="model.")
        return model

    @property
    def config(self) -> AVFRConfig:
        return self.network.config

    def detect(self, image: np.ndarray, landmarks: np.ndarray, mask: np.ndarray | None) -> dict[str, torch.Tensor]:
        """Keypoints of a 256 crop from its landmarks (crop px) and person mask."""
        size = self.config.size
        frame = to_tensor(image, size, self.device)
        mesh = torch.from_numpy(rasterize_mesh(landmarks, size)).to(self.device)[None, None]
        if mask is None:
            mask_t = torch.ones(1, 1, size, size, device=self.device)
        else:
            mask_t = torch.nn.functional.interpolate(torch.from_numpy(mask).to(self.device)[None, None].float(),
                                                     size=(size, size), mode="bilinear", align_corners=False)  # fmt: skip
        with torch.inference_mode():
            return self.network.keypoints(frame, mesh, mask_t)

    def vector(self, observation: FaceObservation) -> np.ndarray:
        assert observation.landmarks is not None
        return keypoint_vector(self.detect(observation.crop, observation.landmarks, observation.mask))

    def reference_extras(self, observation: FaceObservation, vector: np.ndarray | None) -> dict[str, Any]:
        return {} if vector is None else {"keypoints": vector.astype("<f2").tobytes()}

    def prepare(self, image: np.ndarray, extras: dict[str, Any]) -> Any:
        raw, width = extras.get("keypoints"), 6 * self.config.num_kp
        if not isinstance(raw, bytes) or len(raw) != 2 * width:
            raise PacketError("avfr reference packet with malformed keypoints")
        vector = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        if not np.isfinite(vector).all() or np.abs(vector).max() > 100:
            raise PacketError("avfr reference keypoints out of range")
        with torch.inference_mode():
            features = self.network.prepare(to_tensor(image, self.config.size, self.device))
        return features, vector_keypoints(vector, self.config.num_kp, self.device)

    def render(self, state: Any, vector: np.ndarray, mel: np.ndarray) -> np.ndarray:
        features, kp_source = state
        kp_driving = vector_keypoints(vector, self.config.num_kp, self.device)
        mel_t = torch.from_numpy(mel).to(self.device)[None]  # (n_mels, steps) -> (1, n_mels, steps)
        return to_image(self.network.animate(features, kp_source, kp_driving, mel_t)["image"])

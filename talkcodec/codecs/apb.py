"""`apb`: the APB2FaceV2 codec. Sends head pose + blink; the receiver's audio drives the mouth.

Sender: face front end -> yaw, pitch, roll (degrees) + right/left eye aspect ratio = 5 values
per frame, quantized and range-coded (key / delta): well under 1 kbps. No network runs at the
sender. Receiver: reference -> reenactor image encoder once; per frame: the audio-aware fuser
(log-mel window of the *received*, Opus-decoded audio + pose + blink) -> f_geo -> AdaConv
reenactor -> 256x256. The audio look-ahead (``lookahead_s`` of the weights' mel settings) is
latency: a frame can be drawn only once that much audio after it has arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..face import FaceObservation
from ..models.apb import APBConfig, APBModel
from ..registry import register_codec
from .learned import LearnedCodec, to_image, to_tensor

POSE_STEP_DEG = 0.5
BLINK_STEP = 0.01
CODING_STEP = np.array([POSE_STEP_DEG] * 3 + [BLINK_STEP] * 2)


def pose_blink_vector(pose: np.ndarray, blink: np.ndarray) -> np.ndarray:
    """(5,) = yaw, pitch, roll in degrees, then the right and left eye aspect ratios."""
    return np.concatenate([np.asarray(pose, np.float64), np.asarray(blink, np.float64)])


@register_codec("apb")
class APBCodec(LearnedCodec):
    """Pose + blink + the call's audio (APB2FaceV2): under 1 kbps; needs trained weights."""

    def make_network(self, config: dict[str, Any]) -> APBModel:
        return APBModel(APBConfig.from_dict(config))

    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        return network.config.fuser.n_mels, network.config.fuser.steps

    def vector_size(self) -> int:
        return len(CODING_STEP)

    def vector(self, observation: FaceObservation) -> np.ndarray:
        assert observation.pose is not None and observation.blink is not None
        return pose_blink_vector(observation.pose, observation.blink)

    def prepare(self, image: np.ndarray, vector: np.ndarray) -> Any:
        with torch.inference_mode():
            return self.network.prepare(to_tensor(image, self.network.config.size, self.device), self.full_resolution(image))

    def render(self, state: Any, vector: np.ndarray, mel: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(vector, dtype=torch.float32, device=self.device)[None]  # (5,) -> (1, 5)
        mel_t = torch.from_numpy(mel).to(self.device)[None]  # (n_mels, steps) -> (1, n_mels, steps)
        f_geo, _ = self.network.geometry(mel_t, v[:, :3], v[:, 3:])
        return to_image(self.network.render(state, f_geo))

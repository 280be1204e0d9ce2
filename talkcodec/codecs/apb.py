"""`apb`: the APB2FaceV2 codec. Sends head pose + blink; the receiver's audio drives the mouth.

Sender: face front end -> yaw, pitch, roll (degrees), right/left eye aspect ratio and the head's
position (solvePnP's translation, cm) = 8 values per frame, quantized and range-coded (key /
delta): about 1 kbps. No network runs at the sender. The reference packet also carries the
reference's landmarks (x, y, float16).

Receiver, per frame: the reference's landmarks are moved as the canonical head moves from the
reference's 6-DoF pose to the frame's (a rigid motion seen through the camera), each eye set
to the frame's opening; the 256x256 reference is warped piecewise-affinely onto them ("posed
reference", sharp). With ``refine``, the paper's networks then run over it: the audio-aware
fuser (log-mel window of the *received*, Opus-decoded audio + pose + blink) -> f_geo -> AdaConv
reenactor -> 256x256; the audio look-ahead (``lookahead_s`` of the weights' mel settings) is
then latency: a frame can be drawn only once that much audio after it has arrived. Why the
posed reference (the paper has none) and why ``refine`` is off by default: docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import PacketError
from ..face import (
    CROP_SIZE,
    LEFT_EYE,
    NUM_LANDMARKS,
    RIGHT_EYE,
    FaceObservation,
    HeadPoseEstimator,
    aspect_ratio,
    eye_aspect_ratio,
)
from ..models.apb import APBConfig, APBModel
from ..registry import register_codec
from ..settings import setting
from ..warp import PiecewiseAffineWarp
from .learned import LearnedCodec, LearnedSettings, to_image, to_tensor

POSE_STEP_DEG = 0.5
BLINK_STEP = 0.01
POSITION_STEP_CM = (0.05, 0.05, 0.1)  # x, y: ~0.5 px for a face filling the crop; z: ~0.3 % of its size
CODING_STEP = np.array([POSE_STEP_DEG] * 3 + [BLINK_STEP] * 2 + list(POSITION_STEP_CM))

# mediapipe's eye contours and irises (subject's right eye first)
EYE_CONTOURS = (
    (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246),
    (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466),
)
EYE_CORNERS = ((33, 133), (263, 362))
IRISES = (tuple(range(468, 473)), tuple(range(473, 478)))
OPENING_SCALES = np.linspace(0.02, 2.5, 249)  # eyelid scales tried (steps of 0.01)


def pose_blink_vector(pose: np.ndarray, blink: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(8,) = yaw, pitch, roll in degrees, the right and left eye aspect ratios, head x, y, z (cm)."""
    return np.concatenate([np.asarray(v, np.float64) for v in (pose, blink, position)])


def landmark_vector(landmarks: np.ndarray, head: HeadPoseEstimator) -> np.ndarray:
    """What a sender's front end makes of (478, 2+) landmarks (``head`` solves frames in order)."""
    angles, position = head.solve(landmarks)
    return pose_blink_vector(angles, eye_aspect_ratio(landmarks), position)


def posed_landmarks(landmarks: np.ndarray, head: HeadPoseEstimator, reference: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The reference's (478, 2+) landmarks moved to a frame: every face point by the motion of the
    canonical face's vertex from the reference's 6-DoF head pose to the frame's (``reference``,
    ``frame``: vectors as ``pose_blink_vector`` makes them), irises with their eyes, then each
    eye's points towards its corner line until the eye has the frame's aspect ratio -> (478, 2)."""
    motion = head.project(frame[:3], frame[5:8]) - head.project(reference[:3], reference[5:8])  # (468, 2)
    moved = landmarks[:, :2].astype(np.float64).copy()
    moved[:468] += motion
    for iris, eye in zip(IRISES, EYE_CONTOURS):
        moved[list(iris)] += motion[list(eye)].mean(axis=0)
    for eye, iris, (a, b), ratio_points, target in zip(EYE_CONTOURS, IRISES, EYE_CORNERS, (RIGHT_EYE, LEFT_EYE), frame[3:5]):
        axis = moved[b] - moved[a]
        normal = np.array([-axis[1], axis[0]]) / max(float(np.linalg.norm(axis)), 1e-6)
        # the eyelid scale whose eye aspect ratio is the frame's (the turned head has already changed it)
        six = moved[list(ratio_points)]  # (6, 2)
        trials = six + (OPENING_SCALES[:, None, None] - 1) * ((six - moved[a]) @ normal)[None, :, None] * normal  # (S, 6, 2)
        scale = OPENING_SCALES[np.argmin(np.abs(aspect_ratio(trials) - target))]
        points = list(eye) + list(iris)
        moved[points] += np.outer((scale - 1.0) * ((moved[points] - moved[a]) @ normal), normal)
    return moved


@dataclass
class PosedReference:
    """What the receiver keeps of a reference: the image, its landmarks and its own vector."""

    image: np.ndarray  # (256, 256, 3) uint8
    landmarks: np.ndarray  # (478, 2) crop pixels
    vector: np.ndarray  # (8,)


@dataclass(frozen=True)
class APBSettings(LearnedSettings):
    # Off by default: the shipped CPU-trained networks draw the mouth region blurrier than the
    # posed reference shows it (docs/MODELS.md) and decode 4x slower.
    refine: bool = setting(False, "receiver: run the paper's networks (fuser + AdaConv reenactor) over the posed reference",
                           receiver=True)


@register_codec("apb")
class APBCodec(LearnedCodec):
    """Pose + blink (+ the call's audio with ``refine``), APB2FaceV2: about 1.2 kbps; needs trained weights."""

    Settings = APBSettings
    settings: APBSettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        self.head = HeadPoseEstimator(CROP_SIZE)  # the sender's camera model, to move landmarks with the head
        self.warp = PiecewiseAffineWarp(CROP_SIZE)

    def make_network(self, config: dict[str, Any]) -> APBModel:
        return APBModel(APBConfig.from_dict(config))

    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        return network.config.fuser.n_mels, network.config.fuser.steps

    def vector_size(self) -> int:
        return len(CODING_STEP)

    def vector(self, observation: FaceObservation) -> np.ndarray:
        assert observation.pose is not None and observation.blink is not None and observation.position is not None
        return pose_blink_vector(observation.pose, observation.blink, observation.position)

    def reference_extras(self, observation: FaceObservation) -> dict[str, Any]:
        assert observation.landmarks is not None
        return {"landmarks": observation.landmarks[:, :2].astype("<f2").tobytes()}  # (478, 2) float16

    def prepare(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any]) -> PosedReference:
        raw = meta.get("landmarks")
        if not isinstance(raw, bytes) or len(raw) != NUM_LANDMARKS * 2 * 2:
            raise PacketError("apb reference packet with malformed landmarks")
        landmarks = np.frombuffer(raw, dtype="<f2").reshape(NUM_LANDMARKS, 2).astype(np.float64)
        if not np.isfinite(landmarks).all() or np.abs(landmarks).max() > 4 * CROP_SIZE:
            raise PacketError("apb reference landmarks out of range")
        if not 1 <= vector[7] <= 1000:
            raise PacketError("apb reference head position out of range")
        return PosedReference(image, landmarks, vector)

    @property
    def draws_with_audio(self) -> bool:
        return self.settings.refine

    def render(self, state: PosedReference, vector: np.ndarray, mel: np.ndarray | None) -> np.ndarray:
        if not 1 <= vector[7] <= 1000:  # behind the camera or absurdly far: a damaged or hostile packet
            raise PacketError("apb head position out of range")
        moved = posed_landmarks(state.landmarks, self.head, state.vector, vector)
        posed = self.warp(state.image, state.landmarks, moved)
        if mel is None:  # without ``refine``
            return posed
        network = self.network
        prepared = network.prepare(to_tensor(posed, network.config.size, self.device), self.full_resolution(posed))
        v = torch.as_tensor(vector[:5], dtype=torch.float32, device=self.device)[None]  # (5,) -> (1, 5)
        mel_t = torch.from_numpy(mel).to(self.device)[None]  # (n_mels, steps) -> (1, n_mels, steps)
        f_geo, _ = network.geometry(mel_t, v[:, :3], v[:, 3:])
        return to_image(network.render(prepared, f_geo))

"""What `apb` and `avfr` share: the reference moved with the head pose and its mouth, then warped.

Both send the head's 6-DoF pose and both eyes' openings (8 values a frame, ``pose_blink_vector``);
the reference packet carries the reference's landmarks. Per frame the receiver sets the
reference's lower face to the frame's mouth coefficients (``talkcodec.mouth``: how they are
found is each codec's own: `apb` from the audio, `avfr` from its learned code), moves every
point as the canonical head moves from the reference's pose to the frame's (a rigid motion seen
through the camera), sets each eye to the frame's opening, warps the reference piecewise-affinely
onto the result and draws the opening mouth (``painter.MouthFill``). `avfr` also sends where the
lips are against the canonical face's at the frame's pose (``lip_position``): the receiver
shifts the lower face there, which the rigid motion of the canonical face gets wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch

from ..audio import MelSettings
from ..errors import PacketError, WeightsError
from ..eyes import EYE_CONTOURS, EYE_STEP, IRISES, set_eye_openings
from ..face import CROP_SIZE, INNER_LIPS, NUM_LANDMARKS, FaceObservation, HeadPoseEstimator, eye_aspect_ratio
from ..metrics import LIPS
from ..models.mouth_fuser import MouthFuser, MouthFuserConfig
from ..mouth import MAX_HINTS, WEIGHTS_CODEC, MouthBasis
from ..painter import MOUTH_FILL_HELP, MOUTH_FILLS, MouthFill
from ..quant import VectorCoding
from ..settings import setting
from ..warp import polygon_area, warp_at
from ..weights import load_weights
from .learned import LearnedCodec, LearnedSettings, build_network, shipped_weights

POSE_STEP_DEG = 0.5
POSITION_STEP_CM = (0.05, 0.05, 0.1)  # x, y: ~0.5 px for a face filling the crop; z: ~0.3 % of its size
CODING_STEP = np.array([POSE_STEP_DEG] * 3 + [EYE_STEP] * 2 + list(POSITION_STEP_CM))
LIP_POSITION_STEP_PX = 0.5  # `avfr`'s lip position (x, y): ~0.007 of the inter-ocular distance


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
    eye's lids set to the frame's opening (``eyes.set_eye_openings``) -> (478, 2)."""
    motion = head.project(frame[:3], frame[5:8]) - head.project(reference[:3], reference[5:8])  # (468, 2)
    moved = landmarks[:, :2].astype(np.float64).copy()
    moved[:468] += motion
    for iris, eye in zip(IRISES, EYE_CONTOURS):
        moved[list(iris)] += motion[list(eye)].mean(axis=0)
    return set_eye_openings(moved, frame[3:5])


def lip_position(landmarks: np.ndarray, vector: np.ndarray, head: HeadPoseEstimator) -> np.ndarray:
    """(2,) crop px: the mean of the (478, 2+) ``landmarks``' 40 lip points less that of the
    canonical face's lips at the frame's head pose (``vector``, as ``pose_blink_vector`` makes
    it; a sender passes the rounded pose its receiver decodes, so the rounding cancels at the
    lips): where the lips are that the rigid head motion does not say (the face is not the
    canonical one, and the pose is fitted to the whole face, the opening jaw included)."""
    lips = list(LIPS)
    return landmarks[lips, :2].mean(axis=0) - head.project(vector[:3], vector[5:8])[lips].mean(axis=0)


@dataclass(frozen=True)
class MouthModel:
    """The receiver's audio -> mouth geometry: the fuser and the basis its coefficients live in."""

    fuser: MouthFuser
    basis: MouthBasis
    hints: VectorCoding  # how the first ``MAX_HINTS`` coefficients are coded when a sender sends them
    mel: MelSettings
    fingerprint: str

    def predict(self, mel: np.ndarray, vector: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """(K,) mouth coefficients of a frame: mel (n_mels, steps), its (8,) vector, the reference's (K,)."""
        scale = torch.as_tensor(self.basis.scale, dtype=torch.float32)
        v = torch.as_tensor(vector[:5], dtype=torch.float32)[None]  # (5,) -> (1, 5)
        ref = torch.as_tensor(reference, dtype=torch.float32)[None] / scale  # (K,) -> (1, K)
        with torch.inference_mode():
            out = self.fuser(torch.from_numpy(mel)[None], v[:, :3], v[:, 3:], ref)[0]  # (1, K) -> (K,)
        return (out * scale).double().numpy()


@lru_cache(maxsize=4)
def load_mouth_model(path: str) -> MouthModel:
    """A mouth weights file (``talkcodec train --codec mouth``), checked like any weights file."""
    weights = load_weights(path, WEIGHTS_CODEC)
    try:
        mel = MelSettings(**weights.info.get("mel", {}))
        config = MouthFuserConfig.from_dict(weights.config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: invalid mouth model ({exc})") from None
    fuser = build_network(lambda: MouthFuser(config), weights.tensors, path).eval()
    basis = MouthBasis.from_tensors(weights.tensors, path)
    try:
        hints = VectorCoding.from_arrays({k: v.float().numpy() for k, v in weights.tensors.items()}, "hints.coding.")
    except ValueError as exc:
        raise WeightsError(f"{path}: invalid hint coding ({exc})") from None
    if basis.size != config.coefficients or (config.n_mels, config.steps) != (mel.n_mels, mel.steps):
        raise WeightsError(f"{path}: the mouth fuser does not fit its basis or its mel settings")
    if len(hints.step) < min(MAX_HINTS, basis.size):
        raise WeightsError(f"{path}: hint coding for {len(hints.step)} coefficients, talkcodec sends up to {MAX_HINTS}")
    return MouthModel(fuser, basis, hints, mel, weights.fingerprint)


@dataclass
class PosedReference:
    """What the receiver keeps of a reference: the image, its landmarks and its own vector."""

    image: np.ndarray  # (S, S, 3) uint8, S in CROP_SIZE..MAX_SIZE
    landmarks: np.ndarray  # (478, 3) crop pixels (CROP_SIZE) (z 0 in streams that sent x, y only)
    vector: np.ndarray  # (8 + hints,)
    mouth: np.ndarray | None = None  # (K,) its mouth coefficients; None: the mouth is not moved
    mouth_area: float = 0.0  # of its inner lips (px^2)
    hints: int = 0  # mouth coefficients each frame of the stream carries


@dataclass(frozen=True)
class PosedSettings(LearnedSettings):
    mouth_model: str | None = setting(None, "the audio -> mouth weights (their basis codes the mouth); null = the shipped ones",
                                      receiver=True)  # fmt: skip
    mouth_fill: str = setting("painter", MOUTH_FILL_HELP, choices=MOUTH_FILLS, receiver=True)
    painter: str | None = setting(None, "mouth painter weights; null = the ones shipped with talkcodec", receiver=True)


class PosedCodec(LearnedCodec):
    """Base of `apb` and `avfr`: the pose-and-blink vector, the posed reference, the mouth model."""

    Settings = PosedSettings
    settings: PosedSettings

    def __init__(self, **settings: Any):
        self._mouth: MouthModel | None = None
        super().__init__(**settings)
        self.head = HeadPoseEstimator(CROP_SIZE)  # the sender's camera model, to move landmarks with the head

    @property
    def mouth_model(self) -> MouthModel:
        """The mouth model (fuser + basis + hint coding), loaded on first use."""
        if self._mouth is None:
            path = self.settings.mouth_model or shipped_weights("apb_mouth")
            if path is None:
                raise WeightsError("this installation has no mouth model: train one with `talkcodec train --codec "
                                   "mouth` and pass mouth_model=RUN_DIR/weights.safetensors")  # fmt: skip
            path = str(path)
            model = load_mouth_model(path)
            if model.mel != self.mel:
                raise WeightsError(f"{path}: the mouth model reads {model.mel}, the {self.name} weights "
                                   f"{self.mel}: one audio window per frame, so they must agree")  # fmt: skip
            self._mouth = model
        return self._mouth

    @cached_property
    def mouth_fill(self) -> MouthFill:
        """How the receiver draws the opening mouth (its painter loaded on first use)."""
        return MouthFill(self.settings.mouth_fill, self.settings.painter)

    def load(self) -> None:
        super().load()
        self.mouth_fill  # noqa: B018 (the property loads it)

    def pose_vector(self, observation: FaceObservation) -> np.ndarray:
        """Sender: the frame's (8,) pose, eye openings and head position."""
        assert observation.pose is not None and observation.blink is not None and observation.position is not None
        return pose_blink_vector(observation.pose, observation.blink, observation.position)

    def reference_extras(self, observation: FaceObservation) -> dict[str, Any]:
        assert observation.landmarks is not None
        return {"landmarks": observation.landmarks.astype("<f2").tobytes()}  # (478, 3) float16

    def posed_reference(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any], moves: bool,
                        hints: int = 0) -> PosedReference:  # fmt: skip
        """Receiver: the reference's landmarks from its packet (untrusted), its mouth coefficients when ``moves``."""
        raw = meta.get("landmarks")
        if not isinstance(raw, bytes) or len(raw) not in (NUM_LANDMARKS * 2 * 2, NUM_LANDMARKS * 3 * 2):
            raise PacketError(f"{self.name} reference packet with malformed landmarks")
        columns = len(raw) // (NUM_LANDMARKS * 2)  # streams before the mouth model sent x, y only
        landmarks = np.zeros((NUM_LANDMARKS, 3))
        landmarks[:, :columns] = np.frombuffer(raw, dtype="<f2").reshape(NUM_LANDMARKS, columns)
        if not np.isfinite(landmarks).all() or np.abs(landmarks).max() > 4 * CROP_SIZE:
            raise PacketError(f"{self.name} reference landmarks out of range")
        if not 1 <= vector[7] <= 1000:
            raise PacketError(f"{self.name} reference head position out of range")
        mouth = self.mouth_model.basis.coefficients(landmarks) if moves and columns == 3 else None
        return PosedReference(image, landmarks, vector, mouth, polygon_area(landmarks[list(INNER_LIPS), :2]), hints)

    def draw(self, state: PosedReference, vector: np.ndarray, mouth: np.ndarray | None,
             lips: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """(S, S, 3) the reference posed to the frame's ``vector`` (8+), its lower face set to ``mouth``
        (K,) (None: kept) and, given the frame's ``lips`` (``lip_position``), moved so that its lips land there."""
        if not 1 <= vector[7] <= 1000:  # behind the camera or absurdly far: a damaged or hostile packet
            raise PacketError(f"{self.name} head position out of range")
        if lips is not None and not np.all(np.abs(lips) <= CROP_SIZE / 2):
            raise PacketError(f"{self.name} lip position out of range")
        basis = self.mouth_model.basis
        mouthed = state.landmarks
        if mouth is not None and state.mouth is not None:
            mouthed = state.landmarks.copy()
            mouthed[basis.points, :2] += basis.displacement(state.landmarks, mouth - state.mouth)
        moved = posed_landmarks(mouthed, self.head, state.vector, vector)  # (478, 2) crop pixels
        if lips is not None:  # the lower face goes with its lips, to where the sender saw them
            moved[basis.points] += lips - lip_position(moved, vector, self.head)
        size = state.image.shape[0]
        scale = size / CROP_SIZE  # crop pixels -> the picture's
        posed = warp_at(size)(state.image, state.landmarks[:, :2] * scale, moved * scale)
        if mouth is not None and state.mouth is not None:
            self.mouth_fill.draw(posed, moved * scale, state.mouth_area * scale**2)
        return posed

"""`avfr`: learned keypoints that code what the head pose and the audio cannot (AVFR-GAN, pose first).

Sender: face front end -> the head's 6-DoF pose and both eye openings (`apb`'s 8 values), the
lips' position that the head pose does not give (2 values, ``posed.lip_position``: the
canonical head's rigid motion misplaces a real mouth by ~2 % of the eye distance), then the
mouth coder's encoder (``models.mouth_coder``) turns the frame's mouth coefficients (the face
mesh's lower face in the mouth model's basis: the paper's mesh prior) into ``code`` learned
values: 10 + code values a frame, quantized and range-coded (key / delta). The reference packet
carries the reference's landmarks and its own vector.
Receiver, per frame: the mouth fuser predicts the mouth from the heard audio (the paper's
audio branch attending the mouth), the coder's decoder corrects it with the received code, and
the reference is posed, its lower face placed at the sent lip position, and warped onto the
result with the mouth painted (``posed.PosedCodec``): the landmark warp is the motion, the
painter draws what the warp cannot (teeth, the open mouth).
Why no dense-motion network or whole-face generator: docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..face import FaceObservation
from ..models.mouth_coder import MouthCoder, MouthCoderConfig
from ..quant import Quantizer
from ..registry import register_codec
from .posed import CODING_STEP, PosedCodec, PosedReference, PosedSettings, lip_position

SENT_BEFORE_CODE = len(CODING_STEP) + 2  # the 8 pose and eye values, then the lip position (x, y)


@dataclass(frozen=True)
class AVFRSettings(PosedSettings):
    """`apb`'s receiver settings less what `avfr` does not have (the paper's networks, hints)."""


@register_codec("avfr")
class AVFRCodec(PosedCodec):
    """Head pose + eye openings + lip position + a learned mouth code (AVFR-GAN, pose first): about 2 kbps."""

    Settings = AVFRSettings
    settings: AVFRSettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        if self.weights.info.get("mouth_model") != self.mouth_model.fingerprint:
            raise WeightsError(f"{self.weights.path}: the mouth coder was trained over mouth model "
                               f"{self.weights.info.get('mouth_model')!r}, this installation's is "
                               f"{self.mouth_model.fingerprint!r}: pass the one it was trained with (mouth_model=...)")  # fmt: skip

    def make_network(self, config: dict[str, Any]) -> MouthCoder:
        return MouthCoder(MouthCoderConfig.from_dict(config))

    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        return self.mel.n_mels, self.mel.steps  # the mouth model's fuser reads the audio (checked against the weights' mel)

    def vector_size(self) -> int:
        code = self.weights.config.get("code")
        if not isinstance(code, int) or not 1 <= code <= 32:
            raise ValueError(f"mouth code of {code!r} values out of range")
        return SENT_BEFORE_CODE + code

    def load(self) -> None:
        super().load()
        self.mouth_model  # noqa: B018 (the property loads it)

    def _scaled(self, coefficients: np.ndarray) -> torch.Tensor:
        """(K,) coefficients -> (1, K) in units of their spread, as the coder reads them."""
        return torch.as_tensor(coefficients / self.mouth_model.basis.scale, dtype=torch.float32)[None]

    def vector(self, observation: FaceObservation) -> np.ndarray:
        assert observation.landmarks is not None
        coefficients = self.mouth_model.basis.coefficients(observation.landmarks)
        with torch.inference_mode():
            code = self.network.encode(self._scaled(coefficients))[0].double().numpy()
        pose = self.pose_vector(observation)
        rounded = Quantizer(self.stream.quantizer.step[: len(pose)])  # the pose as the receiver will have it:
        received = rounded.dequantize(rounded.quantize(pose))  # the lips are placed against that one
        return np.concatenate([pose, lip_position(observation.landmarks, received, self.head), code])

    def prepare(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any]) -> PosedReference:
        return self.posed_reference(image, vector, meta, moves=True)

    def frame_mouth(self, state: PosedReference, vector: np.ndarray, mel: np.ndarray) -> np.ndarray | None:
        """(K,) the frame's mouth coefficients: the audio's prediction corrected by the frame's code."""
        if state.mouth is None:
            return None
        model = self.mouth_model
        audio = model.predict(mel, vector, state.mouth)
        code = torch.as_tensor(vector[SENT_BEFORE_CODE:], dtype=torch.float32)[None]  # (C,) -> (1, C)
        with torch.inference_mode():
            out = self.network.decode(code, self._scaled(audio), self._scaled(state.mouth))[0]
        return out.double().numpy() * model.basis.scale

    def render(self, state: PosedReference, vector: np.ndarray, mel: np.ndarray | None) -> np.ndarray:
        assert mel is not None  # draws_with_audio
        lips = vector[len(CODING_STEP) : SENT_BEFORE_CODE]
        return self.draw(state, vector, self.frame_mouth(state, vector, mel), lips)

"""`apb`: the APB2FaceV2 codec. Sends head pose + blink; the receiver's audio drives the mouth.

Sender: face front end -> yaw, pitch, roll (degrees), right/left eye aspect ratio and the head's
position (solvePnP's translation, cm) = 8 values per frame, quantized and range-coded (key /
delta): about 1 kbps. No network runs at the sender. The reference packet also carries the
reference's landmarks (x, y, float16).

Receiver, per frame: with ``mouth=audio`` (the default) the mouth fuser (``models.mouth_fuser``)
predicts the frame's mouth coefficients (``talkcodec.mouth``) from the log-mel window of the
*received*, Opus-decoded audio, the pose, the blink and the reference's own mouth, and the
reference's lower-face landmarks move by the difference; then all of them are moved as the
canonical head moves from the reference's 6-DoF pose to the frame's (a rigid motion seen
through the camera), each eye set to the frame's opening; the 256x256 reference is warped
piecewise-affinely onto them ("posed reference", sharp) and the mouth's interior is painted
dark where it opens wider than the reference's. With ``refine``, the paper's networks then run over it: the audio-aware
fuser (log-mel window of the *received*, Opus-decoded audio + pose + blink) -> f_geo -> AdaConv
reenactor -> 256x256. Whenever audio is read, its look-ahead (``lookahead_s`` of the weights'
mel settings, 0.1 s) is latency: a frame can be drawn only once that much audio after it has
arrived. Why the
posed reference (the paper has none) and why ``refine`` is off by default: docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import PacketError, WeightsError
from ..face import FaceObservation
from ..models.apb import APBConfig, APBModel
from ..mouth import MAX_HINTS
from ..painter import MOUTH_FILL_HELP, MOUTH_FILLS
from ..quant import VectorCoding
from ..registry import register_codec
from ..settings import setting
from .learned import to_image, to_tensor
from .posed import CODING_STEP, PosedCodec, PosedReference, PosedSettings


@dataclass(frozen=True)
class APBSettings(PosedSettings):
    # Off by default: the shipped CPU-trained networks draw the mouth region blurrier than the
    # posed reference shows it (docs/MODELS.md) and decode 4x slower.
    refine: bool = setting(False, "receiver: run the paper's networks (fuser + AdaConv reenactor) over the posed reference",
                           receiver=True)
    mouth: str = setting("audio", "receiver: audio = the mouth follows the call's audio (the mouth fuser); "
                         "reference = the reference's mouth, moved with the head only (and by hints, if sent)",
                         choices=("audio", "reference"), receiver=True)  # fmt: skip
    hints: int = setting(0, "sender: mouth coefficients sent a frame (jaw opening first): they win over what the "
                         "audio predicts, for laughter, silent mouthing, noise", (0, MAX_HINTS))  # fmt: skip
    # dark by default: with the painter a loopback call fell behind (1.6 s latency against 0.2 s)
    # and the bench's lip-sync dropped 0.35 -> 0.31 (docs/MODELS.md)
    mouth_fill: str = setting("dark", MOUTH_FILL_HELP, choices=MOUTH_FILLS, receiver=True)


@register_codec("apb")
class APBCodec(PosedCodec):
    """Pose + blink (+ mouth hints), APB2FaceV2; the receiver's audio drives the mouth: about 1.2 kbps."""

    Settings = APBSettings
    settings: APBSettings

    def load(self) -> None:
        super().load()
        if self.settings.mouth == "audio":
            self.mouth_model  # noqa: B018 (the property loads it)

    def make_network(self, config: dict[str, Any]) -> APBModel:
        return APBModel(APBConfig.from_dict(config))

    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        return network.config.fuser.n_mels, network.config.fuser.steps

    def vector_size(self) -> int:
        return len(CODING_STEP)

    def sent_coding(self) -> VectorCoding:
        hints = self.settings.hints
        return self.coding.then(self.mouth_model.hints, hints) if hints else self.coding

    def stream_coding(self, meta: dict[str, Any]) -> VectorCoding:
        hints = meta.get("hints", 0)
        if not isinstance(hints, int) or isinstance(hints, bool) or not 0 <= hints <= MAX_HINTS:
            raise PacketError("apb reference packet with an invalid hint count")
        if not hints:
            return self.coding
        if meta.get("mouth_model") != self.mouth_model.fingerprint:
            raise WeightsError(f"this stream's mouth hints were coded with mouth model {meta.get('mouth_model')!r}, this "
                               f"decoder has {self.mouth_model.fingerprint!r}: decode it with the sender's mouth_model")  # fmt: skip
        return self.coding.then(self.mouth_model.hints, hints)

    def vector(self, observation: FaceObservation) -> np.ndarray:
        vector = self.pose_vector(observation)
        if not self.settings.hints:
            return vector
        assert observation.landmarks is not None
        return np.concatenate([vector, self.mouth_model.basis.coefficients(observation.landmarks)[: self.settings.hints]])

    def reference_extras(self, observation: FaceObservation) -> dict[str, Any]:
        extras = super().reference_extras(observation)
        if self.settings.hints:
            extras.update(hints=self.settings.hints, mouth_model=self.mouth_model.fingerprint)
        return extras

    def prepare(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any]) -> PosedReference:
        hints = len(vector) - len(CODING_STEP)  # ``stream_coding`` has checked the count
        return self.posed_reference(image, vector, meta, moves=bool(hints) or self.settings.mouth == "audio", hints=hints)

    @property
    def draws_with_audio(self) -> bool:
        return self.settings.refine or self.settings.mouth == "audio"

    def frame_mouth(self, state: PosedReference, vector: np.ndarray, mel: np.ndarray | None) -> np.ndarray | None:
        """(K,) the frame's mouth coefficients: the audio's prediction (or the reference's own),
        its first ones replaced by the hints the frame carries; None: the mouth does not move."""
        if state.mouth is None or (mel is None and not state.hints):
            return None
        use_audio = mel is not None and self.settings.mouth == "audio"
        mouth = self.mouth_model.predict(mel, vector, state.mouth) if use_audio else state.mouth.copy()
        mouth[: state.hints] = vector[len(CODING_STEP) :]
        return mouth

    def render(self, state: PosedReference, vector: np.ndarray, mel: np.ndarray | None) -> np.ndarray:
        posed = self.draw(state, vector, self.frame_mouth(state, vector, mel))
        if not self.settings.refine or mel is None:
            return posed
        network = self.network
        size = posed.shape[0]
        prepared = network.prepare(to_tensor(posed, network.config.size, self.device), self.full_resolution(posed))
        v = torch.as_tensor(vector[:5], dtype=torch.float32, device=self.device)[None]  # (5,) -> (1, 5)
        mel_t = torch.from_numpy(mel).to(self.device)[None]  # (n_mels, steps) -> (1, n_mels, steps)
        f_geo, _ = network.geometry(mel_t, v[:, :3], v[:, 3:])
        return to_image(network.render(prepared, f_geo), size)

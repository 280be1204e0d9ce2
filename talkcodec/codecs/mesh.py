"""`mesh`: the training-free codec. Sends face-mesh motion, warps the reference image.

Sender: mediapipe landmarks of the 256x256 crop -> shape-model parameters (pose + K basis
coefficients, ``mesh_model.py``) and both eyes' openings (aspect ratios) -> uniform
quantization -> entropy coding (static Laplace model, range coder) of the symbols themselves in
key packets and of their difference from the key's in delta packets. Every delta depends only on its key, so a lost packet costs one frame.

Receiver: parameters -> landmarks, each eye's lids set to its sent opening (``eyes.py``: the
basis alone draws a shut eye half open) -> piecewise-affine warp of the reference image from the
reference's landmarks to these (``warp.py``) -> mouth-interior fill where the mouth opens
wider than in the reference.

The reference packet carries the image (WebP/JPEG), the reference's own landmarks (float16)
and the stream's settings (K, precision, eye openings or not), so a decoder needs nothing but
the stream.
An empty frame payload means "no face in this frame: hold the last frame".
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..api import Codec
from ..errors import PacketError
from ..eyes import set_eye_openings
from ..face import CROP_SIZE, INNER_LIPS, NUM_LANDMARKS, FaceObservation
from ..packet import Packet, unpack
from ..painter import MOUTH_FILL_HELP, MOUTH_FILLS, MouthFill
from ..quant import VectorCoding, VectorStream
from ..registry import register_codec
from ..settings import setting
from ..warp import polygon_area, warp_at
from .mesh_model import MAX_COEFFICIENTS, POSE_PARAMS, ShapeModel
from .stream import StreamDecoder, StreamEncoder, StreamReference, StreamSettings, reference_image


@dataclass(frozen=True)
class MeshSettings(StreamSettings):
    coefficients: int = setting(16, "basis coefficients per frame (expression + shape detail)", (1, MAX_COEFFICIENTS))
    eyes: bool = setting(True, "send both eyes' openings a frame (+0.26 kbps on the bundled sample): the receiver closes the lids on a blink")
    mouth_fill: str = setting("painter", MOUTH_FILL_HELP, choices=MOUTH_FILLS, receiver=True)
    painter: str | None = setting(None, "mouth painter weights; null = the ones shipped with talkcodec", receiver=True)
    model: str | None = setting(None, "path to a shape model; null = the one shipped with talkcodec", receiver=True)


@lru_cache(maxsize=4)
def _load_model(path: str | None) -> ShapeModel:
    return ShapeModel.load(path)


EYE_VALUES = 2  # right, left eye opening, after the parameters when a stream sends them


def mesh_stream(model: ShapeModel, coefficients: int, precision: float, eyes: bool) -> VectorStream:
    """The coders of the pose + ``coefficients`` parameters (+ the 2 eye openings) at ``precision`` (both ends)."""
    size = POSE_PARAMS + coefficients
    step = model.step[:size] * precision
    coding = VectorCoding(
        step, np.rint(model.key_centre[:size] / step), np.maximum(model.key_scale[:size] / precision, 0.2),
        np.maximum(model.delta_scale[:, :size] / precision, 0.2),
    )  # fmt: skip
    return VectorStream(coding.then(model.eyes.scaled(precision)) if eyes else coding)


@register_codec("mesh")
class MeshCodec(Codec):
    """Training-free landmark codec: ~3-5 kbps, works on any face from the first install."""

    Settings = MeshSettings
    settings: MeshSettings

    def __init__(self, **settings: object):
        super().__init__(**settings)
        self.model = _load_model(self.settings.model)

    def encoder(self, fps: float | Fraction = 25) -> MeshEncoder:
        return MeshEncoder(self, Fraction(fps).limit_denominator(1001))

    def decoder(self, reference: np.ndarray | None = None) -> MeshDecoder:
        return MeshDecoder(self, reference)


class MeshEncoder(StreamEncoder):
    def __init__(self, codec: MeshCodec, fps: Fraction):
        super().__init__(codec, fps, codec.settings)
        self.mesh = codec
        self.stream = mesh_stream(codec.model, codec.settings.coefficients, codec.settings.precision, codec.settings.eyes)

    def symbols(self, observation: FaceObservation) -> np.ndarray:
        assert observation.landmarks is not None
        values = self.mesh.model.analyse(observation.landmarks, self.settings.coefficients)
        if self.settings.eyes:
            assert observation.blink is not None  # the tracker measures it with the landmarks
            values = np.concatenate([values, observation.blink])
        return self.stream.quantizer.quantize(values)

    def head_angles(self, observation: FaceObservation, symbols: np.ndarray) -> np.ndarray:
        return self.stream.quantizer.dequantize(symbols)[:3]  # the rotation vector, degrees

    def reference_meta(self, observation: FaceObservation, symbols: np.ndarray | None) -> dict[str, object]:
        meta: dict[str, object] = {"k": self.settings.coefficients, "precision": self.settings.precision}
        if self.settings.eyes:
            meta["eyes"] = EYE_VALUES
        if observation.landmarks is not None and symbols is not None:
            meta["landmarks"] = observation.landmarks.astype("<f2").tobytes()  # (478, 3) float16
            meta["symbols"] = symbols.tolist()
        return meta


@dataclass
class _Reference(StreamReference):
    landmarks: np.ndarray | None = None  # (478, 3) as sent
    residual: np.ndarray | None = None  # canonical-space identity detail
    mouth_area: float = 0.0
    coefficients: int = 0  # K: the symbols after the pose and the K coefficients are the eye openings


class MeshDecoder(StreamDecoder):
    def __init__(self, codec: MeshCodec, reference: np.ndarray | None = None):
        super().__init__(codec, reference)
        self.mesh = codec
        self.mouth_fill = MouthFill(codec.settings.mouth_fill, codec.settings.painter)
        self._streams: dict[tuple[int, float, bool], VectorStream] = {}

    def _stream(self, k: int, precision: float, eyes: bool) -> VectorStream:
        if (k, precision, eyes) not in self._streams:
            if len(self._streams) >= 8:  # a stream changes settings rarely; bound what a peer can make us hold
                self._streams.clear()
            self._streams[(k, precision, eyes)] = mesh_stream(self.mesh.model, k, precision, eyes)
        return self._streams[(k, precision, eyes)]

    def read_reference(self, packet: Packet) -> _Reference:
        meta = unpack(packet.payload)
        image = reference_image(meta, "mesh")
        k, precision = meta.get("k"), meta.get("precision")
        if not isinstance(k, int) or not 1 <= k <= MAX_COEFFICIENTS or not isinstance(precision, float | int):
            raise PacketError("mesh reference packet with invalid stream settings")
        if not 0.05 <= precision <= 100:
            raise PacketError("mesh reference packet with invalid precision")
        eyes = meta.get("eyes", 0)
        if eyes not in (0, EYE_VALUES) or isinstance(eyes, bool):
            raise PacketError("mesh reference packet with an invalid eye count")
        if "landmarks" not in meta:
            return _Reference(image, None)
        raw, symbols = meta["landmarks"], meta.get("symbols")
        if not isinstance(raw, bytes) or len(raw) != NUM_LANDMARKS * 3 * 2:
            raise PacketError("mesh reference packet with malformed landmarks")
        if not isinstance(symbols, list) or len(symbols) != POSE_PARAMS + k + eyes or not all(isinstance(s, int) for s in symbols):
            raise PacketError("mesh reference packet with malformed parameters")
        landmarks = np.frombuffer(raw, dtype="<f2").reshape(NUM_LANDMARKS, 3).astype(np.float64)  # (478, 3)
        if not np.isfinite(landmarks).all() or np.abs(landmarks).max() > 4 * CROP_SIZE:
            raise PacketError("mesh reference landmarks out of range")
        stream = self._stream(k, float(precision), bool(eyes))
        params = stream.quantizer.dequantize(np.clip(np.array(symbols), -(1 << 14), 1 << 14))[: POSE_PARAMS + k]
        return _Reference(image, stream, landmarks=landmarks, residual=self.mesh.model.residual(landmarks, params),
                          mouth_area=polygon_area(landmarks[list(INNER_LIPS), :2]), coefficients=k)  # fmt: skip

    def landmarks(self, reference: StreamReference, symbols: np.ndarray) -> np.ndarray:
        """(478, 3) the frame's landmarks in crop pixels: the shape model's, the lids set to the sent openings."""
        assert isinstance(reference, _Reference) and reference.stream is not None
        values = reference.stream.quantizer.dequantize(symbols)
        params = POSE_PARAMS + reference.coefficients
        landmarks = self.mesh.model.synthesize(values[:params], reference.residual)
        if len(values) > params:
            landmarks[:, :2] = set_eye_openings(landmarks, values[params:])
        return landmarks

    def render(self, reference: StreamReference, symbols: np.ndarray, seq: int) -> np.ndarray:
        assert isinstance(reference, _Reference) and reference.landmarks is not None
        landmarks = self.landmarks(reference, symbols)
        size = reference.image.shape[0]
        scale = size / CROP_SIZE  # crop pixels -> the picture's
        image = warp_at(size)(reference.image, reference.landmarks[:, :2] * scale, landmarks[:, :2] * scale)
        self.mouth_fill.draw(image, landmarks * scale, reference.mouth_area * scale**2)
        return image

"""`mesh`: the training-free codec. Sends face-mesh motion, warps the reference image.

Sender: mediapipe landmarks of the 256x256 crop -> shape-model parameters (pose + K basis
coefficients, ``mesh_model.py``) -> uniform quantization -> entropy coding (static Laplace
model, range coder) of the symbols themselves in key packets and of their difference from the key's
in delta packets. Every delta depends only on its key, so a lost packet costs one frame.

Receiver: parameters -> landmarks -> piecewise-affine warp of the reference image from the
reference's landmarks to these (``warp.py``) -> mouth-interior fill where the mouth opens
wider than in the reference.

The reference packet carries the image (WebP/JPEG), the reference's own landmarks (float16)
and the stream's settings (K, precision), so a decoder needs nothing but the stream.
An empty frame payload means "no face in this frame: hold the last frame".
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import cv2
import numpy as np

from ..api import Codec, Decoder, Encoder, Frame
from ..errors import PacketError, TalkcodecError
from ..face import CROP_SIZE, INNER_LIPS, NUM_LANDMARKS, CropSettings, FaceObservation, FaceTracker
from ..packet import Packet, PacketKind, decode_image, encode_image, pack, unpack
from ..quant import LaplaceCoder, Quantizer
from ..registry import register_codec
from ..warp import PiecewiseAffineWarp, fill_mouth, polygon_area
from .mesh_model import MAX_COEFFICIENTS, MAX_KEY_DISTANCE, POSE_PARAMS, ShapeModel


@dataclass(frozen=True)
class MeshSettings:
    coefficients: int = 16  # basis coefficients per frame (expression + shape detail), 1..32
    key_interval: int = 25  # a key packet every this many frames (1 s at 25 fps)
    precision: float = 1.0  # quantization step multiplier: 2.0 = coarser motion, fewer bits
    reference_format: str = "webp"  # or "jpeg"
    reference_quality: int = 90
    refresh_degrees: float = 30.0  # resend the reference when the head turns this far from it
    mouth_fill: bool = True  # paint the mouth interior when it opens wider than in the reference
    crop: bool = True  # False: input frames are already square face crops (the bench's)
    model: str | None = None  # path to a shape model; None = the one shipped with talkcodec

    def __post_init__(self) -> None:
        if not 1 <= self.coefficients <= MAX_COEFFICIENTS:
            raise TalkcodecError(f"mesh: coefficients must be in 1..{MAX_COEFFICIENTS}")
        if not 1 <= self.key_interval <= 10_000 or not 0.05 <= self.precision <= 100:
            raise TalkcodecError("mesh: key_interval must be in 1..10000 and precision in 0.05..100")
        if self.reference_format not in ("webp", "jpeg"):
            raise TalkcodecError("mesh: reference_format must be 'webp' or 'jpeg'")


@lru_cache(maxsize=4)
def _load_model(path: str | None) -> ShapeModel:
    return ShapeModel.load(path)


class _StreamCoding:
    """Quantizer and entropy coders for one (model, K, precision): shared by both ends."""

    def __init__(self, model: ShapeModel, coefficients: int, precision: float):
        size = POSE_PARAMS + coefficients
        self.model, self.coefficients = model, coefficients
        self.quantizer = Quantizer(model.step[:size] * precision)
        self.centre = np.rint(model.key_centre[:size] / self.quantizer.step).astype(np.int32)
        self.key_coder = LaplaceCoder(np.maximum(model.key_scale[:size] / precision, 0.2))
        self._delta_scales = np.maximum(model.delta_scale[:, :size] / precision, 0.2)
        self._delta_coders: dict[int, LaplaceCoder] = {}

    def delta_coder(self, distance: int) -> LaplaceCoder:
        row = min(distance, MAX_KEY_DISTANCE) - 1
        if row not in self._delta_coders:
            self._delta_coders[row] = LaplaceCoder(self._delta_scales[row])
        return self._delta_coders[row]

    def symbols(self, landmarks: np.ndarray) -> np.ndarray:
        return self.quantizer.quantize(self.model.analyse(landmarks, self.coefficients))

    def params(self, symbols: np.ndarray) -> np.ndarray:
        return self.quantizer.dequantize(symbols)


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


class MeshEncoder(Encoder):
    def __init__(self, codec: MeshCodec, fps: Fraction):
        self.codec, self.settings, self.fps = codec, codec.settings, fps
        self.coding = _StreamCoding(codec.model, self.settings.coefficients, self.settings.precision)
        self.tracker = FaceTracker(CropSettings(track=self.settings.crop), segmentation=False)
        self.last_observation: FaceObservation | None = None
        self._seq = 0
        self._ref_id = -1
        self._ref_rotation: np.ndarray | None = None  # rotation vector of the current reference
        self._key_seq = -1
        self._key_symbols: np.ndarray | None = None
        self._want_key = self._want_reference = False

    def request_key(self) -> None:
        self._want_key = True

    def request_reference(self) -> None:
        self._want_reference = True

    def _reference_packet(self, observation: FaceObservation, symbols: np.ndarray | None) -> Packet:
        self._ref_id = (self._ref_id + 1) % 256
        meta: dict[str, object] = {
            "image": encode_image(observation.crop, self.settings.reference_format, self.settings.reference_quality),
            "k": self.settings.coefficients,
            "precision": self.settings.precision,
        }
        if observation.landmarks is not None and symbols is not None:
            meta["landmarks"] = observation.landmarks.astype("<f2").tobytes()  # (478, 3) float16
            meta["symbols"] = symbols.tolist()
        self._ref_rotation = None if symbols is None else self.coding.params(symbols)[:3]
        return Packet(self.codec.codec_id, PacketKind.REFERENCE, self._seq, pack(meta), ref_id=self._ref_id)

    def encode(self, frame: np.ndarray, audio: np.ndarray | None = None) -> list[Packet]:
        observation = self.tracker.process(frame)
        self.last_observation = observation
        symbols = None if observation.landmarks is None else self.coding.symbols(observation.landmarks)
        packets: list[Packet] = []
        turned = (
            symbols is not None
            and self._ref_rotation is not None
            and np.abs(self.coding.params(symbols)[:3] - self._ref_rotation).max() > self.settings.refresh_degrees
        )
        found_again = symbols is not None and self._ref_rotation is None
        if self._ref_id < 0 or observation.crop_changed or self._want_reference or turned or found_again:
            packets.append(self._reference_packet(observation, symbols))
            self._want_reference, self._want_key = False, True
        distance = self._seq - self._key_seq
        key = self._want_key or self._key_symbols is None or distance >= self.settings.key_interval
        codec_id = self.codec.codec_id
        if key:
            payload = b"" if symbols is None else self.coding.key_coder.encode(symbols - self.coding.centre)
            packets.append(Packet(codec_id, PacketKind.FRAME, self._seq, payload, key=True, ref_id=self._ref_id, fps=self.fps))
            self._key_seq, self._key_symbols, self._want_key = self._seq, symbols, False
        else:
            assert self._key_symbols is not None
            payload = b"" if symbols is None else self.coding.delta_coder(distance).encode(symbols - self._key_symbols)
            packets.append(Packet(codec_id, PacketKind.FRAME, self._seq, payload, key_distance=distance))
        self._seq += 1
        return packets

    def close(self) -> None:
        self.tracker.close()


@dataclass
class _Reference:
    image: np.ndarray  # (256, 256, 3) uint8
    coding: _StreamCoding | None  # None when the reference has no face (hold only)
    landmarks: np.ndarray | None  # (478, 3) as sent
    residual: np.ndarray | None  # canonical-space identity detail
    mouth_area: float


class MeshDecoder(Decoder):
    def __init__(self, codec: MeshCodec, reference: np.ndarray | None = None):
        self.codec = codec
        self.warp = PiecewiseAffineWarp(CROP_SIZE)
        self._references: dict[int, _Reference] = {}
        self._ref: _Reference | None = None
        self._key_seq = -1
        self._key_symbols: np.ndarray | None = None
        self._fps = Fraction(25)
        self._last: Frame | None = None
        self._initial = reference
        self._needs_key = self._needs_reference = False
        self._codings: dict[tuple[int, float], _StreamCoding] = {}

    @property
    def needs_key(self) -> bool:
        return self._needs_key

    @property
    def needs_reference(self) -> bool:
        return self._needs_reference

    def _coding(self, k: int, precision: float) -> _StreamCoding:
        if (k, precision) not in self._codings:
            self._codings[(k, precision)] = _StreamCoding(self.codec.model, k, precision)
        return self._codings[(k, precision)]

    def _add_reference(self, packet: Packet) -> None:
        meta = unpack(packet.payload)
        if not isinstance(meta, dict) or not isinstance(meta.get("image"), bytes):
            raise PacketError("mesh reference packet without an image")
        image = decode_image(meta["image"])
        if image.shape != (CROP_SIZE, CROP_SIZE, 3):
            image = cv2.resize(image, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
        k, precision = meta.get("k"), meta.get("precision")
        if not isinstance(k, int) or not 1 <= k <= MAX_COEFFICIENTS or not isinstance(precision, float | int):
            raise PacketError("mesh reference packet with invalid stream settings")
        if not 0.05 <= precision <= 100:
            raise PacketError("mesh reference packet with invalid precision")
        reference = _Reference(image, None, None, None, 0.0)
        if "landmarks" in meta:
            raw, symbols = meta["landmarks"], meta.get("symbols")
            if not isinstance(raw, bytes) or len(raw) != NUM_LANDMARKS * 3 * 2:
                raise PacketError("mesh reference packet with malformed landmarks")
            if not isinstance(symbols, list) or len(symbols) != POSE_PARAMS + k or not all(isinstance(s, int) for s in symbols):
                raise PacketError("mesh reference packet with malformed parameters")
            landmarks = np.frombuffer(raw, dtype="<f2").reshape(NUM_LANDMARKS, 3).astype(np.float64)  # (478, 3)
            if not np.isfinite(landmarks).all() or np.abs(landmarks).max() > 4 * CROP_SIZE:
                raise PacketError("mesh reference landmarks out of range")
            coding = self._coding(k, float(precision))
            params = coding.params(np.clip(np.array(symbols), -(1 << 14), 1 << 14))
            reference.coding, reference.landmarks = coding, landmarks
            reference.residual = coding.model.residual(landmarks, params)
            reference.mouth_area = polygon_area(landmarks[list(INNER_LIPS), :2])
        self._references[packet.ref_id] = reference
        if len(self._references) > 4:  # keep the few most recent
            del self._references[next(iter(self._references))]

    def _render(self, symbols: np.ndarray) -> np.ndarray:
        ref = self._ref
        assert ref is not None and ref.coding is not None and ref.landmarks is not None
        params = ref.coding.params(symbols)
        landmarks = ref.coding.model.synthesize(params, ref.residual)  # (478, 3)
        image = self.warp(ref.image, ref.landmarks[:, :2], landmarks[:, :2])
        if self.codec.settings.mouth_fill:
            fill_mouth(image, landmarks[list(INNER_LIPS), :2], ref.mouth_area)
        return image

    def _emit(self, image: np.ndarray | None, seq: int, concealed: bool) -> list[Frame]:
        if image is None:
            if self._last is not None:
                image = self._last.image
            elif self._ref is not None:
                image = self._ref.image
            elif self._initial is not None:
                image = self._initial
            else:
                return []  # nothing to show yet
        frame = Frame(image, seq, float(seq / self._fps), concealed)
        self._last = frame
        return [frame]

    def decode(self, packet: Packet | None) -> list[Frame]:
        if packet is None:
            return self._emit(None, self._last.seq + 1 if self._last else 0, True)
        if packet.codec_id != self.codec.codec_id:
            raise PacketError(f"a {packet.codec} packet given to the mesh decoder")
        if packet.kind == PacketKind.REFERENCE:
            self._add_reference(packet)
            return []
        if packet.kind != PacketKind.FRAME:
            return []
        if packet.key:
            self._fps = packet.fps or self._fps
            self._ref = self._references.get(packet.ref_id)
            self._key_seq, self._key_symbols = packet.seq, None
            self._needs_reference = self._ref is None
            if self._ref is None:
                self._needs_key = True  # the reference was lost: the sender must resend it
                return self._emit(None, packet.seq, True)
            if not packet.payload or self._ref.coding is None:
                self._needs_key = False
                return self._emit(None, packet.seq, False)  # no face: hold
            coding = self._ref.coding
            try:
                self._key_symbols = coding.key_coder.decode(packet.payload) + coding.centre
            except PacketError:
                self._needs_key = True  # a corrupt key: its deltas cannot decode either
                raise
            self._needs_key = False
            return self._emit(self._render(self._key_symbols), packet.seq, False)
        if packet.key_seq != self._key_seq or self._ref is None:
            self._needs_key = True  # its key never arrived
            return self._emit(None, packet.seq, True)
        if not packet.payload or self._key_symbols is None or self._ref.coding is None:
            return self._emit(None, packet.seq, False)
        delta = self._ref.coding.delta_coder(packet.key_distance).decode(packet.payload)
        return self._emit(self._render(self._key_symbols + delta), packet.seq, False)

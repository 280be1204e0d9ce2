"""What the learned codecs (`avfr`, `apb`) share: weights, the motion-vector stream, references.

Each sends one small float vector per frame (AVFR: keypoints + jacobians; APB: head pose +
blink), quantized and range-coded exactly like `mesh`'s parameters: key packets code the
symbols, deltas code their difference from the key's (``quant.VectorStream``), so a lost
packet costs one frame. The reference packet carries the image, the precision and the
fingerprint of the weights the stream was made for; a decoder with other weights refuses the
stream instead of drawing nonsense. Subclasses say how a face observation becomes a vector
(sender) and how a vector, a reference and the heard audio become an image (receiver).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..api import Codec
from ..audio import AudioTimeline, MelSettings, log_mel
from ..device import resolve_device
from ..errors import PacketError, WeightsError
from ..face import FaceObservation
from ..packet import MAX_FRAMES_PER_PACKET, Packet, unpack
from ..quant import VectorCoding, VectorStream
from ..settings import setting
from ..weights import Weights, load_module, load_weights
from .stream import StreamDecoder, StreamEncoder, StreamReference, StreamSettings, reference_image


@dataclass(frozen=True)
class LearnedSettings(StreamSettings):
    weights: str | None = setting(None, "weights file; null = the weights shipped with talkcodec", receiver=True)
    device: str = setting("cpu", "where the networks run: cpu, cuda, auto", receiver=True)
    frames_per_packet: int | None = setting(
        None, "frames per packet; null: as many as the receiver's audio look-ahead hides anyway (3 at 25 fps)",
        (1, MAX_FRAMES_PER_PACKET))  # fmt: skip
    full_resolution_blend: bool = setting(
        True, "receiver: the image blend warps the full-size reference itself (sharp), not the network-size copy", receiver=True)


def shipped_weights(codec: str) -> Path | None:
    path = Path(str(resources.files("talkcodec") / "data" / f"{codec}.safetensors"))
    return path if path.is_file() else None


MAX_PARAMETERS = 64_000_000  # a weights file asking for a bigger network is refused before it is built


@lru_cache(maxsize=8)
def _load(path: str, codec: str, mtime_ns: int, size: int) -> Weights:  # keyed on the file's state
    return load_weights(path, codec)


def _load_current(path: str, codec: str) -> Weights:
    try:
        stat = Path(path).stat()
    except OSError:
        raise WeightsError(f"{path}: no such weights file") from None
    return _load(path, codec, stat.st_mtime_ns, stat.st_size)


def build_network(make: Callable[[], torch.nn.Module], tensors: dict[str, torch.Tensor], source: str,
                  prefix: str = "model.") -> torch.nn.Module:  # fmt: skip
    """``make()`` loaded from ``tensors[prefix + name]``; its size is counted on the meta device
    first (a hostile config must not allocate gigabytes); any problem is one ``WeightsError``."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in make().parameters())
        if count > MAX_PARAMETERS:
            raise ValueError(f"{count} parameters is more than talkcodec allows ({MAX_PARAMETERS})")
        network = make()
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: sizes torch cannot lay out
        raise WeightsError(f"{source}: invalid network config ({exc})") from None
    load_module(network, tensors, source, prefix=prefix)
    return network


def reference_vector(raw: Any, size: int) -> np.ndarray:
    """The reference's own vector from its packet (float16 little-endian)."""
    if not isinstance(raw, bytes) or len(raw) != 2 * size:
        raise PacketError("reference packet with a malformed vector")
    vector = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if not np.isfinite(vector).all():
        raise PacketError("reference vector is not finite")
    return vector


def to_tensor(image: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) float in [0, 1]."""
    if image.shape[0] != size or image.shape[1] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device).permute(2, 0, 1)[None].float() / 255.0


def to_image(tensor: torch.Tensor, size: int) -> np.ndarray:
    """(1, 3, s, s) in [0, 1] -> (size, size, 3) uint8."""
    image = (tensor[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (3, s, s) -> (s, s, 3)
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(image)


class LearnedCodec(Codec):
    """Base of `avfr` and `apb`: loads the weights (and the network, lazily, on first use)."""

    Settings = LearnedSettings
    settings: LearnedSettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        path = self.settings.weights or shipped_weights(self.name)
        if path is None:
            raise WeightsError(
                f"the {self.name!r} codec needs trained weights and this installation has none: train them with "
                f"`talkcodec train --codec {self.name} --data CLIPS_DIR --out RUN_DIR` and pass "
                f"weights=RUN_DIR/weights.safetensors (CLI: --set weights=RUN_DIR/weights.safetensors)"
            )
        self.weights = _load_current(str(path), self.name)
        try:
            self.mel = MelSettings(**self.weights.info.get("mel", {}))
            coding = {k: v.float().numpy() for k, v in self.weights.tensors.items() if k.startswith("coding.")}
            self.coding = VectorCoding.from_arrays(coding)
            if self.coding.step.shape != (self.vector_size(),):
                raise ValueError(f"coding for {self.coding.step.shape[0]} values, the codec sends {self.vector_size()}")
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: invalid weights metadata ({exc})") from None
        self.stream = VectorStream(self.sent_coding().scaled(self.settings.precision))
        self.device = resolve_device(self.settings.device)
        self._network: torch.nn.Module | None = None

    @property
    def network(self) -> torch.nn.Module:
        """The network, built and loaded on first use (an `apb` sender never needs it)."""
        if self._network is None:
            source = self.weights.path
            network = build_network(lambda: self.make_network(self.weights.config), self.weights.tensors, source)
            if self.audio_shape(network) != (self.mel.n_mels, self.mel.steps):
                raise WeightsError(f"{source}: the network reads {self.audio_shape(network)} mel windows, "
                                   f"its mel settings make {(self.mel.n_mels, self.mel.steps)}")  # fmt: skip
            self._network = network.to(self.device).eval()
        return self._network

    def full_resolution(self, image: np.ndarray) -> torch.Tensor | None:
        """Receiver: the full-size (S x S) reference the image blend warps (``full_resolution_blend``), or None."""
        return to_tensor(image, image.shape[0], self.device) if self.settings.full_resolution_blend else None

    def load(self) -> None:
        self.network  # noqa: B018 (the property builds and loads it)
        if self.draws_with_audio:  # the mel filterbank's first use imports librosa: seconds
            log_mel(np.zeros(self.mel.sample_rate // 10, np.float32), self.mel)

    @abstractmethod
    def make_network(self, config: dict[str, Any]) -> torch.nn.Module:
        """The (untrained) network ``config`` describes; ValueError / TypeError when invalid."""

    @abstractmethod
    def audio_shape(self, network: torch.nn.Module) -> tuple[int, int]:
        """(n_mels, steps) of the mel windows the network reads."""

    @abstractmethod
    def vector_size(self) -> int:
        """How many values a frame sends (checked against the weights' coding statistics)."""

    def sent_coding(self) -> VectorCoding:
        """Sender: the coding of what a frame sends (the weights' vector, or more: ``apb`` hints)."""
        return self.coding

    def stream_coding(self, meta: dict[str, Any]) -> VectorCoding:
        """Receiver: the coding of the frames of a stream, from its reference packet's fields
        (untrusted: ``PacketError`` when malformed)."""
        return self.coding

    @abstractmethod
    def vector(self, observation: FaceObservation) -> np.ndarray:
        """Sender: the float vector this frame sends (the observation has a face)."""

    def reference_extras(self, observation: FaceObservation) -> dict[str, Any]:
        """Sender: what else a reference packet with a face carries for this codec (beside the
        image and the vector); read back by ``prepare``."""
        return {}

    @abstractmethod
    def prepare(self, image: np.ndarray, vector: np.ndarray, meta: dict[str, Any]) -> Any:
        """Receiver: per-reference state (encoded features) from the reference image, its own
        vector and its packet's fields (untrusted: ``PacketError`` when malformed), once per reference."""

    @property
    def draws_with_audio(self) -> bool:
        """Whether the receiver reads the call's audio to draw a frame (it then waits for its look-ahead)."""
        return True

    @abstractmethod
    def render(self, state: Any, vector: np.ndarray, mel: np.ndarray | None) -> np.ndarray:
        """Receiver: (S, S, 3) uint8 frame (S: the reference's side) from its state, the vector and the
        (n_mels, steps) log-mel window of the frame's audio (None unless ``draws_with_audio``)."""

    def frames_per_packet(self, fps: Fraction) -> int:
        """The setting, or by default the most frames whose hold-back (n - 1 frame intervals)
        fits in the audio look-ahead a receiver waits for anyway."""
        if self.settings.frames_per_packet is not None:
            return self.settings.frames_per_packet
        return min(1 + int(self.mel.lookahead_s * fps + 1e-9), MAX_FRAMES_PER_PACKET)

    def encoder(self, fps: float | Fraction = 25) -> LearnedEncoder:
        return LearnedEncoder(self, Fraction(fps).limit_denominator(1001))

    def decoder(self, reference: np.ndarray | None = None) -> LearnedDecoder:
        return LearnedDecoder(self, reference)


class LearnedEncoder(StreamEncoder):
    def __init__(self, codec: LearnedCodec, fps: Fraction):
        super().__init__(codec, fps, codec.settings, codec.frames_per_packet(fps))
        self.learned = codec
        self.stream = codec.stream

    def symbols(self, observation: FaceObservation) -> np.ndarray:
        self._vector = self.learned.vector(observation)  # kept for a reference packet of this frame
        return self.stream.quantizer.quantize(self._vector)

    def head_angles(self, observation: FaceObservation, symbols: np.ndarray) -> np.ndarray:
        assert observation.pose is not None
        return observation.pose  # yaw, pitch, roll

    def reference_meta(self, observation: FaceObservation, symbols: np.ndarray | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"precision": self.settings.precision, "model": self.learned.weights.fingerprint,
                                "face": symbols is not None}  # fmt: skip
        self.key_base = None
        if symbols is not None:
            meta["vector"] = self._vector.astype("<f2").tobytes()  # the reference's own values, float16
            meta.update(self.learned.reference_extras(observation))
            self.key_base = self.stream.quantizer.quantize(reference_vector(meta["vector"], len(self._vector)))
        return meta


@dataclass
class _Reference(StreamReference):
    state: Any = None  # the codec's prepared features (None without a face)


class LearnedDecoder(StreamDecoder):
    def __init__(self, codec: LearnedCodec, reference: np.ndarray | None = None):
        super().__init__(codec, reference)
        self.learned = codec
        self.audio = AudioTimeline(codec.mel)
        self.uses_audio = codec.draws_with_audio
        self.lookahead_s = codec.mel.lookahead_s if self.uses_audio else 0.0
        self._streams: dict[tuple[float, int], VectorStream] = {}

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        self.audio.push(samples, sample_rate)

    def _stream(self, coding: VectorCoding, precision: float) -> VectorStream:
        key = (precision, len(coding.step))  # a codec's stream codings differ in their length only
        if key not in self._streams:
            if len(self._streams) >= 8:  # a stream changes precision rarely; bound what a peer can make us hold
                self._streams.clear()
            self._streams[key] = VectorStream(coding.scaled(precision))
        return self._streams[key]

    def read_reference(self, packet: Packet) -> _Reference:
        codec = self.learned
        meta = unpack(packet.payload)
        image = reference_image(meta, codec.name)
        if meta.get("model") != codec.weights.fingerprint:
            raise WeightsError(
                f"this stream was made with {codec.name} weights {meta.get('model')!r}, but this decoder has "
                f"{codec.weights.fingerprint!r} ({codec.weights.path}); decode it with the sender's weights"
            )
        precision = meta.get("precision")
        if not isinstance(precision, float | int) or not 0.05 <= precision <= 100:
            raise PacketError(f"{codec.name} reference packet with invalid precision")
        if not meta.get("face"):
            return _Reference(image, None)
        coding = codec.stream_coding(meta)
        vector = reference_vector(meta.get("vector"), len(coding.step))
        stream = self._stream(coding, float(precision))
        try:
            state = codec.prepare(image, vector, meta)
        except RuntimeError as exc:  # the network refused these inputs
            raise PacketError(f"{codec.name} reference the network cannot use ({exc})") from None
        return _Reference(image, stream, base=stream.quantizer.quantize(vector), state=state)

    def render(self, reference: StreamReference, symbols: np.ndarray, seq: int) -> np.ndarray:
        assert isinstance(reference, _Reference) and reference.stream is not None
        vector = reference.stream.quantizer.dequantize(symbols)
        try:
            with torch.inference_mode():
                mel = self.audio.window(float(seq / self._fps)) if self.uses_audio else None
                return self.learned.render(reference.state, vector, mel)
        except RuntimeError as exc:  # e.g. a singular jacobian that slipped past the codec's checks
            raise PacketError(f"{self.learned.name} frame the network cannot draw ({exc})") from None

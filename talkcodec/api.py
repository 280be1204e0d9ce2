"""The library API: a ``Codec`` makes ``Encoder`` / ``Decoder`` pairs with a PyAV-like push API.

    codec = talkcodec.get_codec("mesh")
    enc, dec = codec.encoder(fps=25), codec.decoder()
    for packets in [*map(enc.encode, frames), enc.flush()]:  # flush: what is held back at the end
        for packet in packets:                     # [] is allowed, several are too
            wire = packet.to_bytes()               # what the network carries
            for frame in dec.decode(talkcodec.Packet.from_bytes(wire)):
                show(frame.image)                  # (256, 256, 3) uint8 RGB; a packet may carry several
    dec.flush()                                    # frames still waiting at the end
    dec.decode(None)                               # a lost packet: a concealed frame
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .packet import Packet
from .settings import build_settings

if TYPE_CHECKING:
    from .face import FaceObservation


@dataclass(frozen=True)
class Frame:
    """A decoded frame: ``image`` is (H, W, 3) uint8 RGB; ``time`` = seq / fps in seconds."""

    image: np.ndarray
    seq: int
    time: float
    concealed: bool = False  # True when made up for a lost or undecodable packet


class Encoder(ABC):
    """Sender side. Feed it every captured frame; send what it returns, in order."""

    #: What the face front end made of the last frame (landmarks in its CROP_SIZE crop).
    last_observation: FaceObservation | None = None
    #: The most frames one packet carries (frames are held back for n - 1 frame intervals).
    frames_per_packet: int = 1
    #: The side of the picture the receiver draws (None until the first face is seen) and, when the
    #: face in the input was smaller than the ``size`` setting asked, that setting.
    size: int | None = None
    capped_from: int | None = None

    @property
    def last_crop(self) -> np.ndarray | None:
        """The last frame's face crop at the size the receiver draws it (what it rebuilds)."""
        return None if self.last_observation is None else self.last_observation.crop

    @abstractmethod
    def encode(self, frame: np.ndarray, audio: np.ndarray | None = None) -> list[Packet]:
        """Encode one (H, W, 3) uint8 RGB frame (any size) and the audio captured with it."""

    def flush(self) -> list[Packet]:
        """Packets still held back at the end of the stream (frames waiting for a packet of several)."""
        return []

    @abstractmethod
    def skip(self) -> list[Packet]:
        """A frame the caller had no time to encode (a live sender behind the frame clock): the
        stream moves on one frame without it (the receiver holds the picture); returns packets
        the skip completes (a packet of several ends at a gap)."""

    def request_key(self) -> None:
        """The receiver lost a key packet: make the next frame packet a key."""

    def request_reference(self) -> None:
        """The receiver has no usable reference: resend it with the next frame."""

    def close(self) -> None:
        """Release the front end (mediapipe graphs)."""


class Decoder(ABC):
    """Receiver side. Feed it every packet that arrives (``None`` for one that did not).

    Audio-driven decoders (``uses_audio``) also want the call's audio as it is heard:
    ``push_audio`` it (time 0 = the stream's first frame) before decoding the frames it covers,
    including ``lookahead_s`` of audio after each frame; missing audio reads as silence.
    """

    uses_audio: bool = False
    lookahead_s: float = 0.0  # audio needed after a frame's time before it can be decoded

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Mono float32 samples of the call's audio, continuing the previous ones."""

    @abstractmethod
    def decode(self, packet: Packet | None) -> list[Frame]:
        """Frames made ready by this packet; ``None`` asks for the next frame: one still waiting
        in a packet of several frames, else a concealed one (the packet was lost)."""

    def flush(self) -> list[Frame]:
        """Frames still waiting at the end of the stream."""
        return []

    def skip_to(self, seq: int) -> None:
        """A receiver that jumped ahead after a stall plays from frame ``seq`` on."""

    @property
    def needs_key(self) -> bool:
        """True while the decoder waits for a key packet (the sender should be asked for one)."""
        return False

    @property
    def needs_reference(self) -> bool:
        """True when a key named a reference image this decoder never got (ask for it)."""
        return False


class Codec(ABC):
    """A registered codec: its settings, and factories for encoders and decoders."""

    name: ClassVar[str]
    codec_id: ClassVar[int]
    Settings: ClassVar[type]  # a dataclass of ``settings.setting`` fields: the codec's settings

    def __init__(self, **settings: Any):
        self.settings = build_settings(self.Settings, self.name, settings)  # TalkcodecError for a bad one

    @abstractmethod
    def encoder(self, fps: float | Fraction = 25) -> Encoder:
        """A new encoder for a stream at ``fps`` frames per second."""

    @abstractmethod
    def decoder(self, reference: np.ndarray | None = None) -> Decoder:
        """A new decoder; ``reference`` (RGB) stands in until a reference packet arrives."""

    def load(self) -> None:
        """Load now what decoding needs (networks, models) instead of on the first frame."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

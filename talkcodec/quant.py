"""Quantization, delta coding and entropy coding of small integer vectors.

Frame packets are tiny (tens of bytes), so the costs that matter are counted in bits:

* ``varint`` / ``zigzag``: the LEB128 integers the packet header is made of.
* ``Quantizer``: a uniform scalar quantizer with one step per parameter.
* ``LaplaceCoder``: a range coder (the ``constriction`` package) over integer symbols
  under a quantized Laplace model whose scale is given per symbol. The model is static (its
  scales are fitted offline and shipped with the codec), so every packet decodes on its own:
  nothing adaptive carries over from packet to packet, which is what a lossy channel needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PacketError

#: Symbols are clipped to this range before entropy coding (a bounded alphabet).
SYMBOL_LIMIT = 1 << 14


def write_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit set on every byte but the last."""
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes | memoryview, pos: int, max_bytes: int = 5) -> tuple[int, int]:
    """Read an unsigned LEB128 at ``pos``; returns ``(value, next_pos)``.

    At most ``max_bytes`` bytes are read (5 bytes = 35 bits), so hostile input cannot make it
    loop or build huge integers.
    """
    value = 0
    for i in range(max_bytes):
        if pos + i >= len(data):
            raise PacketError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise PacketError(f"varint longer than {max_bytes} bytes")


def zigzag(value: int) -> int:
    """Map signed to unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    return -2 * value - 1 if value < 0 else 2 * value


def unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


@dataclass(frozen=True)
class Quantizer:
    """Uniform scalar quantizer: ``q = round((x - offset) / step)``, one step per parameter."""

    step: np.ndarray  # (P,) float
    offset: np.ndarray | None = None  # (P,) float, default 0

    def quantize(self, values: np.ndarray) -> np.ndarray:
        centred = values - (0.0 if self.offset is None else self.offset)
        q = np.rint(centred / self.step)
        return np.clip(q, -SYMBOL_LIMIT + 1, SYMBOL_LIMIT - 1).astype(np.int32)

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        values = symbols.astype(np.float64) * self.step
        return values + (0.0 if self.offset is None else self.offset)


class LaplaceCoder:
    """Entropy-codes int32 symbol vectors with a quantized Laplace model (scale per symbol).

    Output is the range coder's 32-bit words as little-endian bytes with trailing zero bytes
    dropped (the decoder pads them back), so a packet pays for bytes, not whole words. On 22
    symbols this costs ~1.5 bytes over the ideal code length; constriction's ANS coder, tried
    first, cost ~2.7.
    """

    def __init__(self, scales: np.ndarray):
        import constriction  # deferred: only codecs that entropy-code need it

        self._stream = constriction.stream
        self.scales = np.asarray(scales, dtype=np.float64)
        self._model = constriction.stream.model.QuantizedLaplace(-SYMBOL_LIMIT, SYMBOL_LIMIT)
        self._means = np.zeros_like(self.scales)

    def encode(self, symbols: np.ndarray) -> bytes:
        symbols = np.clip(np.asarray(symbols, dtype=np.int32), -SYMBOL_LIMIT + 1, SYMBOL_LIMIT - 1)
        if symbols.shape != self.scales.shape:
            raise ValueError(f"expected {self.scales.shape[0]} symbols, got {symbols.shape}")
        coder = self._stream.queue.RangeEncoder()
        coder.encode(symbols, self._model, self._means, self.scales)
        return coder.get_compressed().astype("<u4").tobytes().rstrip(b"\x00")

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) > 4 * (len(self.scales) + 2):
            raise PacketError("entropy-coded payload is longer than its symbols can need")
        padded = data + b"\x00" * (-len(data) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        try:
            coder = self._stream.queue.RangeDecoder(words)
            return np.asarray(coder.decode(self._model, self._means, self.scales), dtype=np.int32)
        except Exception as exc:  # constriction raises on invalid compressed data
            raise PacketError(f"corrupted entropy-coded payload ({exc})") from None


MAX_KEY_DISTANCE = 64  # delta-scale tables have this many rows; farther deltas use the last


@dataclass(frozen=True)
class VectorCoding:
    """Quantization + entropy coding of one float vector per frame, key and delta packets.

    A key codes ``round(x / step) - centre`` with Laplace scales ``key_scale``; a delta codes
    the symbols minus its key's, with scales ``delta_scale[distance - 1]`` (the spread grows
    with the distance to the key). Steps and scales are fitted on real tracks by ``fit``.
    """

    step: np.ndarray  # (D,) quantization step of each value
    key_centre: np.ndarray  # (D,) typical symbol of each value
    key_scale: np.ndarray  # (D,) Laplace scale of key symbols around the centre
    delta_scale: np.ndarray  # (MAX_KEY_DISTANCE, D) Laplace scale of symbol - key symbol

    @classmethod
    def fit(cls, tracks: list[np.ndarray], step: np.ndarray) -> VectorCoding:
        """Statistics of (T, D) tracks of consecutive frames (25 fps) quantized with ``step``."""
        symbols = [np.rint(np.asarray(t, np.float64) / step) for t in tracks if len(t)]
        if not symbols:
            raise ValueError("no frames to fit the coding on")
        everything = np.concatenate(symbols)
        centre = np.median(everything, axis=0)
        key_scale = np.maximum(np.abs(everything - centre).mean(axis=0), 0.5)
        delta_scale = np.ones((MAX_KEY_DISTANCE, len(step)))
        for d in range(1, MAX_KEY_DISTANCE + 1):
            diffs = [s[d:] - s[:-d] for s in symbols if len(s) > d]
            delta_scale[d - 1] = np.maximum(np.abs(np.concatenate(diffs)).mean(axis=0), 0.3) if diffs else delta_scale[d - 2]
        return cls(np.asarray(step, np.float64), centre, key_scale, delta_scale)

    def scaled(self, precision: float) -> VectorCoding:
        """Coarser (precision > 1) or finer steps, scales adjusted to match."""
        return VectorCoding(self.step * precision, np.rint(self.key_centre / precision),
                            np.maximum(self.key_scale / precision, 0.2), np.maximum(self.delta_scale / precision, 0.2))  # fmt: skip

    def then(self, other: VectorCoding, values: int | None = None) -> VectorCoding:
        """This vector followed by the first ``values`` (all by default) of ``other``'s."""
        n = len(other.step) if values is None else values
        return VectorCoding(np.concatenate([self.step, other.step[:n]]), np.concatenate([self.key_centre, other.key_centre[:n]]),
                            np.concatenate([self.key_scale, other.key_scale[:n]]),
                            np.concatenate([self.delta_scale, other.delta_scale[:, :n]], axis=1))  # fmt: skip

    def to_arrays(self, prefix: str = "coding.") -> dict[str, np.ndarray]:
        return {prefix + k: getattr(self, k).astype(np.float32) for k in ("step", "key_centre", "key_scale", "delta_scale")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "coding.") -> VectorCoding:
        """Raises ValueError on missing, mis-shaped or non-positive statistics."""
        try:
            values = {k: np.asarray(arrays[prefix + k], np.float64) for k in ("step", "key_centre", "key_scale", "delta_scale")}
        except KeyError as exc:
            raise ValueError(f"missing coding statistics {exc}") from None
        dims = values["step"].shape
        if len(dims) != 1 or values["key_centre"].shape != dims or values["key_scale"].shape != dims:
            raise ValueError("coding statistics of inconsistent shapes")
        if values["delta_scale"].shape != (MAX_KEY_DISTANCE, dims[0]):
            raise ValueError("coding delta scales of the wrong shape")
        if not all(np.isfinite(v).all() for v in values.values()):
            raise ValueError("coding statistics are not finite")
        if (values["step"] <= 0).any() or (values["key_scale"] <= 0).any() or (values["delta_scale"] <= 0).any():
            raise ValueError("coding steps and scales must be positive")
        return cls(**values)


class VectorStream:
    """The coders for one ``VectorCoding``, shared by an encoder and a decoder.

    A packet codes the symbols of n >= 1 consecutive frames, an (n, D) array: the first row
    against an anchor (the typical values, the reference's symbols, or its key's), every
    later row against the row before it (scales of distance 1), all in one range-coded run.
    """

    MAX_CODERS = 64  # coders are cached per (first row's scales, n); a hostile stream cannot grow this

    def __init__(self, coding: VectorCoding):
        self.coding = coding
        self.quantizer = Quantizer(coding.step)
        self.centre = coding.key_centre.astype(np.int32)
        self._coders: dict[tuple[int, int], LaplaceCoder] = {}

    def _coder(self, row: int, frames: int) -> LaplaceCoder:
        """Row -1: the first frame against the typical values; else ``delta_scale[row]``."""
        if (row, frames) not in self._coders:
            if len(self._coders) >= self.MAX_CODERS:
                self._coders.clear()
            first = self.coding.key_scale if row < 0 else self.coding.delta_scale[row]
            scales = np.concatenate([first, np.tile(self.coding.delta_scale[0], frames - 1)])  # (n * D,)
            self._coders[row, frames] = LaplaceCoder(scales)
        return self._coders[row, frames]

    @staticmethod
    def _row(distance: int) -> int:
        return min(max(distance, 1), MAX_KEY_DISTANCE) - 1

    def _encode(self, symbols: np.ndarray, anchor: np.ndarray, row: int) -> bytes:
        frames = np.atleast_2d(symbols)  # (n, D)
        residual = np.concatenate([frames[:1] - anchor, np.diff(frames, axis=0)])  # (n, D)
        return self._coder(row, len(frames)).encode(residual.reshape(-1))

    def _decode(self, payload: bytes, anchor: np.ndarray, row: int, frames: int) -> np.ndarray:
        residual = self._coder(row, frames).decode(payload).reshape(frames, -1)  # (n * D,) -> (n, D)
        residual[0] += anchor
        return np.cumsum(residual, axis=0, dtype=np.int64).astype(np.int32)

    def encode_key(self, symbols: np.ndarray, base: np.ndarray | None = None) -> bytes:
        """A key alone: against the typical values, or, with ``base`` (the symbols of the
        reference the key is drawn over, which the receiver has), as a far delta from it.
        ``symbols``: (D,) for one frame, (n, D) for a key packet of n frames."""
        if base is not None:
            return self._encode(symbols, base, MAX_KEY_DISTANCE - 1)
        return self._encode(symbols, self.centre, -1)

    def decode_key(self, payload: bytes, base: np.ndarray | None = None, frames: int = 1) -> np.ndarray:
        """(frames, D) symbols; the first row is the key's."""
        if base is not None:
            return self._decode(payload, base, MAX_KEY_DISTANCE - 1, frames)
        return self._decode(payload, self.centre, -1, frames)

    def encode_delta(self, symbols: np.ndarray, key_symbols: np.ndarray, distance: int) -> bytes:
        """(D,) or (n, D) symbols of frames starting ``distance`` frames after their key."""
        return self._encode(symbols, key_symbols, self._row(distance))

    def decode_delta(self, payload: bytes, key_symbols: np.ndarray, distance: int, frames: int = 1) -> np.ndarray:
        return self._decode(payload, key_symbols, self._row(distance), frames)

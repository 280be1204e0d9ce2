"""The .tkc file: a header, then records (talkcodec packets and Opus audio), then an index.

    b"TKC\\0"  u8 version  varint n  header (msgpack map, n bytes)  u32 crc32(header)
    record*   u8 type  varint n  body (n bytes)  u32 crc32(type + n + body)
    type 1 PACKET   body = Packet.to_bytes()
    type 2 AUDIO    body = varint pts (48 kHz samples from the first frame) + one Opus packet
    type 3 INDEX    body = msgpack [[offset, seq, is_reference], ...] of every reference and key
    type 4 END      body = u64 offset of the INDEX record (lets a reader find the index fast)

Records are written and flushed as they are made, so a file cut short (a crash, a full disk,
a dropped download) still reads up to its last whole record; past a damaged record (bad CRC,
impossible type or length) reading resumes at the next intact record, found by scanning for a
record whose checksum holds. Sizes and the scan's work are bounded before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import ContainerError, PacketError
from .packet import MAX_PACKET_BYTES, Packet, PacketKind, pack, unpack
from .quant import read_varint, write_varint

MAGIC = b"TKC\x00"
VERSION = 1
PACKET, AUDIO, INDEX, END = 1, 2, 3, 4
_MAX_BODY = {PACKET: MAX_PACKET_BYTES, AUDIO: 1 << 16, INDEX: 1 << 24, END: 8}
_MAX_HEADER = 1 << 16
RESYNC_SCAN_BYTES = 1 << 20  # how far past a damaged record the next intact one is looked for
RESYNC_BUDGET_BYTES = 64 << 20  # checksum work one read may spend resynchronising (hostile files stay fast)


@dataclass(frozen=True)
class TkcHeader:
    codec: str
    fps: Fraction
    width: int = 256
    height: int = 256
    audio_rate: int | None = None  # 48000 when the file has an Opus track
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # source name, talkcodec version, ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec, "fps": [self.fps.numerator, self.fps.denominator], "width": self.width,
            "height": self.height, "audio_rate": self.audio_rate, "settings": self.settings, "extra": self.extra,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> TkcHeader:
        try:
            fps = Fraction(int(d["fps"][0]), int(d["fps"][1]))
            header = cls(str(d["codec"]), fps, int(d["width"]), int(d["height"]), d.get("audio_rate"),
                         dict(d.get("settings") or {}), dict(d.get("extra") or {}))  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError) as exc:
            raise ContainerError(f"malformed .tkc header ({exc})") from None
        if not (0 < fps <= 240 and 0 < header.width <= 4096 and 0 < header.height <= 4096):
            raise ContainerError(f"implausible .tkc header values (fps {float(fps):g}, {header.width}x{header.height})")
        return header


def _record(kind: int, body: bytes) -> bytes:
    head = bytes([kind]) + write_varint(len(body))
    return head + body + struct.pack("<I", zlib.crc32(head + body))


class TkcWriter:
    """Writes a .tkc file incrementally; ``close()`` adds the index."""

    def __init__(self, path: str | Path, header: TkcHeader):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.path, "wb")
        body = pack(header.to_dict())
        self._file.write(MAGIC + bytes([VERSION]) + write_varint(len(body)) + body + struct.pack("<I", zlib.crc32(body)))
        self._index: list[list[int]] = []
        self._closed = False

    def _write(self, kind: int, body: bytes) -> int:
        offset = self._file.tell()
        self._file.write(_record(kind, body))
        return offset

    def write_packet(self, packet: Packet) -> None:
        offset = self._write(PACKET, packet.to_bytes())
        if packet.kind == PacketKind.REFERENCE or (packet.kind == PacketKind.FRAME and packet.key):
            self._index.append([offset, packet.seq, int(packet.kind == PacketKind.REFERENCE)])

    def write_audio(self, pts: int, data: bytes) -> None:
        self._write(AUDIO, write_varint(pts) + data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        index_offset = self._write(INDEX, pack(self._index))
        self._write(END, struct.pack("<Q", index_offset))
        self._file.close()

    def __enter__(self) -> TkcWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class AudioChunk:
    pts: int  # in 48 kHz samples from the first frame
    data: bytes  # one Opus packet


class TkcReader:
    """Reads a .tkc file record by record. After iterating, ``damage`` says where it stopped early."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ContainerError(f"{path}: no such file")
        self._file: BinaryIO = open(self.path, "rb")
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self.damage: str | None = None  # the first damaged or cut record of the last read, if any
        self.damaged_records = 0  # damaged stretches skipped (or, the last one, where reading stopped)
        self._resync_checked = 0  # bytes checksummed while looking for the next intact record

    def _read_header(self) -> TkcHeader:
        head = self._file.read(len(MAGIC) + 1)
        if head[: len(MAGIC)] != MAGIC:
            raise ContainerError(f"{self.path}: not a .tkc file")
        if len(head) < len(MAGIC) + 1:
            raise ContainerError(f"{self.path}: truncated .tkc header")
        if head[-1] != VERSION:
            raise ContainerError(
                f"{self.path}: .tkc format version {head[-1]} is not supported (this talkcodec reads version {VERSION})"
            )
        prefix = self._file.read(5)
        try:
            length, used = read_varint(prefix, 0)
        except PacketError:
            raise ContainerError(f"{self.path}: truncated .tkc header") from None
        if length > _MAX_HEADER:
            raise ContainerError(f"{self.path}: .tkc header too large")
        self._file.seek(len(MAGIC) + 1 + used)
        body = self._file.read(length)
        crc = self._file.read(4)
        if len(body) < length or len(crc) < 4 or struct.unpack("<I", crc)[0] != zlib.crc32(body):
            raise ContainerError(f"{self.path}: damaged .tkc header")
        try:
            return TkcHeader.from_dict(unpack(body))
        except PacketError as exc:
            raise ContainerError(f"{self.path}: malformed .tkc header ({exc})") from None
        except ContainerError as exc:
            raise ContainerError(f"{self.path}: {exc}") from None
        finally:
            self.data_start = self._file.tell()

    def _record_at(self, offset: int, resyncing: bool = False) -> tuple[int, bytes, int] | str | None:
        """(type, body, end offset) of the intact record at ``offset``, None at the end of the
        file, or why there is no intact record there."""
        self._file.seek(offset)
        prefix = self._file.read(6)
        if not prefix:
            return None  # clean end of file (a file whose writer never closed has no index: fine)
        try:
            kind = prefix[0]
            length, used = read_varint(prefix, 1)
        except PacketError:
            return "cut short" if len(prefix) < 6 else "damaged record"
        if kind not in _MAX_BODY or length > _MAX_BODY[kind]:
            return "damaged record"
        self._file.seek(offset + used)
        body = self._file.read(length)
        crc = self._file.read(4)
        if len(body) < length or len(crc) < 4:
            return "cut short"
        if resyncing:
            self._resync_checked += length
        if struct.unpack("<I", crc)[0] != zlib.crc32(prefix[:used] + body):
            return "damaged record (checksum mismatch)"
        return kind, body, offset + used + length + 4

    def _resync(self, offset: int) -> int | None:
        """Where the next intact record starts within ``RESYNC_SCAN_BYTES`` after ``offset``, or
        None. Bounded work: at most ``RESYNC_BUDGET_BYTES`` of checksums in one read."""
        self._file.seek(offset)
        window = np.frombuffer(self._file.read(RESYNC_SCAN_BYTES), np.uint8)
        for candidate in np.flatnonzero((window >= PACKET) & (window <= END)):  # record types 1..4
            if self._resync_checked > RESYNC_BUDGET_BYTES:
                self.damage = f"{self.damage}; too damaged to read on"
                return None
            if isinstance(self._record_at(offset + int(candidate), resyncing=True), tuple):
                return offset + int(candidate)
        return None

    def _damaged(self, offset: int, why: str) -> None:
        self.damaged_records += 1
        if self.damage is None:
            self.damage = f"{why} at byte {offset}"

    def _records(self, start: int) -> Iterator[tuple[int, int, bytes]]:
        """(offset, type, body) of each intact record from ``start`` up to END or the end of
        the file; past a damaged record, reading resumes at the next intact one."""
        offset: int | None = start
        while offset is not None:
            found = self._record_at(offset)
            if found is None:
                return
            if isinstance(found, str):
                self._damaged(offset, found)
                offset = self._resync(offset + 1)
                continue
            kind, body, end = found
            if kind == END:
                return
            yield offset, kind, body
            offset = end

    def __iter__(self) -> Iterator[Packet | AudioChunk]:
        """Every packet and audio chunk in file order, up to the end or the first damage."""
        return self.read(self.data_start)

    def read(self, start: int) -> Iterator[Packet | AudioChunk]:
        """Every intact packet and audio chunk from ``start``: damaged records (and intact records
        whose packet does not parse) are skipped and counted, reading resumes after them."""
        self.damage, self.damaged_records, self._resync_checked = None, 0, 0
        for offset, kind, body in self._records(start):
            if kind == PACKET:
                try:
                    yield Packet.from_bytes(body)
                except PacketError as exc:
                    self._damaged(offset, f"unreadable packet ({exc})")
            elif kind == AUDIO:
                try:
                    pts, used = read_varint(body, 0, max_bytes=9)
                except PacketError:
                    self._damaged(offset, "unreadable audio record")
                    continue
                yield AudioChunk(pts, body[used:])

    def index(self) -> list[tuple[int, int, bool]]:
        """(offset, seq, is_reference) of every reference and key packet: from the INDEX record
        when the file was closed properly, else by scanning."""
        size = self.path.stat().st_size
        end_len = 1 + 1 + 8 + 4
        if size >= self.data_start + end_len:
            self._file.seek(size - end_len)
            tail = self._file.read(end_len)
            if tail[:2] == bytes([END, 8]) and struct.unpack("<I", tail[-4:])[0] == zlib.crc32(tail[:-4]):
                (index_offset,) = struct.unpack("<Q", tail[2:10])
                if self.data_start <= index_offset < size:
                    for _, kind, body in self._records(index_offset):
                        if kind == INDEX:
                            try:
                                entries = [(int(e[0]), int(e[1]), bool(e[2])) for e in unpack(body)]
                            except (PacketError, TypeError, ValueError, IndexError, KeyError):
                                break  # a malformed index: rebuild it by scanning
                            if all(self.data_start <= e[0] < size for e in entries):
                                return entries
                        break
        entries = []
        for offset, kind, body in self._records(self.data_start):
            if kind == PACKET:
                try:
                    packet = Packet.from_bytes(body)
                except PacketError:
                    break
                if packet.kind == PacketKind.REFERENCE or (packet.kind == PacketKind.FRAME and packet.key):
                    entries.append((offset, packet.seq, packet.kind == PacketKind.REFERENCE))
        return entries

    def seek_offset(self, seq: int) -> int:
        """Where to start reading to decode from frame ``seq``: the last reference at or before
        the last key at or before ``seq``."""
        entries = self.index()
        keys = [e for e in entries if not e[2] and e[1] <= seq]
        if not keys:
            return self.data_start
        key_offset = keys[-1][0]
        refs = [e for e in entries if e[2] and e[0] <= key_offset]
        return refs[-1][0] if refs else self.data_start

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TkcReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

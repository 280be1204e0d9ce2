from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkcodec.container import AudioChunk, TkcHeader, TkcReader, TkcWriter
from talkcodec.errors import ContainerError
from talkcodec.packet import MAX_PACKET_BYTES, Packet, PacketKind
from talkcodec.quant import write_varint

MESH = 1


def _stream():
    items = [Packet(MESH, PacketKind.REFERENCE, 0, b"image" * 50, ref_id=0)]
    for seq in range(60):
        if seq % 25 == 0:
            items.append(Packet(MESH, PacketKind.FRAME, seq, bytes([seq]) * 6, key=True, fps=Fraction(25)))
        else:
            items.append(Packet(MESH, PacketKind.FRAME, seq, bytes([seq]) * 4, key_distance=seq % 25))
        items.append(AudioChunk(seq * 1920, b"opus" * 10))
    return items


def _write(path, items):
    with TkcWriter(path, TkcHeader("mesh", Fraction(25), audio_rate=48000, settings={"precision": 1.0})) as writer:
        for item in items:
            if isinstance(item, AudioChunk):
                writer.write_audio(item.pts, item.data)
            else:
                writer.write_packet(item)


@pytest.fixture
def tkc(tmp_path):
    path = tmp_path / "s.tkc"
    _write(path, _stream())
    return path


def test_roundtrip(tkc):
    with TkcReader(tkc) as reader:
        assert reader.header.codec == "mesh" and reader.header.fps == 25 and reader.header.audio_rate == 48000
        assert list(reader) == _stream() and reader.damage is None


def test_index_and_seek(tkc):
    with TkcReader(tkc) as reader:
        index = reader.index()
        assert [(seq, ref) for _, seq, ref in index] == [(0, True), (0, False), (25, False), (50, False)]
        first = next(iter(reader.read(reader.seek_offset(37))))
        assert first.kind == PacketKind.REFERENCE  # decoding frame 37 starts at its reference


def test_index_is_rebuilt_when_the_writer_never_closed(tkc, tmp_path):
    cut = tmp_path / "cut.tkc"
    data = tkc.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with TkcReader(cut) as reader:
        assert [seq for _, seq, _ in reader.index()][:2] == [0, 0]


def test_every_truncation_reads_a_prefix(tkc, tmp_path):
    data = tkc.read_bytes()
    full = _stream()
    with TkcReader(tkc) as reader:
        start = reader.data_start
    for cut in range(start, len(data), 7):
        path = tmp_path / "t.tkc"
        path.write_bytes(data[:cut])
        with TkcReader(path) as reader:
            items = list(reader)
        assert items == full[: len(items)]


def _record_spans(path):
    """(start, end) byte offsets of every record after the header, in file order."""
    with TkcReader(path) as reader:
        spans, offset = [], reader.data_start
        while isinstance(found := reader._record_at(offset), tuple):
            spans.append((offset, found[2]))
            offset = found[2]
    return spans


@pytest.mark.parametrize("seed", range(12))
def test_reading_resumes_at_the_first_intact_record_after_damage(tkc, tmp_path, seed):
    """200 flipped bytes anywhere: every item whose record the damage did not touch is read,
    in order, and the damage is reported."""
    rng = np.random.default_rng(seed)
    data = bytearray(tkc.read_bytes())
    spans = _record_spans(tkc)[:-2]  # the items' records (INDEX and END follow)
    first = spans[0][0]
    at = int(rng.integers(first, spans[-1][1] - 200))
    for i in range(at, at + 200):
        data[i] ^= int(rng.integers(1, 256))
    path = tmp_path / "damaged.tkc"
    path.write_bytes(bytes(data))
    with TkcReader(path) as reader:
        items = list(reader)
        damage = reader.damage
    untouched = [item for item, (start, end) in zip(_stream(), spans) if end <= at or start >= at + 200]
    assert items == untouched
    assert damage is not None and "byte" in damage


def test_a_flood_of_fake_record_starts_cannot_make_reading_slow(tmp_path):
    """A hostile tail of record-type bytes each claiming a 1 MiB body: the resync scan's
    checksum work is bounded."""
    import time

    path = tmp_path / "hostile.tkc"
    _write(path, [])
    with TkcReader(path) as reader:
        start = reader.data_start
    claim = bytes([1]) + write_varint(MAX_PACKET_BYTES)  # a PACKET record of 1 MiB
    path.write_bytes(path.read_bytes()[:start] + claim * ((3 << 20) // len(claim)) + bytes(1 << 20))
    started = time.perf_counter()
    with TkcReader(path) as reader:
        assert list(reader) == [] and reader.damage
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a .tkc"), (b"RIFF1234WAVE", "not a .tkc"), (b"TKC\x00\x09", "version 9"), (b"TKC\x00\x01\x05ab", "damaged")],
)
def test_bad_files_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.tkc"
    path.write_bytes(content)
    with pytest.raises(ContainerError, match=message):
        TkcReader(path)


def test_missing_file(tmp_path):
    with pytest.raises(ContainerError, match="no such file"):
        TkcReader(tmp_path / "nope.tkc")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_records_never_crash(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("fuzz") / "f.tkc"
    _write(path, [])
    with TkcReader(path) as reader:
        start = reader.data_start
    path.write_bytes(path.read_bytes()[:start] + body)  # header intact, records random
    with TkcReader(path) as reader:
        list(reader)
        reader.index()


def test_a_malformed_index_falls_back_to_a_scan(tmp_path):
    from talkcodec.container import INDEX, _record

    path = tmp_path / "bad_index.tkc"
    _write(path, _stream())
    data = path.read_bytes()
    with TkcReader(path) as reader:
        good = reader.index()
        end_len = 14
        index_offset = int.from_bytes(data[-end_len + 2 : -end_len + 10], "little")
    body = b"\x91\x01"  # msgpack [1]: entries that are not [offset, seq, is_reference]
    bad = data[:index_offset] + _record(INDEX, body)
    path.write_bytes(bad + _record(4, index_offset.to_bytes(8, "little")))
    with TkcReader(path) as reader:
        assert reader.index() == good


@pytest.mark.parametrize("header", [{"codec": "mesh", "fps": [float("inf"), 1], "width": 256, "height": 256}, {"codec": "mesh"}])
def test_implausible_headers_are_container_errors(tmp_path, header):
    import struct
    import zlib

    from talkcodec.packet import pack
    from talkcodec.quant import write_varint

    body = pack(header)
    path = tmp_path / "h.tkc"
    path.write_bytes(b"TKC\x00\x01" + write_varint(len(body)) + body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ContainerError):
        TkcReader(path)

from fractions import Fraction

import numpy as np
import pytest

import talkcodec
from talkcodec.codecs.mesh_model import ShapeModel
from talkcodec.errors import PacketError, WeightsError
from talkcodec.face import RIGHT_EYE, eye_aspect_ratio
from talkcodec.metrics import psnr
from talkcodec.packet import Packet, PacketKind, pack, unpack
from talkcodec.video import read_frames

FRAMES = 75  # 3 s of the sample


@pytest.fixture(scope="module")
def stream(sample_video):
    """The sample through the mesh encoder: wire bytes per frame and the crops it saw."""
    codec = talkcodec.get_codec("mesh")
    encoder = codec.encoder(fps=25)
    wires, crops = [], []
    for frame in read_frames(sample_video, fps=25, max_seconds=FRAMES / 25):
        wires.append([p.to_bytes() for p in encoder.encode(frame)])
        crops.append(encoder.last_observation.crop)
    encoder.close()
    return wires, crops


@pytest.fixture(scope="module")
def bundled(sample_video):
    """The same frames sent in packets of up to 5 frames (the held-back ones come with ``flush``)."""
    encoder = talkcodec.get_codec("mesh", frames_per_packet=5).encoder(fps=25)
    frames = read_frames(sample_video, fps=25, max_seconds=FRAMES / 25)
    wires = [[p.to_bytes() for p in encoder.encode(frame)] for frame in frames]
    wires.append([p.to_bytes() for p in encoder.flush()])
    encoder.close()
    return wires


def _frame_bytes(wires):
    return sum(len(w) for group in wires for w in group if Packet.from_bytes(w).kind == PacketKind.FRAME)


def _decode(wires, drop=lambda seq, packet: False):
    decoder = talkcodec.get_codec("mesh").decoder()
    frames = []
    for seq, group in enumerate(wires):
        packets = [Packet.from_bytes(w) for w in group]
        for packet in packets:
            frames += decoder.decode(None if drop(seq, packet) else packet)
    return decoder, frames + decoder.flush()


def test_shipped_shape_model_explains_landmarks(stream):
    model = ShapeModel.load()
    assert model.basis.shape == (32, 478 * 3)
    assert np.allclose(model.basis @ model.basis.T, np.eye(32), atol=1e-4)  # orthonormal
    from talkcodec.face import FaceTracker

    with FaceTracker(segmentation=False) as tracker:
        landmarks = tracker.process(stream[1][0]).landmarks
    params = model.analyse(landmarks, 32)
    error = np.linalg.norm(model.synthesize(params)[:, :2] - landmarks[:, :2], axis=1).mean()
    assert error < 1.5  # pixels, in a 256x256 crop
    residual = model.residual(landmarks, params)
    assert np.abs(model.synthesize(params, residual)[:, :2] - landmarks[:, :2]).max() < 1e-3


def test_roundtrip_bitrate_and_quality(stream):
    wires, crops = stream
    assert wires[0][0][0] >> 3 & 3 == PacketKind.REFERENCE  # the reference comes first
    kbps = _frame_bytes(wires) * 8 / 1000 / (len(wires) / 25)
    assert kbps <= 5.0
    _, frames = _decode(wires)
    assert [f.seq for f in frames] == list(range(len(wires))) and not any(f.concealed for f in frames)
    quality = [psnr(c, f.image) for c, f in zip(crops, frames)]
    assert np.mean(quality) > 24
    still = talkcodec.get_codec("mesh").decoder()  # warping nothing would score far worse on motion
    reference = [still.decode(Packet.from_bytes(w)) for w in wires[0]][-1][0].image
    assert np.mean(quality) > np.mean([psnr(c, reference) for c in crops]) + 1.0


def test_packets_of_several_frames_draw_the_same_frames_for_fewer_bits(stream, bundled):
    _, single = _decode(stream[0])
    _, several = _decode(bundled)
    assert [f.seq for f in several] == list(range(FRAMES)) and not any(f.concealed for f in several)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(single, several))  # lossless regrouping
    counts = [Packet.from_bytes(w).frames for group in bundled for w in group if w[0] >> 3 & 3 == PacketKind.FRAME]
    assert max(counts) == 5 and sum(counts) == FRAMES
    assert _frame_bytes(bundled) < 0.7 * _frame_bytes(stream[0])


def test_a_lost_packet_of_several_frames_costs_only_its_frames(bundled):
    lost = next(Packet.from_bytes(w) for group in bundled for w in group if Packet.from_bytes(w).seq == 30)
    assert not lost.key and lost.frames == 5
    decoder, frames = _decode(bundled, drop=lambda _, p: p.seq == 30 and p.kind == PacketKind.FRAME)
    assert [f.seq for f in frames if not f.concealed] == [s for s in range(FRAMES) if not 30 <= s < 35]
    assert not decoder.needs_key  # the packets after it depend on their key only


def test_lost_delta_packets_are_concealed(stream):
    wires, _ = stream
    lost = {5, 6, 17, 40}
    decoder, frames = _decode(wires, drop=lambda seq, p: seq in lost and p.kind == PacketKind.FRAME)
    assert len(frames) == len(wires)
    assert [f.seq for f in frames if f.concealed] == sorted(lost)
    assert not decoder.needs_key


def test_lost_key_asks_for_one_and_recovers(stream):
    wires, _ = stream
    decoder, frames = _decode(wires, drop=lambda seq, p: seq == 25 and p.key)
    concealed = [f.seq for f in frames if f.concealed]
    assert concealed == list(range(25, 50))  # until the next key (every 25 frames)
    assert not decoder.needs_key and not frames[-1].concealed


def test_decoder_without_reference_waits(stream):
    wires, _ = stream
    decoder = talkcodec.get_codec("mesh").decoder()
    assert decoder.decode(Packet.from_bytes(wires[0][1])) == []  # a key but no reference yet: nothing to show
    assert decoder.needs_key


@pytest.mark.parametrize(
    "meta",
    [{}, {"image": b"junk", "k": 16, "precision": 1.0}, {"image": None}, {"k": 99}],
)
def test_malformed_reference_is_a_packet_error(stream, meta):
    decoder = talkcodec.get_codec("mesh").decoder()
    with pytest.raises(PacketError):
        decoder.decode(Packet(1, PacketKind.REFERENCE, 0, pack(meta)))


def _reference_with(wires, **changes) -> Packet:
    """The stream's reference packet with fields of its payload changed (None: removed)."""
    packet = Packet.from_bytes(wires[0][0])
    meta = {**unpack(packet.payload), **changes}
    return Packet(1, PacketKind.REFERENCE, packet.seq, pack({k: v for k, v in meta.items() if v is not None}),
                  ref_id=packet.ref_id)  # fmt: skip


@pytest.mark.parametrize("eyes", [1, 3, True, "2", -2])
def test_reference_with_an_invalid_eye_count_is_a_packet_error(stream, eyes):
    with pytest.raises(PacketError):
        talkcodec.get_codec("mesh").decoder().read_reference(_reference_with(stream[0], eyes=eyes))
    with pytest.raises(PacketError):  # the symbols say 2 eye openings, the count none
        talkcodec.get_codec("mesh").decoder().read_reference(_reference_with(stream[0], eyes=None))


def test_sent_eye_openings_close_the_drawn_lids(stream):
    """The basis alone draws a shut eye half open (it was fitted on open eyes); the sent
    openings set the lids, and the warp draws the reference's upper lid over the eye."""
    wires, _ = stream
    decoder = talkcodec.get_codec("mesh").decoder()
    reference = decoder.read_reference(Packet.from_bytes(wires[0][0]))
    own = np.array(unpack(Packet.from_bytes(wires[0][0]).payload)["symbols"], np.int32)  # 6 + 16 + 2
    shut = own.copy()
    shut[-2:] = 3  # aspect ratio 0.03 (step 0.01)
    assert np.allclose(eye_aspect_ratio(decoder.landmarks(reference, own)), own[-2:] / 100, atol=0.01)
    closed = decoder.landmarks(reference, shut)
    assert np.allclose(eye_aspect_ratio(closed), 0.03, atol=0.01)
    eye = closed[list(RIGHT_EYE), :2]
    (x0, y0), (x1, y1) = eye.min(axis=0).astype(int) - 2, eye.max(axis=0).astype(int) + 3
    open_image, shut_image = decoder.render(reference, own, 0), decoder.render(reference, shut, 0)
    changed = np.abs(open_image[y0:y1, x0:x1].astype(int) - shut_image[y0:y1, x0:x1]).mean()
    elsewhere = np.abs(open_image[200:, :].astype(int) - shut_image[200:, :]).mean()
    assert changed > 10 and elsewhere == 0


def test_a_stream_without_eye_openings_costs_less_and_decodes(sample_video):
    encoder = talkcodec.get_codec("mesh", eyes=False).encoder(fps=25)
    wires = [[p.to_bytes() for p in encoder.encode(f)] for f in read_frames(sample_video, fps=25, max_seconds=1)]
    encoder.close()
    assert "eyes" not in unpack(Packet.from_bytes(wires[0][0]).payload)
    _, frames = _decode(wires)
    assert len(frames) == 25 and not any(f.concealed for f in frames)


def test_corrupted_frame_payloads_never_crash(stream):
    wires, _ = stream
    decoder = talkcodec.get_codec("mesh").decoder()
    rng = np.random.default_rng(0)
    for group in wires[:30]:
        for wire in group:
            packet = Packet.from_bytes(wire)
            if packet.kind == PacketKind.FRAME and packet.payload:
                packet = Packet(1, PacketKind.FRAME, packet.seq, rng.bytes(len(packet.payload)), packet.key,
                                packet.key_distance, packet.ref_id, packet.fps)  # fmt: skip
            try:
                for frame in decoder.decode(packet):
                    assert frame.image.shape == (256, 256, 3)
            except PacketError:
                pass


def test_frames_waiting_in_a_packet_come_out_in_order_around_damage_and_skips(bundled):
    packets = [Packet.from_bytes(w) for group in bundled for w in group]
    reference, first, second = packets[0], packets[1], packets[2]  # frames 0-4 and 5-9
    assert (first.seq, first.frames, second.seq) == (0, 5, 5)
    decoder = talkcodec.get_codec("mesh").decoder()
    decoder.decode(reference)
    assert [f.seq for f in decoder.decode(first)] == [0]
    assert [f.seq for f in decoder.decode(None)] == [1]  # the next frame of the packet, not a concealment
    too_long = Packet(1, PacketKind.FRAME, 3, b"\xff" * 500, key_distance=3, frames=5)
    with pytest.raises(PacketError):
        decoder.decode(too_long)  # frame 2 was drawn before the damage was found
    assert [(f.seq, f.concealed) for f in decoder.decode(second)] == [(2, False), (5, False)]
    decoder.skip_to(60)  # a live receiver jumped ahead: frames 6-9 are past
    assert [(f.seq, f.concealed) for f in decoder.decode(None)] == [(60, True)]


@pytest.mark.parametrize("frames", [2, 5, 64])
def test_garbage_packets_of_several_frames_never_crash(stream, frames):
    wires, _ = stream
    decoder = talkcodec.get_codec("mesh").decoder()
    decoder.decode(Packet.from_bytes(wires[0][0]))  # the reference
    rng = np.random.default_rng(frames)
    for seq in range(frames, 40 * frames, frames):
        key = seq % (4 * frames) == frames
        packet = Packet(1, PacketKind.FRAME, seq, rng.bytes(int(rng.integers(1, 200))), key=key, ref_id=0,
                        fps=Fraction(25), key_distance=0 if key else frames, frames=frames)  # fmt: skip
        try:
            drawn = decoder.decode(Packet.from_bytes(packet.to_bytes()))
        except PacketError:
            drawn = []
        drawn += [f for _ in range(frames - 1) for f in decoder.decode(None)]
        assert all(f.image.shape == (256, 256, 3) for f in drawn) and len(drawn) <= frames
    assert len(decoder.flush()) <= frames


def test_faceless_video_sends_hold_packets(noface_video):
    codec = talkcodec.get_codec("mesh")
    encoder, decoder = codec.encoder(), codec.decoder()
    sizes = []
    for frame in read_frames(noface_video):
        for packet in encoder.encode(frame):
            frames = decoder.decode(Packet.from_bytes(packet.to_bytes()))
            if packet.kind == PacketKind.FRAME:
                sizes.append(len(packet.to_bytes()))
                assert len(frames) == 1 and not packet.payload
    assert max(sizes) <= 7  # a header and nothing else


def test_broken_model_file_is_a_weights_error(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError):
        talkcodec.get_codec("mesh", model=str(path))


def test_face_that_leaves_and_returns_gets_a_new_reference(astronaut_frame):
    noise = np.random.default_rng(0).integers(0, 255, astronaut_frame.shape, dtype=np.uint8)
    moved = np.roll(astronaut_frame, 50, axis=1)
    codec = talkcodec.get_codec("mesh")
    encoder, decoder = codec.encoder(), codec.decoder()
    kinds, frames = [], []
    for frame in [astronaut_frame] * 5 + [noise] * 5 + [moved] * 5:
        for packet in encoder.encode(frame):
            kinds.append((packet.seq, packet.kind, bool(packet.payload)))
            frames += decoder.decode(Packet.from_bytes(packet.to_bytes()))
    references = [seq for seq, kind, _ in kinds if kind == PacketKind.REFERENCE]
    assert references == [0, 10]  # the first frame, and the face's return in a new crop
    holds = [seq for seq, kind, payload in kinds if kind == PacketKind.FRAME and not payload]
    assert holds == [5, 6, 7, 8, 9]
    assert [f.seq for f in frames] == list(range(15)) and not any(f.concealed for f in frames)
    assert np.array_equal(frames[7].image, frames[4].image)  # held while the face was away


def test_frames_are_drawn_with_blas_on_one_thread_and_the_setting_is_restored(stream):
    from threadpoolctl import ThreadpoolController

    def blas_threads():
        return {pool["num_threads"] for pool in ThreadpoolController().info() if pool["user_api"] == "blas"}

    before = blas_threads()
    decoder = talkcodec.get_codec("mesh").decoder()
    seen = []
    render = decoder.render
    decoder.render = lambda *args: seen.append(blas_threads()) or render(*args)
    for group in stream[0][:5]:
        for wire in group:
            decoder.decode(Packet.from_bytes(wire))
    assert len(seen) == 5 and all(threads == {1} for threads in seen)
    assert blas_threads() == before


def test_a_fitted_shape_model_codes_the_eyes_and_survives_saving(tmp_path):
    from talkcodec.codecs.mesh_model import fit_shape_model
    from talkcodec.eyes import set_eye_openings
    from talkcodec.face import canonical_face_model

    face = ShapeModel.load().synthesize(np.array([0, 0, 0, np.log(44.0), 128, 128]))  # the mean face, crop pixels
    rng = np.random.default_rng(0)
    tracks = []
    for _ in range(3):
        track = face + rng.normal(0, 0.3, (40, *face.shape))
        for t, frame in enumerate(track):  # a blink every 20 frames
            frame[:, :2] = set_eye_openings(frame, np.full(2, 0.02 if t % 20 in (5, 6) else 0.3))
        tracks.append(track)
    fitted = fit_shape_model(tracks, canonical_face_model())
    fitted.save(tmp_path / "m.safetensors")
    loaded = ShapeModel.load(tmp_path / "m.safetensors")
    assert np.allclose(loaded.eyes.step, 0.01) and np.array_equal(loaded.eyes.key_centre, [30, 30])
    assert 1 < loaded.eyes.key_scale.min() < 10  # the blinks' spread around the open eye, in steps
    assert np.allclose(loaded.basis, fitted.basis, atol=1e-6)
